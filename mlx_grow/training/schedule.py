"""The stage plan: which blocks each stage adds, for how long, what trains, and
which LoRA adapters it puts on the frozen blocks. `grow`, `info` and the memory
planner all read the plan from `plan(cfg)`."""

import math
from dataclasses import dataclass, field

from mlx_grow.base import UserError
from mlx_grow.config import RunConfig, per_stage
from mlx_grow.training.lora import lora_param_count, rank_for_budget
from mlx_grow.training.params import stage_active


@dataclass
class Stage:
    index: int  # 0-based
    new: int  # blocks added at the start of the stage
    depth: int  # blocks after the stage
    steps: int
    train_head: bool = True
    train_substrate: bool = False
    train_all: bool = False  # every block trains (monolithic, or train_all_last)
    final_lora: bool = False  # the last LoRA phase: adapters on every block, no new block
    segments: list = field(default_factory=list)  # monolithic: steps of each grown stage it mirrors
    lora_rank: int = 0  # adapters on the frozen blocks below (0: none)
    lora_params: int = 0

    @property
    def first_trainable(self) -> int:
        """Index of the lowest block whose weights train (adapters aside)."""
        if self.train_all:
            return 0
        return self.depth if self.final_lora else self.depth - self.new

    @property
    def label(self) -> str:
        return "LoRA phase" if self.final_lora else f"stage {self.index + 1}"


def steps_for(cfg: RunConfig, k: int, steps, tokens) -> int:
    """Optimizer steps of stage `k`: from its token budget when one is given."""
    t = per_stage(tokens, k) if tokens is not None else None
    if t:
        return math.ceil(t / (cfg.train.batch_size * cfg.train.seq_len))
    return int(per_stage(steps, k))


def lora_rank(cfg: RunConfig, st: Stage) -> int:
    """The adapter rank a stage uses on its frozen blocks (0: none). With
    `lora.budget`, the largest rank whose adapters fit next to the stage's own
    trainable parameters."""
    lcfg, args = cfg.grow.lora, cfg.model
    frozen = st.depth if st.final_lora else st.depth - st.new
    if lcfg is None or frozen == 0 or st.train_all:
        return 0
    if not st.final_lora and (lcfg.from_depth is None or st.depth < lcfg.from_depth):
        return 0
    if not lcfg.budget:
        return lcfg.rank
    base = stage_active(args, 0 if st.final_lora else st.new, st.train_head)
    return rank_for_budget(args, frozen, lcfg.targets, lcfg.budget, base)


def plan(cfg: RunConfig) -> list:
    """The stages `grow` runs for `cfg`, in order, LoRA phases included."""
    g = cfg.grow
    depth = cfg.depth
    sizes = g.sizes(depth)
    stages, built = [], 0
    for k, n in enumerate(sizes):
        built += n
        stages.append(Stage(index=k, new=n, depth=built, steps=steps_for(cfg, k, g.steps_per_stage, g.tokens_per_stage),
                            train_head=g.head_trains(k),
                            train_substrate=g.train_substrate_first and k == 0,
                            train_all=g.train_all_last and k == len(sizes) - 1))
    if g.monolithic:  # one stage: every block from scratch, walking the grown run's streams in order
        stages = [Stage(index=0, new=depth, depth=depth, steps=sum(s.steps for s in stages), train_all=True,
                        segments=[s.steps for s in stages])]
    lcfg = g.lora
    if lcfg and not g.monolithic and (lcfg.final_phase_steps or lcfg.final_phase_tokens):
        steps = steps_for(cfg, 0, lcfg.final_phase_steps, lcfg.final_phase_tokens)
        stages.append(Stage(index=len(stages), new=0, depth=depth, steps=steps, final_lora=True,
                            train_head=g.head_trains(len(stages))))
    for st in stages:
        st.lora_rank = lora_rank(cfg, st)
        frozen = st.depth if st.final_lora else st.depth - st.new
        st.lora_params = lora_param_count(cfg.model, frozen, st.lora_rank, lcfg.targets) if st.lora_rank else 0
    if any(s.steps < 1 for s in stages):
        raise UserError("every stage needs at least one step: raise grow.steps_per_stage or grow.tokens_per_stage")
    return stages
