"""The Python API: `model, tokenizer = load(path)` for a single or merged model
directory, our Hugging Face export, or a Hub id, like `mlx_lm.load`, and the
generation functions beside it."""

from pathlib import Path

from mlx_grow.base import UserError
from mlx_grow.checkpoint import META, load_model, read_meta, read_tokenizer
from mlx_grow.generate import batch_generate, generate, stream_generate
from mlx_grow.io.read import read_json
from mlx_grow.merge.store import load_merged


def model_dir(path, name=None) -> Path:
    """The model directory behind `path`: a grow run gives its final/ model; our
    Hugging Face export is returned as it is (load imports it in memory); any other
    Hugging Face (transformers) folder is refused with the command that imports it
    (`name`: what the user gave, e.g. the Hub id behind a cache folder)."""
    from mlx_grow.convert.common import EXPORT_META

    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"model directory {p} does not exist")
    if (p / META).is_file() or (p / EXPORT_META).is_file():
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
    if isinstance(cfg, dict) and ("architectures" in cfg or cfg.get("model_type", "mlx_grow") != "mlx_grow"):
        name = name or p
        raise UserError(f"{name} is a Hugging Face (transformers) model, not a mlx-grow model directory: import it "
                        f"first with `mlx-grow convert import {name} -o {Path(str(name)).name}-mlx`")
    return p


def load(path, verify: bool = True, revision=None):
    """`model, tokenizer = load(path)` for a single or a merged model directory (a
    grow run directory loads its final/ model), a Hugging Face folder that `mlx-grow
    convert export` wrote (imported in memory), or a Hub id `org/name` holding either
    (`revision`: a branch, tag or commit; fetched into the Hugging Face cache, read
    from it offline)."""
    from mlx_grow.convert.common import EXPORT_META
    from mlx_grow.io.hub import resolve

    path = model_dir(resolve(path, revision), name=path)
    if (path / EXPORT_META).is_file() and not (path / META).is_file():
        from mlx_grow.convert.importer import load_export

        return load_export(path)
    if "experts" in read_meta(path):
        return load_merged(path, verify=verify)
    model = load_model(path, verify=verify)
    return model, read_tokenizer(path, model.args)


__all__ = ["load", "generate", "stream_generate", "batch_generate"]
