"""The `info`, `substrate`, `tokenizer` and `data` commands."""

from pathlib import Path
from typing import List, Optional

import typer

from mlx_grow.base import UserError
from mlx_grow.cli.common import (
    TOKENIZER_MARKER,
    app,
    console,
    data_app,
    guarded,
    say,
    substrate_app,
    tokenizer_app,
)
from mlx_grow.config import config_help
from mlx_grow.io.atomic import check_output


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

    from mlx_grow.training.info import reports

    for report in reports(target, batch, seq, stage, ranks):
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
    font: Optional[str] = typer.Option(None, help=config_help("model.substrate.font")),
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

        strings = load_tokenizer(cfg.tokenizer).token_strings()  # as grow draws it (model.substrate.tokenizer: the same)
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
    from mlx_grow.io import atomic_dir
    from mlx_grow.tokenizer import MARKER, build_bvv241, write_marker

    check_output(out, overwrite, marker=TOKENIZER_MARKER)
    tok = build_bvv241(variant)
    with atomic_dir(out, overwrite, marker=MARKER) as tmp:
        tok.save(tmp)
        write_marker(tok, tmp, source=f"bvv241-{variant.removeprefix('bvv241-')}")
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
    from mlx_grow.io.read import read_text
    from mlx_grow.tokenizer import load_tokenizer, stats

    s = stats(load_tokenizer(tokenizer), read_text(text_file, "text file"))
    for k, v in s.items():
        console.print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v:,}")

# --- data commands ---

_SOURCES_HELP = ("Files, folders, hf:NAME[:CONFIG] or builtin:NAME (kjv, shakespeare, default, ...); default "
                 "builtin:default")


@data_app.command("prepare")
@guarded
def data_prepare(
    sources: Optional[List[str]] = typer.Argument(None, help=_SOURCES_HELP),
    tokenizer: str = typer.Option("bvv241-2-3", "--tokenizer", "-t", help="Tokenizer name or folder"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Shard folder (default: the shard cache)"),
    separator: str = typer.Option("</s>", help=config_help("data.separator")),
    val_fraction: float = typer.Option(0.01, help=config_help("data.val_fraction")),
    field: Optional[str] = typer.Option(None, help=config_help("data.sources[].field")),
    template: Optional[str] = typer.Option(None, help=config_help("data.sources[].template")),
    split: Optional[str] = typer.Option(None, help=config_help("data.sources[].split")),
    tokens: Optional[int] = typer.Option(None, help=config_help("data.sources[].tokens")),
    skip_bad: bool = typer.Option(False, "--skip-bad", help=config_help("data.skip_bad_files")),
    workers: Optional[int] = typer.Option(None, "--workers", help="Processes that tokenize a source (default: one "
                                          "per core; a source under 8M characters is tokenized in one)"),
):
    """Tokenize sources into packed token shards (cached; reused when unchanged). Runs in
    parallel pieces and shows tokens, documents/s and the time left on stderr; a killed
    preparation resumes from its finished pieces."""
    from mlx_grow.data.config import check_val_fraction
    from mlx_grow.data.contamination import info, info_table
    from mlx_grow.data.stream import prepare

    check_val_fraction(val_fraction, "--val-fraction")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if field and template:
        raise UserError("give --field (one column) or --template (several), not both")
    shards = prepare(sources, tokenizer, out_dir=out, separator=separator, val_fraction=val_fraction,
                     field=field, skip_bad_files=skip_bad, workers=workers, template=template, split=split,
                     tokens=tokens, echo=say)
    rows = info(shards)
    console.print(info_table(rows))
    for r in rows:
        console.print(f"{r['source']}: {r['path']}", highlight=False)
    for r in rows:
        if r["note"]:
            say(r["note"])


@data_app.command("info")
@guarded
def data_info(
    sources: Optional[List[str]] = typer.Argument(None, help=_SOURCES_HELP + "; or prepared shard folders"),
    tokenizer: str = typer.Option("bvv241-2-3", "--tokenizer", "-t", help="Tokenizer for unprepared sources"),
    against: Optional[Path] = typer.Option(None, help="Task file (.json/.jsonl: question, choices, answer) "
                                                      "to check for contamination"),
    n: int = typer.Option(13, "-n", help="Word n-gram length for --against"),
    field: Optional[str] = typer.Option(None, help=config_help("data.sources[].field")),
):
    """Documents, characters, tokens, characters per token and <unk> share per source."""
    from mlx_grow.base import need_int
    from mlx_grow.data.contamination import contamination, info, info_table

    need_int("-n", n, 1)  # before any source is read
    rows = info(sources, tokenizer, field=field)
    console.print(info_table(rows))
    for r in rows:
        if r["note"]:
            say(r["note"])
    if against is not None:
        rep = contamination([r["path"] for r in rows], against, n=n)
        hits = [r["index"] for r in rep["per_item"] if r["question"] or r["answer"]]
        console.print(f"contamination ({n}-word n-grams): {rep['contaminated']} of {rep['items']} items of "
                      f"{against} occur in the training shards" + (f"; items {hits[:20]}" if hits else ""),
                      highlight=False)
