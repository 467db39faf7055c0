"""Run directories: run.json, metrics.jsonl, resumable checkpoints, stage models.

RUN/
  run.json                 config, tokenizer and substrate fingerprints; `from`: the model a
                           `grow --from` run grows further (training/source.py)
  metrics.jsonl            one JSON object per logged step / evaluation / event
  loss.png                 the loss plot
  checkpoints/step-000500  model + optimizer.safetensors + trainer.json (atomic)
  stage-01/ …              the model at each stage end (adapters merged)
  final/                   the finished model
"""

import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import mlx.core as mx

from mlx_grow.base import UserError, brief
from mlx_grow.checkpoint import (
    META,
    CheckpointError,
    build_model,
    load_args,
    read_meta,
    read_weights,
    verify_files,
    write_model_dir,
)
from mlx_grow.io import atomic_path, check_output
from mlx_grow.io.atomic import named_error, temp_name, temp_of
from mlx_grow.io.faults import maybe_fail
from mlx_grow.io.read import NUMBER, parse_json, read_json, shaped

log = logging.getLogger("mlx_grow.training")

# The fields every reader of metrics.jsonl uses, by event (io.read.shaped; `key?`: when present).
NONE = type(None)
METRIC_ROWS = {
    "train": {"global_step": int, "stage": int, "step": int, "loss": NUMBER, "tokens": int, "flops": NUMBER,
              "peak_mem_mb?": (NUMBER, NONE)},
    "eval": {"global_step": int, "stage": int, "val_loss": NUMBER, "tokens": int, "flops": NUMBER},
    "grow": {"global_step": int, "stage": int, "depth": int, "tokens": (int, NONE)},
}

OPTIMIZER = "optimizer.safetensors"
TRAINER = "trainer.json"


class Run:
    def __init__(self, root, rank: int = 0):
        self.root = Path(root)
        self.rank = rank
        self.writer = rank == 0

    @property
    def ckpt_dir(self):
        return self.root / "checkpoints"

    def stage_dir(self, k: int) -> Path:
        return self.root / f"stage-{k + 1:02d}"

    def check(self, config: dict, fingerprints: dict, resume: bool, old: dict | None = None):
        """Check, writing nothing, that this run may start (a new or empty folder) or
        resume (`old`, its run.json as read: the same config, tokenizer and source)."""
        f = self.root / "run.json"
        record = {"config": config, **fingerprints}
        if resume:
            if old is None:
                raise FileNotFoundError(f"nothing to resume: {f} does not exist")
            if old.get("from") != record.get("from"):
                raise UserError(f"cannot resume {self.root}: it grows a different model than this run would "
                                f"(run.json `from` {(old.get('from') or {}).get('path')} vs "
                                f"{(record.get('from') or {}).get('path')})")
            for key in ("tokenizer", "substrate"):
                if old.get(key) != record.get(key):
                    raise UserError(
                        f"cannot resume {self.root}: its {key} fingerprint differs from this config's "
                        f"({old.get(key)} vs {record.get(key)})"
                    )
            before = normalized(old["config"], base_of(old))
            if before != config:
                diff = sorted(k for k in set(before) | set(config) if before.get(k) != config.get(k))
                raise UserError(
                    f"cannot resume {self.root}: it was started with a different config "
                    f"(sections differ: {', '.join(diff)}); resume with the same config and flags"
                )
            return
        if f.exists():
            raise FileExistsError(f"{self.root} already holds a run; continue it with --resume {self.root} "
                                  "or choose another --out")
        if self.root.exists() or self.root.is_symlink():
            if not self.root.is_dir():
                raise FileExistsError(f"--out {self.root} exists and is not a folder; choose another --out")
            if any(self.root.iterdir()):
                raise FileExistsError(f"--out {self.root} is a folder with other files in it, not a run; choose a "
                                      "new or empty folder")

    def init(self, config: dict, fingerprints: dict, barrier=None):
        """Write run.json of a new run (Run.check has passed). `barrier` (data-parallel
        runs) holds rank 0's write until every rank has checked."""
        if barrier is not None:
            barrier()
        if self.writer:
            self.root.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.root / "run.json") as tmp:
                tmp.write_text(json.dumps({"config": config, **fingerprints}, indent=2))

    def log(self, record: dict):
        if not self.writer:
            return
        f = self.root / "metrics.jsonl"
        try:
            with open(f, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk names no file: name it
            raise named_error(e, f) from e

    def metrics(self) -> list:
        """The logged records; a line that is not a record as the run logs it (a
        writer killed mid-line, an edit) is left out with a warning."""
        f = self.root / "metrics.jsonl"
        if not f.exists():
            return []
        rows, bad = [], 0
        for line in f.read_bytes().decode("utf-8", errors="replace").splitlines():
            if line.strip():
                try:
                    row = parse_json(line, str(f))
                except UserError:
                    row = None
                if isinstance(row, dict) and isinstance(row.get("event", ""), str) \
                        and shaped(row, METRIC_ROWS.get(row.get("event"), {"global_step?": int})):
                    rows.append(row)
                else:
                    bad += 1
        if bad:
            log.warning(f"{f}: left out {bad} damaged line(s)")
        return rows

    def growth_events(self, rows=None) -> list:
        """Each growth event as {global_step, tokens, flops, depth}: its FLOPs are
        those of the first training record at or after it (events carry tokens only)."""
        rows = self.metrics() if rows is None else rows
        train = [r for r in rows if r.get("event") == "train"]
        return [{"global_step": r["global_step"], "tokens": r.get("tokens"), "depth": r["depth"],
                 "flops": next((e["flops"] for e in train if e["global_step"] >= r["global_step"]), None)}
                for r in rows if r.get("event") == "grow"]

    def truncate_metrics(self, global_step: int):
        """Drop records past a resumed checkpoint so the log has no duplicate steps."""
        if not self.writer:
            return
        keep = [r for r in self.metrics() if r.get("global_step", 0) <= global_step]
        with atomic_path(self.root / "metrics.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))

    def save_checkpoint(self, model, tokenizer, stepper, state: dict, keep: int):
        if not self.writer:
            return None
        out = self.ckpt_dir / f"step-{state['global_step']:06d}"
        try:
            check_output(out, overwrite=True)
        except FileExistsError:  # a damaged checkpoint of this step (resume skipped it): set it aside
            os.replace(out, temp_name(out, "old"))
        with write_model_dir(out, overwrite=True) as w:
            w.model(model, tokenizer)
            w.arrays(OPTIMIZER, stepper.state_dict())
            maybe_fail("checkpoint", state["global_step"])  # test hook: die / disk full mid-write
            w.json(TRAINER, state)
            w.meta["lineage"] = state.get("lineage")
        for old in self.checkpoints()[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        return out

    def checkpoints(self) -> list:
        if not self.ckpt_dir.is_dir():
            return []
        return sorted(p for p in self.ckpt_dir.iterdir()
                      if p.is_dir() and not p.is_symlink() and re.fullmatch(r"step-\d{6,}", p.name))

    def latest(self):
        """The newest checkpoint whose files all match their checksums."""
        for ckpt in reversed(self.checkpoints()):
            try:
                verify_checkpoint(ckpt)
                return ckpt
            except CheckpointError as e:
                print(f"skipping damaged checkpoint {ckpt}: {e}", file=sys.stderr)
        return None


def verify_checkpoint(ckpt: Path):
    """A checkpoint is whole when its mlx_grow.json lists its files and each matches
    its checksum. Without that manifest (a writer killed before its last write, or a
    deletion) nothing vouches for the weights: it is damaged."""
    meta = read_meta(ckpt)
    if not isinstance(meta.get("files"), dict) or TRAINER not in meta["files"]:
        raise CheckpointError(f"it has no {META} listing its files (and {TRAINER}), so nothing vouches for them")
    verify_files(ckpt, meta)


def load_checkpoint(ckpt: Path):
    """(model with adapters rebuilt, trainer state, optimizer flat state)."""
    from mlx_grow.training.lora import rebuild_lora

    state = read_trainer(ckpt)
    model = build_model(load_args(ckpt), read_weights(ckpt), ckpt,
                        prepare=lambda m: rebuild_lora(m, state.get("lora", [])))
    opt = mx.load(str(ckpt / OPTIMIZER))
    return model, state, opt


def read_trainer(ckpt: Path) -> dict:
    """trainer.json of a checkpoint: where the run was, checked for the keys a resume reads."""
    fix = "the checkpoint is damaged: remove it to resume from the one before"
    state = read_json(ckpt / TRAINER, dict, CheckpointError, fix)
    ints = ("stage", "step", "global_step")
    ok = all(type(state.get(k)) is int and state[k] >= 0 for k in ints) and type(state.get("tokens", 0)) is int \
        and isinstance(state.get("lora", []), list) and isinstance(state.get("reads", {}), dict) \
        and isinstance(state.get("summary", []), list) and isinstance(state.get("plateau", [0, 0]), list) \
        and isinstance(state.get("flops", 0), (int, float)) and isinstance(state.get("config", {}), dict)
    if not ok:
        raise CheckpointError(f"{ckpt / TRAINER} is damaged (a {', '.join(ints)}, tokens, lora, reads, summary, plateau "
                              f"or config entry is missing or of the wrong type); {fix}")
    return state


# What a run folder holds, by name (see the module docstring): the only names whose
# leftover temp copies (`.NAME.tmp-xxxxxxxx`, `.NAME.old-xxxxxxxx`) a resume removes.
RUN_OUTPUTS = r"run\.json|metrics\.jsonl|loss\.png|final|stage-\d{2,}"
CHECKPOINT_OUTPUTS = r"step-\d{6,}"


def finished(root: Path):
    """(final dir, stage summary) when the run in `root` has finished, else None."""
    final = Path(root) / "final"
    if not (final / META).is_file():
        return None
    summary = (read_meta(final).get("lineage") or {}).get("summary") or []
    return final, summary if isinstance(summary, list) else []


def remove_stale_temp(root: Path):
    """Temp copies left by a killed writer are never read; clean them up. Only the
    exact names mlx-grow makes are touched: a user's `.notes.tmp-1` stays."""
    for base, outputs in ((root, RUN_OUTPUTS), (root / "checkpoints", CHECKPOINT_OUTPUTS)):
        if base.is_dir() and not base.is_symlink():
            for p in base.iterdir():
                if temp_of(p.name, outputs):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else os.unlink(p)


def read_run_json(f: Path, fix: str) -> dict:
    """run.json: an object whose `config` is a mapping (sections are checked when parsed)."""
    run = read_json(f, dict, CheckpointError, fix)
    if not isinstance(run.get("config"), dict) or not isinstance(run.get("from") or {}, dict):
        raise CheckpointError(f"{f} is damaged (no `config` mapping, or a `from` that is not one); {fix}")
    return run


def config_diff(a: dict, b: dict) -> list:
    """The dotted keys (`train.lr`) where two config records differ."""
    out = []
    for k in sorted(set(a) | set(b), key=str):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += [f"{k}.{d}" for d in config_diff(x, y)]
        elif x != y:
            out.append(str(k))
    return out


def check_checkpoint_config(run_root: Path, ckpt: Path, record: dict, base: int = 0):
    """run.json's config against the config `ckpt` was written with (trainer.json,
    which the checkpoint's checksums cover): an edited run.json is refused."""
    saved = read_trainer(ckpt).get("config")
    if saved is None:  # checkpoints written before the config was kept in them
        return
    diff = config_diff(normalized(saved, base), normalized(record, base))
    if diff:
        raise UserError(f"cannot resume {run_root}: its run.json differs from the config checkpoint {ckpt.name} was "
                        f"written with ({', '.join(diff[:8])}{' …' if len(diff) > 8 else ''}); run.json was edited "
                        "after the run started: restore it (a run keeps the config it started with)")


def read_run_config(root):
    """The RunConfig a run was started with (for --resume)."""
    f = Path(root) / "run.json"
    if not f.exists():
        raise FileNotFoundError(f"nothing to resume: {f} does not exist")
    run = read_run_json(f, "it cannot be resumed")
    return config_from_record(dict(run["config"]), str(f), base_of(run))


def base_of(run: dict) -> int:
    """The depth of the model a run grows further (run.json `from`; 0: none)."""
    depth = (run.get("from") or {}).get("depth") or 0
    if type(depth) is not int or depth < 0:
        raise CheckpointError(f"run.json is damaged: its `from` depth is {brief(depth)}, not a block count")
    return depth


def config_from_record(record: dict, where: str, base: int = 0):
    """The RunConfig of a run.json config record; runs written before the seed
    lived in train.seed keep it at the top level, and `grow --from` runs written
    before grow.from_as_first_stage resume with it true (as they started).
    `base`: see RunConfig.base."""
    from mlx_grow.config import RunConfig

    cfg = dict(record)
    if base and isinstance(cfg.get("grow"), dict) and "from_as_first_stage" not in cfg["grow"]:
        cfg["grow"] = {**cfg["grow"], "from_as_first_stage": True}  # started when --from gave stage-1 rules
    seed = cfg.pop("seed", None)
    cfg.pop("depth", None)
    config = RunConfig.from_dict(cfg, where=where, base=base)
    if seed is not None and config.train.seed != seed:
        config = config.with_flags(train={"seed": seed})
    return config


def normalized(record: dict, base: int = 0) -> dict:
    """A run.json config record as this version writes it (older runs kept only
    the keys their YAML gave)."""
    try:
        config = config_from_record(record, "run.json", base)
    except ValueError:
        return record
    return {**config.to_dict(), "seed": config.train.seed, "depth": config.depth}


def barrier(group):
    """Wait until every rank gets here (nothing to wait for on one rank)."""
    if group.size() > 1:
        mx.eval(mx.distributed.all_sum(mx.array(1), group=group))


def shared_checkpoint(run, group, restart: bool = False):
    """The checkpoint to resume from: rank 0 picks the newest one that passes its
    checksums, and every rank loads that one (None: start afresh, when there is
    none, or when every one is damaged and `restart` is given)."""
    ckpt = run.latest() if group.rank() == 0 else None
    damaged = group.rank() == 0 and ckpt is None and bool(run.checkpoints()) and not restart
    if group.size() == 1:
        if damaged:
            raise all_damaged(run)
        return ckpt
    mine = (-2 if damaged else int(ckpt.name.split("-")[1]) if ckpt else -1) if group.rank() == 0 else 0
    step = mx.distributed.all_sum(mx.array(mine), group=group).item()
    if step == -2:
        raise all_damaged(run)
    if step < 0:
        return None
    ckpt = run.ckpt_dir / f"step-{step:06d}"
    if group.rank() > 0:
        if not ckpt.is_dir():
            raise FileNotFoundError(
                f"rank {group.rank()}: {ckpt} is not on this host; resuming needs the run directory at the "
                "same path on every host (a shared disk, or copy it there first)")
        verify_files(ckpt, read_meta(ckpt))
    return ckpt


def all_damaged(run) -> UserError:
    names = ", ".join(c.name for c in run.checkpoints())
    return UserError(f"every checkpoint of {run.root} is damaged ({names}; see the lines above), so it cannot "
                     f"resume; nothing was changed. Restore one from a backup, or start the run over from step 0 "
                     f"with `mlx-grow grow --resume {run.root} --restart`")
