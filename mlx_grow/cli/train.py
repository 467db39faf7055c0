"""The `grow`, `plot` and `reproduce` commands."""

from pathlib import Path
from typing import List, Optional

import typer

from mlx_grow.base import MAX_INT, UserError, brief, whole
from mlx_grow.cli.common import (
    FAILED,
    INTERRUPTED,
    app,
    console,
    err,
    fail,
    guarded,
    say,
)
from mlx_grow.config import config_help


@app.command("grow")
@guarded
def grow_cmd(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Config (path or packaged name); default tiny"),
    depth: Optional[int] = typer.Option(None, help=config_help("model.num_hidden_layers")),
    blocks_per_stage: Optional[int] = typer.Option(None, "--blocks-per-stage",
                                                   help=config_help("grow.blocks_per_stage")),
    stages: Optional[str] = typer.Option(None, help=config_help("grow.stages", "as 3,3,3,3,4")),
    data: Optional[List[str]] = typer.Option(None, "--data", help=config_help("data.sources", "repeatable")),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory"),
    resume: Optional[Path] = typer.Option(None, help="Resume this run directory"),
    from_: Optional[Path] = typer.Option(None, "--from", help="Grow this model directory further (a finished "
                                         "run's final/, an imported model): its blocks stay frozen, the stages "
                                         "add new ones up to --depth under the config's rules for stages 2, 3, ... "
                                         "and read on where the source's run stopped reading the same data"),
    from_as_first_stage: bool = typer.Option(False, "--from-as-first-stage",
                                             help=config_help("grow.from_as_first_stage")),
    monolithic: Optional[bool] = typer.Option(None, "--monolithic/--no-monolithic",
                                              help=config_help("grow.monolithic")),
    seed: Optional[int] = typer.Option(None, help=config_help("train.seed")),
    steps_per_stage: Optional[int] = typer.Option(None, "--steps-per-stage",
                                                  help=config_help("grow.steps_per_stage")),
    tokens_per_stage: Optional[int] = typer.Option(None, "--tokens-per-stage",
                                                   help=config_help("grow.tokens_per_stage")),
    lr: Optional[float] = typer.Option(None, help=config_help("train.lr")),
    schedule: Optional[str] = typer.Option(None, "--schedule", help=config_help("train.schedule")),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=config_help("train.batch_size")),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help=config_help("train.seq_len")),
    block_init: Optional[str] = typer.Option(None, "--block-init", help=config_help("grow.block_init")),
    freeze_head: Optional[bool] = typer.Option(None, "--freeze-head/--train-head",
                                               help=config_help("grow.train_head", "--freeze-head sets it false")),
    prefix_cache: Optional[bool] = typer.Option(None, "--prefix-cache/--no-prefix-cache",
                                                help=config_help("grow.prefix_cache")),
    lora_phase: Optional[List[str]] = typer.Option(
        None, "--lora-phase", help=config_help("grow.lora.phases", "one phase of N steps after stage K as K:N; "
                                                                   "repeatable")),
    progress: bool = typer.Option(True, help="Show a progress bar"),
    restart: bool = typer.Option(False, "--restart", help="With --resume: when every checkpoint is damaged, "
                                 "start the run over from step 0 in the same folder"),
    allow_repeat: Optional[float] = typer.Option(None, "--allow-repeat", help=config_help("data.max_passes")),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (stages, tokens, passes per source, "
                                 "FLOPs, predicted memory, time when a run in --out measured its speed) and stop; "
                                 "writes nothing"),
    allow_large: bool = typer.Option(False, "--allow-large", help="Run a schedule past the plausibility bound "
                                     "(depth x stages over 10,000, e.g. --depth 100000 one block a stage; every "
                                     "stage writes a whole model). The disk-space check still applies"),
    report_to: Optional[List[str]] = typer.Option(None, "--report-to", help="Also write the train and validation "
                                                  "metrics to tensorboard (OUT/tensorboard) or wandb (repeatable; "
                                                  "needs that package); metrics.jsonl is always written"),
):
    """Grow a model layer-wise (or train it monolithically); prints the final model dir last
    (on stdout; progress, messages and the summary go to stderr).
    Flags override only what you give: flag, then the config file, then the defaults."""
    from mlx_grow.training.grow import CheckpointWriteError, Grower, TrainingDiverged
    from mlx_grow.training.plan import resolve_run
    from mlx_grow.training.runs import Run

    phases = parse_lora_phases(lora_phase)
    flags = {
        "model": {"num_hidden_layers": depth},
        "grow": {"blocks_per_stage": blocks_per_stage, "stages": parse_stages(stages), "monolithic": monolithic,
                 "steps_per_stage": steps_per_stage, "tokens_per_stage": tokens_per_stage,
                 "block_init": block_init, "train_head": None if freeze_head is None else not freeze_head,
                 "prefix_cache": prefix_cache, "from_as_first_stage": True if from_as_first_stage else None,
                 "lora": None if phases is None else {"phases": phases}},
        "train": {"lr": lr, "schedule": schedule, "batch_size": batch_size, "seq_len": seq_len, "seed": seed},
        "data": {"sources": list(data) if data else None, "max_passes": allow_repeat},
    }
    if resume is not None:
        given = [f"--{k}" for k, v in (("config", config), ("out", out)) if v is not None]
        given += [f"{section}.{key}" for section, kv in flags.items() for key, v in kv.items()
                  if v is not None and key != "lora"]
        given += ["--lora-phase"] if phases is not None else []
        given += ["--from"] if from_ is not None else []
        if given:
            raise UserError(f"--resume continues {resume} with the config it was started with; these flags would "
                            f"change it: {', '.join(given)}. Resume without them, or start a new run with --out")
        out = resume
    else:
        if restart:
            raise UserError("--restart goes with --resume RUN (it starts a damaged run over from step 0)")
        if from_as_first_stage and from_ is None:
            raise UserError("--from-as-first-stage goes with --from MODEL (it gives the first new stage the "
                            "config's stage-1 rules)")
        if from_ is not None:
            from mlx_grow.api import model_dir

            path = model_dir(from_)  # a grow run: its final/ model, as generate takes it
            if path != from_:
                say(f"using {path}")
            from_ = path
    try:
        plan = resolve_run(config, out, flags=flags, resume=resume is not None, from_dir=from_, restart=restart,
                           allow_large=allow_large, check=not dry_run, echo=say)
        if dry_run:
            from mlx_grow.training.info import dry_run as plan_of

            for line in plan_of(plan):
                console.print(line, highlight=False, soft_wrap=True)
            return
        out = plan.out
        final, summary = Grower(plan, progress, echo=say, report_to=report_to).run()
    except (TrainingDiverged, CheckpointWriteError) as e:  # NaN loss; disk full while saving
        fail(str(e), code=FAILED)
    except KeyboardInterrupt:
        if out is None or not (Path(out) / "run.json").is_file():  # stopped while the inputs were checked
            fail("interrupted before the run started (nothing to resume); run the same command again to start it",
                 INTERRUPTED)
        ckpts = Run(out).checkpoints()
        fail(f"interrupted; continue with `mlx-grow grow --resume {out}` (from {ckpts[-1].name})" if ckpts else
             f"interrupted before the first checkpoint; `mlx-grow grow --resume {out}` starts it over",
             INTERRUPTED)
    from mlx_grow.training.info import summary_table

    if summary:
        err.print(summary_table(summary))
    print(final)


def parse_lora_phases(texts):
    """`--lora-phase 1:50 --lora-phase 2:50` -> [{after_stage: 1, steps: 50}, ...]; None when not given."""
    if not texts:
        return None
    phases = []
    for text in texts:
        k, _, n = text.partition(":")
        # ASCII digits only (str.isdigit() takes '²'), and a count a run can reach
        if not (whole(k) and whole(n)) or not (1 <= int(k) <= MAX_INT and 1 <= int(n) <= MAX_INT):
            raise UserError(f"--lora-phase takes STAGE:STEPS with positive whole numbers (up to 2**53), e.g. 1:50 "
                            f"(a LoRA phase of 50 steps after stage 1); got {brief(text)}")
        phases.append({"after_stage": int(k), "steps": int(n)})
    return phases


def parse_stages(text: Optional[str]):
    """`--stages 3,3,3` -> [3, 3, 3]; None when not given."""
    from mlx_grow.base import UserError

    if text is None:
        return None
    sizes = [int(s) for s in text.split(",")] if all(whole(s) for s in text.split(",")) else []
    if not sizes or any(n < 1 for n in sizes):
        raise UserError(f"--stages must be positive block counts separated by commas, e.g. 3,3,3; got {brief(text)}")
    return sizes


@app.command()
@guarded
def plot(run_dir: Path = typer.Argument(..., help="A grow run directory")):
    """Redraw a run's loss plot (PNG)."""
    from mlx_grow.training.plot import plot_run

    console.print(str(plot_run(run_dir)))

# --- reproduce command ---


@app.command("reproduce")
@guarded
def reproduce_cmd(
    scale: str = typer.Option("tiny", help="tiny (a 2-core CPU, under 2 hours) | small | paper"),
    parts: Optional[List[str]] = typer.Option(None, "--parts", help="Parts to run, comma-separated or repeated: "
                                              "substrates, grown, one-layer, composition, depth, or all (default "
                                              "all); finished runs of other parts are reused"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the runs and results "
                                       "(default reproduce-SCALE); a killed run continues where it stopped"),
    data: Optional[List[str]] = typer.Option(None, "--data", help="Data for parts 1-3 (repeatable; default: "
                                             "tiny the built-in corpus, small and paper FineWeb-Edu + Cosmopedia "
                                             "from the Hub)"),
    expert: Optional[List[str]] = typer.Option(None, "--expert", help="The two corpora of part 4, given twice "
                                               "(default: tiny builtin:kjv and builtin:shakespeare, small and paper "
                                               "Russian and Chinese Wikipedia from the Hub)"),
    task: Optional[List[str]] = typer.Option(None, "--task", help="Part 5 tasks (repeatable; default mmlu, "
                                             "arc_easy, arc_challenge, commonsense_qa)"),
    report: Optional[Path] = typer.Option(None, help="Where to write the report (default OUT/reproduction.md); "
                                          "its plots go in a folder of the same name beside it"),
    font: Optional[str] = typer.Option(None, help="Font file for the glyph substrate (default: Unifont)"),
    substrate: Optional[List[str]] = typer.Option(None, "--substrate", help="Part 1 substrates (repeatable; "
                                                  "default all): glyph, 16-bit, 64-bit, float, trainable"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the cost estimate and the passes over each "
                                 "data source, and stop"),
    progress: bool = typer.Option(True, help="Show progress bars"),
    allow_repeat: Optional[float] = typer.Option(None, "--allow-repeat", help="Let every run read a source up to "
                                                 "N times (data.max_passes; default 4)"),
):
    """Re-run the papers' claims at small scale: substrates, grown vs monolithic, one layer at a
    time with LoRA, composition, benchmarks over depth; writes a report with tables and plots
    and prints its path last."""
    import shlex
    import sys

    from mlx_grow.reproduce import reproduce

    argv = sys.argv[1:]
    try:
        res = reproduce(scale, out, data, expert, task, report, font, dry_run, progress, say,
                        command="mlx-grow " + " ".join(map(shlex.quote, argv)) if argv[:1] == ["reproduce"] else None,
                        substrates=substrate, allow_repeat=allow_repeat, parts=parts)
    except KeyboardInterrupt:
        fail("interrupted; run the same command again to continue: the finished runs are kept, and the run that "
             "was cut off resumes from its last checkpoint (or starts over in its folder)", INTERRUPTED)
    if not dry_run:
        print(res["report"])
