"""Grow and train options, each shown to take effect: gradient accumulation,
optimizer moments carried across a growth event, plateau stopping, training
every block in the last stage, a substrate trained only in stage 1, and the LR
schedules (train.schedule).

Runs are built as the CLI builds them (a YAML-shaped dict through
RunConfig.from_dict) on the tiny 4-block, 2-stage config from helpers.tiny_run."""

import json

import mlx.core as mx
import numpy as np
import pytest
from helpers import kjv_slice, tiny_args, tiny_run, train_steps, weights
from mlx.utils import tree_flatten

from mlx_grow.config import RunConfig
from mlx_grow.model import Model
from mlx_grow.training.grow import grow
from mlx_grow.training.init import init_weights


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


# --- train.schedule ---

# Two growth stages of 4 steps, a LoRA phase of 3 steps between them and a final one of 2: 13 steps.
PHASED = {"steps_per_stage": 4, "lora": {"rank": 2, "phases": [{"after_stage": 1, "steps": 3}],
                                         "final_phase_steps": 2}}


def expected_lr(schedule: str, s: int, total=13, warm=3, peak=3e-3, end=3e-4, decay=3) -> float:
    """The LR of planned step s (0-based), written out by hand."""
    if s < warm:
        return peak * s / warm
    if schedule == "global":
        return end + 0.5 * (1 + np.cos(np.pi * (s - warm) / (total - warm))) * (peak - end)
    if s < total - decay:
        return peak
    return peak + (end - peak) * (s - (total - decay)) / decay


@pytest.mark.parametrize("schedule", ["global", "constant"])
def test_one_lr_schedule_over_the_whole_run(corpus, tmp_path, schedule):
    extra = {"decay_fraction": 0.25} if schedule == "constant" else {}  # round(0.25 * 13) = the last 3 steps
    out = tmp_path / "r"
    run(config(corpus, grow=PHASED, warmup_steps=3, schedule=schedule, **extra), out)
    lrs = {r["global_step"]: r["lr"] for r in metrics(out) if r["event"] == "train"}
    assert sorted(lrs) == list(range(1, 14))  # stages 1 (1-4), LoRA phase (5-7), 2 (8-11), final phase (12-13)
    for g, lr in lrs.items():
        assert lr == pytest.approx(expected_lr(schedule, g - 1), rel=1e-5, abs=1e-9), (g, lr)
    assert lrs[5] > 0.9 * 3e-3 and lrs[8] > 0.5 * 3e-3  # no re-warm at the phase or the growth event


def test_per_stage_schedule_rewarms_every_stage(corpus, tmp_path):
    out = tmp_path / "r"
    run(config(corpus, grow=PHASED, warmup_steps=3), out)
    lrs = {r["global_step"]: r["lr"] for r in metrics(out) if r["event"] == "train"}
    assert [lrs[g] for g in (1, 5, 8, 12)] == [0.0] * 4  # each stage and phase starts its warm-up again


# ~9 s each: in the slow set (test_grow.py keeps a bit-identical resume across growth in the default set)
@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["global", "constant"])
def test_resume_is_bit_identical_with_a_run_schedule(corpus, tmp_path, schedule):
    cfg = lambda: config(corpus, grow=PHASED, warmup_steps=3, schedule=schedule, checkpoint_every=4,
                         keep_checkpoints=5, **({"decay_fraction": 0.25} if schedule == "constant" else {}))
    full, _ = run(cfg(), tmp_path / "full")

    class Stop(Exception):
        pass

    def kill_at_9(step, model):  # after the step-8 checkpoint, past the LoRA phase and the growth event at 7
        if step == 9:
            raise Stop

    with pytest.raises(Stop):
        grow(cfg(), tmp_path / "cut", progress=False, echo=lambda *a, **k: None, on_step=kill_at_9)
    resumed, _ = grow(cfg(), tmp_path / "cut", resume=True, progress=False, echo=lambda *a, **k: None)
    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    lr = lambda out: [(r["global_step"], r["lr"]) for r in metrics(out) if r["event"] == "train"]
    assert lr(tmp_path / "full") == lr(tmp_path / "cut")


def test_schedule_options_are_checked_and_stated(corpus):
    with pytest.raises(ValueError, match="train.decay_fraction 0.2 applies to train.schedule constant only"):
        config(corpus, schedule="global", decay_fraction=0.2)
    from typer.testing import CliRunner

    from mlx_grow.cli import app

    r = CliRunner().invoke(app, ["grow", "--schedule", "cosine", "-o", "never-written"])
    assert r.exit_code == 2 and "train.schedule must be one of per_stage, global, constant" in r.output
    from mlx_grow.training.info import stage_notes
    from mlx_grow.training.params import totals

    cfg = config(corpus, grow=PHASED, warmup_steps=3, schedule="constant", decay_fraction=0.25)
    assert [n for n in stage_notes(cfg, totals(cfg.model)) if n.startswith("LR")] == [("LR (train.schedule constant): 3 warm-up steps, then "
                                                       "0.003, then a linear decay to 10% of the peak 0.003 over "
                                                       "the last 25% of the run's 13 planned steps")]
