"""Shared pieces of import and export: file names, RoPE permutations, block shapes."""

from pathlib import Path

import numpy as np

from mlx_grow.base import UserError
from mlx_grow.convert import layouts
from mlx_grow.model import ModelArgs
from mlx_grow.substrate.files import load_table_file

EXPORT_META = "mlx_grow_export.json"


OUT_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


TARGETS = ("starcoder2", "gpt-neox")


NEOX = {"input_layernorm": "input_layernorm", "post_attention_layernorm": "post_attention_layernorm",
        "self_attn.o_proj": "attention.dense", "mlp.c_fc": "mlp.dense_h_to_4h", "mlp.c_proj": "mlp.dense_4h_to_h"}


def rope_perm(head_dim: int, to_half: bool) -> np.ndarray:
    """Row order within a head that turns interleaved-pair rotary weights into
    rotate-half ones (or back): q.k is unchanged, so outputs stay identical."""
    perm = np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])
    return perm if to_half else np.argsort(perm)


def permute_heads(w: np.ndarray, n_heads: int, perm) -> np.ndarray:
    return w.reshape(n_heads, -1, *w.shape[1:])[:, perm].reshape(w.shape)


def block_shapes(args: ModelArgs) -> dict:
    """Our tensor shapes within one block (the tests check them against Model)."""
    d, f = args.hidden_size, args.intermediate_size
    out = {}
    for m, w in (("input_layernorm", (d,)), ("post_attention_layernorm", (d,)), ("mlp.c_fc", (f, d)),
                 ("mlp.c_proj", (d, f)), *((f"self_attn.{p}_proj", (d, d)) for p in "qkvo")):
        out[f"{m}.weight"] = w
        if not (m.endswith("layernorm") and args.norm == "rmsnorm"):  # RMSNorm has a gain only
            out[f"{m}.bias"] = (w[0],)
    return out


def read_export_meta(root: Path) -> dict:
    from mlx_grow.io.read import read_json

    f = root / EXPORT_META
    if not f.is_file():
        return {}
    meta = read_json(f, dict, word="corrupt", fix="delete it to import with layout detection")
    merge = meta.get("merge")
    if merge is not None and not (isinstance(merge, dict) and isinstance(merge.get("experts"), list)):
        raise UserError(f"{f} is corrupt (its `merge` record has no list of experts); delete it to import with "
                        "layout detection")
    return meta


def read_table(path) -> tuple:
    """A table stored apart (--table, or embeddings.txt /
    normalized_embeddings_weights.pt beside the weights), with a kind hint."""
    path = Path(path)
    table = layouts.read_embeddings_txt(path) if path.suffix == ".txt" else load_table_file(path)
    return table, ("glyph" if path.name == "normalized_embeddings_weights.pt" else None)
