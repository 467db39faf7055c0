"""LoRA adapters on frozen blocks (mlx-lm's LoRALinear), rank budgeting and fusing."""

import mlx.core as mx

from mlx_grow.base import UserError
from mlx_grow.config import LORA_TARGETS as TARGETS
from mlx_grow.mlx_lm_parts import LoRALinear


def _linears(block, targets):
    for name in targets:
        parent = block.self_attn if name.endswith("_proj") and name != "c_proj" else block.mlp
        yield parent, name


def lora_param_count(args, n_blocks: int, rank: int, targets) -> int:
    d, f = args.hidden_size, args.intermediate_size
    dims = {"q_proj": (d, d), "k_proj": (d, d), "v_proj": (d, d), "o_proj": (d, d),
            "c_fc": (d, f), "c_proj": (f, d)}
    return n_blocks * sum(rank * (dims[t][0] + dims[t][1]) for t in targets)


def rank_for_budget(args, n_blocks: int, targets, budget: int, base_active: int, max_rank: int = 1024) -> int:
    """Largest rank whose adapters fit in `budget` next to `base_active` params."""
    room = budget - base_active
    per_rank = lora_param_count(args, n_blocks, 1, targets)
    if per_rank == 0:
        return 0
    rank = min(max_rank, room // per_rank)
    if rank < 1:
        raise UserError(
            f"LoRA budget {budget:,} leaves no room for adapters: the stage already trains "
            f"{base_active:,} parameters; raise grow.lora.budget or adapt fewer blocks"
        )
    return int(rank)


def add_lora(blocks, rank: int, scale: float, targets, key) -> int:
    """Wrap the target linears of `blocks` with LoRA (A seeded from `key`, B zero).
    Returns the number of adapter parameters."""
    n = 0
    for block in blocks:
        for parent, name in _linears(block, targets):
            base = getattr(parent, name)
            if isinstance(base, LoRALinear):
                raise UserError(f"{name} already has an adapter; fuse it first")
            lora = LoRALinear.from_base(base, r=rank, scale=scale)
            key, sub = mx.random.split(key)
            bound = 1 / base.weight.shape[1] ** 0.5
            lora.lora_a = mx.random.uniform(-bound, bound, lora.lora_a.shape, key=sub)
            setattr(parent, name, lora)
            n += lora.lora_a.size + lora.lora_b.size
    return n


def fuse_lora(blocks) -> int:
    """Merge every adapter into its base weight; returns how many were fused."""
    n = 0
    for block in blocks:
        for parent, name in _linears(block, TARGETS):
            layer = getattr(parent, name)
            if isinstance(layer, LoRALinear):
                setattr(parent, name, layer.fuse())
                n += 1
    return n


def has_lora(model) -> bool:
    return any(isinstance(m, LoRALinear) for _, m in model.named_modules())


def unfreeze_adapters(blocks):
    for block in blocks:
        for _, m in block.named_modules():
            if isinstance(m, LoRALinear):
                m.unfreeze(keys=["lora_a", "lora_b"], recurse=False)


def lora_structure(model) -> list:
    """[(block index, target, rank, scale)] — enough to rebuild adapters on resume."""
    out = []
    for i, block in enumerate(model.layers):
        for parent, name in _linears(block, TARGETS):
            layer = getattr(parent, name)
            if isinstance(layer, LoRALinear):
                out.append([i, name, int(layer.lora_a.shape[1]), float(layer.scale)])
    return out


def rebuild_lora(model, structure):
    for i, name, rank, scale in structure:
        add_lora([model.layers[i]], rank, scale, [name], mx.random.key(0))


def is_lora(module) -> bool:
    return isinstance(module, LoRALinear)


