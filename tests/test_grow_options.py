"""Grow and train options, each shown to take effect: gradient accumulation,
optimizer moments carried across a growth event, plateau stopping, training
every block in the last stage, and a substrate trained only in stage 1.

Runs are built as the CLI builds them (a YAML-shaped dict through
RunConfig.from_dict) on the tiny 4-block, 2-stage config from helpers.tiny_run."""

import json

import mlx.core as mx
import numpy as np
import pytest
from helpers import kjv_slice, tiny_args, tiny_run, train_steps, weights
from mlx.utils import tree_flatten

from mlx_grow.config import RunConfig
from mlx_grow.model import Model, init_weights
from mlx_grow.training.grow import grow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return kjv_slice(tmp_path_factory.mktemp("corpus") / "kjv.txt")


def config(corpus, grow=None, model=None, **train):
    d = tiny_run(corpus, "options", **{"eval_every": 0, "checkpoint_every": 0, **train})
    d["grow"].update(grow or {})
    d["model"].update(model or {})
    return RunConfig.from_dict(d)


def run(cfg, out):
    return grow(cfg, out, progress=False, echo=lambda *a, **k: None)


def metrics(out) -> list:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def optimizer_state(ckpt) -> dict:
    return {k: np.array(v) for k, v in mx.load(str(ckpt / "optimizer.safetensors")).items()}


# --- train.grad_accum ---


def test_grad_accum_step_equals_the_full_batch_step():
    from mlx_grow.config import TrainConfig
    from mlx_grow.training.step import Stepper

    seen = []

    class Spy(Model):  # records the batch rows of every training forward pass (traced or not)
        def hidden(self, inputs, *a, **k):
            rows = (inputs if inputs is not None else k["h"]).shape[0]
            seen.append(rows)
            return super().hidden(inputs, *a, **k)

    rng = np.random.default_rng(0)
    batches = [mx.array(rng.integers(0, 512, (4, 9))) for _ in range(2)]
    after, rows = {}, {}
    for accum in (1, 2):
        model = Spy(tiny_args())
        init_weights(model, 0)
        before = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
        cfg = TrainConfig(batch_size=4, seq_len=8, lr=1e-2, warmup_steps=0, grad_accum=accum)
        stepper = Stepper(model, cfg, total_steps=10)
        seen.clear()
        losses = [stepper.step(b[:, :-1], b[:, 1:]) for b in batches]
        rows[accum] = set(seen)
        after[accum] = ({k: np.array(v) for k, v in tree_flatten(model.parameters())}, losses)
        if accum == 2:
            with pytest.raises(ValueError, match="not divisible by grad_accum"):
                stepper.step(batches[0][:3, :-1], batches[0][:3, 1:])
    assert rows == {1: {4}, 2: {2}}  # two micro-batches of 2 rows, not one batch of 4
    (w1, l1), (w2, l2) = after[1], after[2]
    for (loss1, norm1), (loss2, norm2) in zip(l1, l2):
        assert loss2 == pytest.approx(loss1, rel=1e-5) and norm2 == pytest.approx(norm1, rel=1e-4)
    assert any(not np.array_equal(before[k], w1[k]) for k in w1)  # the steps moved the weights
    for k in w1:  # within 1e-3 of one Adam step (lr 1e-2): fp32 rounding of gradients near zero
        assert np.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-5), k


def test_grad_accum_grow_run_trains(corpus, tmp_path):
    _, summary = run(config(corpus, grad_accum=2, lr=1e-2), tmp_path / "r")
    loss = [r["loss"] for r in metrics(tmp_path / "r") if r["event"] == "train"]
    assert len(loss) == 12 and all(np.isfinite(loss))
    assert loss[-1] < loss[0] - 1.0, loss  # about 2 nats in 12 steps on real text
    assert summary[1]["val_loss"] < summary[0]["val_loss"]
    with pytest.raises(ValueError, match="grad_accum"):  # 4 rows do not split into 3 micro-batches
        run(config(corpus, grad_accum=3), tmp_path / "bad")


# --- grow.carry_optimizer ---


def test_carry_optimizer_keeps_head_moments_across_growth(corpus, tmp_path):
    # stage 1 is 2 steps; stage 2's first step is global step 3. Both runs are identical up to
    # step 2 and take the same gradient g at step 3, so m3(carry) - m3(fresh) = beta1 * m2 and
    # v3(carry) - v3(fresh) = beta2 * v2 for what trains in both stages (head, final norm).
    states = {}
    for carry in (True, False):
        out = tmp_path / f"carry-{carry}"
        run(config(corpus, grow={"carry_optimizer": carry, "steps_per_stage": [2, 1]}, checkpoint_every=1,
                   keep_checkpoints=2), out)
        states[carry] = {s: optimizer_state(out / "checkpoints" / f"step-{s:06d}") for s in (2, 3)}
    s2 = states[True][2]
    assert all(np.array_equal(s2[k], states[False][2][k]) for k in s2)  # stage 1 does not depend on it
    on, off = states[True][3], states[False][3]
    assert on.keys() == off.keys()
    shared = sorted(k for k in on if k in s2 and k.endswith((".m", ".v")))
    assert "lm_head.weight.m" in shared and "lm_head.weight.v" in shared
    assert not any(k.startswith(("layers.0.", "layers.1.")) for k in on)  # frozen in stage 2
    for k in shared:
        beta = 0.9 if k.endswith(".m") else 0.95
        scale = float(np.abs(s2[k]).max())
        assert scale > 0, k
        assert np.allclose(on[k] - off[k], beta * s2[k], rtol=1e-4, atol=1e-5 * scale), k
    for k in on:  # the new blocks get fresh moments either way
        if k.startswith(("layers.2.", "layers.3.")):
            assert np.allclose(on[k], off[k], rtol=1e-5, atol=1e-12), k


# --- grow.plateau ---


@pytest.mark.parametrize("patience", [1, 2])
def test_plateau_ends_a_stage_before_its_budget(corpus, tmp_path, patience):
    # min_delta is larger than any improvement, so every eval after the first is "no better"
    out = tmp_path / "r"
    _, summary = run(config(corpus, grow={"plateau": {"patience": patience, "min_delta": 100.0}}, eval_every=1),
                     out)
    rows = metrics(out)
    per_stage = [sum(1 for r in rows if r["event"] == "train" and r["stage"] == s) for s in (1, 2)]
    assert per_stage == [patience + 1, patience + 1]  # of a 6-step budget
    assert train_steps(out) == list(range(1, 2 * patience + 3))
    assert [r["global_step"] for r in rows if r["event"] == "grow"] == [patience + 1]
    assert [s["depth"] for s in summary] == [2, 4]
    assert [s["steps"] for s in summary] == [patience + 1, patience + 1]  # steps run, not the budget


def test_plateau_stages_limit_it_to_the_stages_named(corpus, tmp_path):
    out = tmp_path / "r"
    _, summary = run(config(corpus, grow={"plateau": {"patience": 1, "min_delta": 100.0, "stages": [1]}},
                            eval_every=1), out)
    assert [s["steps"] for s in summary] == [2, 6]  # stage 1 stops at its plateau, stage 2 runs its budget


# --- grow.train_all_last ---


@pytest.mark.parametrize("train_all_last", [True, False])
def test_train_all_last_trains_the_first_stage_blocks(corpus, tmp_path, train_all_last):
    out = tmp_path / "r"
    final, _ = run(config(corpus, grow={"train_all_last": train_all_last, "steps_per_stage": 4}), out)
    s1, last = weights(out / "stage-01"), weights(final)
    early = [k for k in s1 if k.startswith(("layers.0.", "layers.1."))]
    assert len(early) > 10
    moved = [k for k in early if not np.array_equal(s1[k], last[k])]
    if train_all_last:
        assert len(moved) == len(early), sorted(set(early) - set(moved))
    else:
        assert moved == []
    assert np.array_equal(s1["substrate.table"], last["substrate.table"])  # the substrate stays frozen


# --- grow.train_substrate_first ---


@pytest.mark.parametrize("first", [True, False])
def test_train_substrate_first_trains_the_table_in_stage_1_only(corpus, tmp_path, first):
    from mlx_grow.substrate.tables import SubstrateArgs, build_table

    sub = {"kind": "trainable", "seed": 3}
    out = tmp_path / "r"
    final, _ = run(config(corpus, grow={"train_substrate_first": first, "steps_per_stage": 4},
                          model={"substrate": sub}), out)
    initial = build_table(SubstrateArgs.from_dict(sub), 65536, 32)
    s1, s2 = weights(out / "stage-01")["substrate.table"], weights(final)["substrate.table"]
    assert s1.shape == initial.shape == (65536, 32)
    assert np.array_equal(s1, s2)  # frozen after stage 1 either way
    if first:
        assert not np.array_equal(s1, initial)
        assert np.abs(s1 - initial).max() > 1e-4
    else:
        assert np.array_equal(s1, initial)
