"""Growth: schedules, frozen weights, LoRA merge, exact resume, monolithic stream, prefix cache."""

import json

import mlx.core as mx
import numpy as np
import pytest
from helpers import grow_config, kjv_slice, weights

from mlx_grow.base import UserError
from mlx_grow.checkpoint import load_model
from mlx_grow.config import RunConfig
from mlx_grow.model import ModelArgs
from mlx_grow.training.grow import grow
from mlx_grow.training.params import stage_active
from mlx_grow.training.schedule import plan


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return str(kjv_slice(tmp_path_factory.mktemp("corpus") / "kjv.txt"))


def config(corpus, depth=4, grow=None, train=None, **model):
    return grow_config(corpus, depth, grow, train, **model)


def run(cfg, out, **kw):
    return grow(cfg, out, progress=False, echo=lambda *a, **k: None, **kw)


def test_plan_even_uneven_and_bad_depth():
    def stages(depth, **grow):
        return plan(RunConfig(model={"num_hidden_layers": depth, "hidden_size": 32, "num_attention_heads": 2},
                              grow=grow))

    assert [s.new for s in stages(9, blocks_per_stage=3)] == [3, 3, 3]
    assert [s.new for s in stages(16, stages=[3, 3, 3, 3, 4])] == [3, 3, 3, 3, 4]
    assert [s.new for s in stages(9, blocks_per_stage=4)] == [4, 4, 1]
    with pytest.raises(ValueError, match="add up to 9 blocks but the depth"):
        stages(16, stages=[3, 3, 3])
    mono = stages(9, blocks_per_stage=3, monolithic=True, steps_per_stage=[5, 6, 7])
    assert len(mono) == 1 and mono[0].steps == 18 and mono[0].segments == [5, 6, 7]


def test_growth_freezes_earlier_blocks_and_loss_falls(corpus, tmp_path):
    cfg = config(corpus, depth=4, grow={"stages": [1, 3], "steps_per_stage": 15},
                 train={"eval_every": 5, "lr": 1e-2})
    final, summary = run(cfg, tmp_path / "r")
    s1, s2 = weights(tmp_path / "r" / "stage-01"), weights(final)
    assert len(load_model(final).layers) == 4
    for k, v in s1.items():
        if k.startswith(("layers.0.", "substrate.")):
            assert np.array_equal(v, s2[k]), f"{k} moved while frozen"
        elif k.startswith(("norm.", "lm_head.")):
            assert not np.array_equal(v, s2[k]), f"{k} should train in every stage"
    args = ModelArgs.from_dict(cfg.model.to_dict())
    assert [s["active_params"] for s in summary] == [stage_active(args, 1), stage_active(args, 3)]
    evals = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in evals if r["event"] == "eval"]
    assert val[-1] < val[0] - 1.0, val  # validation loss falls on real text
    assert (tmp_path / "r" / "loss.png").stat().st_size > 1000


def test_frozen_head_stage_trains_only_new_blocks(corpus, tmp_path):
    cfg = config(corpus, depth=2, grow={"blocks_per_stage": 1, "train_head": [True, False]})
    final, _ = run(cfg, tmp_path / "r")
    a, b = weights(tmp_path / "r" / "stage-01"), weights(final)
    for k in a:
        if not k.startswith("layers.1."):
            assert np.array_equal(a[k], b[k]), k


def test_freeze_head_trains_the_head_in_stage_1_only(corpus, tmp_path):
    cfg = config(corpus, depth=2, grow={"blocks_per_stage": 1, "steps_per_stage": 4, "train_head": False,
                                        "lora": {"rank": 2, "final_phase_steps": 2}})
    assert [(s.train_head, s.lora_phase) for s in plan(cfg)] == [(True, False), (False, False), (False, True)]
    start = {}

    def keep(step, model):
        if step == 0:
            start["lm_head"] = np.array(model.lm_head.weight)

    final, summary = run(cfg, tmp_path / "r", on_step=keep)
    s1, s2 = weights(tmp_path / "r" / "stage-01"), weights(tmp_path / "r" / "stage-02")
    assert not np.array_equal(start["lm_head"], s1["lm_head.weight"])  # stage 1 trains the head
    for k in ("lm_head.weight", "norm.weight", "norm.bias"):  # frozen from stage 2 on, LoRA phase included
        assert np.array_equal(s1[k], s2[k]) and np.array_equal(s1[k], weights(final)[k]), k
    args = ModelArgs.from_dict(cfg.model.to_dict())
    assert [s["active_params"] for s in summary[:2]] == [stage_active(args, 1), stage_active(args, 1, False)]
    from mlx_grow.checkpoint import read_meta
    from mlx_grow.tokenizer import load_tokenizer

    tok = load_tokenizer(final)  # the model records what its documents start after, for generation and exports
    assert tok.affixes() == ([tok.eos_id], []) and read_meta(final)["separator"] == "</s>"
    assert tok.encode("In") == load_tokenizer("bvv241-2-3").encode("In")  # data encoding never adds it
    with pytest.raises(ValueError, match=r"train_head\[0\] is false"):
        config(corpus, depth=2, grow={"blocks_per_stage": 1, "train_head": [False, True]})


def test_resume_is_bit_identical_across_growth(corpus, tmp_path):
    cfg = lambda: config(corpus, depth=4, train={"checkpoint_every": 4})
    full, _ = run(cfg(), tmp_path / "full")

    class Stop(Exception):
        pass

    def kill_at_9(step, model):  # dies after the step-8 checkpoint, past the growth event at 6
        if step == 9:
            raise Stop

    with pytest.raises(Stop):
        run(cfg(), tmp_path / "cut", on_step=kill_at_9)
    assert not (tmp_path / "cut" / "final").exists()
    resumed, _ = run(cfg(), tmp_path / "cut", resume=True)
    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    steps = [json.loads(x)["global_step"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["event"] == "train"]
    assert steps == sorted(set(steps))  # no duplicated log lines after resume


def test_resume_with_other_config_refused(corpus, tmp_path):
    run(config(corpus, depth=2, grow={"blocks_per_stage": 1, "steps_per_stage": 2}), tmp_path / "r")
    other = config(corpus, depth=2, grow={"blocks_per_stage": 1, "steps_per_stage": 3})
    with pytest.raises(ValueError, match="different config"):
        run(other, tmp_path / "r", resume=True)
    with pytest.raises(FileExistsError, match="--resume"):
        run(other, tmp_path / "r")


def test_monolithic_sees_the_same_tokens(corpus, tmp_path):
    seen = {}

    def recorder(name):
        def hook(step, model):
            pass
        return hook

    from mlx_grow.training import loop as G  # the loop reads each batch through split_xy

    original = G.split_xy
    for mode in ("grow", "mono"):
        batches = []
        G.split_xy = lambda b, _rec=batches: (_rec.append(np.array(b)), original(b))[1]
        try:
            run(config(corpus, depth=4, grow={"monolithic": mode == "mono"}), tmp_path / mode)
        finally:
            G.split_xy = original
        seen[mode] = batches
    assert len(seen["grow"]) == len(seen["mono"]) == 12
    for a, b in zip(seen["grow"], seen["mono"]):
        assert np.array_equal(a, b)
    mono = weights(tmp_path / "mono" / "final")
    assert len([k for k in mono if k.endswith("c_fc.weight")]) == 4


def test_lora_stage_and_merge_keeps_logits(corpus, tmp_path):
    from mlx_grow.tokenizer import load_tokenizer
    from mlx_grow.training import lora as L
    from mlx_grow.training.grow import build_model

    cfg = config(corpus, depth=2)
    m = build_model(cfg.model, load_tokenizer("bvv241-2-3"), 2, seed=0)
    n = L.add_lora(m.layers, 4, 2.0, ["q_proj", "v_proj", "c_fc"], mx.random.key(1))
    assert n == 2 * 4 * ((32 + 32) * 2 + (32 + 128))
    for layer in m.layers:  # give the adapters non-zero B so the merge matters
        layer.self_attn.q_proj.lora_b = 0.1 * mx.random.normal(layer.self_attn.q_proj.lora_b.shape)
    ids = mx.array([[72, 101, 108, 108, 111]])
    before = m(ids)
    assert L.fuse_lora(m.layers) == 6 and not L.has_lora(m)
    assert mx.allclose(before, m(ids), atol=1e-5).item()


def test_lora_phases_train_only_adapters_on_frozen_blocks(corpus, tmp_path):
    cfg = config(corpus, depth=2, grow={"blocks_per_stage": 1, "lora": {
        "rank": 2, "targets": ["q_proj", "v_proj"], "from_depth": 2, "final_phase_steps": 3}})
    final, summary = run(cfg, tmp_path / "r")
    args = ModelArgs.from_dict(cfg.model.to_dict())
    adapters = 2 * (32 + 32) * 2  # q and v of one frozen block, rank 2
    assert summary[1]["active_params"] == stage_active(args, 1) + adapters
    assert len(summary) == 3  # two stages + the final LoRA phase
    s1, s3 = weights(tmp_path / "r" / "stage-01"), weights(final)
    assert not any("lora" in k for k in s3)  # adapters merged before export
    assert not np.array_equal(s1["layers.0.self_attn.q_proj.weight"], s3["layers.0.self_attn.q_proj.weight"])
    assert np.array_equal(s1["layers.0.mlp.c_fc.weight"], s3["layers.0.mlp.c_fc.weight"])


def test_lora_budget_chooses_rank():
    from mlx_grow.training.lora import lora_param_count, rank_for_budget

    args = ModelArgs(hidden_size=64, num_attention_heads=4, vocab_size=1000)
    base = stage_active(args, 1)
    r = rank_for_budget(args, 3, ["q_proj", "v_proj"], base + 5000, base)
    assert lora_param_count(args, 3, r, ["q_proj", "v_proj"]) <= 5000 < lora_param_count(args, 3, r + 1, ["q_proj", "v_proj"])
    with pytest.raises(ValueError, match="no room"):
        rank_for_budget(args, 3, ["q_proj"], base, base)


def test_prefix_cache_gives_the_same_loss(corpus, tmp_path):
    a, sa = run(config(corpus, depth=4), tmp_path / "a")
    b, sb = run(config(corpus, depth=4, grow={"prefix_cache": True}, train={"eval_every": 2}), tmp_path / "b")
    assert [s["val_loss"] for s in sa] == pytest.approx([s["val_loss"] for s in sb], abs=1e-5)
    ends = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    ends = [r for r in ends if r.get("stage_end") and r["stage"] == 2]
    assert ends[0]["prefix_cache_hits"] > 0  # validation batches reuse the cached frozen prefix
    wa, wb = weights(a), weights(b)
    for k in wa:
        assert np.allclose(wa[k], wb[k], atol=1e-5), k


def test_cross_entropy_matches_reference():
    import mlx.nn as nn

    from mlx_grow.training.step import cross_entropy

    x = mx.random.normal((2, 5, 300), key=mx.random.key(0)) * 4
    y = mx.random.randint(0, 300, (2, 5), key=mx.random.key(1))
    ref = lambda a: nn.losses.cross_entropy(a, y, reduction="mean")
    l1, g1 = mx.value_and_grad(ref)(x)
    l2, g2 = mx.value_and_grad(lambda a: cross_entropy(a, y))(x)
    assert abs(l1.item() - l2.item()) < 1e-5
    assert mx.allclose(g1, g2, atol=1e-7).item()


# --- every stage reads new data (data.stage_data) ---


def recorded(cfg, out, **kw):
    """Run `cfg` and return every training batch it read, in order."""
    from mlx_grow.training import loop as G  # the loop reads each batch through split_xy

    batches, original = [], G.split_xy
    G.split_xy = lambda b: (batches.append(np.array(b)), original(b))[1]
    try:
        run(cfg, out, **kw)
    finally:
        G.split_xy = original
    return batches


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    """Random letters: no two windows of it are equal by chance, so a repeated row is a repeated read."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("noise") / "noise.jsonl"
    docs = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 400)) for _ in range(60)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return str(path)


def test_each_stage_reads_on_where_the_last_stopped(noise, tmp_path):
    from mlx_grow.data.stream import open_stream
    from mlx_grow.tokenizer import load_tokenizer

    cfg = config(noise, depth=4, grow={"steps_per_stage": [2, 3]})
    seen = recorded(cfg, tmp_path / "grow")
    stream = open_stream(cfg.data, load_tokenizer("bvv241-2-3"), 16, 4, 0, progress=False)
    assert len(seen) == 5
    assert np.array_equal(seen[2], stream.batch(2))  # stage 2's first batch is global batch steps_1
    assert all(np.array_equal(b, stream.batch(k)) for k, b in enumerate(seen))
    rows = [r.tobytes() for b in seen for r in b]
    assert len(set(rows)) == len(rows) < stream._n[0]  # within one epoch, no row is read twice
    # grown and monolithic twins read the same batches: test_monolithic_sees_the_same_tokens
    from mlx_grow.training.stage_data import StageData

    restart = config(noise, depth=4, grow={"steps_per_stage": [2, 3]})
    restart = restart.with_flags(data={"stage_data": "restart"})  # the old behaviour: every stage from batch 0
    stage2 = plan(restart)[1]
    data = StageData(restart, load_tokenizer("bvv241-2-3"), stage2, 0, progress=False)
    assert np.array_equal(data.batch(0, {restart.data.mixture_key(1): 2}, 0, 1), seen[0])
    data = StageData(cfg, load_tokenizer("bvv241-2-3"), plan(cfg)[1], 0, progress=False)
    assert np.array_equal(data.batch(0, {cfg.data.mixture_key(1): 2}, 0, 1), seen[2])


def test_stage_mixtures_each_read_on(corpus, noise, tmp_path):
    from mlx_grow.data.stream import open_stream
    from mlx_grow.tokenizer import load_tokenizer

    def cfg(**grow):
        c = config(corpus, depth=3, grow={"blocks_per_stage": 1, "steps_per_stage": [2, 1, 2], **grow})
        c = c.with_flags(data={"stages": [[noise], [corpus], [noise]]})
        return c

    seen = recorded(cfg(), tmp_path / "grow")
    tok = load_tokenizer("bvv241-2-3")
    a = open_stream({"sources": [noise]}, tok, 16, 4, 0, progress=False)
    b = open_stream({"sources": [corpus]}, tok, 16, 4, 0, progress=False)
    want = [a.batch(0), a.batch(1), b.batch(0), a.batch(2), a.batch(3)]  # stage 3 reads on where stage 1 stopped
    assert len(seen) == len(want) and all(np.array_equal(x, y) for x, y in zip(seen, want))
    mono = recorded(cfg(monolithic=True), tmp_path / "mono")
    assert len(mono) == len(want) and all(np.array_equal(x, y) for x, y in zip(mono, want))


def test_monolithic_reads_the_final_lora_phase_tokens_too(noise, tmp_path):
    def cfg(monolithic):
        return config(noise, depth=2, grow={"blocks_per_stage": 1, "steps_per_stage": 2, "monolithic": monolithic,
                                            "lora": {"rank": 2, "final_phase_steps": 3}})

    assert [s.steps for s in plan(cfg(False))] == [2, 2, 3] and plan(cfg(True))[0].segments == [2, 2, 3]
    grown, mono = recorded(cfg(False), tmp_path / "grow"), recorded(cfg(True), tmp_path / "mono")
    assert len(grown) == len(mono) == 7 and all(np.array_equal(a, b) for a, b in zip(grown, mono))


def test_reads_rebuilt_for_a_checkpoint_without_them():
    from mlx_grow.training.stage_data import rebuild_reads

    cfg = RunConfig(model={"num_hidden_layers": 4, "hidden_size": 32, "num_attention_heads": 2},
                    grow={"blocks_per_stage": 2, "steps_per_stage": 6},
                    data={"stages": [["a.txt"], ["b.txt"]]})
    key = cfg.data.mixture_key
    state = {"stage": 1, "step": 2, "summary": [{"steps": 4}]}  # stage 1 ended early (plateau) after 4 steps
    assert rebuild_reads(cfg, plan(cfg), state) == {key(0): 4, key(1): 2}


def test_interleaved_lora_phase_trains_adapters_between_stages(corpus, tmp_path):
    cfg = config(corpus, depth=2, grow={"blocks_per_stage": 1, "steps_per_stage": 4, "lora": {
        "rank": 2, "targets": ["q_proj", "v_proj"], "phases": [{"after_stage": 1, "steps": 3}]}})
    assert [(s.kind, s.depth, s.steps, s.lora_rank) for s in plan(cfg)] == [
        ("grow", 1, 4, 0), ("lora", 1, 3, 2), ("grow", 2, 4, 0)]
    final, summary = run(cfg, tmp_path / "r")
    args = ModelArgs.from_dict(cfg.model.to_dict())
    assert [s["kind"] for s in summary] == ["grow", "lora", "grow"]
    assert summary[1]["active_params"] == stage_active(args, 0) + 2 * (32 + 32) * 2  # head + q,v adapters
    s1, s2, s3 = (weights(tmp_path / "r" / f"stage-0{k}") for k in (1, 2, 3))
    assert not any("lora" in k for k in s2)  # merged at the phase end
    q = "layers.0.self_attn.q_proj.weight"
    assert not np.array_equal(s1[q], s2[q])  # the phase moved block 0's attention
    assert np.array_equal(s1["layers.0.mlp.c_fc.weight"], s2["layers.0.mlp.c_fc.weight"])  # not an adapter target
    for k, v in s2.items():  # the next growth stage leaves every block-0 weight as the phase merged it
        if k.startswith("layers.0."):
            assert np.array_equal(v, s3[k]), k
    assert len(load_model(final).layers) == 2


def test_lora_phases_refuse_bad_plans(corpus):
    with pytest.raises(UserError, match="after_stage 3 names a stage the run does not have"):
        plan(config(corpus, depth=2, grow={"blocks_per_stage": 1,
                                           "lora": {"phases": [{"after_stage": 3, "steps": 1}]}}))
    with pytest.raises(UserError, match="monolithic run has none"):
        plan(config(corpus, depth=2, grow={"monolithic": True, "lora": {"phases": [{"after_stage": 1, "steps": 1}]}}))
    with pytest.raises(UserError, match="exactly one of steps or tokens"):
        config(corpus, grow={"lora": {"phases": [{"after_stage": 1, "steps": 1, "tokens": 5}]}})
    with pytest.raises(UserError, match="increasing and unique"):
        config(corpus, grow={"lora": {"phases": [{"after_stage": 2, "steps": 1}, {"after_stage": 1, "steps": 1}]}})
