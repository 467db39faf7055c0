"""Parameter counts by part, computed from the config (nothing is allocated)."""

from mlx.utils import tree_flatten

from mlx_grow.base import human  # noqa: F401  (counts in words; read from here by the training modules)
from mlx_grow.model import ModelArgs, block_param_count, norm_param_count
from mlx_grow.substrate.codes import padded_width


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


def count_module(module, trainable_only: bool = False) -> int:
    params = module.trainable_parameters() if trainable_only else module.parameters()
    return sum(v.size for _, v in tree_flatten(params))
