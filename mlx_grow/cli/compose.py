"""The `merge`, `compare` and `generate` commands."""

from pathlib import Path
from typing import List, Optional

import typer

from mlx_grow.base import UserError, whole
from mlx_grow.cli.common import (
    app,
    console,
    guarded,
    say,
)


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
    model: Optional[str] = typer.Option(None, "--model", help="Model or merged model directory, a grow run "
                                        "directory (its final/ model), our Hugging Face export, or a Hub id "
                                        "org/name"),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit of a Hub id"),
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
    from mlx_grow.io.hub import resolve
    from mlx_grow.io.progress import StepProgress
    from mlx_grow.io.read import read_text

    if model is None and m is None:
        raise UserError("give the model: --model DIR (or -m DIR)")
    if model is None:
        if whole(m) and not Path(m).exists():
            raise UserError(f"-m {m}: -m means --model here; for the number of tokens use --max-tokens {m} (or "
                            f"-n {m}), or give --model DIR and mlx-lm's -m {m}")
        model = m
    elif m is not None:
        if not whole(m):
            raise UserError(f"both --model {model} and -m {m} name a model: give it once")
        max_tokens = int(m)  # mlx-lm's -m is --max-tokens
    if (prompt is None) == (prompt_file is None):
        raise UserError("give exactly one of --prompt TEXT (or --prompt - for stdin) and --prompt-file FILE")
    if prompt_file is not None:
        if not prompt_file.is_file():
            raise FileNotFoundError(f"prompt file {prompt_file} does not exist")
        prompts = [line for line in read_text(prompt_file, "prompt file").splitlines() if line.strip()]
        if not prompts:
            raise UserError(f"prompt file {prompt_file} has no non-empty line")
    else:
        prompts = [sys.stdin.read().rstrip("\n") if prompt == "-" else prompt]
    path = model_dir(resolve(model, revision), name=model)
    if path != Path(model):
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
            out = batch_generate(m_, tok, prompts, **opts)
            for i, text in enumerate(out.texts):
                print(f"--- {i + 1}: {prompts[i]}\n{text}", flush=True)
            print_stats(out.stats, file=sys.stderr)
            return
        last = None
        for last in stream_generate(m_, tok, prompts[0], **opts):
            print(last.text, end="", flush=True)
        print()
        print_stats(last, file=sys.stderr)
    finally:
        if bar is not None:
            bar.close()
