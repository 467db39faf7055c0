"""Input substrates: the frozen (or trainable) input layer.

A substrate is a table [V, w] plus a fixed expansion to d_model:
- binary:    the token id in `bits` bits (MSB first by default), w = bits
- gf2:       the binary id through a seeded invertible affine map over GF(2)
- random:    collision-free random `bits`-bit codes, seeded
- float:     collision-free random `code_bits`-bit code -> PCA to `bits` components -> L2, seeded
             (the code width before PCA is not published: `code_bits` is ours to choose)
- glyph:     rendered Unicode glyphs -> polar snake -> PCA -> L2 (see glyph.py), w = d_model
- trainable: an ordinary [V, d] embedding, normal(0, 0.02) init
When w < d_model the row is expanded by repeat-interleave (each entry d/w
times) or tiling; the expansion is never materialised.
"""

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_grow.base import UserError, brief, need_bool, need_int, need_str, opt
from mlx_grow.substrate.codes import (
    gf2_code,
    id_bits,
    padded_width,
    pca_l2,
    random_code,
)
from mlx_grow.substrate.files import load_table_file

KINDS = ("binary", "gf2", "random", "float", "glyph", "trainable")


@dataclass
class SubstrateArgs:
    kind: str = opt("binary", "binary | gf2 | random | float | glyph | trainable")
    bits: int = opt(16, "Code width for binary, gf2 and random; the table width (PCA components) for float")
    # The code's width before PCA is not published: ours to choose.
    code_bits: Optional[int] = opt(None, "float: width of the random code before PCA; null: bits")
    order: str = opt("msb", "Bit order of binary: msb | lsb")
    expansion: str = opt("repeat", "How a [V, w] table widens to d_model: repeat (each entry d/w times) | tile")
    seed: int = opt(0, "Seed of random, float, gf2 and trainable tables")
    trainable: bool = opt(False, "Train the table (materialised as [V, d_model])")
    path: Optional[str] = opt(None, "Load the table from a .npy, .safetensors or .pt file instead")
    font: Optional[str] = opt(None, "glyph: the font file; default Unifont")
    font_size: int = opt(32, "glyph: the font size in pixels")
    augment: str = opt("2-3", "glyph: the augmentation table, 2-3 | max")
    tokenizer: Optional[str] = opt(None, "glyph: null, or the run's tokenizer again: the table always draws the token "
                                         "strings of the config's top-level tokenizer")

    def __post_init__(self):
        for key in ("bits", "font_size"):
            need_int(f"model.substrate.{key}", getattr(self, key), 1)
        need_int("model.substrate.seed", self.seed, 0)
        need_bool("model.substrate.trainable", self.trainable)
        for key in ("path", "font", "tokenizer"):
            need_str(f"model.substrate.{key}", getattr(self, key), optional=True)
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise UserError(f"unknown substrate kind {brief(self.kind)}; use one of {', '.join(KINDS)}")
        if self.order not in ("msb", "lsb"):
            raise UserError(f"substrate order must be 'msb' or 'lsb', got {brief(self.order)}")
        if self.expansion not in ("repeat", "tile"):
            raise UserError(f"substrate expansion must be 'repeat' or 'tile', got {brief(self.expansion)}")
        if self.code_bits is not None:
            if self.kind != "float":
                raise UserError(f"substrate code_bits is the random code's width before PCA, for kind float only; "
                                f"this substrate is {brief(self.kind)} (its width is bits)")
            if isinstance(self.code_bits, bool) or not isinstance(self.code_bits, int) or self.code_bits < self.bits:
                raise UserError(f"substrate code_bits must be an integer >= bits ({self.bits}): PCA keeps bits "
                                f"components of a code_bits-wide code; got {brief(self.code_bits)}")

    @classmethod
    def from_dict(cls, params: dict, where: str = "substrate config"):
        from mlx_grow.base import strict_from_dict

        return strict_from_dict(cls, params, where)

    def recipe(self) -> dict:
        """The parameters that determine the table (for the fingerprint)."""
        d = asdict(self)
        keep = {
            "binary": ("bits", "order"),
            "gf2": ("bits", "seed"),
            "random": ("bits", "seed"),
            "float": ("bits", "seed"),
            "glyph": ("font_size", "augment"),
            "trainable": ("seed",),
        }[self.kind]
        out = {"kind": self.kind, **{k: d[k] for k in keep}}
        if self.kind == "float" and self.code_bits not in (None, self.bits):  # older tables: code_bits = bits
            out["code_bits"] = self.code_bits
        return out


def build_table(args: SubstrateArgs, vocab_size: int, d_model: int, token_strings=None) -> np.ndarray:
    """The substrate table [V, w] as float32 (numpy)."""
    if args.path:
        table = load_table_file(args.path)
    elif args.kind == "binary":
        w = padded_width(args.bits, d_model)
        table = id_bits(vocab_size, w, args.order)  # zero-padding == the id in more bits
    elif args.kind == "gf2":
        table = pad_columns(gf2_code(vocab_size, args.bits, args.seed), d_model)
    elif args.kind == "random":
        table = pad_columns(random_code(vocab_size, args.bits, args.seed), d_model)
    elif args.kind == "float":
        code = random_code(vocab_size, args.code_bits or args.bits, args.seed)
        table = pad_columns(pca_l2(code, args.bits), d_model)
    elif args.kind == "trainable":
        rng = np.random.default_rng(args.seed)
        table = (0.02 * rng.standard_normal((vocab_size, d_model))).astype(np.float32)
    else:  # glyph
        from mlx_grow.substrate.glyph import glyph_table

        if token_strings is None:
            raise UserError("the glyph substrate needs the tokenizer's token strings")
        table = glyph_table(
            token_strings, d_model, font=args.font, font_size=args.font_size, augment=args.augment
        )
    check_table(table, vocab_size, d_model)
    return table


def expand(table: np.ndarray, d_model: int, expansion: str) -> np.ndarray:
    """A [V, w] table widened to d_model as the model reads it: each entry d/w times
    (repeat) or the whole row d/w times (tile)."""
    r = d_model // table.shape[1]
    if r == 1:
        return table
    return np.repeat(table, r, axis=1) if expansion == "repeat" else np.tile(table, (1, r))


def pad_columns(table: np.ndarray, d_model: int) -> np.ndarray:
    w = padded_width(table.shape[1], d_model)
    if w == table.shape[1]:
        return table
    return np.concatenate([table, np.zeros((table.shape[0], w - table.shape[1]), table.dtype)], 1)


def check_table(table, vocab_size: int, d_model: int):
    v, w = table.shape
    if v != vocab_size:
        raise UserError(
            f"substrate table has {v} rows but the vocabulary has {vocab_size} tokens: "
            "build the substrate for this tokenizer"
        )
    if w > d_model or d_model % w:
        raise UserError(f"substrate width {w} does not divide d_model {d_model}")


def fingerprint(args: SubstrateArgs, table) -> dict:
    arr = np.ascontiguousarray(np.asarray(table, dtype=np.float32))
    return {
        **args.recipe(),
        "shape": list(arr.shape),
        "sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
    }


def describe_fingerprint(fp) -> str:
    """A fingerprint in a few words: a substrate's (or its recipe alone)
    `binary(bits=16, order=msb) [65536, 16] (sha256 1a2b3c4d5e6f…)`, a sha256 (a
    tokenizer's) `1a2b3c4d5e6f…`, or `none recorded`."""
    if isinstance(fp, dict):
        recipe = ", ".join(f"{k}={v}" for k, v in fp.items() if k not in ("kind", "shape", "sha256"))
        if "sha256" not in fp:
            return f"{fp.get('kind')}({recipe})"
        return f"{fp.get('kind')}({recipe}) {fp.get('shape')} (sha256 {str(fp.get('sha256'))[:12]}…)"
    return f"{str(fp)[:12]}…" if fp else "none recorded"


def fingerprint_diff(a, b) -> str:
    """Where two substrate fingerprints differ, in words: `kind=binary vs kind=random`."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return "one has no table"
    keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k) and k != "sha256"]
    return ", ".join(f"{k}={a.get(k)} vs {k}={b.get(k)}" for k in keys) or "the same recipe, another table"


def save_table(path, args: SubstrateArgs, table: np.ndarray):
    """Write a substrate file: the table plus recipe and fingerprint as metadata
    (atomic; the same bytes for the same table, as the metadata keeps its order)."""
    from mlx_grow.io import atomic_path
    from mlx_grow.io.tensors import write_safetensors

    table = np.ascontiguousarray(table, np.float32)
    meta = {"substrate": json.dumps(asdict(args)), "fingerprint": json.dumps(fingerprint(args, table))}
    with atomic_path(path) as tmp:
        write_safetensors(tmp, [("table", table.shape, "F32", lambda: table)], meta)


def describe_file(path) -> dict:
    """Recipe, shape and fingerprint of a substrate file or a model directory's substrate."""
    path = Path(path)
    if path.is_dir():
        meta = path / "mlx_grow.json"
        if not meta.exists():
            raise FileNotFoundError(f"{path} has no mlx_grow.json: not a mlx-grow model directory")
        from mlx_grow.io.read import read_json

        return {"substrate": read_json(meta, dict, word="corrupt").get("substrate")}
    from safetensors import safe_open

    try:
        with safe_open(str(path), "numpy") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise UserError(f"cannot read {path}: {e}; is it a substrate .safetensors file?") from e
    if "fingerprint" not in meta:
        raise UserError(f"{path} carries no substrate fingerprint; build it with `mlx-grow substrate build`")
    from mlx_grow.io.read import parse_json

    return {"recipe": parse_json(meta.get("substrate", "null"), f"the substrate record in {path}"),
            "fingerprint": parse_json(meta["fingerprint"], f"the substrate fingerprint in {path}")}


class Substrate(nn.Module):
    """Lookup of the [V, w] table and expansion to d_model. Frozen unless
    `args.trainable` (a trainable table narrower than d is materialised)."""

    def __init__(self, args: SubstrateArgs, vocab_size: int, d_model: int, table=None):
        super().__init__()
        self.kind, self.expansion, self.d_model = args.kind, args.expansion, d_model
        if table is None and args.kind != "glyph" and not args.path:
            table = build_table(args, vocab_size, d_model)
        if table is None:  # placeholder, filled by load_weights
            table = np.zeros((vocab_size, d_model), np.float32)
        table = np.asarray(table, np.float32)
        check_table(table, vocab_size, d_model)
        if args.trainable and table.shape[1] < d_model:
            table = expand(table, d_model, self.expansion)
        self.table = mx.array(table)
        if not args.trainable:
            self.freeze()

    @property
    def factor(self) -> int:
        return self.d_model // self.table.shape[1]

    def __call__(self, ids):
        x = self.table[ids]
        r = self.factor
        if r == 1:
            return x
        if self.expansion == "repeat":
            return mx.repeat(x, r, axis=-1)
        return mx.tile(x, (1,) * (x.ndim - 1) + (r,))
