"""What a run writes and shows, as callbacks of the loop (training/loop.py), in
the shape of mlx-lm's TrainingCallback: on_train_loss_report(info) and
on_val_loss_report(info) get the values a report logs; growth adds
on_stage_start, on_step_end, on_stage_end and on_train_end, which get the
loop's RunState. Every method is optional.

The run's own: MetricsLog (metrics.jsonl), ProgressLine, Checkpoints
(checkpoints/, stage-NN/, final/) and LossPlot (loss.png).
"""

import mlx.core as mx

from mlx_grow.checkpoint import save_model
from mlx_grow.io.progress import StepProgress
from mlx_grow.training import lora
from mlx_grow.training.runs import Run
from mlx_grow.training.stage_data import stream_record


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); the previous one is intact."""


class TrainingCallback:
    def on_stage_start(self, state):
        """A stage has started: its blocks are added and its step is built."""

    def on_step_end(self, state):
        """An optimizer step and what follows it (evaluation, a LoRA restart) are done."""

    def on_train_loss_report(self, info: dict):
        """Every train.log_every steps and at a stage's last: loss, lr, grad_norm, tokens, ..."""

    def on_val_loss_report(self, info: dict):
        """Every train.eval_every steps and at every stage end: val_loss, tokens, flops."""

    def on_stage_end(self, state):
        """A stage has ended: adapters merged, evaluated, its summary row added."""

    def on_train_end(self, state):
        """Every stage has run."""


class MetricsLog(TrainingCallback):
    """metrics.jsonl: a row per train report, evaluation and growth event."""

    def __init__(self, run: Run):
        self.run = run

    def on_stage_start(self, state):
        if state.grew:
            self.run.log({"event": "grow", "global_step": state.pos.global_step, "stage": state.stage.index + 1,
                          "depth": len(state.model.layers), "tokens": state.pos.tokens})

    def on_train_loss_report(self, info):
        self.run.log({"event": "train", **info})

    def on_val_loss_report(self, info):
        self.run.log({"event": "eval", **info})


class ProgressLine(TrainingCallback):
    """The progress bar on a terminal, plain lines otherwise (io/progress.py)."""

    def __init__(self, plan, enabled: bool = True):
        t = plan.cfg.train
        self.bar = StepProgress(sum(s.steps for s in plan.stages), enabled=enabled and plan.rank == 0,
                                tokens_per_step=t.batch_size * t.seq_len)
        self.started = False

    def on_stage_start(self, state):
        if not self.started:  # a resumed run starts part of the way
            self.bar.advance_to(state.pos.global_step)
            self.started = True

    def on_step_end(self, state):
        self.bar.update(state.pos.global_step, f"{state.label} loss {state.last_loss:.3f}")

    def on_train_end(self, state):
        self.close()

    def close(self):
        self.bar.close()


def lineage(plan, state, **record) -> dict:
    """A saved model's lineage: this run's record, the batches it has read per data
    mixture with what its stream depends on (so `grow --from` that model can read
    on), and the model it grew from."""
    return {**record, "reads": dict(state.pos.reads), "stream": stream_record(plan.cfg),
            **({"from": plan.source} if plan.source else {})}


class Checkpoints(TrainingCallback):
    """Resumable checkpoints every train.checkpoint_every steps (checkpoints/), the
    model at every stage end (stage-NN/) and the finished model (final/)."""

    def __init__(self, plan):
        self.plan = plan

    def on_step_end(self, state):
        t, pos, run = self.plan.cfg.train, state.pos, state.run
        if not t.checkpoint_every or pos.global_step % t.checkpoint_every:
            return
        st = state.stage
        trainer = {"config": self.plan.record, "stage": st.index, "step": pos.step, "global_step": pos.global_step,
                   "tokens": pos.tokens, "flops": pos.flops, "lora": lora.lora_structure(state.model),
                   "plateau": pos.plateau, "reads": pos.reads, "summary": pos.summary,
                   "lineage": lineage(self.plan, state, run=str(self.plan.out), stage=st.index + 1,
                                      step=pos.global_step)}
        try:
            run.save_checkpoint(state.model, self.plan.tok_out, state.stepper, trainer, t.keep_checkpoints)
        except OSError as e:
            last = run.checkpoints()[-1] if run.checkpoints() else "none yet"
            raise CheckpointWriteError(e.errno, f"cannot write the step-{pos.global_step:06d} checkpoint "
                                       f"({e.strerror}); the last good checkpoint is {last}: "
                                       "free space, then run again with --resume") from e

    def on_stage_end(self, state):
        p, st = self.plan, state.stage
        if p.rank == 0:
            save_model(state.model, state.run.stage_dir(st.index), p.tok_out, overwrite=True,
                       meta={"lineage": lineage(p, state, run=str(p.out), stage=st.index + 1,
                                                summary=state.pos.summary[-1]),
                             "separator": p.cfg.data.separator})

    def on_train_end(self, state):
        p = self.plan
        if p.rank == 0:
            state.model.set_dtype(mx.float32)
            save_model(state.model, p.out / "final", p.tok_out, overwrite=True,
                       meta={"lineage": lineage(p, state, run=str(p.out), stage=len(p.stages),
                                                summary=state.pos.summary), "seed": p.seed,
                             "separator": p.cfg.data.separator})


class LossPlot(TrainingCallback):
    """loss.png, drawn from metrics.jsonl when the run ends (`mlx-grow plot` redraws it)."""

    def __init__(self, plan):
        self.plan = plan

    def on_train_end(self, state):
        if self.plan.rank == 0:
            from mlx_grow.training.plot import plot_run

            plot_run(self.plan.out)


# --- writers for tools users already read (`grow --report-to`) ---

REPORTERS = ("tensorboard", "wandb")


class TensorBoardLog(TrainingCallback):
    """Scalars for TensorBoard in OUT/tensorboard: train/loss, train/lr, train/grad_norm,
    train/tok_s and val/loss over the global step. `writer` is anything with
    add_scalar(tag, value, step) and close(): torch's or tensorboardX's SummaryWriter
    (summary_writer_class), or a stand-in."""

    def __init__(self, writer):
        self.writer = writer

    def on_train_loss_report(self, info):
        for k in ("loss", "lr", "grad_norm", "tok_s"):
            if info.get(k) is not None:
                self.writer.add_scalar(f"train/{k}", float(info[k]), info["global_step"])

    def on_val_loss_report(self, info):
        self.writer.add_scalar("val/loss", float(info["val_loss"]), info["global_step"])

    def on_train_end(self, state):
        self.writer.close()


class WandbLog(TrainingCallback):
    """The same values to Weights & Biases: one wandb run per grow run, its config the
    run record. `wandb` is the module (or a stand-in with init/log/finish)."""

    def __init__(self, plan, wandb=None):
        self.wandb = wandb if wandb is not None else wandb_module()
        self.wandb.init(project="mlx-grow", name=plan.out.name if plan.out else None, config=plan.record,
                        dir=str(plan.out) if plan.out else None, resume="allow")

    def on_train_loss_report(self, info):
        self.wandb.log({f"train/{k}": info[k] for k in ("loss", "lr", "grad_norm", "tok_s", "tokens")
                        if info.get(k) is not None}, step=info["global_step"])

    def on_val_loss_report(self, info):
        self.wandb.log({"val/loss": info["val_loss"]}, step=info["global_step"])

    def on_train_end(self, state):
        self.wandb.finish()


def wandb_module():
    from mlx_grow.base import UserError

    try:
        import wandb
    except ImportError:
        raise UserError("--report-to wandb needs the wandb package: pip install wandb, or leave --report-to out") \
            from None
    return wandb


def summary_writer_class():
    """torch's SummaryWriter (needs the tensorboard package), else tensorboardX's."""
    from mlx_grow.base import UserError

    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise UserError("--report-to tensorboard needs a SummaryWriter: pip install tensorboard torch, or pip "
                            "install tensorboardX; or leave --report-to out") from None
    return SummaryWriter


def reporters(names) -> list:
    """The --report-to callbacks, as functions of the plan that make them once the run
    folder exists. An unknown name or a missing package is refused here, in one line,
    before the run writes anything."""
    from mlx_grow.base import UserError, brief

    names = [n.strip() for name in names or () for n in str(name).split(",") if n.strip()]
    bad = [n for n in names if n not in REPORTERS]
    if bad:
        raise UserError(f"--report-to takes {' or '.join(REPORTERS)} (repeatable); got {brief(', '.join(bad))}")
    made = []
    for n in dict.fromkeys(names):
        if n == "tensorboard":
            made.append(lambda plan, w=summary_writer_class(): TensorBoardLog(w(str(plan.out / "tensorboard"))))
        else:
            made.append(lambda plan, w=wandb_module(): WandbLog(plan, w))
    return made
