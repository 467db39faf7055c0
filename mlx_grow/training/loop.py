"""The training loop: `train(plan, callbacks)` runs the stages of a resolved plan
(training/plan.py) over one explicit RunState. Each stage is entered (new blocks,
adapters, what trains, its data, a fresh compiled step), stepped, and left
(adapters merged, evaluated). What a run writes and shows (metrics.jsonl, the
progress line, checkpoints and stage models, the loss plot, other writers) are
callbacks (training/callbacks.py)."""

import math
import time
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from mlx_grow.io.faults import armed, maybe_fail
from mlx_grow.model import Model
from mlx_grow.training import lora
from mlx_grow.training.init import adapter_key, add_blocks, block_seed, build_model, restart_key
from mlx_grow.training.params import count_module, human, train_flops
from mlx_grow.training.prefix_cache import PrefixCache
from mlx_grow.training.runs import Run, load_checkpoint
from mlx_grow.training.schedule import Stage
from mlx_grow.training.stage_data import StageData, continued_reads, rebuild_reads
from mlx_grow.training.step import Stepper, check_finite, evaluate, run_schedule, split_xy


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class Progress:
    """Where a run is: what a checkpoint stores and a resume restores."""
    stage: int = 0
    step: int = 0
    global_step: int = 0
    tokens: int = 0
    flops: float = 0.0
    plateau: list = field(default_factory=lambda: [math.inf, 0])  # [best val loss, evals without gain]
    reads: dict = field(default_factory=dict)  # training batches read so far, per data mixture
    summary: list = field(default_factory=list)


@dataclass
class Inputs:
    """What a run reads besides its plan, opened before run.json is written (training/grow.py)."""
    table: object = None  # the substrate table of a fresh model
    first_data: StageData | None = None  # the first stage's batches
    val_batches: list = field(default_factory=list)  # the fixed validation batches (the first stage's mixture)


@dataclass
class RunState:
    """Everything the loop changes."""
    model: Model
    pos: Progress
    run: Run
    val_batches: list
    pcache: PrefixCache | None = None
    first_data: StageData | None = None  # the first stage's batches, opened with the inputs
    opt_state: dict | None = None  # the resumed checkpoint's optimizer state, for its stage
    data_progress: bool = True  # show the progress of preparing a stage's data
    stage: Stage | None = None  # the stage being trained
    grew: bool = False  # it added blocks
    label: str = ""
    data: StageData | None = None
    stepper: Stepper | None = None
    prev: Stepper | None = None  # the last stage's, whose moments grow.carry_optimizer keeps
    first: int = 0  # the block where the backward pass stops (0: something below trains)
    use_cache: bool = False  # the frozen prefix's output comes from the prefix cache
    segment: int = 0  # steps between LoRA restarts (the stage's steps: none)
    active: int = 0  # trainable parameters
    last_loss: float = math.nan
    steps_run: int | None = None  # set when a plateau ends the stage early


def train(plan, callbacks=(), inputs: Inputs | None = None, on_step=None, echo=print, progress: bool = True):
    """Run `plan`'s stages from its checkpoint (or step 0); return (final model
    directory, stage summary). `callbacks` get the run's events in order;
    `on_step(global_step, model)` observes each step before it runs."""
    say = echo if plan.rank == 0 else (lambda *a, **k: None)
    state = start(plan, inputs or Inputs(), say, progress)
    t, pos = plan.cfg.train, state.pos
    tokens = t.batch_size * t.seq_len
    for st in plan.stages[pos.stage:]:
        enter_stage(plan, state, st, say)
        notify(callbacks, "on_stage_start", state)
        t0, start_step = time.perf_counter(), pos.step
        while pos.step < st.steps:
            loss, gnorm = train_step(plan, state, on_step)
            key = state.data.key(pos.step)
            pos.reads[key] = pos.reads.get(key, 0) + 1
            pos.step, pos.global_step, state.last_loss = pos.step + 1, pos.global_step + 1, loss
            pos.tokens += tokens
            pos.flops += train_flops(state.model.args, len(state.model.layers), state.first, st.train_head, tokens,
                                     t.seq_len)
            if pos.step % t.log_every == 0 or pos.step == st.steps:
                dt = time.perf_counter() - t0
                notify(callbacks, "on_train_loss_report", {
                    "global_step": pos.global_step, "stage": st.index + 1, "step": pos.step, "loss": loss,
                    "lr": state.stepper.lr, "grad_norm": gnorm, "tokens": pos.tokens,
                    "tok_s": tokens * (pos.step - start_step) / max(dt, 1e-9) if start_step == 0 else None,
                    "active_params": state.active, "flops": pos.flops, "peak_mem_mb": mx.get_peak_memory() / 2**20})
            if t.eval_every and pos.step % t.eval_every == 0 and pos.step < st.steps:
                val = validate(plan, state, callbacks)
                if plateaued(plan, state, val):
                    say(f"{state.label}: validation loss plateaued at {val:.4f}; ending the stage after {pos.step} "
                        f"of {st.steps} steps")
                    state.steps_run, pos.step = pos.step, st.steps
            if pos.step % state.segment == 0 and pos.step < st.steps:  # grow.lora.restarts
                restart_lora(plan, state)
            notify(callbacks, "on_step_end", state)
        val = exit_stage(plan, state, callbacks)
        notify(callbacks, "on_stage_end", state)
        say(f"{state.label} done: validation loss {val:.4f}")
    notify(callbacks, "on_train_end", state)
    return plan.out / "final", pos.summary


def notify(callbacks, event: str, arg):
    for c in callbacks:
        if (f := getattr(c, event, None)) is not None:
            f(arg)


def start(plan, inputs: Inputs, say, progress: bool = True) -> RunState:
    """The state a run starts from: its checkpoint's, else the --from model's (read
    on where its run stopped reading), else a fresh model's."""
    cfg, run, saved, opt_state = plan.cfg, Run(plan.out, plan.rank), None, None
    if plan.checkpoint is not None:
        model, saved, opt_state = load_checkpoint(plan.checkpoint)
        run.truncate_metrics(saved["global_step"])
        say(f"resuming from {plan.checkpoint} (stage {saved['stage'] + 1}, step {saved['step']})")
    else:
        if plan.source:  # the source's blocks, all frozen; the stages add blocks on top
            model = plan.source_model
            model.set_dtype(mx.float32)  # as a fresh model; exact from bfloat16 / float16
        else:
            model = build_model(cfg.model, plan.tok, plan.stages[0].new, plan.seed, inputs.table)
        if plan.resume:  # no checkpoint yet: start over in the same folder
            run.truncate_metrics(0)
    cast(model, cfg.train.dtype)
    pos = Progress(**{k: v for k, v in (saved or {}).items() if k in Progress.__dataclass_fields__})
    if saved is not None and "reads" not in saved:
        pos.reads = rebuild_reads(cfg, plan.stages, saved)
    if saved is None and plan.source:  # read on where the source's run stopped, when it is this stream
        pos.reads, note = continued_reads(cfg, plan.stages, plan.source)
        if note:
            say(note)
    pcache = PrefixCache(cfg.grow.prefix_cache_mb) if cfg.grow.prefix_cache else None
    return RunState(model, pos, run, inputs.val_batches, pcache, inputs.first_data, opt_state,
                    progress and plan.rank == 0)


def enter_stage(plan, state: RunState, st: Stage, say):
    """Grow the model, add the stage's adapters, set what trains, open the stage's
    data and build a fresh compiled step (mx.compile does not re-trace when only
    the trainable set changes). A resumed stage takes its checkpoint's optimizer state."""
    cfg, model, pos = plan.cfg, state.model, state.pos
    resumed = state.opt_state is not None
    state.stage, state.grew, state.steps_run, state.last_loss = st, False, None, math.nan
    if not resumed:
        pos.step, pos.plateau = 0, [math.inf, 0]
        if st.new and (st.index > 0 or plan.base):  # a fresh model is built with stage 1's blocks
            add_blocks(model, st.new, cfg.grow.block_init, seed=block_seed(plan.seed, st.grown))
            maybe_fail("grow", st.index + 1)
            state.grew = True
        add_adapters(model, st, cfg, adapter_key(plan.seed, st.index))
        cast(model, cfg.train.dtype)
    carry = state.prev if cfg.grow.carry_optimizer and not resumed else None
    state.prev = None  # free the last stage's optimizer state once carried
    new_stepper(plan, state, carry)
    if resumed:
        state.stepper.load_state_dict(state.opt_state)
        state.opt_state = None
    if state.pcache is not None:
        state.pcache.invalidate()
    if st.index == 0 and state.first_data is not None:  # opened with the inputs
        state.data = state.first_data
    else:
        state.data = StageData(cfg, plan.tok, st, plan.seed, state.data_progress)
    state.active = count_module(model, trainable_only=True)
    state.label = st.label if st.lora_phase else f"{st.label}/{len(plan.stages)}"
    say(f"{state.label}: {len(model.layers)} blocks, training {human(state.active)} parameters"
        + (f" (blocks {state.first + 1}-{len(model.layers)} + head)" if state.first else ""))


def new_stepper(plan, state: RunState, carry=None):
    """The trainable set of the stage and a fresh Stepper for it."""
    cfg, st = plan.cfg, state.stage
    state.first = set_trainable(state.model, st, cfg.model.substrate.trainable)
    state.use_cache = state.pcache is not None and state.first > 0
    lcfg = cfg.grow.lora
    state.segment = st.steps
    if lcfg and lcfg.restarts and lora.has_lora(state.model):
        state.segment = math.ceil(st.steps / (lcfg.restarts + 1))
    sched = {}
    if cfg.train.schedule != "per_stage":  # the LR follows the run's planned step: no re-warm here
        sched = dict(schedule=run_schedule(cfg.train, sum(s.steps for s in plan.stages)),
                     start_step=sum(s.steps for s in plan.stages[:st.index]) + state.pos.step)
    state.stepper = Stepper(state.model, cfg.train, state.segment, plan.group, carry=carry,
                            prefix_start=state.first if state.use_cache else None, frozen_below=state.first, **sched)


def train_step(plan, state: RunState, on_step=None):
    """One optimizer step; a NaN or infinite loss stops the run."""
    pos, g = state.pos, state.pos.global_step
    maybe_fail("step", g + 1)
    x, y = split_xy(state.data.batch(pos.step, pos.reads, plan.rank, plan.world))
    if on_step is not None:
        on_step(g, state.model)
    if state.use_cache:
        x = state.pcache(state.model, np.array(x), state.first)
    loss, gnorm = state.stepper.step(x, y)
    if armed("step", g + 1) == "nan":
        loss = math.nan
    try:
        check_finite(loss, g)
    except FloatingPointError as e:
        last = state.run.checkpoints()[-1] if state.run.checkpoints() else None
        raise TrainingDiverged(
            f"{e} (stage {state.stage.index + 1}); stopped. The last good checkpoint is {last or 'none yet'}: "
            "lower train.lr and run again with --resume") from None
    return loss, gnorm


def validate(plan, state: RunState, callbacks, **extra) -> float:
    """The validation loss, reported to the callbacks."""
    val = evaluate(state.model, state.val_batches, (state.pcache, state.first) if state.use_cache else None,
                   plan.group)
    pos = state.pos
    notify(callbacks, "on_val_loss_report", {"global_step": pos.global_step, "stage": state.stage.index + 1,
                                             "val_loss": val, "tokens": pos.tokens, "flops": pos.flops, **extra})
    return val


def plateaued(plan, state: RunState, val: float) -> bool:
    """True when `grow.plateau.patience` evaluations in a row brought no gain
    of at least `min_delta` nats (in the stages `grow.plateau.stages` names)."""
    p, st = plan.cfg.grow.plateau, state.stage
    if p is None or st.between or not p.applies(st.rule):
        return False
    best, bad = state.pos.plateau
    if val < best - p.min_delta:
        best, bad = val, 0
    else:
        bad += 1
    state.pos.plateau = [best, bad]
    return bad >= p.patience


def restart_lora(plan, state: RunState):
    """Merge the adapters, add fresh ones, reset their optimizer and (train.schedule
    per_stage) re-warm the LR."""
    lora.fuse_lora(state.model.layers)
    add_adapters(state.model, state.stage, plan.cfg, restart_key(plan.seed, state.pos.global_step))
    cast(state.model, plan.cfg.train.dtype)
    new_stepper(plan, state)


def exit_stage(plan, state: RunState, callbacks) -> float:
    """Merge the adapters, evaluate, and add the stage's row to the summary;
    returns the validation loss."""
    st, pos = state.stage, state.pos
    lora.fuse_lora(state.model.layers)
    extra = {"stage_end": True}
    if state.use_cache:
        extra.update(prefix_cache_hits=state.pcache.hits, prefix_cache_misses=state.pcache.misses)
    val = validate(plan, state, callbacks, **extra)
    pos.summary.append({"stage": st.index + 1, "kind": st.kind, "depth": len(state.model.layers),
                        "active_params": state.active, "steps": state.steps_run or st.steps, "tokens": pos.tokens,
                        "train_loss": state.last_loss, "val_loss": val})
    state.prev = state.stepper
    return val


def set_trainable(model: Model, stage: Stage, substrate_trainable: bool) -> int:
    """Freeze everything, then unfreeze what this stage trains. Returns the index
    of the block where the backward pass may stop (0 when something below it
    trains: adapters or the substrate)."""
    model.freeze()
    first = min(stage.first_trainable, len(model.layers))
    for block in model.layers[first:]:
        block.unfreeze()
    if stage.train_head or stage.train_all:
        model.norm.unfreeze()
        model.lm_head.unfreeze()
    subs = substrate_trainable or stage.train_substrate
    if subs:
        model.substrate.unfreeze()
    lora.unfreeze_adapters(model.layers[:first])
    adapters_below = any(lora.is_lora(m) for b in model.layers[:first] for _, m in b.named_modules())
    return 0 if subs or adapters_below else first


def add_adapters(model: Model, stage: Stage, cfg, key) -> int:
    """Adapters on the frozen blocks, at the rank the plan chose; returns their parameter count."""
    if not stage.lora_rank:
        return 0
    frozen = len(model.layers) if stage.lora_phase else len(model.layers) - stage.new
    lcfg = cfg.grow.lora
    return lora.add_lora(model.layers[:frozen], stage.lora_rank, lcfg.scale, lcfg.targets, key)


def cast(model: Model, dtype: str):
    if dtype != "float32":  # new blocks and adapters are built in float32
        model.set_dtype(getattr(mx, dtype))
