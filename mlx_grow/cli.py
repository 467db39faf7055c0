"""The `mlx-grow` command line: a thin Typer layer over the library."""

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

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

console = Console()
err = Console(stderr=True)


def fail(msg: str, code: int = 2):
    err.print(f"[bold red]error:[/] {msg}", highlight=False)
    raise typer.Exit(code)


def guarded(fn):
    """Turn the library's expected errors into one clear message and exit code 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
            fail(str(e).strip("'\""))

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
):
    """Build a config's substrate table and write it with its fingerprint."""
    from mlx_grow.config import load_config
    from mlx_grow.substrate.tables import build_table, fingerprint, save_table

    cfg = load_config(config)
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
):
    """Build a bvv241 tokenizer from the shipped n-gram files; write a HF tokenizer dir."""
    from mlx_grow.tokenizer import build_bvv241

    tok = build_bvv241(variant)
    tok.save(out)
    console.print(f"wrote {out} ({tok.vocab_size:,} ids)")


@tokenizer_app.command("train")
@guarded
def tokenizer_train(
    corpus: List[Path] = typer.Argument(..., help="Text files"),
    vocab_size: int = typer.Option(..., "--vocab-size"),
    out: Path = typer.Option(..., "--out", "-o"),
):
    """Train a SentencePiece BPE tokenizer and save it as a HF tokenizer dir."""
    from mlx_grow.tokenizer import train_sentencepiece

    tok = train_sentencepiece([str(p) for p in corpus], vocab_size, out)
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
    config: str = typer.Option("tiny", "--config", "-c", help="Config (path or packaged name)"),
    depth: Optional[int] = typer.Option(None, help="Final number of blocks"),
    blocks_per_stage: Optional[int] = typer.Option(None, "--blocks-per-stage", help="New blocks per stage"),
    stages: Optional[str] = typer.Option(None, help="Explicit stage sizes, e.g. 3,3,3,3,4"),
    data: Optional[List[str]] = typer.Option(None, "--data", help="Data source (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory"),
    resume: Optional[Path] = typer.Option(None, help="Resume this run directory"),
    monolithic: bool = typer.Option(False, help="Train all blocks at once (baseline)"),
    seed: int = typer.Option(0, help="Seed for init and data order"),
    steps_per_stage: Optional[int] = typer.Option(None, "--steps-per-stage"),
    tokens_per_stage: Optional[int] = typer.Option(None, "--tokens-per-stage"),
    lr: Optional[float] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len"),
    block_init: Optional[str] = typer.Option(None, "--block-init", help="random | zero-out | copy-top"),
    freeze_head: bool = typer.Option(False, "--freeze-head", help="Train only the new blocks"),
    prefix_cache: bool = typer.Option(False, "--prefix-cache", help="Cache the frozen prefix's hidden states"),
    progress: bool = typer.Option(True, help="Show a progress bar"),
):
    """Grow a model layer-wise (or train it monolithically); prints the final model dir last."""
    from mlx_grow.config import load_config
    from mlx_grow.training.grow import TrainingDiverged, grow
    from mlx_grow.training.runs import read_run_config

    if resume is not None:
        cfg = read_run_config(resume)
        out = resume
    else:
        cfg = load_config(config)
        g, t = cfg.grow, cfg.train
        if depth is not None:
            g["depth"] = depth
            cfg.model.num_hidden_layers = depth
        for key, val in (("blocks_per_stage", blocks_per_stage), ("steps_per_stage", steps_per_stage),
                         ("tokens_per_stage", tokens_per_stage), ("block_init", block_init)):
            if val is not None:
                g[key] = val
        if stages:
            g["stages"] = [int(s) for s in stages.split(",")]
        if monolithic:
            g["monolithic"] = True
        if freeze_head:
            g["train_head"] = False
        if prefix_cache:
            g["prefix_cache"] = True
        for key, val in (("lr", lr), ("batch_size", batch_size), ("seq_len", seq_len)):
            if val is not None:
                t[key] = val
        t["seed"] = seed
        if data:
            cfg.data["sources"] = list(data)
        if out is None:
            out = Path("runs") / f"{cfg.name or 'run'}-{'mono' if g.get('monolithic') else 'grow'}-s{seed}"
    try:
        final, summary = grow(cfg, out, resume=resume is not None, progress=progress, echo=console.print)
    except (TrainingDiverged, OSError) as e:  # NaN loss; disk full while saving
        fail(str(e), code=1)
    from mlx_grow.training.info import summary_table

    console.print(summary_table(summary))
    print(final)


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
    tune: bool = typer.Option(False, "--tune", help="Fine-tune the adapter and/or heads, experts frozen"),
    tune_part: str = typer.Option("adapter", "--tune-part", help="adapter | heads | both"),
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
                 overwrite=overwrite, echo=console.print)
    how = [combiner] + (["router"] if router else []) + ([f"{adapter} adapter"] if adapter != "none" else [])
    console.print(f"merged {len(experts)} experts ({', '.join(how)}{', tuned' if tune else ''}) into", highlight=False)
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
    model: Path = typer.Option(..., "--model", "-m", help="Model or merged model directory"),
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
    instruct: bool = typer.Option(False, "--instruct", help="Wrap the prompt as [INST] … [/INST]"),
):
    """Generate text from a model or a merge (streamed; tokens/s at the end, on stderr)."""
    import sys

    from mlx_grow import load
    from mlx_grow.generate import batch_generate, print_stats, stream_generate

    if (prompt is None) == (prompt_file is None):
        raise ValueError("give exactly one of --prompt TEXT (or --prompt - for stdin) and --prompt-file FILE")
    if prompt_file is not None:
        if not prompt_file.is_file():
            raise FileNotFoundError(f"prompt file {prompt_file} does not exist")
        prompts = [line for line in prompt_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"prompt file {prompt_file} has no non-empty line")
    else:
        prompts = [sys.stdin.read().rstrip("\n") if prompt == "-" else prompt]
    m, tok = load(model)
    opts = dict(max_tokens=max_tokens, temp=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                repetition_penalty=repetition_penalty, seed=seed, stop=stop, instruct=instruct)
    if prompt_file is not None:
        stats = {}
        for i, text in enumerate(batch_generate(m, tok, prompts, stats=stats, **opts)):
            print(f"--- {i + 1}: {prompts[i]}\n{text}", flush=True)
        print_stats(stats, file=sys.stderr)
        return
    last = None
    for last in stream_generate(m, tok, prompts[0], **opts):
        print(last.text, end="", flush=True)
    print()
    print_stats(last, file=sys.stderr)

# --- eval commands ---


@app.command("eval")
@guarded
def eval_cmd(
    model: List[str] = typer.Option(..., "--model", help="Model directory, or a grow run directory (every "
                                    "stage-NN/ checkpoint and final/); repeatable"),
    task: Optional[List[str]] = typer.Option(None, "--task", help="mmlu | arc_easy | arc_challenge | "
                                             "commonsense_qa | squad | a .json/.jsonl task file; repeatable"),
    text: Optional[List[Path]] = typer.Option(None, "--text", help="Held-out text (.txt, or .jsonl with 'text') "
                                              "for perplexity and bits per byte; repeatable"),
    protocol: str = typer.Option("loglik", help="loglik (as lm-evaluation-harness) | paper (the papers' "
                                 "generative first-letter protocol)"),
    limit: Optional[int] = typer.Option(None, help="Score a fixed random subset of N items per task"),
    runs: int = typer.Option(10, help="Sampled runs of the paper protocol: mean ± 1.96·σ/√n (σ with ddof=1)"),
    temp: float = typer.Option(1.0, help="Sampling temperature of the paper protocol (a greedy run is added)"),
    top_k: int = typer.Option(0, "--top-k", help="Top-k of the paper protocol's sampling (0: off)"),
    seed: int = typer.Option(0, help="Seed of the paper protocol's sampling"),
    batch_tokens: int = typer.Option(8192, "--batch-tokens", help="Tokens per scoring batch (memory vs speed)"),
    hub: bool = typer.Option(False, help="Without local data, load built-in tasks through datasets.load_dataset "
                             "(needs network)"),
    out: Path = typer.Option(Path("eval-report"), "--out", "-o", help="Report directory: report.json, report.md, "
                             "PNG plots (existing report files are replaced)"),
    progress: bool = typer.Option(True, help="Show a progress bar"),
):
    """Score models on benchmarks and held-out text; write JSON, markdown and plots."""
    from mlx_grow.eval.report import markdown, write
    from mlx_grow.eval.runner import run_eval as evaluate

    report = evaluate(model, task or [], text or [], protocol=protocol, limit=limit, runs=runs, temp=temp,
                      top_k=top_k, seed=seed, batch_tokens=batch_tokens, hub=hub, progress=progress,
                      echo=lambda s: console.print(s, highlight=False))
    paths = write(report, out)
    console.print(markdown(report), highlight=False, markup=False, soft_wrap=True)
    for p in paths:
        console.print(str(p), highlight=False)


# --- convert commands ---


def print_notes(report: dict):
    for note in report.get("notes", []):
        console.print(f"note: {note}", highlight=False, markup=False)


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
        console.print(f"{name}  {shape}  {dtype}", highlight=False, markup=False)
    console.print(f"config: {json.dumps(rep['config'])}", highlight=False, markup=False)
    if rep["layout"] is None:
        from mlx_grow.convert.layouts import MAP_EXAMPLE

        console.print(f"layout: none matched — {rep['problem']}", highlight=False, markup=False)
        console.print(f"an example mapping file (--map FILE.yaml):\n{MAP_EXAMPLE}", highlight=False, markup=False)
        raise typer.Exit(1)
    extra = f", {rep['layers']} layers" if "layers" in rep else f", experts: {', '.join(rep['experts'])}"
    console.print(f"layout: {rep['layout']}{extra}", highlight=False, markup=False)
    if rep.get("unplaced"):
        console.print(f"not placed: {', '.join(rep['unplaced'])}", highlight=False, markup=False)


@convert_app.command("import")
@guarded
def convert_import(
    src: Path = typer.Argument(..., help="Checkpoint: config.json + *.safetensors (or .bin / .pt), or one file"),
    out: Path = typer.Option(..., "--out", "-o", help="Output mlx-grow model directory"),
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
    overwrite: bool = typer.Option(False, help="Replace an existing --out"),
):
    """Import a PyTorch / Hugging Face checkpoint (or merged experts) into a mlx-grow model directory."""
    from mlx_grow.convert.importer import import_checkpoint

    for name, val, ok in (("--expansion", expansion, ("repeat", "tile")),
                          ("--rope", rope, ("rotate-half", "interleaved")),
                          ("--output-rope", output_rope, ("rotate-half", "interleaved"))):
        if val is not None and val not in ok:
            fail(f"{name} must be {' or '.join(ok)}, got {val!r}")
    rep = import_checkpoint(src, out, mapping=map_file, expansion=expansion, table=table, tokenizer=tokenizer,
                            kind=substrate, rope=rope, output_rope=output_rope, dtype=dtype, overwrite=overwrite)
    s = rep["substrate"]
    what = f"{rep['experts']} experts" if rep["experts"] else f"{rep['args']['num_hidden_layers']} layers"
    console.print(f"imported {src} ({rep['layout']} layout, {what}); substrate {s['kind']} {s['shape']} "
                  f"({rep['recipe']} recipe)", highlight=False, markup=False)
    print_notes(rep)
    print(rep["out"])


@convert_app.command("export")
@guarded
def convert_export(
    model: Path = typer.Argument(..., help="mlx-grow model (or merged) directory"),
    out: Path = typer.Option(..., "--out", "-o", help="Output Hugging Face directory"),
    to: str = typer.Option("starcoder2", "--to", help="starcoder2 | gpt-neox"),
    dtype: str = typer.Option("float32", help="float32 | float16 | bfloat16"),
    overwrite: bool = typer.Option(False, help="Replace an existing --out"),
):
    """Export to a Hugging Face directory that transformers and mlx-lm load without custom code."""
    from mlx_grow.convert.export import export_model

    rep = export_model(model, out, to=to, dtype=dtype, overwrite=overwrite)
    console.print(f"exported {model} as {rep['target']} ({rep['dtype']})", highlight=False, markup=False)
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
                  f"argmax agreement {rep['argmax_agree']:.0%}", highlight=False, markup=False)


def main():
    app(prog_name="mlx-grow")


if __name__ == "__main__":
    main()
