"""A reproduction folder's own files: reproduce.json (its settings, opened or
refused by open_out), the records of finished work under OUT/records (each read
back checked against the shape the report reads), and the rule for the report
and its figures folder (check_report)."""

import json
from pathlib import Path

from mlx_grow.base import UserError, brief
from mlx_grow.io.atomic import REPORT_MARKER, atomic_path, replaceable
from mlx_grow.io.read import NUMBER, read_json
from mlx_grow.reproduce.report import owner_line

MARK = "reproduce.json"
REBUILT = "delete it and run again: it is rebuilt from the finished runs"

# What each record file holds (io.read.shaped); the report reads nothing else.
NONE = type(None)
CURVE = {"tokens": [NUMBER], "flops": [(NUMBER, NONE)], "val_loss": [NUMBER],
         "grows": [{"depth": int, "tokens": (NUMBER, NONE), "flops": (NUMBER, NONE)}], "peak_mem_mb": NUMBER}
RECORD = {"part": int, "key": str, "label": str, "seed": int, "final": str, "run": str, "val_loss": NUMBER,
          "tokens": int, "flops": (NUMBER, NONE), "wall_s": NUMBER, "tok_s": NUMBER, "active_params": int,
          "stages": [{"val_loss": NUMBER}], "curve": CURVE, "depth": int, "substrate": str}
BASELINE = {"unigram": NUMBER, "bigram": NUMBER, "train_tokens": int, "val_tokens": int, "wall_s": NUMBER}
COMPOSITION = {"seed": int, "sources": [str], "tune_steps": int, "wall_s": NUMBER, "rows": {"*": {"*": NUMBER}}}
DEPTH = {"run": str, "limit": (int, NONE), "chance": {"*": (NUMBER, NONE)}, "items": {"*": int},
         "by_depth": {"*": {"*": {"acc": NUMBER}}}, "wall_s": NUMBER}


def write_json(path: Path, obj):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))


def open_out(out: Path, settings: dict) -> dict:
    """A new folder, or one this command started with the same settings; returns its reproduce.json."""
    mark = out / MARK
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: choose a new --out")
    if out.exists() and any(out.iterdir()):
        if not mark.is_file():
            raise UserError(f"{out} exists and is not a reproduction folder (no {MARK}); choose a new --out")
        old = read_json(mark, dict, fix="restore it, or choose a new --out", shape={"settings": dict})
        if old.get("settings") != settings:
            changed = sorted(k for k in set(old.get("settings", {})) | set(settings)
                             if old.get("settings", {}).get(k) != settings.get(k))
            raise UserError(f"{out} holds a reproduction with other settings ({', '.join(changed)} differ); "
                            "continue it with its own settings, or choose a new --out")
        return old
    out.mkdir(parents=True, exist_ok=True)
    rec = {"settings": settings}
    write_json(mark, rec)
    return rec


def check_report(md: Path, out: Path):
    """The report and its figures folder (the report's name without .md, beside it) by
    the rule of every output, before any run starts: new paths are written; existing
    ones only when they are this reproduction's own report (its first line says so,
    the folder's mlx_grow_report.json lists every file in it). Anything else, a
    user's README.md or figs/ folder, is refused and never written into."""
    figs = md.parent / md.stem
    if md.is_dir():
        raise UserError(f"--report {md} is a folder; give the report's file name, e.g. {md / 'reproduction.md'}")
    if md.exists() or md.is_symlink():
        ours = False
        if md.is_file() and not md.is_symlink():  # never open a FIFO or follow a link
            try:
                with md.open(encoding="utf-8") as f:
                    ours = f.readline(1000).strip() == owner_line(out.resolve())
            except (OSError, UnicodeDecodeError):
                pass
        if not ours:
            raise UserError(f"--report {md} exists and is not this reproduction's report (mlx-grow did not write "
                            "it, or wrote it for another reproduction); choose another --report, or move it")
    if figs.exists() or figs.is_symlink():
        try:
            replaceable(figs, marker=REPORT_MARKER)
            ours = read_json(figs / REPORT_MARKER).get("reproduction") == str(out.resolve())
        except (FileExistsError, UserError, OSError):
            ours = False
        if not ours:
            raise UserError(f"{figs}, the folder the report's figures go in (the report's name without .md), exists "
                            "and is not this reproduction's (mlx-grow did not write it, wrote it for another "
                            "reproduction, or it holds other files); choose another --report, or move it")


def read_record(root: Path, job) -> dict:
    """OUT/records/KEY.json, checked: the shape the report reads, the job it is of, and
    its paths, which must be this job's run folder inside OUT (a record never points a
    merge or a benchmark at a model elsewhere); they come back as paths under `root`."""
    part, key, label = job[:3]
    f = root / "records" / f"{key}.json"
    fix = "delete it and run again: its finished run is reused"
    rec = read_json(f, dict, fix=fix, shape=RECORD)
    if (rec["part"], rec["key"], rec["label"]) != (part, key, label):
        raise UserError(f"{f} is damaged (it is the record of {brief(rec['key'])}, not of {key}); {fix}")
    for field, rel in (("run", f"runs/{key}"), ("final", f"runs/{key}/final")):
        want = (root / rel).resolve()
        v = rec[field]  # relative to OUT; older records: the same folder as the command named it
        if (root / v).resolve() != want and Path(v).resolve() != want:
            raise UserError(f"{f} is damaged: its `{field}` {brief(v)} is not {rel} inside {root} (a record names "
                            f"only its own run folder); {fix}")
        rec[field] = str(root / rel)
    return rec


def check_composition(rec: dict, path) -> dict:
    """The rows the report reads: both experts and mean-logits, each scored on every source and the union."""
    cols = [*rec["sources"], "union"]
    rows = rec["rows"]
    if len(rec["sources"]) != 2 or not {"expert 1", "expert 2", "mean-logits"} <= set(rows) or any(
            set(r) != set(cols) for r in rows.values()):
        raise UserError(f"{path} is damaged (its rows are not the experts' and merges' scores on "
                        f"{', '.join(cols)}); {REBUILT}")
    return rec


def check_depth(rec: dict, path) -> dict:
    """Depths that are block counts, each scored on the same tasks."""
    by = rec["by_depth"]
    tasks = {frozenset(v) for v in by.values()}
    if not by or not all(d.isascii() and d.isdigit() for d in by) or len(tasks) != 1 or not next(iter(tasks)):
        raise UserError(f"{path} is damaged (its scores are not one set of tasks per depth); {REBUILT}")
    return rec
