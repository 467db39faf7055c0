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
    lora_phase: bool = False  # a LoRA-only phase: adapters on every block, no new block
    between: bool = False  # a LoRA phase between growth stages (grow.lora.phases), not the final one
    grown: int = -1  # 0-based growth stage of this run that this stage is or follows (block seeds)
    # 0-based config stage whose per-stage rules it follows: budget, head, plateau, data mixture. The
    # growth stage, except in a `grow --from` run, where the source counts as stage 1 (plan()).
    rule: int = -1
    segments: list = field(default_factory=list)  # monolithic: steps of each grown stage it mirrors
    lora_rank: int = 0  # adapters on the frozen blocks below (0: none)
    lora_params: int = 0

    def __post_init__(self):
        if self.grown < 0:
            self.grown = self.index
        if self.rule < 0:
            self.rule = self.grown

    @property
    def first_trainable(self) -> int:
        """Index of the lowest block whose weights train (adapters aside)."""
        if self.train_all:
            return 0
        return self.depth if self.lora_phase else self.depth - self.new

    @property
    def kind(self) -> str:
        return "lora" if self.lora_phase else "grow"

    @property
    def label(self) -> str:
        if self.between:
            return f"LoRA phase after stage {self.grown + 1}"
        return "LoRA phase" if self.lora_phase else f"stage {self.index + 1}"


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
    frozen = st.depth if st.lora_phase else st.depth - st.new
    if lcfg is None or frozen == 0 or st.train_all:
        return 0
    if not st.lora_phase and (lcfg.from_depth is None or st.depth < lcfg.from_depth):
        return 0
    if not lcfg.budget:
        return lcfg.rank
    base = stage_active(args, 0 if st.lora_phase else st.new, st.train_head)
    return rank_for_budget(args, frozen, lcfg.targets, lcfg.budget, base)


def plan(cfg: RunConfig, base: int | None = None) -> list:
    """The stages `grow` runs for `cfg`, in order, LoRA phases included.

    `base` (default `cfg.base`): the blocks of an existing model the run grows
    further (`grow --from`). They stay frozen; the stages add the other
    depth - base blocks on top (stage depths are base + the blocks added so far),
    and the first stage grows too. The source counts as stage 1 of the config's
    rules: this run's stages follow the rules of stages 2, 3, ... (per-stage
    lists, grow.train_head, grow.plateau.stages, data.stages), as v1 grows layer 2
    as a later stage; grow.from_as_first_stage gives them stage 1's rules instead.
    Stage numbers (labels, stage-NN/ folders, block seeds) and grow.lora.phases'
    after_stage count this run's stages from 1. The substrate of an existing
    model is not retrained (grow.train_substrate_first applies to fresh models only)."""
    g = cfg.grow
    depth = cfg.depth
    base = cfg.base if base is None else base
    sizes = g.sizes(depth, base)
    offset = 1 if base and not g.from_as_first_stage else 0  # --from: the source is stage 1
    stages, built = [], base
    for k, n in enumerate(sizes):
        built += n
        r = k + offset
        stages.append(Stage(index=k, new=n, depth=built, steps=steps_for(cfg, r, g.steps_per_stage, g.tokens_per_stage),
                            train_head=g.head_trains(r), rule=r,
                            train_substrate=g.train_substrate_first and k == 0 and not base,
                            train_all=g.train_all_last and k == len(sizes) - 1))
    lcfg = g.lora
    final = steps_for(cfg, 0, lcfg.final_phase_steps, lcfg.final_phase_tokens) if lcfg and (
        lcfg.final_phase_steps or lcfg.final_phase_tokens) else 0
    if g.monolithic:  # one stage: every block from scratch, walking the grown run's streams in order,
        # the final LoRA phase's tokens included (a last segment of the same length)
        segments = [s.steps for s in stages] + ([final] if final else [])
        stages = [Stage(index=0, new=depth, depth=depth, steps=sum(segments), train_all=True, segments=segments)]
    if lcfg and lcfg.phases:
        stages = interleave(cfg, stages, lcfg.phases)
    if final and not g.monolithic:
        n = len(sizes)  # the final phase follows the last growth stage (seeds, data, head as before)
        stages.append(Stage(index=len(stages), new=0, depth=depth, steps=final, lora_phase=True, grown=n,
                            rule=n + offset, train_head=g.head_trains(n + offset)))
    for st in stages:
        st.lora_rank = lora_rank(cfg, st)
        frozen = st.depth if st.lora_phase else st.depth - st.new
        st.lora_params = lora_param_count(cfg.model, frozen, st.lora_rank, lcfg.targets) if st.lora_rank else 0
    if any(s.steps < 1 for s in stages):
        raise UserError("every stage needs at least one step: raise grow.steps_per_stage or grow.tokens_per_stage")
    return stages


def interleave(cfg: RunConfig, stages: list, phases: list) -> list:
    """Insert the LoRA-only phases of `grow.lora.phases` after the growth stages
    they name (1-based). A phase trains adapters on every block built so far
    (and the head when its stage trains it), then merges them; it reads the data
    mixture of the stage it follows."""
    g = cfg.grow
    if g.monolithic:
        raise UserError("grow.lora.phases sit between growth stages, and a monolithic run has none: drop "
                        "grow.lora.phases or grow.monolithic")
    n = len(stages)
    late = [p["after_stage"] for p in phases if p["after_stage"] > n]
    if late:
        raise UserError(f"grow.lora.phases: after_stage {late[0]} names a stage the run does not have (it has "
                        f"{n} growth stages); use 1..{n}")
    out = []
    for st in stages:
        out.append(st)
        for p in phases:
            if p["after_stage"] == st.index + 1:
                steps = steps_for(cfg, 0, p.get("steps"), p.get("tokens"))
                out.append(Stage(index=0, new=0, depth=st.depth, steps=steps, lora_phase=True, between=True,
                                 grown=st.index, rule=st.rule, train_head=g.head_trains(st.rule)))
    for i, st in enumerate(out):
        st.index = i
    return out
