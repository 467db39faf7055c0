"""The `convert inspect|import|export|verify` commands."""

from pathlib import Path
from typing import Optional

import typer

from mlx_grow.base import UserError, brief
from mlx_grow.cli.common import (
    console,
    convert_app,
    fail,
    guarded,
    say,
)
from mlx_grow.config import config_help


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
    path: str = typer.Argument(..., help="Checkpoint directory or weights file, or a Hub id org/name"),
    map_file: Optional[Path] = typer.Option(None, "--map", help="Mapping file (YAML) for a custom layout"),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit of a Hub id"),
):
    """Print every tensor's name, shape and dtype, the config, and which layout matched."""
    import json

    from mlx_grow.convert.inspect import inspect
    from mlx_grow.io.hub import resolve

    rep = inspect(resolve(path, revision, checkpoint=True), map_file)
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
    src: Optional[str] = typer.Argument(None, help="Checkpoint: config.json + *.safetensors (or .bin / .pt), "
                                        "one file, or a Hub id org/name (or --hf-path, as mlx_lm.convert)"),
    out: Path = typer.Option(..., "--out", "-o", "--mlx-path", help="Output mlx-grow model directory"),
    hf_path: Optional[str] = typer.Option(None, "--hf-path", help="The checkpoint, as mlx_lm.convert spells it"),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit of a Hub id"),
    map_file: Optional[Path] = typer.Option(None, "--map", help="Mapping file (YAML) for a custom layout"),
    expansion: Optional[str] = typer.Option(None, help=config_help("model.substrate.expansion")),
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
    from mlx_grow.io.hub import resolve

    src = one_of(src, hf_path, "the checkpoint (CKPT)", "--hf-path")
    for name, val, ok in (("--expansion", expansion, ("repeat", "tile")),
                          ("--rope", rope, ("rotate-half", "interleaved")),
                          ("--output-rope", output_rope, ("rotate-half", "interleaved"))):
        if val is not None and val not in ok:
            fail(f"{name} must be {' or '.join(ok)}, got {brief(val)}")
    rep = import_checkpoint(resolve(src, revision, checkpoint=True), out, mapping=map_file, expansion=expansion,
                            table=table, tokenizer=tokenizer, kind=substrate, rope=rope, output_rope=output_rope,
                            dtype=dtype, overwrite=overwrite)
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
    src: str = typer.Argument(..., help="The source checkpoint (a directory transformers can load, or a Hub id "
                              "org/name)"),
    model: Path = typer.Argument(..., help="Our imported model directory"),
    prompt: str = typer.Option("The quick brown fox jumps over the lazy dog.", help="Prompt to compare on"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run the source's own model code"),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit of a Hub id SRC"),
):
    """Run the source with transformers and our import on one prompt; print the largest logit difference."""
    from mlx_grow.convert.inspect import verify

    rep = verify(src, model, prompt=prompt, trust_remote_code=trust_remote_code, revision=revision)
    console.print(f"{rep['tokens']} tokens: max |logit difference| {rep['max_abs_diff']:.3g}, "
                  f"argmax agreement {rep['argmax_agree']:.0%}", highlight=False)
