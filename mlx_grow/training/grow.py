"""Layer-wise growth: train a few blocks + head, freeze them, stack new blocks,
train only the newest (+ head), optionally with LoRA phases over the frozen
blocks; or a monolithic baseline on the same token stream. With `from_dir`
(`grow --from`) the run starts from an existing model's frozen blocks instead
(training/source.py).

The run is a sequence of named steps: `start_stage` (grow, adapters, trainable
set, a fresh compiled step), `train_step`, `evaluate_now` + `plateaued`,
`restart_lora`, `save_checkpoint` (or explain why it could not), `end_stage`.
"""

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlx_grow.base import UserError
from mlx_grow.checkpoint import read_meta, save_model
from mlx_grow.config import RunConfig
from mlx_grow.io.progress import StepProgress
from mlx_grow.model import Model
from mlx_grow.tokenizer import load_tokenizer
from mlx_grow.training import lora as L
from mlx_grow.io.faults import armed, maybe_fail
from mlx_grow.training.init import (
    adapter_key,
    add_blocks,
    block_seed,
    build_model,
    restart_key,
    substrate_table,
)
from mlx_grow.training.params import count_module, human, train_flops
from mlx_grow.training.prefix_cache import PrefixCache
from mlx_grow.training.runs import (
    Run,
    barrier,
    check_checkpoint_config,
    load_checkpoint,
    read_run_json,
    remove_stale_temp,
    shared_checkpoint,
)
from mlx_grow.training.schedule import Stage, plan
from mlx_grow.training.source import check_source
from mlx_grow.training.stage_data import StageData, continued_reads, rebuild_reads, stream_record
from mlx_grow.training.step import Stepper, check_finite, evaluate, run_schedule, split_xy


class TrainingDiverged(RuntimeError):
    pass


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); the previous one is intact."""


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
    L.unfreeze_adapters(model.layers[:first])
    adapters_below = any(L.is_lora(m) for b in model.layers[:first] for _, m in b.named_modules())
    return 0 if subs or adapters_below else first


def add_adapters(model: Model, stage: Stage, cfg: RunConfig, key) -> int:
    """Adapters on the frozen blocks, at the rank the plan chose; returns their parameter count."""
    if not stage.lora_rank:
        return 0
    frozen = len(model.layers) if stage.lora_phase else len(model.layers) - stage.new
    lcfg = cfg.grow.lora
    return L.add_lora(model.layers[:frozen], stage.lora_rank, lcfg.scale, lcfg.targets, key)


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


def check_reachable(cfg: RunConfig):
    """Every hf: source of the run can be read: from a downloaded copy, or from the Hub
    now; else one line says what to download and where."""
    from mlx_grow.data import corpora

    d = cfg.data
    hub = [s.source for k in range(max(len(d.stages), 1)) for s in d.mixture(k) if s.source.startswith("hf:")]
    if missing := corpora.offline_sources(hub):
        raise UserError(corpora.offline_message(missing))


class Grower:
    """One run of a growth (or monolithic) schedule; `run()` returns the final model dir."""

    def __init__(self, cfg: RunConfig, out, resume=False, progress=True, on_step=None, echo=print, restart=False,
                 from_dir=None, allow_large=False):
        self.cfg, self.out, self.resume, self.restart = cfg, Path(out), resume, restart
        check_reachable(cfg)  # first: before even the tokenizer cache is written
        self.allow_large = allow_large
        self.table = None  # the substrate table of a fresh model, built while checking the inputs
        self.on_step, self.show_progress = on_step, progress
        self.t, self.g, self.args = cfg.train, cfg.grow, cfg.model
        self.seed = self.t.seed
        self.group = mx.distributed.init()
        self.world, self.rank = self.group.size(), self.group.rank()
        self.say = echo if self.rank == 0 else (lambda *a, **k: None)
        if self.t.batch_size % (self.world * self.t.grad_accum):
            raise UserError(f"train.batch_size {self.t.batch_size} must divide by ranks x train.grad_accum = "
                            f"{self.world * self.t.grad_accum}")
        self.tok = load_tokenizer(cfg.tokenizer)
        # Saved models record what their documents start after: a prompt starts the same way
        # in mlx-grow, transformers and mlx-lm (the tokenizer's post-processor; data encoding never uses it).
        self.tok_out = self.tok.with_prompt_start(cfg.data.separator)
        if self.tok.vocab_size != self.args.vocab_size:
            raise UserError(f"tokenizer {cfg.tokenizer} has {self.tok.vocab_size} ids but model.vocab_size is "
                            f"{self.args.vocab_size}: make them equal")
        self.source, self.source_model = self.open_source(from_dir)
        self.base = self.source["depth"] if self.source else 0
        if self.base != cfg.base:  # the plan grows depth - base blocks on top of the source's
            self.cfg = cfg = cfg.with_flags(base=self.base)
        self.stages = plan(cfg)
        # The run's planned step where each stage starts (train.schedule global / constant).
        self.planned = np.cumsum([0] + [s.steps for s in self.stages]).tolist()
        self.pcache = PrefixCache(self.g.prefix_cache_mb) if self.g.prefix_cache else None
        self.val_batches = None
        self.first_data = None  # the first stage's batches, opened while checking the data
        self.prev = None  # the last stage's Stepper, for carry_optimizer

    def open_source(self, from_dir):
        """(record, model) of the model this run grows further (`--from`), or (None, None).
        A new run checks and loads it here, before anything is written; a resume takes
        the record from run.json and loads the model only when it has no checkpoint yet."""
        if self.resume:
            if from_dir is not None:
                raise UserError(f"--resume continues {self.out} from the model it was started from (run.json "
                                "`from`); resume without --from")
            try:
                return read_run_json(self.out / "run.json", "").get("from"), None
            except (OSError, UserError):  # missing or damaged: Run.check says so
                return None, None
        if from_dir is None:
            return None, None
        return check_source(from_dir, self.cfg, self.tok)

    def load_source(self) -> Model:
        """The source model, for a run (or a resume) that starts at step 0. Its blocks
        stay frozen (every stage's first trainable block is above them). The new
        stages read on where the source's run stopped when its record says it read
        this run's stream (stage_data.continued_reads), else from batch 0; the new
        blocks take block_seed(seed, stage) as in any run."""
        model, self.source_model = self.source_model, None
        if model is None:  # a resume before the first checkpoint: the source must be as it was
            record, model = check_source(self.source["path"], self.cfg, self.tok)
            if record["weights_sha256"] != self.source["weights_sha256"]:
                raise UserError(f"cannot resume {self.out}: the model it grows from, {self.source['path']}, changed "
                                "since the run started (its weights differ from run.json `from`); restore it, or "
                                "start a new run with --out")
        model.set_dtype(mx.float32)  # as a fresh model; exact from bfloat16 / float16
        return model

    def lineage(self, **record) -> dict:
        """A saved model's lineage: this run's record, the batches it has read per data
        mixture with what its stream depends on (so `grow --from` that model can read
        on), and the model it grew from."""
        return {**record, "reads": dict(self.pos.reads), "stream": stream_record(self.cfg),
                **({"from": self.source} if self.source else {})}

    # --- the run ---

    def run(self):
        run = self.run_dir = Run(self.out, self.rank)
        record = self.record = {**self.cfg.to_dict(), "seed": self.seed, "depth": self.cfg.depth}
        fps = {"tokenizer": self.tok.fingerprint, **({"from": self.source} if self.source else {})}
        # Everything is checked before the first write, so a bad input leaves no run behind.
        run.check(record, fps, self.resume)
        if self.resume and (done := self.finished()) is not None:
            return done
        self.check_inputs()
        ckpt = shared_checkpoint(run, self.group, self.restart) if self.resume else None
        if ckpt is not None:  # run.json as the checkpoint's own record of the config says it was
            check_checkpoint_config(self.out, ckpt, record, self.cfg.base)
        run.init(record, fps, self.resume, barrier=lambda: barrier(self.group))
        if self.rank == 0:
            remove_stale_temp(self.out)
        state, opt_flat = None, None
        if ckpt is not None:
            self.model, state, opt_flat = load_checkpoint(ckpt)
            run.truncate_metrics(state["global_step"])
            self.say(f"resuming from {ckpt} (stage {state['stage'] + 1}, step {state['step']})")
        else:
            if self.source:  # the source's blocks, all frozen; the stages add blocks on top
                self.model = self.load_source()
            else:
                self.model = build_model(self.args, self.tok, self.stages[0].new, self.seed, self.table)
                self.table = None
            if self.resume:  # no checkpoint yet: start over in the same folder
                run.truncate_metrics(0)
        self.cast()
        self.pos = Progress(**{k: v for k, v in (state or {}).items() if k in Progress.__dataclass_fields__})
        if state is not None and "reads" not in state:
            self.pos.reads = rebuild_reads(self.cfg, self.stages, state)
        if state is None and self.source:  # read on where the source's run stopped, when it is this stream
            self.pos.reads, note = continued_reads(self.cfg, self.stages, self.source)
            if note:
                self.say(note)
        self.bar = StepProgress(sum(s.steps for s in self.stages), enabled=self.show_progress and self.rank == 0,
                                tokens_per_step=self.t.batch_size * self.t.seq_len)
        self.bar.advance_to(self.pos.global_step)
        try:
            for k in range(self.pos.stage, len(self.stages)):
                resumed = state is not None and k == state["stage"]
                self.start_stage(self.stages[k], resumed, opt_flat if resumed else None)
                self.train_stage(self.stages[k])
                self.end_stage(self.stages[k])
        finally:
            self.bar.close()
        return self.finish()

    def finished(self):
        """(final dir, summary) when this run has already finished, else None."""
        final = self.out / "final"
        if not (final / "mlx_grow.json").is_file():
            return None
        summary = (read_meta(final).get("lineage") or {}).get("summary") or []
        summary = summary if isinstance(summary, list) else []
        self.say(f"{self.out} is finished: {final} holds its model. Nothing was changed; to train further, "
                 "start a new run with --out")
        return final, summary

    def check_inputs(self):
        """Memory fit (the planner); for a new run a plausible schedule and the disk
        space it needs, and the substrate table (built here, so a refused
        substrate.path leaves no run behind); no source is read more than
        data.max_passes times (training/passes.py; estimated, then counted once the
        first stage's shards are prepared or found in the cache); then the first
        stage's validation batches."""
        from mlx_grow.training import passes
        from mlx_grow.training.memory import disk_check, fit_check, plausible_check

        fit_check(self.cfg, self.world)
        if not self.resume:  # a resumed run was checked when it started
            plausible_check(self.cfg, len(self.stages), self.allow_large)
            disk_check(self.cfg, self.stages, self.out, len(self.tok_out.backend.to_str()))
            if not self.source:
                self.table = substrate_table(self.args, self.tok)
            # before preparing: what is known without it (a small local source is prepared in seconds and
            # checked below, after the preparation has said what is wrong with it, if anything)
            passes.check(self.cfg, [r for r in passes.table(self.cfg, self.tok) if r.how != "counted"])
        self.first_data = StageData(self.cfg, self.tok, self.stages[0], self.seed,
                                    self.show_progress and self.rank == 0)
        if not self.resume:
            passes.check(self.cfg, passes.table(self.cfg, self.tok))
        self.val_batches = self.first_data.first.val_batches(self.t.val_batches)
        for note in self.first_data.notes():
            self.say(note)

    def cast(self):
        if self.t.dtype != "float32":  # new blocks and adapters are built in float32
            self.model.set_dtype(getattr(mx, self.t.dtype))

    def start_stage(self, st: Stage, resumed: bool, opt_flat=None):
        """Grow the model, add this stage's adapters, set the trainable set and
        build a fresh compiled step (mx.compile does not re-trace when only the
        trainable set changes)."""
        model, pos = self.model, self.pos
        if not resumed:
            pos.step, pos.plateau = 0, [math.inf, 0]
            if st.new and (st.index > 0 or self.base):  # a fresh model is built with stage 1's blocks
                add_blocks(model, st.new, self.g.block_init, seed=block_seed(self.seed, st.grown))
                maybe_fail("grow", st.index + 1)
                self.run_dir.log({"event": "grow", "global_step": pos.global_step, "stage": st.index + 1,
                                  "depth": len(model.layers), "tokens": pos.tokens})
            add_adapters(model, st, self.cfg, adapter_key(self.seed, st.index))
            self.cast()
        carry = self.prev if self.g.carry_optimizer and not resumed else None
        self.prev = None  # free the last stage's optimizer state once carried
        self.set_stepper(st, carry)
        if resumed:
            self.stepper.load_state_dict(opt_flat)
        if self.pcache is not None:
            self.pcache.invalidate()
        if st.index == 0 and self.first_data is not None:  # opened while checking the inputs
            self.data = self.first_data
        else:
            self.data = StageData(self.cfg, self.tok, st, self.seed, self.show_progress and self.rank == 0)
        if self.val_batches is None:
            self.val_batches = self.data.first.val_batches(self.t.val_batches)
        self.active = count_module(model, trainable_only=True)
        self.label = st.label if st.lora_phase else f"{st.label}/{len(self.stages)}"
        self.say(f"{self.label}: {len(model.layers)} blocks, training {human(self.active)} parameters"
                 + (f" (blocks {self.first + 1}-{len(model.layers)} + head)" if self.first else ""))

    def set_stepper(self, st: Stage, carry=None):
        self.first = set_trainable(self.model, st, self.args.substrate.trainable)
        self.use_cache = self.pcache is not None and self.first > 0
        lcfg = self.g.lora
        self.segment = st.steps
        if lcfg and lcfg.restarts and L.has_lora(self.model):
            self.segment = math.ceil(st.steps / (lcfg.restarts + 1))
        sched = {}
        if self.t.schedule != "per_stage":  # the LR follows the run's planned step: no re-warm here
            sched = dict(schedule=run_schedule(self.t, self.planned[-1]),
                         start_step=self.planned[st.index] + self.pos.step)
        self.stepper = Stepper(self.model, self.t, self.segment, self.group, carry=carry,
                               prefix_start=self.first if self.use_cache else None, frozen_below=self.first, **sched)

    def train_stage(self, st: Stage):
        t, pos = self.t, self.pos
        t0, self.last_loss, start_step = time.perf_counter(), math.nan, pos.step
        self.steps_run = None  # set when a plateau ends the stage early
        while pos.step < st.steps:
            loss, gnorm = self.train_step(st)
            key = self.data.key(pos.step)
            pos.reads[key] = pos.reads.get(key, 0) + 1
            pos.step, pos.global_step, self.last_loss = pos.step + 1, pos.global_step + 1, loss
            tokens = t.batch_size * t.seq_len
            pos.tokens += tokens
            pos.flops += train_flops(self.model.args, len(self.model.layers), self.first, st.train_head, tokens,
                                     t.seq_len)
            self.bar.update(pos.global_step, f"{self.label} loss {loss:.3f}")
            if pos.step % t.log_every == 0 or pos.step == st.steps:
                dt = time.perf_counter() - t0
                self.run_dir.log({"event": "train", "global_step": pos.global_step, "stage": st.index + 1,
                                  "step": pos.step, "loss": loss, "lr": self.stepper.lr, "grad_norm": gnorm,
                                  "tokens": pos.tokens,
                                  "tok_s": tokens * (pos.step - start_step) / max(dt, 1e-9) if start_step == 0 else None,
                                  "active_params": self.active, "flops": pos.flops,
                                  "peak_mem_mb": mx.get_peak_memory() / 2**20})
            if t.eval_every and pos.step % t.eval_every == 0 and pos.step < st.steps:
                val = self.evaluate_now(st)
                if self.plateaued(val, st):
                    self.say(f"{self.label}: validation loss plateaued at {val:.4f}; ending the stage "
                             f"after {pos.step} of {st.steps} steps")
                    self.steps_run, pos.step = pos.step, st.steps
            lcfg = self.g.lora
            if lcfg and lcfg.restarts and L.has_lora(self.model) and pos.step % self.segment == 0 \
                    and pos.step < st.steps:
                self.restart_lora(st)
            if t.checkpoint_every and pos.global_step % t.checkpoint_every == 0:
                self.save_checkpoint(st)

    def train_step(self, st: Stage):
        """One optimizer step; a NaN or infinite loss stops the run."""
        g_step = self.pos.global_step
        maybe_fail("step", g_step + 1)
        x, y = split_xy(self.data.batch(self.pos.step, self.pos.reads, self.rank, self.world))
        if self.on_step is not None:
            self.on_step(g_step, self.model)
        if self.use_cache:
            x = self.pcache(self.model, np.array(x), self.first)
        loss, gnorm = self.stepper.step(x, y)
        if armed("step", g_step + 1) == "nan":
            loss = math.nan
        try:
            check_finite(loss, g_step)
        except FloatingPointError as e:
            last = self.run_dir.checkpoints()[-1] if self.run_dir.checkpoints() else None
            raise TrainingDiverged(
                f"{e} (stage {st.index + 1}); stopped. The last good checkpoint is {last or 'none yet'}: "
                "lower train.lr and run again with --resume") from None
        return loss, gnorm

    def evaluate_now(self, st: Stage, **extra) -> float:
        val = evaluate(self.model, self.val_batches, (self.pcache, self.first) if self.use_cache else None,
                       self.group)
        self.run_dir.log({"event": "eval", "global_step": self.pos.global_step, "stage": st.index + 1,
                          "val_loss": val, "tokens": self.pos.tokens, "flops": self.pos.flops, **extra})
        return val

    def plateaued(self, val: float, st: Stage) -> bool:
        """True when `grow.plateau.patience` evaluations in a row brought no gain
        of at least `min_delta` nats (in the stages `grow.plateau.stages` names)."""
        p = self.g.plateau
        if p is None or st.between or not p.applies(st.rule):
            return False
        best, bad = self.pos.plateau
        if val < best - p.min_delta:
            best, bad = val, 0
        else:
            bad += 1
        self.pos.plateau = [best, bad]
        return bad >= p.patience

    def restart_lora(self, st: Stage):
        """Merge the adapters, add fresh ones, reset their optimizer and (train.schedule
        per_stage) re-warm the LR."""
        L.fuse_lora(self.model.layers)
        add_adapters(self.model, st, self.cfg, restart_key(self.seed, self.pos.global_step))
        self.cast()
        self.set_stepper(st)

    def save_checkpoint(self, st: Stage):
        pos, run = self.pos, self.run_dir
        state = {"config": self.record, "stage": st.index, "step": pos.step, "global_step": pos.global_step,
                 "tokens": pos.tokens,
                 "flops": pos.flops, "lora": L.lora_structure(self.model), "plateau": pos.plateau, "reads": pos.reads,
                 "summary": pos.summary, "lineage": self.lineage(run=str(self.out), stage=st.index + 1,
                                                             step=pos.global_step)}
        try:
            run.save_checkpoint(self.model, self.tok_out, self.stepper, state, self.t.keep_checkpoints)
        except OSError as e:
            last = run.checkpoints()[-1] if run.checkpoints() else "none yet"
            raise CheckpointWriteError(e.errno, f"cannot write the step-{pos.global_step:06d} checkpoint "
                                       f"({e.strerror}); the last good checkpoint is {last}: "
                                       "free space, then run again with --resume") from e

    def end_stage(self, st: Stage):
        """Merge adapters, evaluate, and save the stage's model."""
        L.fuse_lora(self.model.layers)
        extra = {"stage_end": True}
        if self.use_cache:
            extra.update(prefix_cache_hits=self.pcache.hits, prefix_cache_misses=self.pcache.misses)
        val = self.evaluate_now(st, **extra)
        self.pos.summary.append({"stage": st.index + 1, "kind": st.kind, "depth": len(self.model.layers),
                                 "active_params": self.active,
                                 "steps": self.steps_run or st.steps, "tokens": self.pos.tokens,
                                 "train_loss": self.last_loss,
                                 "val_loss": val})
        if self.rank == 0:
            save_model(self.model, self.run_dir.stage_dir(st.index), self.tok_out, overwrite=True,
                       meta={"lineage": self.lineage(run=str(self.out), stage=st.index + 1,
                                                     summary=self.pos.summary[-1]),
                             "separator": self.cfg.data.separator})
        self.prev = self.stepper
        self.say(f"{self.label} done: validation loss {val:.4f}")

    def finish(self):
        final_dir = self.run_dir.root / "final"
        if self.rank == 0:
            from mlx_grow.training.plot import plot_run

            self.model.set_dtype(mx.float32)
            save_model(self.model, final_dir, self.tok_out, overwrite=True,
                       meta={"lineage": self.lineage(run=str(self.out), stage=len(self.stages),
                                                     summary=self.pos.summary), "seed": self.seed,
                             "separator": self.cfg.data.separator})
            plot_run(self.run_dir.root)
        return final_dir, self.pos.summary


def grow(config: RunConfig, out, resume: bool = False, seed: int | None = None, progress: bool = True,
         on_step=None, echo=print, restart: bool = False, from_dir=None, allow_large: bool = False):
    """Run a growth (or monolithic) schedule; return (final model directory, stage summary).
    `config` is not changed. `seed` overrides train.seed; `on_step(global_step, model)` observes each step. A
    resume whose every checkpoint is damaged stops unless `restart` (start over at step 0).
    `from_dir`: grow this model directory further (`--from`; training/source.py): its
    blocks stay frozen and the stages add model.num_hidden_layers minus its depth.
    `allow_large`: run a schedule past the plausibility bound (training/memory.py)."""
    config = config.with_flags(train={"seed": None if seed is None else int(seed)})  # a copy: never the caller's
    return Grower(config, out, resume, progress, on_step, echo, restart, from_dir, allow_large).run()
