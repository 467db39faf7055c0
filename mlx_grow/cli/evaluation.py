"""The `eval` command."""

from pathlib import Path
from typing import List, Optional

import typer

from mlx_grow.cli.common import (
    FAILED,
    app,
    console,
    fail,
    guarded,
    os_message,
    say,
)


@app.command("eval")
@guarded
def eval_cmd(
    model: List[str] = typer.Option(..., "--model", help="Model directory, a grow run directory (every "
                                    "stage-NN/ checkpoint and final/), our Hugging Face export, or a Hub id "
                                    "org/name; repeatable"),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit of the Hub ids among "
                                           "--model"),
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
    split: Optional[str] = typer.Option(None, "--split", help="Split of opus100 loaded with --hub: validation "
                                        "(default, as the authors' harness), test or train"),
    out: Path = typer.Option(Path("eval-report"), "--out", "-o", help="Report directory: report.json, report.md, "
                             "PNG plots (a new folder; see --overwrite)"),
    overwrite: bool = typer.Option(False, help="Replace an existing --out report folder that mlx-grow wrote"),
    progress: bool = typer.Option(True, help="Show a progress bar"),
):
    """Score models on benchmarks and held-out text; write JSON, markdown and plots."""
    from mlx_grow.eval.report import markdown, writable, write
    from mlx_grow.eval.runner import run_eval as evaluate

    writable(out, overwrite)  # before any score is computed
    report = evaluate(model, task or [], text or [], protocol=protocol, limit=limit, runs=runs, temp=temp,
                      top_k=top_k, seed=seed, batch_tokens=batch_tokens, hub=hub, progress=progress, echo=say,
                      ci_ddof=ci_ddof, prompt_start=prompt_start, revision=revision, split=split)
    console.print(markdown(report), highlight=False, soft_wrap=True)
    try:
        paths = write(report, out, overwrite)
    except OSError as e:  # the scores are computed: keep them somewhere
        import json
        import tempfile

        fd, keep = tempfile.mkstemp(prefix="mlx-grow-report-", suffix=".json")
        with open(fd, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, ensure_ascii=False)
        fail(f"cannot write the report to {out} ({os_message(e)}); the scores are saved in {keep}", FAILED)
    for p in paths:
        console.print(str(p), highlight=False)
