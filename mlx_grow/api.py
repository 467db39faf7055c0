"""The Python API: `model, tokenizer = load(path)` for a single or merged model
directory, like `mlx_lm.load`, and the generation functions beside it."""

from mlx_grow.checkpoint import load_model, read_meta, read_tokenizer
from mlx_grow.generate import batch_generate, generate, stream_generate
from mlx_grow.merge.store import load_merged


def load(path, verify: bool = True):
    """`model, tokenizer = load(path)` for a single or a merged model directory."""
    if "experts" in read_meta(path):
        return load_merged(path, verify=verify)
    model = load_model(path, verify=verify)
    return model, read_tokenizer(path, model.args)


__all__ = ["load", "generate", "stream_generate", "batch_generate"]
