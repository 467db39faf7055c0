"""The training step: the forward pass a step differentiates (frozen prefix,
gradient checkpointing), the loss, a compiled functional step rebuilt whenever
the trainable set changes, LR schedules, optimizer state I/O and evaluation."""

import math
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from mlx_grow.base import UserError
from mlx_grow.config import TrainConfig
from mlx_grow.mlx_lm_parts import create_attention_mask
from mlx_grow.training.loss import head_cross_entropy, head_nll_sum


@mx.custom_function
def _cross_entropy(logits, targets):
    # Keeps exp(logits - max) from the forward pass for the backward pass: on a
    # CPU the exp over a 65,536-wide vocabulary dominates the step, and the
    # stock cross-entropy computes it twice.
    m = mx.stop_gradient(logits.max(-1, keepdims=True))
    e = mx.exp(logits - m)
    s = e.sum(-1, keepdims=True)
    nll = mx.log(s) + m - mx.take_along_axis(logits, targets[:, None], -1)
    return nll.mean(), e, s


@_cross_entropy.vjp
def _cross_entropy_vjp(primals, cotangents, outputs):
    logits, targets = primals
    _, e, s = outputs
    onehot = mx.arange(logits.shape[-1])[None] == targets[:, None]
    return (cotangents[0] / logits.shape[0]) * (e / s - onehot), mx.zeros_like(targets)


def cross_entropy(logits, targets):
    """Mean token cross-entropy of [..., V] fp32 logits."""
    v = logits.shape[-1]
    return _cross_entropy(logits.reshape(-1, v), targets.reshape(-1))[0]


def head_loss(model, h, targets, chunk: int = 0):
    """Mean cross-entropy of the LM head on final hidden states `h`, chunked
    over tokens (never holds the [B*T, V] logits; see training/loss.py)."""
    head_grad = "weight" in model.lm_head.trainable_parameters()
    return head_cross_entropy(h, model.lm_head.weight, targets, chunk or None, head_grad=head_grad)


def checkpointed(block: nn.Module, h, mask):
    """`block(h, mask)` whose activations are recomputed in the backward pass
    (gradient checkpointing, as mlx-lm's trainer does it)."""
    def run(params, h):
        block.update(params)
        return block(h, mask)

    return mx.checkpoint(run)(block.trainable_parameters(), h)


def train_hidden(model, inputs, start: int = 0, checkpoint: bool = False):
    """Final hidden states for a training step: `inputs` are token ids (`start` 0)
    or the hidden states entering block `start` (the frozen prefix's output). With
    `checkpoint` the blocks from `start` up recompute their activations in the
    backward pass instead of keeping them."""
    if not checkpoint:
        return model.hidden(inputs, start=start)
    h = model.substrate(inputs) if start == 0 else inputs
    mask = create_attention_mask(h, None)
    for block in model.layers[start:]:
        h = checkpointed(block, h, mask)
    return model.norm(h)


def loss_fn(model, inputs, targets, start: int = 0, chunk: int = 0, checkpoint: bool = False):
    """Mean token cross-entropy of a step (`inputs` and `start` as in train_hidden)."""
    if not hasattr(model, "hidden"):  # any other model, e.g. a merge being tuned: its combined scores
        return cross_entropy(model(inputs).astype(mx.float32), targets)
    return head_loss(model, train_hidden(model, inputs, start, checkpoint), targets, chunk)


def lr_schedule(cfg: TrainConfig, total_steps: int, scale: float = 1.0):
    """Linear warmup, then cosine decay to lr * min_lr_ratio over `total_steps`."""
    peak = cfg.lr * scale
    warm = max(0, min(cfg.warmup_steps, total_steps - 1))
    decay = optim.cosine_decay(peak, max(1, total_steps - warm), peak * cfg.min_lr_ratio)
    if warm == 0:
        return decay
    return optim.join_schedules([optim.linear_schedule(0.0, peak, warm), decay], [warm])


def run_schedule(cfg: TrainConfig, total_steps: int):
    """The LR of `train.schedule` global or constant as a function of the run's
    planned step (0 .. total_steps - 1, summed over every stage and LoRA phase).
    global: linear warm-up, then one cosine decay to lr * min_lr_ratio at the end
    of the run. constant: linear warm-up, then lr; with decay_fraction f, a linear
    decay to lr * min_lr_ratio over the last f of the planned steps (WSD)."""
    if cfg.schedule == "global":
        return lr_schedule(cfg, total_steps)
    peak = cfg.lr
    warm = max(0, min(cfg.warmup_steps, total_steps - 1))
    decay = min(max(1, round(cfg.decay_fraction * total_steps)), total_steps - warm) if cfg.decay_fraction else 0
    parts, bounds = [lambda step: mx.array(peak, mx.float32)], []
    if decay:
        parts.append(optim.linear_schedule(peak, peak * cfg.min_lr_ratio, decay))
        bounds.append(total_steps - decay)
    if warm:
        parts.insert(0, optim.linear_schedule(0.0, peak, warm))
        bounds.insert(0, warm)
    return optim.join_schedules(parts, bounds) if bounds else parts[0]


def make_optimizer(cfg: TrainConfig, schedule):
    return optim.AdamW(learning_rate=schedule, betas=list(cfg.betas), weight_decay=cfg.weight_decay)


class Stepper:
    """Owns the optimizer and the compiled step for ONE trainable set.

    mx.compile does not re-trace when only the trainable set changes, so a
    Stepper must be rebuilt (with a fresh optimizer state) after every
    freeze/unfreeze/growth event. `carry` copies optimizer moments of
    parameters that stay trainable (e.g. the head) from the previous Stepper.

    The LR is a function of the optimizer's step count, which a checkpoint keeps:
    by default a warm-up and a cosine over this Stepper's `total_steps` from step 0;
    with `schedule` (the run's: run_schedule) the count starts at `start_step`, the
    run's planned step (AdamW here has no bias correction, so the count moves only
    the LR).
    """

    def __init__(self, model, cfg: TrainConfig, total_steps: int, world=None, carry=None, prefix_start=None,
                 frozen_below: int = 0, schedule=None, start_step: int = 0):
        self.model, self.cfg = model, cfg
        self.group = world
        self.prefix_start = prefix_start
        self.frozen_below = frozen_below  # the backward pass stops at this block's input
        self.optimizer = make_optimizer(cfg, schedule or lr_schedule(cfg, total_steps))
        self.optimizer.init(model.trainable_parameters())
        if schedule is not None:
            state = self.optimizer.state
            state["step"] = mx.array(start_step, mx.uint64)
            state["learning_rate"] = schedule(state["step"])
        if carry is not None:
            self.carry_state(carry)
        self.trainable = {k for k, _ in tree_flatten(model.trainable_parameters())}
        self._build()

    def carry_state(self, old: "Stepper"):
        """Copy moments for parameters trainable in both sets (step count restarts)."""
        new = dict(tree_flatten(self.optimizer.state))
        old_state = dict(tree_flatten(old.optimizer.state))
        for k in new:
            if k != "step" and k in old_state and old_state[k].shape == new[k].shape:
                new[k] = old_state[k]
        self.optimizer.state = tree_unflatten(list(new.items()))

    def _build(self):
        model, cfg, opt = self.model, self.cfg, self.optimizer
        # Nothing below block `frozen` trains: run those blocks as a plain forward pass
        # outside the differentiated function (x is then token ids); with the prefix
        # cache, x already is their output.
        frozen = self.frozen_below if self.prefix_start is None else 0
        start = self.prefix_start if self.prefix_start is not None else frozen
        grad_fn = nn.value_and_grad(model, partial(loss_fn, start=start, chunk=cfg.loss_chunk,
                                                   checkpoint=cfg.grad_checkpoint))
        group = self.group
        state = [model.state, opt.state]

        def grads_of(x, y):
            if frozen:
                x = mx.stop_gradient(model.hidden(x, end=frozen))
            loss, grads = grad_fn(model, x, y)
            if group is not None and group.size() > 1:
                grads = nn.utils.average_gradients(grads, group=group)
                loss = mx.distributed.all_sum(loss, group=group) / group.size()
            return loss, grads

        def apply(grads):
            if cfg.grad_clip and cfg.grad_clip > 0:
                grads, norm = optim.clip_grad_norm(grads, cfg.grad_clip)
            else:
                norm = mx.array(0.0)
            opt.update(model, grads)
            return norm

        @partial(mx.compile, inputs=state, outputs=state)
        def step(x, y):
            loss, grads = grads_of(x, y)
            return loss, apply(grads)

        self._step = step
        self._grads = mx.compile(grads_of, inputs=state, outputs=state) if cfg.grad_accum > 1 else None
        self._apply = apply

    def step(self, x, y):
        """One optimizer step on a rank-local batch (split into grad_accum micro-batches)."""
        n = self.cfg.grad_accum
        if n <= 1:
            loss, norm = self._step(x, y)
            mx.eval(loss, norm, self.model.state, self.optimizer.state)
            return float(loss), float(norm)
        if x.shape[0] % n:
            raise UserError(f"batch rows {x.shape[0]} per rank are not divisible by grad_accum {n}")
        m = x.shape[0] // n
        total, acc = 0.0, None
        for i in range(n):
            loss, grads = self._grads(x[i * m:(i + 1) * m], y[i * m:(i + 1) * m])
            acc = grads if acc is None else tree_map(mx.add, acc, grads)
            mx.eval(loss, acc)
            total += float(loss)
        norm = self._apply(tree_map(lambda g: g / n, acc))
        mx.eval(norm, self.model.state, self.optimizer.state)
        return total / n, float(norm)

    @property
    def lr(self) -> float:
        lr = self.optimizer.learning_rate
        return float(lr)

    def state_dict(self) -> dict:
        return dict(tree_flatten(self.optimizer.state))

    def load_state_dict(self, flat: dict):
        want = dict(tree_flatten(self.optimizer.state))
        missing = sorted(set(want) - set(flat))
        bad = [k for k in want if k in flat and flat[k].shape != want[k].shape]
        if missing or bad:
            raise UserError(
                "optimizer state does not match the trainable set of this stage "
                f"(missing: {missing[:5]}, mis-shaped: {bad[:5]}); was the checkpoint made by another config?"
            )
        self.optimizer.state = tree_unflatten([(k, flat[k]) for k in want])
        mx.eval(self.optimizer.state)
        self._build()  # the compiled step captured the old state tree


def evaluate(model, batches, prefix=None, group=None) -> float:
    """Mean token cross-entropy over fixed validation batches (no grad).
    `prefix` = (cache, start) reuses cached hidden states of the frozen prefix.
    With a distributed `group`, each rank scores its share of every batch's rows
    and every rank gets the same total."""
    rank, world = (group.rank(), group.size()) if group is not None else (0, 1)
    total, count = 0.0, 0
    for b in batches:
        b = b[rank * len(b) // world:(rank + 1) * len(b) // world]
        y = mx.array(b[:, 1:])
        if prefix is not None:
            cache, start = prefix
            h = model.hidden(cache(model, np.asarray(b[:, :-1]), start), start=start)
        elif hasattr(model, "hidden"):
            h = model.hidden(mx.array(b[:, :-1]))
        else:  # any other model, e.g. a merge: its combined scores
            logits = model(mx.array(b[:, :-1])).astype(mx.float32)
            total += float(nn.losses.cross_entropy(logits, y, reduction="sum"))
            count += y.size
            continue
        total += head_nll_sum(h, model.lm_head.weight, y)
        count += y.size
    if world > 1:
        total, count = mx.distributed.all_sum(mx.array([total, count], mx.float32), group=group).tolist()
    return total / max(1, count)


def check_finite(loss: float, step: int):
    if not math.isfinite(loss):
        raise FloatingPointError(f"loss is {loss} at step {step}")


def split_xy(batch: np.ndarray):
    b = mx.array(batch)
    return b[:, :-1], b[:, 1:]
