"""The `mlx-grow` command line: a thin Typer layer over the library."""

import errno
import logging
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console, ConsoleDimensions

from mlx_grow.base import UserError
from mlx_grow.io.atomic import check_output

TOKENIZER_MARKER = "mlx_grow_tokenizer.json"  # mlx_grow.tokenizer.MARKER, without importing tokenizers here

app = typer.Typer(
    help="Grow, compose, run and convert language models on a frozen input substrate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
tokenizer_app = typer.Typer(help="Build, train and inspect tokenizers.", no_args_is_help=True)
substrate_app = typer.Typer(help="Build and inspect input substrates.", no_args_is_help=True)
data_app = typer.Typer(help="Prepare token shards and inspect corpora.", no_args_is_help=True)
convert_app = typer.Typer(help="Convert checkpoints to and from PyTorch / Hugging Face.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(substrate_app, name="substrate")
app.add_typer(data_app, name="data")
app.add_typer(convert_app, name="convert")


class _Console(Console):
    """Rich output that is not cut at 80 columns when it goes to a file or a pipe."""

    @property
    def size(self):
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(max(size.width, 1000), size.height)


# Markup is off: paths, library messages and user text are printed as they are.
console = _Console(markup=False)  # results
err = _Console(stderr=True, soft_wrap=True, markup=False)  # messages, notes, tables about the work

# Exit codes, the same in every command: 2 bad input, 1 a failure during the work, 130 Ctrl-C.
BAD_INPUT, FAILED, INTERRUPTED = 2, 1, 130
# OS errors that mean the machine, not the input: a full disk, an I/O error, no memory.
WORK_ERRNOS = {errno.ENOSPC, errno.EIO, errno.ENOMEM, getattr(errno, "EDQUOT", -1)}
OS_HINTS = {
    errno.EACCES: "choose a location you can write to, or fix its permissions",
    errno.EPERM: "choose a location you can write to, or fix its permissions",
    errno.EROFS: "the file system is read-only: choose another location",
    errno.ENOSPC: "free some space and run again",
    errno.EISDIR: "a folder is where a file is expected: give a file",
    errno.ENOTDIR: "a part of this path is a file where a folder is expected",
}


def say(msg):
    """A message about the work (stderr, printed as it is)."""
    err.print(msg, highlight=False)


class _Warnings(logging.Handler):
    """The library's warnings (logger `mlx_grow`) as `warning: …` lines on stderr."""

    def emit(self, record):
        say(f"warning: {record.getMessage()}")


if not any(isinstance(h, _Warnings) for h in logging.getLogger("mlx_grow").handlers):
    logging.getLogger("mlx_grow").addHandler(_Warnings(logging.WARNING))


def fail(msg: str, code: int = BAD_INPUT):
    from rich.text import Text

    err.print(Text.assemble(("error:", "bold red"), " ", str(msg)), highlight=False)
    raise typer.Exit(code)


def os_message(e: OSError) -> str:
    """One line naming the path: `PATH: Permission denied; what to do`."""
    if e.errno is None or not e.filename:
        return str(e)
    where = str(e.filename) + (f" -> {e.filename2}" if e.filename2 else "")
    hint = OS_HINTS.get(e.errno)
    return f"{where}: {e.strerror or 'error'}" + (f"; {hint}" if hint else "")


def guarded(fn):
    """One line and one exit code for every expected error: UserError and a
    missing/existing path or any other OS error (2; a full disk or I/O error: 1),
    Ctrl-C (130). Anything else is a bug and keeps its traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            fail(str(e))
        except OSError as e:
            fail(os_message(e), FAILED if e.errno in WORK_ERRNOS else BAD_INPUT)
        except KeyboardInterrupt:
            fail("interrupted", INTERRUPTED)

    return wrapper


# --- core commands ---


@app.command()
@guarded
def info(
    target: str = typer.Argument("tiny", help="Config (path or packaged name) or model directory"),
    batch: Optional[int] = typer.Option(None, "--batch", help="Global batch for the memory prediction"),
    seq: Optional[int] = typer.Option(None, "--seq", help="Sequence length for the memory prediction"),
    stage: Optional[int] = typer.Option(None, "--stage", help="Predict the peak memory of this stage (1-based)"),
    ranks: Optional[int] = typer.Option(None, "--ranks", help="Data-parallel ranks sharing the batch"),
):
    """Parameter counts: total, frozen, trainable, per part; for a growth config the
    active count of every stage next to the monolithic trainable count. With --batch,
    --seq, --stage or --ranks: the predicted peak memory per rank of the stage(s) and
    of monolithic training."""
    from rich.table import Table

    from mlx_grow.training.info import describe, memory

    reports = [describe(target)]
    if any(v is not None for v in (batch, seq, stage, ranks)):
        reports.append(memory(target, batch, seq, stage, ranks or 1))
    for report in reports:
        table = Table(title=report["title"], show_lines=False)
        for col in report["columns"]:
            table.add_column(col, justify="right" if col not in ("part", "stage", "") else "left")
        for row in report["rows"]:
            table.add_row(*[str(c) for c in row])
        console.print(table)
        for line in report["notes"]:
            console.print(line, highlight=False)


@substrate_app.command("build")
@guarded
def substrate_build(
    config: str = typer.Argument(..., help="Config (path or packaged name)"),
    out: Path = typer.Option(..., "--out", "-o", help="Output .safetensors file"),
    font: Optional[str] = typer.Option(None, help="Font file for the glyph substrate (default: Unifont)"),
    overwrite: bool = typer.Option(False, help="Replace an existing substrate file that mlx-grow wrote"),
):
    """Build a config's substrate table and write it with its fingerprint."""
    from mlx_grow.config import load_config
    from mlx_grow.substrate.tables import (
        build_table,
        describe_file,
        fingerprint,
        save_table,
    )

    cfg = load_config(config)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{out} already exists; choose another --out, or pass --overwrite to replace a "
                                  "substrate file mlx-grow wrote")
        try:
            ours = out.is_file() and not out.is_symlink() and bool(describe_file(out).get("fingerprint"))
        except (UserError, OSError):
            ours = False
        if not ours:
            raise FileExistsError(f"{out} is not a substrate file mlx-grow wrote; --overwrite only replaces those: "
                                  "choose another --out")
    s = cfg.model.substrate
    if font:
        s.font = font
    strings = None
    if s.kind == "glyph":
        from mlx_grow.tokenizer import load_tokenizer

        strings = load_tokenizer(s.tokenizer or cfg.tokenizer).token_strings()
    table = build_table(s, cfg.model.vocab_size, cfg.model.hidden_size, strings)
    save_table(out, s, table)
    fp = fingerprint(s, table)
    console.print(f"wrote {out}: {fp['kind']} table {fp['shape']}, sha256 {fp['sha256'][:16]}…", highlight=False)


@substrate_app.command("show")
@guarded
def substrate_show(path: Path = typer.Argument(..., help="Substrate .safetensors file or model directory")):
    """Print a substrate's recipe, shape and fingerprint."""
    import json

    from mlx_grow.substrate.tables import describe_file

    console.print_json(json.dumps(describe_file(path)))


@tokenizer_app.command("build")
@guarded
def tokenizer_build(
    variant: str = typer.Argument(..., help="bvv241 variant: 2-3 | max"),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory"),
    overwrite: bool = typer.Option(False, help="Replace an existing tokenizer folder that mlx-grow wrote"),
):
    """Build a bvv241 tokenizer from the shipped n-gram files; write a HF tokenizer dir."""
    from mlx_grow.tokenizer import build_bvv241, save_dir

    check_output(out, overwrite, marker=TOKENIZER_MARKER)
    tok = build_bvv241(variant)
    save_dir(tok, out, overwrite, source=f"bvv241-{variant.removeprefix('bvv241-')}")
    console.print(f"wrote {out} ({tok.vocab_size:,} ids)")


@tokenizer_app.command("train")
@guarded
def tokenizer_train(
    corpus: List[Path] = typer.Argument(..., help="Text files"),
    vocab_size: int = typer.Option(..., "--vocab-size"),
    out: Path = typer.Option(..., "--out", "-o"),
    overwrite: bool = typer.Option(False, help="Replace an existing tokenizer folder that mlx-grow wrote"),
):
    """Train a SentencePiece BPE tokenizer and save it as a HF tokenizer dir."""
    from mlx_grow.io import atomic_dir
    from mlx_grow.tokenizer import MARKER, train_sentencepiece, write_marker

    if vocab_size < 1:
        raise UserError(f"--vocab-size must be a positive integer, got {vocab_size}")
    for f in corpus:
        if not f.is_file():
            raise FileNotFoundError(f"corpus file {f} does not exist (or is not a file)")
    with atomic_dir(out, overwrite, inputs=corpus, marker=MARKER) as tmp:
        tok = train_sentencepiece([str(p) for p in corpus], vocab_size, tmp)
        write_marker(tok, tmp, source="sentencepiece", corpus=[str(p) for p in corpus])
    console.print(f"wrote {out} ({tok.vocab_size:,} ids)")


@tokenizer_app.command("encode")
@guarded
def tokenizer_encode(
    tokenizer: str = typer.Argument(..., help="bvv241-2-3 | bvv241-max | a tokenizer dir or tokenizer.json"),
    text: str = typer.Argument(...),
):
    """Print the token ids of TEXT."""
    from mlx_grow.tokenizer import load_tokenizer

    console.print(" ".join(map(str, load_tokenizer(tokenizer).encode(text))))


@tokenizer_app.command("stats")
@guarded
def tokenizer_stats(
    tokenizer: str = typer.Argument(...),
    text_file: Path = typer.Argument(..., help="A UTF-8 text file"),
):
    """Characters per token and <unk> share on a text."""
    from mlx_grow.tokenizer import load_tokenizer, stats

    s = stats(load_tokenizer(tokenizer), text_file.read_text(encoding="utf-8"))
    for k, v in s.items():
        console.print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v:,}")

# --- data commands ---

_SOURCES_HELP = "Files, folders, hf:NAME or builtin:NAME (kjv, shakespeare, default, ...); default builtin:default"


@data_app.command("prepare")
@guarded
def data_prepare(
    sources: Optional[List[str]] = typer.Argument(None, help=_SOURCES_HELP),
    tokenizer: str = typer.Option("bvv241-2-3", "--tokenizer", "-t", help="Tokenizer name or folder"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Shard folder (default: the shard cache)"),
    separator: str = typer.Option("</s>", help="Token that ends every document"),
    val_fraction: float = typer.Option(0.01, help="Share of documents held out for validation"),
    field: Optional[str] = typer.Option(None, help="Text field of jsonl / parquet / dataset rows (default text)"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip files that are not UTF-8, with a warning"),
):
    """Tokenize sources into packed token shards (cached; reused when unchanged)."""
    from mlx_grow.data import stream as data
    from mlx_grow.data.contamination import info, info_table

    data.check_val_fraction(val_fraction, "--val-fraction")
    shards = data.prepare(sources, tokenizer, out_dir=out, separator=separator, val_fraction=val_fraction,
                          field=field, skip_bad_files=skip_bad)
    console.print(info_table(info(shards)))
    for s in shards:
        console.print(f"{s.meta['source']}: {s.path}", highlight=False)


@data_app.command("info")
@guarded
def data_info(
    sources: Optional[List[str]] = typer.Argument(None, help=_SOURCES_HELP + "; or prepared shard folders"),
    tokenizer: str = typer.Option("bvv241-2-3", "--tokenizer", "-t", help="Tokenizer for unprepared sources"),
    against: Optional[Path] = typer.Option(None, help="Task file (.json/.jsonl: question, choices, answer) "
                                                      "to check for contamination"),
    n: int = typer.Option(13, "-n", help="Word n-gram length for --against"),
    field: Optional[str] = typer.Option(None, help="Text field of jsonl / parquet / dataset rows (default text)"),
):
    """Documents, characters, tokens, characters per token and <unk> share per source."""
    from mlx_grow.data.contamination import contamination, info, info_table

    rows = info(sources, tokenizer, field=field)
    console.print(info_table(rows))
    if against is not None:
        rep = contamination([r["path"] for r in rows], against, n=n)
        hits = [r["index"] for r in rep["per_item"] if r["question"] or r["answer"]]
        console.print(f"contamination ({n}-word n-grams): {rep['contaminated']} of {rep['items']} items of "
                      f"{against} occur in the training shards" + (f"; items {hits[:20]}" if hits else ""),
                      highlight=False)

# --- grow commands ---


@app.command("grow")
@guarded
def grow_cmd(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Config (path or packaged name); default tiny"),
    depth: Optional[int] = typer.Option(None, help="Final number of blocks (model.num_hidden_layers)"),
    blocks_per_stage: Optional[int] = typer.Option(None, "--blocks-per-stage", help="New blocks per stage"),
    stages: Optional[str] = typer.Option(None, help="Explicit stage sizes, e.g. 3,3,3,3,4"),
    data: Optional[List[str]] = typer.Option(None, "--data", help="Data source (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory"),
    resume: Optional[Path] = typer.Option(None, help="Resume this run directory"),
    from_: Optional[Path] = typer.Option(None, "--from", help="Grow this model directory further (a finished "
                                         "run's final/, an imported model): its blocks stay frozen and the stages "
                                         "add new ones up to --depth"),
    monolithic: Optional[bool] = typer.Option(None, "--monolithic/--no-monolithic",
                                              help="Train all blocks at once (baseline)"),
    seed: Optional[int] = typer.Option(None, help="Seed for init and data order (train.seed; default 0)"),
    steps_per_stage: Optional[int] = typer.Option(None, "--steps-per-stage"),
    tokens_per_stage: Optional[int] = typer.Option(None, "--tokens-per-stage"),
    lr: Optional[float] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len"),
    block_init: Optional[str] = typer.Option(None, "--block-init", help="random | zero-out | copy-top"),
    freeze_head: Optional[bool] = typer.Option(None, "--freeze-head/--train-head",
                                               help="Head + final norm train in stage 1 only; later stages "
                                               "train only the new blocks (grow.train_head false)"),
    prefix_cache: Optional[bool] = typer.Option(None, "--prefix-cache/--no-prefix-cache",
                                                help="Cache the frozen prefix's hidden states"),
    lora_phase: Optional[List[str]] = typer.Option(
        None, "--lora-phase", help="A LoRA-only phase after growth stage K for N steps, as K:N (repeatable; "
        "grow.lora.phases): adapters on every existing block, merged at the phase end"),
    progress: bool = typer.Option(True, help="Show a progress bar"),
    restart: bool = typer.Option(False, "--restart", help="With --resume: when every checkpoint is damaged, "
                                 "start the run over from step 0 in the same folder"),
):
    """Grow a model layer-wise (or train it monolithically); prints the final model dir last
    (on stdout; progress, messages and the summary go to stderr).
    Flags override only what you give: flag, then the config file, then the defaults."""
    from mlx_grow.config import load_config
    from mlx_grow.training.grow import CheckpointWriteError, TrainingDiverged, grow
    from mlx_grow.training.runs import Run, read_run_config

    flags = {
        "model": {"num_hidden_layers": depth},
        "grow": {"blocks_per_stage": blocks_per_stage, "stages": parse_stages(stages), "monolithic": monolithic,
                 "steps_per_stage": steps_per_stage, "tokens_per_stage": tokens_per_stage,
                 "block_init": block_init, "train_head": None if freeze_head is None else not freeze_head,
                 "prefix_cache": prefix_cache},
        "train": {"lr": lr, "batch_size": batch_size, "seq_len": seq_len, "seed": seed},
        "data": {"sources": list(data) if data else None},
    }
    phases = parse_lora_phases(lora_phase)
    if resume is not None:
        given = [f"--{k}" for k, v in (("config", config), ("out", out)) if v is not None]
        given += [f"{section}.{key}" for section, kv in flags.items() for key, v in kv.items() if v is not None]
        given += ["--lora-phase"] if phases is not None else []
        given += ["--from"] if from_ is not None else []
        if given:
            raise UserError(f"--resume continues {resume} with the config it was started with; these flags would "
                            f"change it: {', '.join(given)}. Resume without them, or start a new run with --out")
        cfg, out = read_run_config(resume), resume
    else:
        if restart:
            raise UserError("--restart goes with --resume RUN (it starts a damaged run over from step 0)")
        cfg = load_config(config or "tiny")
        if phases is not None:
            flags["grow"]["lora"] = {**(cfg.to_dict()["grow"].get("lora") or {}), "phases": phases}
        if from_ is not None:  # the stages add depth minus the source's blocks (RunConfig.base)
            from mlx_grow.training.source import source_depth

            cfg.base = source_depth(from_)
        cfg.override(**flags)
        cfg.validate()
        if out is None:
            out = Path("runs") / f"{cfg.name or 'run'}-{'mono' if cfg.grow.monolithic else 'grow'}-s{cfg.train.seed}"
    try:
        final, summary = grow(cfg, out, resume=resume is not None, progress=progress, echo=say, restart=restart,
                              from_dir=from_)
    except (TrainingDiverged, CheckpointWriteError) as e:  # NaN loss; disk full while saving
        fail(str(e), code=FAILED)
    except KeyboardInterrupt:
        ckpts = Run(out).checkpoints() if Path(out).is_dir() else []
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
        if not (k.strip().isdigit() and n.strip().isdigit()) or int(k) < 1 or int(n) < 1:
            raise UserError(f"--lora-phase takes STAGE:STEPS with positive whole numbers, e.g. 1:50 (a LoRA phase "
                            f"of 50 steps after stage 1); got {text!r}")
        phases.append({"after_stage": int(k), "steps": int(n)})
    return phases


def parse_stages(text: Optional[str]):
    """`--stages 3,3,3` -> [3, 3, 3]; None when not given."""
    from mlx_grow.base import UserError

    if text is None:
        return None
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or any(n < 1 for n in sizes):
        raise UserError(f"--stages must be positive block counts separated by commas, e.g. 3,3,3; got {text!r}")
    return sizes


@app.command()
@guarded
def plot(run_dir: Path = typer.Argument(..., help="A grow run directory")):
    """Redraw a run's loss plot (PNG)."""
    from mlx_grow.training.plot import plot_run

    console.print(str(plot_run(run_dir)))

# --- merge/generate commands ---


@app.command("merge")
@guarded
def merge_cmd(
    experts: List[Path] = typer.Argument(..., help="Two or more expert model directories"),
    out: Path = typer.Option(..., "--out", "-o", help="Merged model directory"),
    combiner: str = typer.Option("mean-logits", help="mean-logits | weighted | mixture | average (weights)"),
    weights: Optional[str] = typer.Option(None, help="Expert weights, e.g. 0.7,0.3 (weighted, mixture, average)"),
    temperature: Optional[str] = typer.Option(None, help="A temperature for all experts, or one per expert"),
    router: bool = typer.Option(False, "--router", help="Weight experts per sequence by how well each "
                                "predicted it so far"),
    adapter: str = typer.Option("none", help="Fusion adapter: none | token | lowrank | gate"),
    rank: int = typer.Option(8, help="Rank of the lowrank adapter"),
    tune: bool = typer.Option(False, "--tune", help="Train the merged model further: the adapter and/or heads "
                              "(experts' blocks frozen), or everything with --tune-part all"),
    tune_part: str = typer.Option("adapter", "--tune-part", help="adapter | heads | both | all (the experts' blocks, "
                                  "norms and heads too, as the papers' *_moe models)"),
    tune_data: Optional[List[str]] = typer.Option(None, "--tune-data", help="Data source (repeatable; "
                                                  "default: the experts' own sources)"),
    tune_steps: int = typer.Option(100, "--tune-steps"),
    tune_lr: float = typer.Option(3e-3, "--tune-lr"),
    tune_batch_size: int = typer.Option(8, "--tune-batch-size"),
    tune_seq_len: Optional[int] = typer.Option(None, "--tune-seq-len"),
    seed: int = typer.Option(0, help="Seed of the tuning data order"),
    overwrite: bool = typer.Option(False, help="Replace an existing --out directory"),
):
    """Merge experts trained on the same substrate and tokenizer into one model directory."""
    from mlx_grow.merge.build import merge

    opts = None
    if tune:
        opts = dict(part=tune_part, data=tune_data, steps=tune_steps, lr=tune_lr, batch_size=tune_batch_size,
                    seq_len=tune_seq_len, seed=seed)
    path = merge(experts, out, combiner, weights, temperature, router, adapter, rank, tune=opts,
                 overwrite=overwrite, echo=say)
    how = [combiner] + (["router"] if router else []) + ([f"{adapter} adapter"] if adapter != "none" else [])
    say(f"merged {len(experts)} experts ({', '.join(how)}{', tuned' if tune else ''}) into")
    print(path)


@app.command("compare")
@guarded
def compare_cmd(
    experts: List[Path] = typer.Argument(..., help="Two or more expert model directories"),
    data: List[str] = typer.Option(..., "--data", help="Source whose validation text is scored (repeatable)"),
    merged: Optional[List[Path]] = typer.Option(None, "--merged", help="Also score this merged directory"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len"),
    batches: int = typer.Option(4, help="Validation batches per source"),
):
    """Validation loss of each expert and each training-free combiner, per source and on their union."""
    from rich.table import Table

    from mlx_grow.merge.tune import compare

    result = compare(experts, data, merged or (), seq_len=seq_len, batches=batches)
    table = Table(title="validation loss (nats/token, lower is better)")
    cols = list(next(iter(result.values())))
    table.add_column("model")
    for c in cols:
        table.add_column(c, justify="right")
    for name, row in result.items():
        table.add_row(name, *[f"{row[c]:.4f}" for c in cols])
    console.print(table)


@app.command("generate")
@guarded
def generate_cmd(
    model: Optional[Path] = typer.Option(None, "--model", help="Model or merged model directory, or a grow run "
                                         "directory (its final/ model)"),
    m: Optional[str] = typer.Option(None, "-m", help="--model; next to --model, mlx-lm's -m N (--max-tokens)"),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Prompt text; '-' reads stdin"),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", help="One prompt per line, run as a batch"),
    max_tokens: int = typer.Option(100, "--max-tokens", "-n"),
    temp: float = typer.Option(0.0, "--temp", help="Sampling temperature; 0 is greedy"),
    top_k: int = typer.Option(0, "--top-k"),
    top_p: float = typer.Option(1.0, "--top-p"),
    min_p: float = typer.Option(0.0, "--min-p"),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty"),
    seed: Optional[int] = typer.Option(None, help="Seed for sampling"),
    stop: Optional[List[str]] = typer.Option(None, "--stop", help="Stop string (repeatable); </s> always stops"),
    instruct: bool = typer.Option(False, "--instruct", help="Wrap the prompt as \\[INST] … \\[/INST]"),
    prompt_start: Optional[str] = typer.Option(None, "--prompt-start", help="none | sep: start the prompt bare, or "
                                               "after the start token (</s>); default: as the model's tokenizer "
                                               "says (a model mlx-grow trained: after its separator)"),
):
    """Generate text from a model or a merge (streamed on stdout; tokens/s at the end, on stderr).
    A prompt longer than the model's context keeps its last context-length tokens (with a warning)."""
    import sys

    from mlx_grow import load
    from mlx_grow.api import model_dir
    from mlx_grow.generate import (
        PREFILL_STEP,
        batch_generate,
        print_stats,
        stream_generate,
    )
    from mlx_grow.io.progress import StepProgress

    if model is None and m is None:
        raise UserError("give the model: --model DIR (or -m DIR)")
    if model is None:
        if m.isdigit() and not Path(m).exists():
            raise UserError(f"-m {m}: -m means --model here; for the number of tokens use --max-tokens {m} (or "
                            f"-n {m}), or give --model DIR and mlx-lm's -m {m}")
        model = Path(m)
    elif m is not None:
        if not m.isdigit():
            raise UserError(f"both --model {model} and -m {m} name a model: give it once")
        max_tokens = int(m)  # mlx-lm's -m is --max-tokens
    if (prompt is None) == (prompt_file is None):
        raise UserError("give exactly one of --prompt TEXT (or --prompt - for stdin) and --prompt-file FILE")
    if prompt_file is not None:
        if not prompt_file.is_file():
            raise FileNotFoundError(f"prompt file {prompt_file} does not exist")
        prompts = [line for line in prompt_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise UserError(f"prompt file {prompt_file} has no non-empty line")
    else:
        prompts = [sys.stdin.read().rstrip("\n") if prompt == "-" else prompt]
    path = model_dir(model)
    if path != model:
        say(f"using {path}")
    m_, tok = load(path)
    bar = None

    def progress(done, total):  # long prompts: a bar on stderr while the prompt is processed
        nonlocal bar
        if total <= 4 * PREFILL_STEP:
            return
        if bar is None:
            bar = StepProgress(total, label="processing the prompt")
        bar.update(done, "processing the prompt")
        if done >= total:
            bar.close()

    opts = dict(max_tokens=max_tokens, temp=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                repetition_penalty=repetition_penalty, seed=seed, stop=stop, instruct=instruct,
                prompt_progress_callback=progress, prompt_start=prompt_start)
    try:
        if prompt_file is not None:
            stats = {}
            for i, text in enumerate(batch_generate(m_, tok, prompts, stats=stats, **opts)):
                print(f"--- {i + 1}: {prompts[i]}\n{text}", flush=True)
            print_stats(stats, file=sys.stderr)
            return
        last = None
        for last in stream_generate(m_, tok, prompts[0], **opts):
            print(last.text, end="", flush=True)
        print()
        print_stats(last, file=sys.stderr)
    finally:
        if bar is not None:
            bar.close()

# --- eval commands ---


@app.command("eval")
@guarded
def eval_cmd(
    model: List[str] = typer.Option(..., "--model", help="Model directory, or a grow run directory (every "
                                    "stage-NN/ checkpoint and final/); repeatable"),
    task: Optional[List[str]] = typer.Option(None, "--task", help="mmlu | arc_easy | arc_challenge | "
                                             "commonsense_qa | squad | opus100 (--hub) | a .json/.jsonl task "
                                             "file; repeatable"),
    text: Optional[List[Path]] = typer.Option(None, "--text", help="Held-out text (.txt, or .jsonl with 'text') "
                                              "for perplexity and bits per byte; repeatable"),
    protocol: str = typer.Option("loglik", help="loglik (as lm-evaluation-harness) | paper (the papers' "
                                 "generative first-letter protocol)"),
    limit: Optional[int] = typer.Option(None, help="Score a fixed random subset of N items per task, the same "
                                        "for every model; translation: N per direction (the papers: 128)"),
    runs: int = typer.Option(10, help="Sampled runs of the paper protocol: mean ± 1.96·σ/√n"),
    ci_ddof: int = typer.Option(0, "--ci-ddof", help="σ of the paper protocol's interval: 0 (np.std, as the "
                                "papers' harness) or 1 (the sample standard deviation)"),
    prompt_start: Optional[str] = typer.Option(None, "--prompt-start", help="Paper protocol: none | sep (start "
                                               "prompts bare or after </s>); default: as each model's tokenizer says"),
    temp: float = typer.Option(1.0, help="Sampling temperature of the paper protocol (a greedy run is added)"),
    top_k: int = typer.Option(0, "--top-k", help="Top-k of the paper protocol's sampling (0: off)"),
    seed: int = typer.Option(0, help="Seed of the paper protocol's sampling"),
    batch_tokens: int = typer.Option(8192, "--batch-tokens", help="Tokens per scoring batch (memory vs speed)"),
    hub: bool = typer.Option(False, help="Without local data, load built-in tasks through datasets.load_dataset "
                             "(needs network; opus100 always needs it)"),
    out: Path = typer.Option(Path("eval-report"), "--out", "-o", help="Report directory: report.json, report.md, "
                             "PNG plots (existing report files are replaced)"),
    progress: bool = typer.Option(True, help="Show a progress bar"),
):
    """Score models on benchmarks and held-out text; write JSON, markdown and plots."""
    from mlx_grow.eval.report import markdown, writable, write
    from mlx_grow.eval.runner import run_eval as evaluate

    writable(out)  # before any score is computed
    report = evaluate(model, task or [], text or [], protocol=protocol, limit=limit, runs=runs, temp=temp,
                      top_k=top_k, seed=seed, batch_tokens=batch_tokens, hub=hub, progress=progress, echo=say,
                      ci_ddof=ci_ddof, prompt_start=prompt_start)
    console.print(markdown(report), highlight=False, soft_wrap=True)
    try:
        paths = write(report, out)
    except OSError as e:  # the scores are computed: keep them somewhere
        import json
        import tempfile

        fd, keep = tempfile.mkstemp(prefix="mlx-grow-report-", suffix=".json")
        with open(fd, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, ensure_ascii=False)
        fail(f"cannot write the report to {out} ({os_message(e)}); the scores are saved in {keep}", FAILED)
    for p in paths:
        console.print(str(p), highlight=False)


# --- convert commands ---


@app.command("reproduce")
@guarded
def reproduce_cmd(
    scale: str = typer.Option("tiny", help="tiny (a 2-core CPU, under an hour) | small | paper"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the runs and results "
                                       "(default reproduce-SCALE); a killed run continues where it stopped"),
    data: Optional[List[str]] = typer.Option(None, "--data", help="Data for parts 1-3 (repeatable; default "
                                             "the built-in corpus)"),
    expert: Optional[List[str]] = typer.Option(None, "--expert", help="The two corpora of part 4, given twice "
                                               "(default builtin:kjv and builtin:shakespeare)"),
    task: Optional[List[str]] = typer.Option(None, "--task", help="Part 5 tasks (repeatable; default mmlu, "
                                             "arc_easy, arc_challenge, commonsense_qa)"),
    report: Optional[Path] = typer.Option(None, help="Where to write the report (default OUT/reproduction.md); "
                                          "its plots go in a folder of the same name beside it"),
    font: Optional[str] = typer.Option(None, help="Font file for the glyph substrate (default: Unifont)"),
    substrate: Optional[List[str]] = typer.Option(None, "--substrate", help="Part 1 substrates (repeatable; "
                                                  "default all): glyph, 16-bit, 64-bit, float, trainable"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the cost estimate and stop"),
    progress: bool = typer.Option(True, help="Show progress bars"),
):
    """Re-run the papers' claims at small scale: substrates, grown vs monolithic, one layer at a
    time with LoRA, composition, benchmarks over depth; writes a report with tables and plots
    and prints its path last."""
    import shlex
    import sys

    from mlx_grow.reproduce import reproduce

    argv = sys.argv[1:]
    res = reproduce(scale, out, data, expert, task, report, font, dry_run, progress, say,
                    command="mlx-grow " + " ".join(map(shlex.quote, argv)) if argv[:1] == ["reproduce"] else None,
                    substrates=substrate)
    if not dry_run:
        print(res["report"])


def one_of(arg, alias, what: str, flag: str):
    """A positional argument that mlx-lm users may give as a flag instead."""
    if (arg is None) == (alias is None):
        raise UserError(f"give {what} once: as the argument or as {flag}")
    return arg if arg is not None else alias


def print_notes(report: dict):
    for note in report.get("notes", []):
        say(f"note: {note}")


@convert_app.command("inspect")
@guarded
def convert_inspect(
    path: Path = typer.Argument(..., help="Checkpoint directory or weights file"),
    map_file: Optional[Path] = typer.Option(None, "--map", help="Mapping file (YAML) for a custom layout"),
):
    """Print every tensor's name, shape and dtype, the config, and which layout matched."""
    import json

    from mlx_grow.convert.inspect import inspect

    rep = inspect(path, map_file)
    for name, shape, dtype in rep["tensors"]:
        console.print(f"{name}  {shape}  {dtype}", highlight=False)
    console.print(f"config: {json.dumps(rep['config'])}", highlight=False)
    if rep["layout"] is None:
        from mlx_grow.convert.layouts import MAP_EXAMPLE

        console.print(f"layout: none matched — {rep['problem']}", highlight=False)
        console.print(f"an example mapping file (--map FILE.yaml):\n{MAP_EXAMPLE}", highlight=False)
        raise typer.Exit(1)
    extra = f", {rep['layers']} layers" if "layers" in rep else f", experts: {', '.join(rep['experts'])}"
    console.print(f"layout: {rep['layout']}{extra}", highlight=False)
    if rep.get("unplaced"):
        console.print(f"not placed: {', '.join(rep['unplaced'])}", highlight=False)


@convert_app.command("import")
@guarded
def convert_import(
    src: Optional[Path] = typer.Argument(None, help="Checkpoint: config.json + *.safetensors (or .bin / .pt), or "
                                         "one file (or --hf-path, as mlx_lm.convert)"),
    out: Path = typer.Option(..., "--out", "-o", "--mlx-path", help="Output mlx-grow model directory"),
    hf_path: Optional[Path] = typer.Option(None, "--hf-path", help="The checkpoint, as mlx_lm.convert spells it"),
    map_file: Optional[Path] = typer.Option(None, "--map", help="Mapping file (YAML) for a custom layout"),
    expansion: Optional[str] = typer.Option(None, help="How a narrow [V, w] table widens to d: repeat | tile"),
    table: Optional[Path] = typer.Option(None, help="Input table file: .pt, .npy, .safetensors or embeddings.txt"),
    tokenizer: Optional[str] = typer.Option(None, help="Tokenizer (dir, tokenizer.json or bvv241 name)"),
    substrate: Optional[str] = typer.Option(None, help="Substrate kind, if not inferred: binary | random | float "
                                            "| glyph | trainable"),
    rope: Optional[str] = typer.Option(None, help="The source's rotary style: rotate-half | interleaved"),
    output_rope: Optional[str] = typer.Option(None, "--output-rope", help="Convert the rotary style (q/k rows "
                                              "are permuted; outputs unchanged): rotate-half | interleaved"),
    dtype: str = typer.Option("float32", help="float32 | float16 | bfloat16"),
    overwrite: bool = typer.Option(False, help="Replace an existing --out that mlx-grow wrote"),
):
    """Import a PyTorch / Hugging Face checkpoint (or merged experts) into a mlx-grow model directory."""
    from mlx_grow.convert.importer import import_checkpoint

    src = one_of(src, hf_path, "the checkpoint (CKPT)", "--hf-path")
    for name, val, ok in (("--expansion", expansion, ("repeat", "tile")),
                          ("--rope", rope, ("rotate-half", "interleaved")),
                          ("--output-rope", output_rope, ("rotate-half", "interleaved"))):
        if val is not None and val not in ok:
            fail(f"{name} must be {' or '.join(ok)}, got {val!r}")
    rep = import_checkpoint(src, out, mapping=map_file, expansion=expansion, table=table, tokenizer=tokenizer,
                            kind=substrate, rope=rope, output_rope=output_rope, dtype=dtype, overwrite=overwrite)
    s = rep["substrate"]
    what = f"{rep['experts']} experts" if rep["experts"] else f"{rep['args']['num_hidden_layers']} layers"
    say(f"imported {src} ({rep['layout']} layout, {what}); substrate {s['kind']} {s['shape']} "
        f"({rep['recipe']} recipe)")
    print_notes(rep)
    print(rep["out"])


@convert_app.command("export")
@guarded
def convert_export(
    model: Optional[Path] = typer.Argument(None, help="mlx-grow model (or merged) directory (or --mlx-path)"),
    out: Path = typer.Option(..., "--out", "-o", "--hf-path", help="Output Hugging Face directory"),
    mlx_path: Optional[Path] = typer.Option(None, "--mlx-path", help="The model directory, as mlx-lm spells it"),
    to: str = typer.Option("starcoder2", "--to", help="starcoder2 | gpt-neox"),
    dtype: str = typer.Option("float32", help="float32 | float16 | bfloat16"),
    overwrite: bool = typer.Option(False, help="Replace an existing --out that mlx-grow wrote"),
):
    """Export to a Hugging Face directory that transformers and mlx-lm load without custom code."""
    from mlx_grow.convert.export import export_model

    model = one_of(model, mlx_path, "the model directory (MODEL)", "--mlx-path")
    rep = export_model(model, out, to=to, dtype=dtype, overwrite=overwrite)
    say(f"exported {model} as {rep['target']} ({rep['dtype']})")
    print_notes(rep)
    print(rep["out"])


@convert_app.command("verify")
@guarded
def convert_verify(
    src: str = typer.Argument(..., help="The source checkpoint (a directory transformers can load)"),
    model: Path = typer.Argument(..., help="Our imported model directory"),
    prompt: str = typer.Option("The quick brown fox jumps over the lazy dog.", help="Prompt to compare on"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run the source's own model code"),
):
    """Run the source with transformers and our import on one prompt; print the largest logit difference."""
    from mlx_grow.convert.inspect import verify

    rep = verify(src, model, prompt=prompt, trust_remote_code=trust_remote_code)
    console.print(f"{rep['tokens']} tokens: max |logit difference| {rep['max_abs_diff']:.3g}, "
                  f"argmax agreement {rep['argmax_agree']:.0%}", highlight=False)


def main():
    app(prog_name="mlx-grow")


if __name__ == "__main__":
    main()
