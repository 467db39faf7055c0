"""The chunked cross-entropy through the LM head: the same loss and gradients
as the unchunked one, with a peak memory that does not grow with the tokens."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from helpers import tiny_args
from mlx.utils import tree_flatten

from mlx_grow.training.loss import head_cross_entropy, head_nll_sum


def reference(h, w, t):
    return nn.losses.cross_entropy((h @ w.T).astype(mx.float32), t, reduction="mean")


def data(n=300, d=24, v=997, seed=0):
    k = mx.random.split(mx.random.key(seed), 3)
    h = mx.random.normal((n, d), key=k[0])
    w = mx.random.normal((v, d), key=k[1]) * 0.3
    t = mx.random.randint(0, v, (n,), key=k[2])
    return h, w, t


@pytest.mark.parametrize("chunk", [1, 7, 64, 300, 1000])
def test_loss_and_gradients_equal_the_unchunked_loss(chunk):
    h, w, t = data()
    l0, (gh0, gw0) = mx.value_and_grad(reference, argnums=(0, 1))(h, w, t)
    f = mx.value_and_grad(lambda h, w: head_cross_entropy(h, w, t, chunk), argnums=(0, 1))
    for fn in (f, mx.compile(f)):
        l1, (gh1, gw1) = fn(h, w)
        assert abs(l1.item() - l0.item()) < 1e-5
        assert mx.allclose(gh1, gh0, atol=1e-7, rtol=1e-4).item()
        assert mx.allclose(gw1, gw0, atol=1e-7, rtol=1e-4).item()


def test_bfloat16_head_keeps_dtypes_and_matches():
    h, w, t = data()
    hb, wb = h.astype(mx.bfloat16), w.astype(mx.bfloat16)
    l0, (gh0, gw0) = mx.value_and_grad(reference, argnums=(0, 1))(hb, wb, t)
    l1, (gh1, gw1) = mx.value_and_grad(lambda h, w: head_cross_entropy(h, w, t, 64), argnums=(0, 1))(hb, wb)
    assert gh1.dtype == mx.bfloat16 and gw1.dtype == mx.bfloat16
    assert abs(l1.item() - l0.item()) < 1e-3
    assert mx.allclose(gh1.astype(mx.float32), gh0.astype(mx.float32), atol=1e-3).item()
    assert mx.allclose(gw1.astype(mx.float32), gw0.astype(mx.float32), atol=1e-3).item()


def test_frozen_head_skips_its_gradient_and_keeps_the_others():
    h, w, t = data()
    _, gh0 = mx.value_and_grad(reference)(h, w, t)
    _, gh1 = mx.value_and_grad(lambda h: head_cross_entropy(h, w, t, 50, head_grad=False))(h)
    assert mx.allclose(gh1, gh0, atol=1e-7, rtol=1e-4).item()


def test_eval_sum_matches():
    h, w, t = data()
    assert head_nll_sum(h, w, t, chunk=37) == pytest.approx(reference(h, w, t).item() * h.shape[0], rel=1e-5)


def test_model_gradients_equal_the_unchunked_loss():
    from mlx_grow.model import Model
    from mlx_grow.training.init import init_weights
    from mlx_grow.training.step import loss_fn

    model = Model(tiny_args())
    init_weights(model, 0)
    x = mx.random.randint(0, 512, (3, 20), key=mx.random.key(3))
    y = mx.random.randint(0, 512, (3, 20), key=mx.random.key(4))
    ref = lambda m, x, y: nn.losses.cross_entropy(m(x).astype(mx.float32), y, reduction="mean")  # noqa: E731
    l0, g0 = nn.value_and_grad(model, ref)(model, x, y)
    l1, g1 = nn.value_and_grad(model, lambda m, x, y: loss_fn(m, x, y, chunk=16))(model, x, y)
    assert abs(l0.item() - l1.item()) < 1e-5
    g0, g1 = dict(tree_flatten(g0)), dict(tree_flatten(g1))
    assert g0.keys() == g1.keys()
    for k in g0:
        assert np.allclose(np.array(g0[k]), np.array(g1[k]), atol=1e-6, rtol=1e-4), k


def peak(fn, *args):
    mx.eval(*args)
    mx.synchronize()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    mx.eval(fn(*args))
    return mx.get_peak_memory() - base


def test_peak_memory_is_lower_and_does_not_grow_with_tokens():
    d, v = 32, 8192
    w = mx.random.normal((v, d)) * 0.1
    peaks = {}
    for n in (1024, 4096):
        h = mx.random.normal((n, d))
        t = mx.random.randint(0, v, (n,))
        full = mx.value_and_grad(lambda h, w: reference(h, w, t), argnums=(0, 1))
        chunked = mx.value_and_grad(lambda h, w: head_cross_entropy(h, w, t, 64), argnums=(0, 1))
        peaks[n] = (peak(full, h, w), peak(chunked, h, w))
    logits = 4096 * v * 4  # one float32 [N, V] tensor: 128 MiB
    assert peaks[4096][0] > 2 * logits  # the unchunked loss holds several
    assert peaks[4096][1] < logits / 4  # the chunked one a few [64, V] tensors and [V, d] gradients
    assert peaks[4096][1] < 1.5 * peaks[1024][1]  # ... however many tokens
