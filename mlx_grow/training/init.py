"""How a run's weights start: the seeds every random choice of a run derives
from, the GPT-style init, a fresh model, and the blocks a growth stage adds."""

import math

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map

from mlx_grow.base import UserError, brief
from mlx_grow.config import BLOCK_INITS
from mlx_grow.model import Block, Model
from mlx_grow.substrate.tables import build_table


# Every random choice of a run derives from train.seed through one of these.
def init_seed(seed: int) -> int:
    """Initial weights of the first stage's blocks and head."""
    return seed


def block_seed(seed: int, stage: int) -> int:
    """Weights of the blocks added at the start of stage `stage` (0-based)."""
    return seed * 1000 + stage


def adapter_key(seed: int, stage: int):
    """LoRA A matrices added at the start of a stage."""
    return mx.random.key(seed * 7919 + stage)


def restart_key(seed: int, global_step: int):
    """LoRA A matrices of a restart inside a stage."""
    return mx.random.key(seed * 31 + global_step)


def init_module(module: nn.Module, key, n_layers: int, std: float = 0.02, skip=("substrate.",)):
    """GPT-style init, deterministic from `key`: normal(0, std) weights, zero
    biases, unit LayerNorm gains; residual output projections get
    std / sqrt(2 n_layers)."""
    updates = []
    for name, p in tree_flatten(module.parameters()):
        if name.startswith(skip):
            continue
        key, sub = mx.random.split(key)
        if name.endswith(".bias"):
            updates.append((name, mx.zeros_like(p)))
        elif "layernorm" in name or name.startswith("norm."):
            updates.append((name, mx.ones_like(p)))
        else:
            s = std / math.sqrt(2 * max(1, n_layers)) if name.endswith(("o_proj.weight", "c_proj.weight")) else std
            updates.append((name, (s * mx.random.normal(p.shape, key=sub)).astype(p.dtype)))
    module.load_weights(updates, strict=False)
    mx.eval(module.parameters())


def init_weights(model: Model, seed: int):
    init_module(model, mx.random.key(seed), n_layers=len(model.layers))


def add_blocks(model: Model, n: int, init: str = "random", seed: int = 0):
    """Append `n` blocks to `model`. init: random | zero-out (the new block starts
    as the identity: attention and MLP output projections zeroed) | copy-top."""
    if init not in BLOCK_INITS:
        raise UserError(f"unknown block init {brief(init)}: use {', '.join(BLOCK_INITS)}")
    if init == "copy-top" and not model.layers:
        raise UserError("copy-top needs an existing block to copy")
    top = model.layers[-1] if model.layers else None
    depth = len(model.layers) + n  # the residual init scales with the depth after growing
    key = mx.random.key(seed)
    for _ in range(n):
        key, sub = mx.random.split(key)
        block = Block(model.args)
        if init == "copy-top":
            block.update(tree_map(mx.array, top.parameters()))
        else:
            init_module(block, sub, n_layers=depth)
            if init == "zero-out":
                for lin in (block.self_attn.o_proj, block.mlp.c_proj):
                    lin.weight = mx.zeros_like(lin.weight)
                    lin.bias = mx.zeros_like(lin.bias)
        model.layers.append(block)
    mx.eval([b.parameters() for b in model.layers[-n:]])


def substrate_table(args, tokenizer):
    """The substrate table a fresh model starts from (its recipe, or substrate.path)."""
    strings = tokenizer.token_strings() if args.substrate.kind == "glyph" and not args.substrate.path else None
    return build_table(args.substrate, args.vocab_size, args.hidden_size, strings)


def build_model(args, tokenizer, first_blocks: int, seed: int, table=None) -> Model:
    """A fresh model with the first stage's blocks; the substrate from its recipe
    (or `table`, built already while the run's inputs were opened)."""
    a = type(args).from_dict({**args.to_dict(), "num_hidden_layers": first_blocks})
    if table is None:
        table = substrate_table(a, tokenizer)
    model = Model(a, substrate_table=table)
    init_weights(model, init_seed(seed))
    return model
