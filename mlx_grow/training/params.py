"""Parameter counts by part and training FLOPs, computed from the config
(nothing is allocated)."""

from mlx.utils import tree_flatten

from mlx_grow.base import human  # noqa: F401  (counts in words; read from here by the training modules)
from mlx_grow.model import ModelArgs
from mlx_grow.substrate.codes import padded_width


def block_param_count(args: ModelArgs) -> int:
    d, f = args.hidden_size, args.intermediate_size
    attn = 4 * (d * d + d)
    mlp = d * f + f + f * d + d
    return attn + mlp + 2 * norm_param_count(args)


def norm_param_count(args: ModelArgs) -> int:
    """One norm: gain and bias (LayerNorm) or a gain only (RMSNorm)."""
    return args.hidden_size * (1 if args.norm == "rmsnorm" else 2)


def substrate_width(args: ModelArgs) -> int:
    s = args.substrate
    if s.kind in ("glyph", "trainable") or s.trainable:
        return args.hidden_size
    return padded_width(s.bits, args.hidden_size)


def count_parts(args: ModelArgs, n_layers: int | None = None) -> dict:
    """{part: count} for substrate, blocks, final norm and head."""
    n = args.num_hidden_layers if n_layers is None else n_layers
    return {
        "substrate": args.vocab_size * substrate_width(args),
        "blocks": n * block_param_count(args),
        "norm": norm_param_count(args),
        "lm_head": args.vocab_size * args.hidden_size,
    }


def totals(args: ModelArgs, n_layers: int | None = None) -> dict:
    parts = count_parts(args, n_layers)
    total = sum(parts.values())
    frozen = 0 if args.substrate.trainable else parts["substrate"]
    return {"total": total, "frozen": frozen, "trainable": total - frozen, "parts": parts,
            "per_block": block_param_count(args)}


def stage_active(args: ModelArgs, new_blocks: int, train_head: bool = True, extra: int = 0,
                 train_substrate: bool = False) -> int:
    """Active (trainable) parameters of a growth stage: the new blocks, the final
    norm and head (unless frozen), adapters, and the substrate if it trains."""
    parts = count_parts(args, new_blocks)
    n = parts["blocks"] + extra
    if train_head:
        n += parts["norm"] + parts["lm_head"]
    if train_substrate:
        n += args.vocab_size * args.hidden_size
    return n


def flops_per_token(args: ModelArgs, n_layers: int, seq_len: int) -> float:
    """Forward FLOPs per token of the blocks and head (2 per multiply-add)."""
    d = args.hidden_size
    per_block = 2 * (block_param_count(args) - 2 * norm_param_count(args)) + 4 * seq_len * d  # matmuls + attention
    return n_layers * per_block + 2 * d * args.vocab_size


def train_flops(args: ModelArgs, depth: int, stage_first: int, head: bool, tokens: int, seq_len: int) -> float:
    """FLOPs of training `tokens` tokens: forward through all `depth` blocks,
    backward (2x) through the trainable blocks (from `stage_first`) and the head."""
    fwd_blocks = flops_per_token(args, depth, seq_len) - 2 * args.hidden_size * args.vocab_size
    bwd = 2 * (flops_per_token(args, depth - stage_first, seq_len) - 2 * args.hidden_size * args.vocab_size)
    head_f = 2 * args.hidden_size * args.vocab_size
    return tokens * (fwd_blocks + head_f + bwd + (2 * head_f if head or stage_first < depth else 0))


def count_module(module, trainable_only: bool = False) -> int:
    params = module.trainable_parameters() if trainable_only else module.parameters()
    return sum(v.size for _, v in tree_flatten(params))
