"""Growth schedules: which blocks each stage adds, for how long, and what trains."""

import math
from dataclasses import dataclass

from mlx_grow.base import strict_from_dict
from mlx_grow.model import BLOCK_INITS
from mlx_grow.training.step import TrainConfig


@dataclass
class GrowConfig:
    depth: int | None = None  # default: model.num_hidden_layers
    blocks_per_stage: int = 3
    stages: list | None = None  # explicit new-block counts, e.g. [3, 3, 3, 3, 4]
    monolithic: bool = False  # all blocks at once on the same token stream
    steps_per_stage: int | list = 200
    tokens_per_stage: int | list | None = None  # overrides steps_per_stage
    plateau: dict | None = None  # {patience: evals, min_delta: nats}: end a stage early
    train_head: bool | list = True  # per stage; False = only the new blocks train
    train_substrate_first: bool = False  # substrate trainable in stage 1, frozen after
    train_all_last: bool = False  # the last stage trains every block (never a paper default)
    block_init: str = "random"  # random | zero-out | copy-top
    carry_optimizer: bool = True  # keep head/norm Adam moments across growth events
    prefix_cache: bool = False  # cache the frozen prefix's hidden states
    prefix_cache_mb: int = 512
    lora: dict | None = None  # see lora.LoRAConfig

    def __post_init__(self):
        if self.block_init not in BLOCK_INITS:
            raise ValueError(f"grow.block_init must be one of {', '.join(BLOCK_INITS)}")

    @classmethod
    def from_dict(cls, d, where="grow config"):
        return strict_from_dict(cls, dict(d or {}), where)


def per_stage(value, k: int):
    if isinstance(value, (list, tuple)):
        return value[min(k, len(value) - 1)]
    return value


def plan(g: GrowConfig, depth: int, t: TrainConfig) -> list:
    """One dict per stage: new blocks, depth after, steps and what trains."""
    if g.stages:
        sizes = [int(s) for s in g.stages]
        if sum(sizes) != depth:
            raise ValueError(
                f"stages {sizes} add up to {sum(sizes)} blocks but the depth is {depth}: "
                "make the stage list reach the depth (e.g. --stages 3,3,3,3,4 for 16)"
            )
    else:
        k = g.blocks_per_stage
        if k < 1:
            raise ValueError("blocks_per_stage must be at least 1")
        sizes = [k] * (depth // k) + ([depth % k] if depth % k else [])
    if g.monolithic:
        sizes_m = sizes
        sizes = [depth]
    stages, built = [], 0
    tokens_per_step = t.batch_size * t.seq_len
    for k, n in enumerate(sizes if not g.monolithic else sizes_m):
        tokens = per_stage(g.tokens_per_stage, k) if g.tokens_per_stage is not None else None
        steps = math.ceil(tokens / tokens_per_step) if tokens else int(per_stage(g.steps_per_stage, k))
        built += n
        stages.append({"index": k, "new": n, "depth": built, "steps": steps,
                       "train_head": bool(per_stage(g.train_head, k)),
                       "train_substrate": g.train_substrate_first and k == 0,
                       "train_all": g.train_all_last and k == len(sizes) - 1})
    if g.monolithic:  # one stage: every block from scratch, the stage streams in order
        return [{"index": 0, "new": depth, "depth": depth, "steps": sum(s["steps"] for s in stages),
                 "train_head": True, "train_substrate": False, "train_all": True,
                 "segments": [s["steps"] for s in stages]}]
    return stages
