"""A run, decided once. `resolve_run` turns a config (a file, a packaged name or a
RunConfig), the flags the user gave and the run folder into a frozen `RunPlan`:
the config with its flags, the tokenizer, the model it grows from (`--from`), the
stage plan, the run record and fingerprints, the checkpoint to resume from and
the memory verdict. It is the one reader of run.json and of the source model
directory, and the one place that refuses a bad combination, before anything is
written (the tokenizer cache aside). `grow`, `grow --dry-run`, `info`, `reproduce`
and the memory planner read the plan; training/loop.py runs it.
"""

from dataclasses import dataclass, field
from pathlib import Path

from mlx_grow.base import UserError
from mlx_grow.config import RunConfig, load_config
from mlx_grow.training.schedule import plan


@dataclass(frozen=True)
class RunPlan:
    cfg: RunConfig  # the flags applied; cfg.base is the depth of the model it grows from
    stages: tuple  # schedule.plan(cfg), LoRA phases included
    memory: dict  # memory.plan_config: the predicted peak of every stage
    out: Path | None = None  # the run folder
    resume: bool = False
    tok: object = field(default=None, repr=False)  # the tokenizer (None in a plan to look at)
    # The tokenizer saved models carry: a prompt starts after the separator, as their documents
    # did, in mlx-grow, transformers and mlx-lm (data encoding never uses it).
    tok_out: object = field(default=None, repr=False)
    source: dict | None = None  # the --from record (training/source.py): run.json and lineage `from`
    # The --from model as loaded and checked, for a run that starts at step 0; the loop grows it.
    source_model: object = field(default=None, repr=False, compare=False)
    checkpoint: Path | None = None  # the checkpoint to resume from (None: step 0)
    finished: tuple | None = None  # (final dir, stage summary) of a run that has already finished
    group: object = field(default=None, repr=False, compare=False)  # the data-parallel group

    @property
    def seed(self) -> int:
        return self.cfg.train.seed

    @property
    def base(self) -> int:
        return self.cfg.base

    @property
    def world(self) -> int:
        return self.group.size() if self.group is not None else 1

    @property
    def rank(self) -> int:
        return self.group.rank() if self.group is not None else 0

    @property
    def record(self) -> dict:
        """The config record run.json and every checkpoint keep."""
        return {**self.cfg.to_dict(), "seed": self.seed, "depth": self.cfg.depth}

    @property
    def fingerprints(self) -> dict:
        """What a resume must find unchanged besides the config (run.json)."""
        return {"tokenizer": self.tok.fingerprint, **({"from": self.source} if self.source else {})}


def resolve_run(config=None, out=None, *, flags: dict | None = None, resume: bool = False, from_dir=None,
                restart: bool = False, allow_large: bool = False, check: bool = True, echo=print) -> RunPlan:
    """The plan of a run. `config`: a RunConfig, a YAML path or a packaged name; None:
    the resumed run's own (run.json), else tiny. `flags`: {section: {key: value}} the
    user gave, None for a flag not given (RunConfig.with_flags). `resume`: continue
    the run in `out`; `from_dir`: the model directory to grow further; `restart`: a
    resume whose every checkpoint is damaged starts over; `allow_large`: a schedule
    past the plausibility bound. `check`: False for a plan to look at (`info`,
    `--dry-run`, reproduce's estimate): no tokenizer, no run folder, only the
    source's depth; True for a run: every check a run needs before its first write."""
    import mlx.core as mx

    from mlx_grow.training.memory import plan_config
    from mlx_grow.training.runs import base_of, config_from_record, read_run_json

    group = mx.distributed.init() if check else None
    old = source_args = None
    if resume:
        if from_dir is not None:
            raise UserError(f"--resume continues {out} from the model it was started from (run.json `from`); "
                            "resume without --from")
        f = Path(out) / "run.json"
        if not f.is_file():
            raise FileNotFoundError(f"nothing to resume: {f} does not exist")
        old = read_run_json(f, "it cannot be resumed")
        base = base_of(old)
        cfg = config_from_record(dict(old["config"]), str(f), base) if config is None else as_config(config)
    else:
        cfg = as_config(config if config is not None else "tiny")
        base = 0
        if from_dir is not None:  # the stages add the depth minus the source's blocks (RunConfig.base)
            from mlx_grow.training.source import check_depth
            from mlx_grow.training.source import source_args as read_source_args

            source_args = read_source_args(from_dir)
            base = source_args.num_hidden_layers
            check_depth(from_dir, base, (flags or {}).get("model", {}).get("num_hidden_layers") or cfg.depth)
    cfg = with_flags(cfg, flags or {}, base, config, echo)
    if out is None:
        out = Path("runs") / f"{cfg.name or 'run'}-{'mono' if cfg.grow.monolithic else 'grow'}-s{cfg.train.seed}"
    stages = tuple(plan(cfg))
    world = group.size() if group is not None else 1
    memory = plan_config(cfg, ranks=world, stages=stages)
    if not check:
        return RunPlan(cfg, stages, memory, Path(out), resume)
    return checked(RunPlan(cfg, stages, memory, Path(out), resume, group=group), old, from_dir, source_args,
                   restart, allow_large)


def as_config(config) -> RunConfig:
    """A RunConfig as given, or read from a YAML path or packaged name."""
    return config if isinstance(config, RunConfig) else load_config(config)


def with_flags(cfg: RunConfig, flags: dict, base: int, name, echo) -> RunConfig:
    """The config with the user's flags and `base`; flags that contradict the config
    are refused, naming both."""
    flags = {section: dict(kv) for section, kv in flags.items()}
    grow = flags.get("grow", {})
    listed, n = grow.get("stages") or cfg.grow.stages, grow.get("blocks_per_stage")
    if n is not None and listed:  # the list would win without a word
        where = "--stages" if grow.get("stages") is not None else f"grow.stages of {name or 'tiny'}"
        depth = flags.get("model", {}).get("num_hidden_layers") or cfg.depth
        split = [n] * ((depth - base) // n) + ([(depth - base) % n] if (depth - base) % n else [])
        raise UserError(f"--blocks-per-stage {n} and {where} {listed} both set the blocks of each stage, and the "
                        "list would win: drop --blocks-per-stage, or list the stages you want with --stages "
                        f"(e.g. --stages {','.join(map(str, split))})")
    sources = flags.get("data", {}).get("sources")
    if sources and cfg.data.stages:  # --data is the whole mixture, in every stage
        flags["data"]["stages"] = []
        echo(f"--data replaces the per-stage mixtures (data.stages) of {cfg.name or name}: every stage reads "
             + ", ".join(map(str, sources)))
    return cfg.with_flags(base=base, **flags)


def check_reachable(cfg: RunConfig):
    """Every hf: source of the run can be read: from a downloaded copy, or from the Hub
    now; else one line says what to download and where."""
    from mlx_grow.data import corpora

    d = cfg.data
    hub = [s.source for k in range(max(len(d.stages), 1)) for s in d.mixture(k) if s.source.startswith("hf:")]
    if missing := corpora.offline_sources(hub):
        raise UserError(corpora.offline_message(missing))


def checked(p: RunPlan, old, from_dir, source_args, restart: bool, allow_large: bool) -> RunPlan:
    """`p` with its tokenizer, source and checkpoint, once every check a run makes
    before its first write has passed: the Hub sources, the batch split, the
    tokenizer, the source model, the run folder (new, or a resume with the same
    config), the memory fit and, for a new run, a plausible schedule, the disk space
    and the passes over each source (estimated; counted once the first stage's data
    is prepared, training/grow.py)."""
    from dataclasses import replace

    from mlx_grow.tokenizer import check_vocab, load_tokenizer
    from mlx_grow.training import passes
    from mlx_grow.training.memory import disk_check, fit_check, plausible_check
    from mlx_grow.training.runs import Run, check_checkpoint_config, finished, shared_checkpoint
    from mlx_grow.training.source import check_source

    cfg, t = p.cfg, p.cfg.train
    check_reachable(cfg)  # first: before even the tokenizer cache is written
    if t.batch_size % (p.world * t.grad_accum):
        raise UserError(f"train.batch_size {t.batch_size} must divide by ranks x train.grad_accum = "
                        f"{p.world * t.grad_accum}")
    tok = load_tokenizer(cfg.tokenizer)
    check_vocab(tok, cfg.model.vocab_size, f"tokenizer {cfg.tokenizer}", "make them equal", exact=True)
    tok_out = tok.with_prompt_start(cfg.data.separator)
    source, model = (old or {}).get("from"), None
    if from_dir is not None:
        source, model = check_source(from_dir, cfg, tok, source_args)
    p = replace(p, tok=tok, tok_out=tok_out, source=source, source_model=model)
    run = Run(p.out, p.rank)
    run.check(p.record, p.fingerprints, p.resume, old)  # a new or empty folder, or the same run
    if p.resume and (done := finished(p.out)) is not None:
        return replace(p, finished=done)
    fit_check(cfg, p.world, p.memory)
    if not p.resume:  # a resumed run was checked when it started
        plausible_check(cfg, len(p.stages), allow_large)
        disk_check(cfg, p.stages, p.out, len(p.tok_out.backend.to_str()))
        # before preparing: what is known without it (a small local source is prepared in seconds and
        # counted after the preparation has said what is wrong with it, if anything)
        passes.check(cfg, [r for r in passes.table(cfg, tok, stages=p.stages) if r.how != "counted"])
        return p
    ckpt = shared_checkpoint(run, p.group, restart)
    if ckpt is not None:  # run.json as the checkpoint's own record of the config says it was
        check_checkpoint_config(p.out, ckpt, p.record, cfg.base)
        return replace(p, checkpoint=ckpt)
    if source:  # a resume before the first checkpoint starts from the source, which must be as it was
        record, model = check_source(source["path"], cfg, tok)
        if record["weights_sha256"] != source["weights_sha256"]:
            raise UserError(f"cannot resume {p.out}: the model it grows from, {source['path']}, changed since the "
                            "run started (its weights differ from run.json `from`); restore it, or start a new run "
                            "with --out")
        return replace(p, source_model=model)
    return p
