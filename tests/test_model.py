import mlx.core as mx
import numpy as np
import pytest
from helpers import tiny_args
from mlx.utils import tree_flatten

from mlx_grow.config import load_config, packaged_configs
from mlx_grow.model import Model, ModelArgs
from mlx_grow.training.init import add_blocks, init_weights
from mlx_grow.training.params import count_module, stage_active, totals


def make(seed=0, **kw):
    m = Model(tiny_args(**kw))
    init_weights(m, seed)
    return m


def test_output_shape():
    m = make()
    assert m(mx.array([[1, 2, 3], [4, 5, 6]])).shape == (2, 3, 512)


def test_causality():
    m = make()
    a = mx.array([[5, 6, 7, 8, 9]])
    b = mx.array([[5, 6, 7, 100, 200]])
    la, lb = m(a), m(b)
    assert mx.allclose(la[:, :3], lb[:, :3], atol=1e-6).item()
    assert not mx.allclose(la[:, 3:], lb[:, 3:], atol=1e-3).item()


def test_hidden_runs_any_span_of_blocks():
    m = make(num_hidden_layers=3)
    ids = mx.array([[3, 1, 4, 1, 5, 9]])
    whole = m.hidden(ids)
    for k in range(1, 3):  # the frozen prefix [0, k), then the rest from block k (and the final norm)
        assert mx.array_equal(m.hidden(m.hidden(ids, end=k), start=k), whole).item()
    h = m.substrate(ids)
    for block in m.layers[:2]:
        h = block(h, "causal")
    assert mx.array_equal(m.hidden(ids, end=2), h).item()  # below the top: no final norm


@pytest.mark.parametrize("traditional", [False, True])
def test_cached_decoding_equals_full_forward(traditional):
    m = make(rope_traditional=traditional)
    ids = mx.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    full = m(ids)
    cache = m.make_cache()
    out = [m(ids[:, :3], cache=cache)]
    out += [m(ids[:, i:i + 1], cache=cache) for i in range(3, 8)]
    stepped = mx.concatenate(out, axis=1)
    assert mx.allclose(full, stepped, atol=1e-5).item()


def test_gelu_variants_differ():
    ids = mx.array([[1, 2, 3]])
    a, b = make(hidden_act="gelu"), make(hidden_act="gelu_tanh")
    assert not mx.array_equal(a(ids), b(ids)).item()
    assert mx.allclose(a(ids), b(ids), atol=1e-2).item()


def test_no_gradient_reaches_frozen_substrate():
    m = make()
    assert "substrate.table" not in dict(tree_flatten(m.trainable_parameters()))
    import mlx.nn as nn

    def loss(model, x):
        return model(x).sum()

    _, grads = nn.value_and_grad(m, loss)(m, mx.array([[1, 2, 3]]))
    assert "substrate.table" not in dict(tree_flatten(grads))


def test_count_matches_module():
    for kind, bits in (("binary", 9), ("random", 16), ("glyph", 9), ("trainable", 9)):
        args = tiny_args(substrate={"kind": kind, "bits": bits, "trainable": kind == "trainable"})
        m = Model(args)
        t = totals(args)
        assert count_module(m) == t["total"], kind
        assert count_module(m, trainable_only=True) == t["trainable"], kind


def test_rmsnorm_option_counts_and_runs():
    ln, rms = tiny_args(), tiny_args(norm="rmsnorm")
    m = Model(rms)
    names = [k for k, _ in tree_flatten(m.parameters())]
    assert not [k for k in names if "norm" in k and k.endswith(".bias")]  # a gain only
    assert count_module(m) == totals(rms)["total"] == totals(ln)["total"] - (2 * ln.num_hidden_layers + 1) * 32
    init_weights(m, 0)
    assert m(mx.array([[1, 2, 3]])).shape == (1, 3, 512)
    assert type(m.layers[0].input_layernorm).__name__ == "RMSNorm"
    with pytest.raises(ValueError, match="norm must be one of layernorm, rmsnorm"):
        tiny_args(norm="batchnorm")


def test_published_counts_do_not_decide_the_norm():
    """LayerNorm and RMSNorm give counts that round to the same published figures."""
    for name, published in (("paper-16l-16bit", 269.7), ("paper-9l-glyph", 247.6)):
        for norm in ("layernorm", "rmsnorm"):
            args = ModelArgs.from_dict({**load_config(name).model.to_dict(), "norm": norm})
            assert round(totals(args)["total"] / 1e6, 1) == published, (name, norm)


@pytest.mark.parametrize("name,total,trainable", [
    ("paper-16l-16bit", 269_699_072, 268_650_496),   # published 269.7M
    ("paper-9l-glyph", 247_585_792, 180_476_928),    # published 247.6M / 180.5M
    ("paper-9l-16bit", 181_525_504, 180_476_928),    # about 181.5M
    ("es-16l-glyph", 335_759_360, 268_650_496),      # about 335M
    ("es-16l-64bit", 272_844_800, 268_650_496),      # about 272M
    ("es-16l-256bit", 285_427_712, 268_650_496),     # about 285M
    ("es-16l-16float", 269_699_072, 268_650_496),    # about 269M
    ("es-16l-64float", 272_844_800, 268_650_496),    # about 272M
    ("es-16l-256float", 285_427_712, 268_650_496),   # about 285M
    ("es-16l-unfrozen", 335_759_360, 335_759_360),
    ("d4096-1layer", 1_275_129_856 + 5 * 201_379_840, None),  # 1.3B + 0.2B per layer
])
def test_paper_counts(name, total, trainable):
    cfg = load_config(name)
    t = totals(cfg.model)
    assert t["total"] == total
    if trainable is not None:
        assert t["trainable"] == trainable


def test_stage_active_count_9l():
    # 3 blocks + final LayerNorm + head: 104.9M by this architecture (published: 105.0M)
    assert stage_active(load_config("paper-9l-glyph").model, 3) == 104_899_584


def test_paper_16bit_model_instantiates_with_exact_count():
    m = Model(load_config("paper-16l-16bit").model)  # lazy: nothing is materialised
    assert count_module(m) == 269_699_072


def test_unknown_config_key_is_named(tmp_path):
    with pytest.raises(ValueError, match="hidden_sise"):
        ModelArgs.from_dict({"hidden_sise": 3})
    p = tmp_path / "c.yaml"
    p.write_text("model: {hidden_size: 32, num_attention_heads: 4}\ngrwo: {}\n")
    with pytest.raises(ValueError, match="grwo"):
        load_config(p)


def test_packaged_configs_load():
    """Every packaged config parses to a model whose stages add up to its depth, and
    its name and description are set (the README and `info` show them)."""
    from mlx_grow.training.schedule import plan

    names = packaged_configs()
    assert {"tiny", "paper-9l-glyph", "paper-16l-16bit"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.name and cfg.description.strip(), name
        grown = [st for st in plan(cfg) if not st.lora_phase]
        assert grown[-1].depth == cfg.model.num_hidden_layers == sum(st.new for st in grown), name


def test_growth_appends_and_keeps_blocks(tmp_path):
    from mlx_grow.checkpoint import load_args, save_model

    m = make()
    before = {k: np.array(v) for k, v in tree_flatten(m.parameters())}
    add_blocks(m, 2, "zero-out", seed=1)
    assert len(m.layers) == 4 and m.args.num_hidden_layers == 2  # the shared args are not changed
    assert load_args(save_model(m, tmp_path / "m")).num_hidden_layers == 4  # the depth is derived when saving
    after = dict(tree_flatten(m.parameters()))
    for k, v in before.items():
        assert np.array_equal(v, np.array(after[k])), k
    # zero-out blocks are the identity: logits unchanged
    m2 = make()
    ids = mx.array([[1, 2, 3, 4]])
    assert mx.allclose(m(ids), m2(ids), atol=1e-5).item()
    add_blocks(m, 1, "copy-top")
    assert mx.array_equal(m.layers[-1].mlp.c_fc.weight, m.layers[-2].mlp.c_fc.weight).item()
