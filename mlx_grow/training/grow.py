"""Layer-wise growth: train a few blocks + head, freeze them, stack new blocks,
train only the newest (+ head), optionally with LoRA phases over the frozen
blocks; or a monolithic baseline on the same token stream. With `from_dir`
(`grow --from`) the run starts from an existing model's frozen blocks instead
(training/source.py).

`grow()` decides the run once (training/plan.py: resolve_run), then a Grower
opens its inputs, writes run.json and trains (training/loop.py) with the run's
callbacks (training/callbacks.py).
"""

from mlx_grow.training import passes
from mlx_grow.training.callbacks import (
    Checkpoints,
    CheckpointWriteError,
    LossPlot,
    MetricsLog,
    ProgressLine,
    reporters,
)
from mlx_grow.training.init import build_model, substrate_table
from mlx_grow.training.loop import Inputs, TrainingDiverged, set_trainable, train
from mlx_grow.training.plan import RunPlan, check_reachable, resolve_run
from mlx_grow.training.runs import Run, barrier, remove_stale_temp
from mlx_grow.training.stage_data import StageData

# What scripts and tests import from here, besides grow and Grower.
__all__ = ["grow", "Grower", "TrainingDiverged", "CheckpointWriteError", "build_model", "set_trainable",
           "check_reachable", "resolve_run"]


class Grower:
    """One run of a resolved plan: `check_inputs` opens what it reads, `run` writes
    run.json and trains. Returns (final model directory, stage summary)."""

    def __init__(self, plan: RunPlan, progress: bool = True, on_step=None, echo=print, report_to=()):
        self.plan, self.progress, self.on_step = plan, progress, on_step
        self.reporters = reporters(report_to)  # checked before anything is written
        self.echo = echo
        self.say = echo if plan.rank == 0 else (lambda *a, **k: None)

    def check_inputs(self) -> Inputs:
        """Open what the run reads before run.json is written, so a refused input
        leaves no run behind: a fresh model's substrate table (a refused
        substrate.path), the first stage's data (prepared, or found in the cache),
        whose passes are then counted against data.max_passes (training/passes.py),
        and the fixed validation batches."""
        p = self.plan
        table = substrate_table(p.cfg.model, p.tok) if not p.resume and not p.source else None
        first = StageData(p.cfg, p.tok, p.stages[0], p.seed, self.progress and p.rank == 0)
        if not p.resume:  # a resumed run was checked when it started
            passes.check(p.cfg, passes.table(p.cfg, p.tok, stages=p.stages))
        val = first.first.val_batches(p.cfg.train.val_batches)
        for note in first.notes():
            self.say(note)
        return Inputs(table, first, val)

    def run(self):
        p = self.plan
        if p.finished is not None:
            self.say(f"{p.out} is finished: {p.finished[0]} holds its model. Nothing was changed; to train "
                     "further, start a new run with --out")
            return p.finished
        inputs = self.check_inputs()
        run = Run(p.out, p.rank)
        if not p.resume:
            run.init(p.record, p.fingerprints, barrier=lambda: barrier(p.group))
        if p.rank == 0:
            remove_stale_temp(p.out)
        progress = ProgressLine(p, self.progress)
        callbacks = [MetricsLog(run), progress, Checkpoints(p), LossPlot(p)]
        callbacks += [make(p) for make in self.reporters] if p.rank == 0 else []
        try:
            return train(p, callbacks, inputs, self.on_step, self.echo, self.progress)
        finally:
            progress.close()


def grow(config, out, resume: bool = False, seed: int | None = None, progress: bool = True,
         on_step=None, echo=print, restart: bool = False, from_dir=None, allow_large: bool = False,
         report_to=()):
    """Run a growth (or monolithic) schedule; return (final model directory, stage summary).
    `config`: a RunConfig (never changed), a YAML path or a packaged name. `seed`
    overrides train.seed; `on_step(global_step, model)` observes each step. A
    resume whose every checkpoint is damaged stops unless `restart` (start over at
    step 0). `from_dir`: grow this model directory further (`--from`;
    training/source.py): its blocks stay frozen and the stages add
    model.num_hidden_layers minus its depth. `allow_large`: run a schedule past the
    plausibility bound (training/memory.py). `report_to`: "tensorboard" and/or
    "wandb", metrics writers besides metrics.jsonl (training/callbacks.py)."""
    plan = resolve_run(config, out, flags={"train": {"seed": None if seed is None else int(seed)}}, resume=resume,
                       from_dir=from_dir, restart=restart, allow_large=allow_large, echo=echo)
    return Grower(plan, progress, on_step, echo, report_to).run()
