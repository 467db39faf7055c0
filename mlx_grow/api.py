"""The Python API: `model, tokenizer = load(path)` for a single or merged model
directory, like `mlx_lm.load`, and the generation functions beside it."""

from pathlib import Path

from mlx_grow.base import UserError
from mlx_grow.checkpoint import META, load_model, read_meta, read_tokenizer
from mlx_grow.generate import batch_generate, generate, stream_generate
from mlx_grow.io.read import read_json
from mlx_grow.merge.store import load_merged


def model_dir(path) -> Path:
    """The model directory behind `path`: a grow run gives its final/ model; a
    Hugging Face (transformers) folder is refused with the command that imports it."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"model directory {p} does not exist")
    if (p / META).is_file():
        return p
    if (p / "run.json").is_file():
        if (p / "final" / META).is_file():
            return p / "final"
        stages = sorted(d for d in p.glob("stage-[0-9]*") if (d / META).is_file())
        raise UserError(f"{p} is a grow run without a final/ model yet: "
                        + (f"use a stage model such as {stages[-1]}, or " if stages else "")
                        + f"finish it with `mlx-grow grow --resume {p}`")
    cfg = {}
    try:
        cfg = read_json(p / "config.json", None) if (p / "config.json").is_file() else {}
    except (OSError, UserError):  # the model loader says what is wrong with it
        pass
    if (p / "mlx_grow_export.json").is_file() or (isinstance(cfg, dict) and (
            "architectures" in cfg or cfg.get("model_type", "mlx_grow") != "mlx_grow")):
        raise UserError(f"{p} is a Hugging Face (transformers) model, not a mlx-grow model directory: import it "
                        f"first with `mlx-grow convert import {p} -o {p.name}-mlx`")
    return p


def load(path, verify: bool = True):
    """`model, tokenizer = load(path)` for a single or a merged model directory
    (a grow run directory loads its final/ model)."""
    path = model_dir(path)
    if "experts" in read_meta(path):
        return load_merged(path, verify=verify)
    model = load_model(path, verify=verify)
    return model, read_tokenizer(path, model.args)


__all__ = ["load", "generate", "stream_generate", "batch_generate"]
