"""`mlx-grow reproduce`: the papers' claims, re-run at a chosen scale.

Every training run is an ordinary `grow` run under OUT/runs/KEY; its record
(final validation loss, tokens, FLOPs, wall time, loss curve) is kept in
OUT/records/KEY.json once it finishes, so a killed reproduction picks up at the
first unfinished run (and that run resumes from its own checkpoint, or starts
over in its folder). The report is rebuilt from the records at the end."""

import json
import math
import platform
import time
from pathlib import Path

import numpy as np

from mlx_grow.base import UserError, brief
from mlx_grow.io.atomic import REPORT_MARKER, atomic_path, replaceable
from mlx_grow.io.read import NUMBER, read_json
from mlx_grow.reproduce.report import owner_line
from mlx_grow.reproduce.scales import (
    EVAL_TASKS,
    EXPERT_DATA,
    SCALE_EXPERTS,
    estimate,
    experiments,
    get_scale,
    source_name,
    substrate_labels,
)

MARK = "reproduce.json"
REBUILT = "delete it and run again: it is rebuilt from the finished runs"

# What each record file holds (io.read.shaped); the report reads nothing else.
NONE = type(None)
CURVE = {"tokens": [NUMBER], "flops": [(NUMBER, NONE)], "val_loss": [NUMBER],
         "grows": [{"depth": int, "tokens": (NUMBER, NONE), "flops": (NUMBER, NONE)}], "peak_mem_mb": NUMBER}
RECORD = {"part": int, "key": str, "label": str, "seed": int, "final": str, "run": str, "val_loss": NUMBER,
          "tokens": int, "flops": (NUMBER, NONE), "wall_s": NUMBER, "tok_s": NUMBER, "active_params": int,
          "stages": [{"val_loss": NUMBER}], "curve": CURVE, "depth": int, "substrate": str}
COMPOSITION = {"sources": [str], "tune_steps": int, "tune_s": NUMBER, "rows": {"*": {"*": NUMBER}}}
DEPTH = {"run": str, "limit": (int, NONE), "chance": {"*": (NUMBER, NONE)}, "items": {"*": int},
         "by_depth": {"*": {"*": {"acc": NUMBER}}}, "wall_s": NUMBER}


def write_json(path: Path, obj):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))


def glyph_available(font=None) -> bool:
    from mlx_grow.substrate.glyph import find_font

    try:
        find_font(font)
        return True
    except (UserError, FileNotFoundError, OSError):
        return False


def open_out(out: Path, settings: dict):
    """A new folder, or one this command started with the same settings."""
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
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(mark, {"settings": settings})


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


def check_sources(sources):
    """Every data source of the runs exists (read later, run by run)."""
    from mlx_grow.data.corpora import check_source

    for s in dict.fromkeys(sources):
        check_source(s)


def curve(run_dir: Path) -> dict:
    from mlx_grow.training.runs import Run

    run = Run(run_dir)
    rows = run.metrics()
    ev = [r for r in rows if r.get("event") == "eval"]
    grows = [{k: g[k] for k in ("tokens", "flops", "depth")} for g in run.growth_events(rows)]
    return {"tokens": [r["tokens"] for r in ev], "flops": [r["flops"] for r in ev],
            "val_loss": [r["val_loss"] for r in ev], "grows": grows,
            "peak_mem_mb": max((r.get("peak_mem_mb") or 0 for r in rows if r.get("event") == "train"), default=0)}


def train_run(job, root: Path, progress: bool, echo) -> dict:
    """Run (or resume) one experiment; return its record."""
    from mlx_grow.training.grow import grow

    part, key, label, seed, cfg = job
    rec_path = root / "records" / f"{key}.json"
    if rec_path.is_file():
        return read_record(root, job)
    run_dir = root / "runs" / key
    t0 = time.perf_counter()
    final, summary = grow(cfg, run_dir, resume=(run_dir / "run.json").is_file(), progress=progress,
                          echo=lambda *a, **k: None)
    wall = time.perf_counter() - t0
    c = curve(run_dir)
    tokens = summary[-1]["tokens"]
    # paths relative to the reproduction folder, as in a model folder (read back by read_record)
    rec = {"part": part, "key": key, "label": label, "seed": seed, "final": f"runs/{key}/final",
           "run": f"runs/{key}", "val_loss": summary[-1]["val_loss"], "tokens": tokens,
           "flops": c["flops"][-1] if c["flops"] else None, "wall_s": wall, "tok_s": tokens / wall,
           "active_params": max(s["active_params"] for s in summary), "stages": summary, "curve": c,
           "depth": cfg.depth, "substrate": cfg.model.substrate.kind}
    write_json(rec_path, rec)
    echo(f"  {key}: validation loss {rec['val_loss']:.4f} after {tokens:,} tokens, {wall:.0f} s")
    return read_record(root, job)


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


def bytes_per_token(cfg) -> float:
    """UTF-8 bytes per validation target token of `cfg`'s data (for bits per byte)."""
    from mlx_grow.data.stream import open_stream
    from mlx_grow.tokenizer import load_tokenizer

    tok = load_tokenizer(cfg.tokenizer)
    t = cfg.train
    batches = open_stream(cfg.data, tok, t.seq_len, t.batch_size, 0, progress=False).val_batches(t.val_batches)
    ys = np.concatenate([np.asarray(b)[:, 1:].reshape(-1) for b in batches])
    ids, counts = np.unique(ys, return_counts=True)
    n_bytes = sum(len(tok.decode([int(i)]).encode("utf-8")) * int(c) for i, c in zip(ids, counts))
    return n_bytes / len(ys)


def composition(s, root: Path, expert_recs: list, sources, progress: bool, echo) -> dict:
    """Part 4: each expert, the training-free combiners and a tuned merge, scored per domain."""
    from mlx_grow.merge import compare, merge

    path = root / "records" / "composition.json"
    if path.is_file():
        return check_composition(read_json(path, dict, fix=REBUILT, shape=COMPOSITION), path)
    dirs = [r["final"] for r in expert_recs]
    tuned = root / "runs" / "merged-tuned"
    t0 = time.perf_counter()
    if not (tuned / "mlx_grow.json").is_file():
        merge(dirs, tuned, combiner="mean-logits", overwrite=tuned.exists(), progress=progress, echo=echo,
              tune={"part": "all", "steps": s.tune_steps, "lr": s.lr / 2, "batch_size": s.batch, "seq_len": s.seq,
                    "data": list(sources)})
    tune_s = time.perf_counter() - t0
    table = compare(dirs, list(sources), merged=[tuned], seq_len=s.seq, batches=s.val_batches, batch_size=s.batch)
    names = list(table)
    rename = {names[0]: "expert 1", names[1]: "expert 2", f"merged:{tuned.name}": "mean-logits + tune (all)"}
    rec = {"sources": [source_name(x) for x in sources], "tune_steps": s.tune_steps, "tune_s": tune_s,
           "rows": {rename.get(k, k): v for k, v in table.items()}}
    write_json(path, rec)
    return check_composition(rec, path)


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


def depth_scores(s, root: Path, run_dir: str, tasks, echo) -> dict:
    """Part 5: the log-likelihood benchmarks on every stage of one grown run."""
    from mlx_grow.eval.tasks import load_task
    from mlx_grow.eval.runner import run_eval

    path = root / "records" / "depth.json"
    if path.is_file():
        return check_depth(read_json(path, dict, fix=REBUILT, shape=DEPTH), path)
    try:
        loaded = [load_task(t, s.eval_limit) for t in tasks]
    except (FileNotFoundError, UserError) as e:
        echo(f"  skipped: {e}")
        return {"skipped": str(e)}  # not stored: a later run with the data installed scores it
    chance = {t.name: float(np.mean([1 / len(it.choices) for it in t.items])) if t.kind == "choice" else None
              for t in loaded}
    t0 = time.perf_counter()
    stages = sorted(str(d) for d in Path(run_dir).glob("stage-[0-9]*") if (d / "config.json").is_file())
    rep = run_eval(stages, tasks, protocol="loglik", limit=s.eval_limit)  # final/ is the last stage again
    depth = {m["name"]: m["depth"] for m in rep["models"] if not m.get("final")}
    rows = {}
    for r in rep["results"]:
        if r["model"] in depth:
            rows.setdefault(depth[r["model"]], {})[r["task"]] = r["metrics"]
    rec = {"run": run_dir, "limit": s.eval_limit, "chance": chance, "items": {t.name: len(t.items) for t in loaded},
           "by_depth": {str(d): rows[d] for d in sorted(rows)}, "wall_s": time.perf_counter() - t0}
    write_json(path, rec)
    return check_depth(rec, path)


def machine() -> dict:
    import os

    import mlx.core as mx

    from mlx_grow.backend import loaded

    info = {"platform": platform.platform(), "python": platform.python_version(), "mlx": mx.__version__,
            "cpus": os.cpu_count(), "device": str(mx.default_device()), "blas": loaded.get("library") or "bundled"}
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info


def data_passes(jobs, allow_repeat=None) -> tuple:
    """(lines, refusal or None): per source, the most any run draws from it against what
    it holds (training/passes.py), and the first run that reads a source more than its
    data.max_passes (or `allow_repeat`) times."""
    from mlx_grow.training import passes

    memo, worst, over = {}, {}, None
    for _, key, _, _, cfg in jobs:
        if allow_repeat is not None:
            cfg = cfg.with_flags(data={"max_passes": float(allow_repeat)})
        rows = passes.table(cfg, None, memo)
        for r in rows:
            if r.label not in worst or r.passes > worst[r.label][0].passes:
                worst[r.label] = (r, key)
            if r.held and r.passes > cfg.data.max_passes and (over is None or r.passes > over[0]):
                over = (r.passes, key, cfg, rows)
    lines = [f"data: {r.line()}, the most of any run ({key})" for r, key in worst.values()]
    if over is None:
        return lines, None
    try:  # the run that reads a source the most times names it
        passes.check(over[2], over[3], flag="--allow-repeat")
    except UserError as e:
        return lines, f"run {over[1]}: {e}"
    return lines, None


def reproduce(scale="tiny", out=None, data=None, experts=None, tasks=None, report=None, font=None,
              dry_run=False, progress=True, echo=print, command=None, substrates=None, allow_repeat=None) -> dict:
    """Run every part at `scale`; write OUT/results.json and the report (default
    OUT/reproduction.md, its plots in a folder beside it). Returns the results.
    Before anything is written, every run's passes over its sources are checked
    (`allow_repeat` raises the limit, as grow --allow-repeat)."""
    from mlx_grow.reproduce.report import si, write_report

    s = get_scale(scale)
    experts = tuple(experts or SCALE_EXPERTS.get(s.name) or EXPERT_DATA)
    if len(experts) != 2:
        raise UserError(f"--expert is given twice, once for each of part 4's two corpora (e.g. --expert a.txt "
                        f"--expert b.txt); got it {len(experts)} time{'s' if len(experts) != 1 else ''}")
    tasks = tuple(tasks or EVAL_TASKS)
    glyph = glyph_available(font)
    subs = substrate_labels(substrates) if substrates else None
    jobs = experiments(s, data, experts, glyph, font, subs)
    if allow_repeat is not None:  # every run may read a source up to N times
        jobs = [(*job[:4], job[4].with_flags(data={"max_passes": float(allow_repeat)})) for job in jobs]
    est = estimate(s, jobs)
    echo(f"reproduce --scale {s.name}: {est['runs']} training runs + a tuned merge, {si(est['tokens'])} "
         f"tokens, {si(est['flops'])}FLOPs of training, predicted peak memory "
         f"{est['peak_bytes'] / 2**30:.2f} GiB (one run at a time); needs {est['hardware']}")
    if not glyph:
        echo("no font for the glyph substrate (apt-get install fonts-unifont, or --font FILE): part 1 runs without it")
    lines, refusal = data_passes(jobs, allow_repeat)
    if dry_run:
        for line in lines:
            echo(line)
        if refusal:
            echo(f"refused (a run would stop here): {refusal}")
        return {"estimate": est, "passes": lines, "refused": refusal}
    if refusal:
        raise UserError(refusal)
    from mlx_grow.data import corpora

    hub = [x.source for *_, cfg in jobs for x in cfg.data.mixture(0) if x.source.startswith("hf:")]
    if missing := corpora.offline_sources(hub):  # streamed from the Hub: say what to download when it cannot be
        raise UserError(corpora.offline_message(missing))
    out = Path(out or f"reproduce-{s.name}")
    settings = {"scale": s.to_dict(), "data": list(data or []), "experts": list(experts), "tasks": list(tasks),
                "glyph": glyph, "substrates": subs}
    # Every check before the first write: a refused input never blocks the corrected rerun.
    md_path = Path(report) if report else out / "reproduction.md"
    check_report(md_path, out)
    check_sources([*(data or []), *experts])
    open_out(out, settings)
    t0 = time.perf_counter()
    recs = []
    for i, job in enumerate(jobs):
        echo(f"[{i + 1}/{len(jobs)}] part {job[0]}: {job[2]}" + (f" (seed {job[3]})" if job[0] == 2 else ""))
        recs.append(train_run(job, out, progress, echo))
    bpt = {}
    for job, rec in zip(jobs, recs):
        if job[0] == 1:
            key = json.dumps(job[4].to_dict()["data"], sort_keys=True)
            if key not in bpt:
                bpt[key] = bytes_per_token(job[4])
            rec["bits_per_byte"] = rec["val_loss"] / math.log(2) / bpt[key]
            rec["bytes_per_token"] = bpt[key]
    echo("part 4: merging the experts")
    comp = composition(s, out, [r for r in recs if r["part"] == 4], experts, progress, echo)
    echo("part 5: benchmarks on every grown stage")
    grown0 = next(r for r in recs if r["key"] == "grown-s0")
    depth = depth_scores(s, out, grown0["run"], tasks, echo)
    before = read_json(out / "results.json", dict, fix=REBUILT, shape={"wall_s": NUMBER}) \
        if (out / "results.json").is_file() else {}
    if not isinstance(before.get("invocations", 1), int):
        raise UserError(f"{out / 'results.json'} is damaged (its invocations entry is not a count); {REBUILT}")
    results = {"scale": s.to_dict(), "estimate": est, "machine": machine(), "runs": recs, "composition": comp,
               "depth": depth, "wall_s": before.get("wall_s", 0) + time.perf_counter() - t0,
               "invocations": before.get("invocations", 1 if before else 0) + 1,
               "work_s": sum(r["wall_s"] for r in recs) + comp.get("tune_s", 0) + depth.get("wall_s", 0),
               "command": command or f"mlx-grow reproduce --scale {s.name}",
               "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    write_json(out / "results.json", results)
    md = write_report(results, md_path, str(out.resolve()))
    echo(f"report: {md}")
    results["report"] = str(md)
    return results
