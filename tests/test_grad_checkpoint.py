"""train.grad_checkpoint: the trainable blocks recompute their activations in
the backward pass; the update is the same as without it."""

import mlx.core as mx
import numpy as np
from helpers import tiny_args
from mlx.utils import tree_flatten

from mlx_grow.config import TrainConfig
from mlx_grow.model import Model
from mlx_grow.training.grow import set_trainable
from mlx_grow.training.init import init_weights
from mlx_grow.training.schedule import Stage
from mlx_grow.training.step import Stepper


def one_step(checkpoint: bool, frozen: int):
    model = Model(tiny_args(num_hidden_layers=3))
    init_weights(model, 0)
    stage = Stage(index=1, new=3 - frozen, depth=3, steps=1)
    first = set_trainable(model, stage, False)
    cfg = TrainConfig(batch_size=4, seq_len=16, warmup_steps=0, grad_checkpoint=checkpoint)
    stepper = Stepper(model, cfg, total_steps=3, frozen_below=first)
    x = mx.array(np.random.default_rng(0).integers(0, 512, (4, 17)))
    losses = [stepper.step(x[:, :-1], x[:, 1:])[0] for _ in range(2)]
    return losses, dict(tree_flatten(model.parameters()))


def test_grad_checkpoint_gives_the_same_update():
    for frozen in (0, 2):
        base_loss, base = one_step(False, frozen)
        ck_loss, ck = one_step(True, frozen)
        assert np.allclose(base_loss, ck_loss, rtol=1e-5, atol=1e-6)
        for k in base:
            assert np.allclose(np.array(base[k]), np.array(ck[k]), rtol=1e-4, atol=1e-6), k
        # frozen blocks stay bit-identical
        fresh = Model(tiny_args(num_hidden_layers=3))
        init_weights(fresh, 0)
        ref = dict(tree_flatten(fresh.parameters()))
        for k in ck:
            if k.startswith(tuple(f"layers.{i}." for i in range(frozen))):
                assert np.array_equal(np.array(ck[k]), np.array(ref[k])), k
