"""Decoder-only Transformer on a frozen input substrate.

Pre-norm blocks with biased q/k/v/o projections, rotary positions and a 4x GELU
MLP with biases; a final norm and an untied LM head without bias. The norm is
LayerNorm with bias by default, or RMSNorm (`norm: rmsnorm`): the papers'
parameter counts do not decide between them. Module names follow mlx-lm's
Starcoder2 port, so export (LayerNorm models) is a renaming.
"""

from dataclasses import asdict, dataclass, field
from typing import Optional

import mlx.nn as nn

from mlx_grow.base import (
    UserError,
    brief,
    need_bool,
    need_int,
    need_number,
    need_str,
    opt,
    strict_from_dict,
)
from mlx_grow.mlx_lm_parts import KVCache, create_attention_mask, scaled_dot_product_attention
from mlx_grow.substrate.tables import Substrate, SubstrateArgs

NORMS = ("layernorm", "rmsnorm")


def make_norm(args) -> nn.Module:
    if args.norm == "rmsnorm":
        return nn.RMSNorm(args.hidden_size, eps=args.norm_eps)
    return nn.LayerNorm(args.hidden_size, eps=args.norm_eps)


@dataclass
class ModelArgs:
    vocab_size: int = opt(65536, "Vocabulary size: rows of the substrate table and of the LM head")
    hidden_size: int = opt(1024, "Model width d_model")
    num_hidden_layers: int = opt(16, "The final number of blocks, the depth")
    num_attention_heads: int = opt(32, "Attention heads; hidden_size must divide by it")
    intermediate_size: Optional[int] = opt(None, "MLP width; null: 4 * hidden_size")
    max_position_embeddings: int = opt(1024, "Context length in tokens")
    rope_theta: float = opt(10000.0, "Rotary base frequency")
    # The papers do not say: rotate-half and exact GELU are our assumptions (docs/model.md).
    rope_traditional: bool = opt(False, "Rotary style: false rotates halves, true rotates interleaved pairs")
    hidden_act: str = opt("gelu", "MLP activation: gelu (exact) | gelu_tanh")
    norm_eps: float = opt(1e-5, "Epsilon of the norms")
    # The published parameter counts do not decide between the two norms.
    norm: str = opt("layernorm", "layernorm (gain and bias) | rmsnorm (a gain only)")
    substrate: SubstrateArgs = field(default_factory=SubstrateArgs,
                                     metadata={"help": "The input substrate (see model.substrate)"})
    model_type: str = opt("mlx_grow", "Model type written to config.json")

    def __post_init__(self):
        if isinstance(self.substrate, dict):
            self.substrate = SubstrateArgs.from_dict(self.substrate, where="model.substrate")
        elif not isinstance(self.substrate, SubstrateArgs):
            raise UserError(f"model.substrate must be a mapping (kind:, bits:, ...), got {brief(self.substrate)}")
        # Types first, each named (a config value "32" is a string, not a width).
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings"):
            need_int(f"model.{key}", getattr(self, key), 1)
        need_int("model.intermediate_size", self.intermediate_size, 1, optional=True)
        need_number("model.rope_theta", self.rope_theta, 0, open_lo=True)
        need_number("model.norm_eps", self.norm_eps, 0, open_lo=True)
        need_bool("model.rope_traditional", self.rope_traditional)
        need_str("model.model_type", self.model_type)
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.hidden_size % self.num_attention_heads:
            raise UserError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.head_dim % 2:
            raise UserError(f"the head width hidden_size / num_attention_heads = {self.head_dim} must be even "
                            "(rotary positions turn pairs of dimensions)")
        if self.hidden_act not in ("gelu", "gelu_tanh"):
            raise UserError(f"hidden_act must be 'gelu' or 'gelu_tanh', got {brief(self.hidden_act)}")
        if self.norm not in NORMS:
            raise UserError(f"norm must be one of {', '.join(NORMS)}, got {brief(self.norm)}")

    @classmethod
    def from_dict(cls, params: dict, where: str = "model config"):
        return strict_from_dict(cls, params, where)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        dim, self.n_heads = args.hidden_size, args.num_attention_heads
        self.scale = args.head_dim**-0.5
        self.q_proj = nn.Linear(dim, dim, bias=True)
        self.k_proj = nn.Linear(dim, dim, bias=True)
        self.v_proj = nn.Linear(dim, dim, bias=True)
        self.o_proj = nn.Linear(dim, dim, bias=True)
        self.rope = nn.RoPE(args.head_dim, traditional=args.rope_traditional, base=args.rope_theta)

    def __call__(self, x, mask=None, cache=None):
        B, L, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        k = k.reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        v = v.reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        if cache is not None:
            q = self.rope(q, offset=cache.offset)
            k = self.rope(k, offset=cache.offset)
            k, v = cache.update_and_fetch(k, v)
        else:
            q, k = self.rope(q), self.rope(k)
        out = scaled_dot_product_attention(q, k, v, cache=cache, scale=self.scale, mask=mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.c_fc = nn.Linear(args.hidden_size, args.intermediate_size, bias=True)
        self.c_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=True)
        self.act = nn.gelu_approx if args.hidden_act == "gelu_tanh" else nn.gelu

    def __call__(self, x):
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.input_layernorm = make_norm(args)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = make_norm(args)
        self.mlp = MLP(args)

    def __call__(self, x, mask=None, cache=None):
        h = x + self.self_attn(self.input_layernorm(x), mask, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class Model(nn.Module):
    """Substrate -> blocks -> final norm -> LM head.

    `layers` is a plain list so growth can append blocks (training/init.py); the
    depth is len(layers), and a saved config.json says so (checkpoint.py).
    """

    def __init__(self, args: ModelArgs, substrate_table=None):
        super().__init__()
        self.args = args
        self.substrate = Substrate(args.substrate, args.vocab_size, args.hidden_size, substrate_table)
        self.layers = [Block(args) for _ in range(args.num_hidden_layers)]
        self.norm = make_norm(args)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def hidden(self, inputs, mask=None, cache=None, start: int = 0, end: int | None = None):
        """The hidden states after blocks [start, end): `inputs` are token ids when
        `start` is 0, else the hidden states entering block `start` (e.g. a cached
        frozen prefix). Up to the top block (`end` None) the final norm follows."""
        h = self.substrate(inputs) if start == 0 else inputs
        end = len(self.layers) if end is None else end
        if cache is None:
            cache = [None] * len(self.layers)
        if mask is None:
            mask = create_attention_mask(h, cache[start] if start < len(cache) else None)
        for i in range(start, end):
            h = self.layers[i](h, mask, cache[i])
        return self.norm(h) if end == len(self.layers) else h

    def __call__(self, inputs, mask=None, cache=None):
        return self.lm_head(self.hidden(inputs, mask, cache))

    def make_cache(self):
        return [KVCache() for _ in self.layers]
