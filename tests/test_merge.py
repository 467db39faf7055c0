import json
import string

import mlx.core as mx
import numpy as np
import pytest
from helpers import char_tokenizer, tiny, tiny_args
from mlx.utils import tree_flatten

from mlx_grow import load
from mlx_grow.checkpoint import CheckpointError, save_model
from mlx_grow.merge.build import merge
from mlx_grow.merge.combine import MergedModel, make_combiner
from mlx_grow.merge.store import load_merged
from mlx_grow.merge.tune import tune_merged
from mlx_grow.model import Model
from mlx_grow.training.init import init_weights

IDS = [[5, 17, 40, 3, 9, 60, 22, 8], [7, 7, 30, 41, 2, 12, 50, 11]]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return char_tokenizer(tmp_path_factory.mktemp("tok"))


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def expert_logits(models, temps=None):
    temps = temps or [1.0] * len(models)
    return [np.array(m(mx.array(IDS)).astype(mx.float32)) / t for m, t in zip(models, temps)]


def save(tmp_path, name, model, tok, run="runs/a"):
    return save_model(model, tmp_path / name, tok, meta={"lineage": {"run": run, "stage": 1}})


def test_merge_with_itself_is_the_model(tok, tmp_path):
    a = tiny(tok)
    ref = np_log_softmax(expert_logits([a])[0])
    for kind in ("mean-logits", "mixture"):
        m = MergedModel([a, a], make_combiner(2, kind))
        np.testing.assert_allclose(np_log_softmax(np.array(m(mx.array(IDS)))), ref, atol=1e-5)
    # and through a merged directory on disk, router on
    d = save(tmp_path, "a", a, tok)
    out = merge([d, d], tmp_path / "self", router=True)
    model, _ = load(out)
    assert isinstance(model, MergedModel)
    np.testing.assert_allclose(np_log_softmax(np.array(model(mx.array(IDS)))), ref, atol=1e-5)


def test_mean_logits_and_mixture_match_numpy(tok):
    a, b = tiny(tok, seed=0), tiny(tok, seed=1)
    x = mx.array(IDS)
    za, zb = expert_logits([a, b])
    got = np.array(MergedModel([a, b], make_combiner(2))(x))
    np.testing.assert_allclose(got, (za + zb) / 2, atol=1e-5)
    got = np.array(MergedModel([a, b], make_combiner(2, "weighted", weights="3,1"))(x))
    np.testing.assert_allclose(got, 0.75 * za + 0.25 * zb, atol=1e-5)
    ta, tb = expert_logits([a, b], [0.5, 2.0])
    want = np.logaddexp(np.log(0.7) + np_log_softmax(ta), np.log(0.3) + np_log_softmax(tb))
    got = np.array(MergedModel([a, b], make_combiner(2, "mixture", "0.7,0.3", "0.5,2"))(x))
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_router_is_the_prefix_posterior(tok):
    a, b = tiny(tok, seed=0), tiny(tok, seed=1)
    lps = [np_log_softmax(z) for z in expert_logits([a, b])]
    ids = np.array(IDS)
    # log p_e(x_t | x_<t) for t >= 1; the posterior at t has seen x_1..x_t.
    ll = [np.concatenate([np.zeros((2, 1)), np.take_along_axis(lp[:, :-1], ids[:, 1:, None], -1)[..., 0]], 1)
          for lp in lps]
    post = np.stack([np.log(0.5) + np.cumsum(x, 1) for x in ll])
    post = np.exp(post - np.logaddexp(post[0], post[1]))
    want = np.log(post[0][..., None] * np.exp(lps[0]) + post[1][..., None] * np.exp(lps[1]))
    got = np.array(MergedModel([a, b], make_combiner(2, "mixture", router=True))(mx.array(IDS)))
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("adapter", ["token", "lowrank", "gate"])
def test_adapters_start_as_the_plain_combiner(tok, adapter):
    a, b = tiny(tok, seed=0), tiny(tok, seed=1)
    plain = MergedModel([a, b], make_combiner(2))(mx.array(IDS))
    fused = MergedModel([a, b], make_combiner(2, adapter=adapter))(mx.array(IDS))
    assert mx.allclose(plain, fused, atol=1e-5).item()


def test_merged_dir_roundtrip_and_checksums(tok, tmp_path):
    a, b = save(tmp_path, "a", tiny(tok, seed=0), tok), save(tmp_path, "b", tiny(tok, seed=1), tok, run="runs/b")
    out = merge([a, b], tmp_path / "m", combiner="mixture", weights="0.6,0.4", adapter="lowrank")
    meta = json.loads((out / "mlx_grow.json").read_text())
    assert [e["origin"] for e in meta["experts"]] == [str(a.resolve()), str(b.resolve())]
    assert meta["combiner"]["kind"] == "mixture" and meta["combiner"]["weights"] == pytest.approx([0.6, 0.4])
    assert "experts/1/model.safetensors" in meta["files"] and "substrate.safetensors" in meta["files"]
    model, _ = load_merged(out)
    ref = MergedModel([tiny(tok, seed=0), tiny(tok, seed=1)], make_combiner(2, "mixture", "0.6,0.4",
                                                                            adapter="lowrank"))
    assert mx.allclose(model(mx.array(IDS)), ref(mx.array(IDS)), atol=1e-5).item()
    assert model.args.vocab_size == tok.vocab_size
    f = out / "experts" / "0" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load(out)


def nothing_written(tmp_path, name):
    return not any(p.name == name or p.name.startswith(f".{name}.") for p in tmp_path.iterdir())


def test_refuses_other_substrate(tok, tmp_path):
    a = save(tmp_path, "a", tiny(tok), tok)
    other = Model(tiny_args(vocab_size=tok.vocab_size, substrate={"kind": "random", "bits": 8, "seed": 3}))
    init_weights(other, 1)
    b = save(tmp_path, "b", other, tok)
    with pytest.raises(ValueError, match=r"(?s)differ in their substrate.*kind=binary.*kind=random"):
        merge([a, b], tmp_path / "m")
    assert nothing_written(tmp_path, "m")


def test_refuses_other_tokenizer(tok, tmp_path):
    other_tok = char_tokenizer(tmp_path / "tok2", chars=string.printable.replace("~", "\u00e9"))
    assert other_tok.vocab_size == tok.vocab_size and other_tok.fingerprint != tok.fingerprint
    a = save(tmp_path, "a", tiny(tok), tok)
    b = save(tmp_path, "b", tiny(other_tok), other_tok)
    with pytest.raises(ValueError, match="different tokenizers"):
        merge([a, b], tmp_path / "m")
    small = char_tokenizer(tmp_path / "tok3", chars="abcdefghij")
    c = save(tmp_path, "c", tiny(small), small)
    with pytest.raises(ValueError, match="different tokenizers"):
        merge([a, c], tmp_path / "m")
    assert nothing_written(tmp_path, "m")


def test_bad_inputs(tok, tmp_path):
    a = save(tmp_path, "a", tiny(tok), tok)
    with pytest.raises(FileNotFoundError, match="nope does not exist"):
        merge([a, tmp_path / "nope"], tmp_path / "m")
    with pytest.raises(ValueError, match="at least two"):
        merge([a], tmp_path / "m")
    for kw, msg in [({"combiner": "weighted", "weights": "0,0"}, "sum to a positive"),
                    ({"combiner": "weighted", "weights": "1,-2"}, "sum to a positive"),
                    ({"combiner": "weighted", "weights": "1"}, "one per expert"),
                    ({"combiner": "weighted", "weights": "a,b"}, "comma-separated numbers"),
                    ({"weights": "0.5,0.5"}, "--combiner weighted"),
                    ({"temperature": "0"}, "temperatures must be > 0"),
                    ({"combiner": "max"}, "unknown combiner")]:
        with pytest.raises(ValueError, match=msg):
            merge([a, a], tmp_path / "m", **kw)
    assert nothing_written(tmp_path, "m")


def test_parameter_averaging_needs_one_lineage(tok, tmp_path):
    m0, m1 = tiny(tok, seed=0), tiny(tok, seed=1)
    a, b = save(tmp_path, "a", m0, tok, run="runs/x"), save(tmp_path, "b", m1, tok, run="runs/y")
    with pytest.raises(ValueError, match="growth lineage"):
        merge([a, b], tmp_path / "avg", combiner="average")
    assert nothing_written(tmp_path, "avg")
    c = save(tmp_path, "c", m1, tok, run="runs/x")
    out = merge([a, c], tmp_path / "avg", combiner="average", weights="3,1")
    model, _ = load(out)
    assert isinstance(model, Model)
    want = 0.75 * np.array(m0.lm_head.weight) + 0.25 * np.array(m1.lm_head.weight)
    np.testing.assert_allclose(np.array(model.lm_head.weight), want, atol=1e-6)
    assert json.loads((out / "mlx_grow.json").read_text())["substrate"] == \
        json.loads((a / "mlx_grow.json").read_text())["substrate"]


def test_tune_trains_only_adapter_and_heads(tok, tmp_path):
    for name, line in (("cats", "the cat sat on the mat. "), ("dogs", "a dog ran in the fog. ")):
        rows = [json.dumps({"text": line * (20 + i)}) for i in range(20)]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(rows))
    text = tmp_path / "cats.jsonl"
    a, b = tiny(tok, seed=0), tiny(tok, seed=1)
    block = np.array(a.layers[0].mlp.c_fc.weight)
    model = MergedModel([a, b], make_combiner(2, adapter="gate"))
    rec = tune_merged(model, tok, [str(text), str(tmp_path / "dogs.jsonl")], part="both", steps=20, lr=1e-2,
                      batch_size=4, seq_len=32, progress=False, echo=lambda *_: None)
    assert rec["val_loss_after"] < rec["val_loss_before"]
    assert np.abs(np.array(model.adapter.proj.weight)).sum() > 0
    np.testing.assert_array_equal(np.array(a.layers[0].mlp.c_fc.weight), block)
    # heads only, through the plain weighted-heads path
    heads = MergedModel([tiny(tok, seed=0), tiny(tok, seed=1)], make_combiner(2, "weighted", "0.3,0.7"))
    rec = tune_merged(heads, tok, [str(text)], part="heads", steps=10, lr=1e-2, batch_size=4, seq_len=32,
                      progress=False, echo=lambda *_: None)
    assert rec["val_loss_after"] < rec["val_loss_before"]
    with pytest.raises(ValueError, match="needs one"):
        tune_merged(MergedModel([a, b]), tok, [str(text)], part="adapter", steps=1)


def test_tune_all_trains_the_experts_blocks_too(tok, tmp_path):
    rows = [json.dumps({"text": "the cat sat on the mat. " * (20 + i)}) for i in range(20)]
    (tmp_path / "cats.jsonl").write_text("\n".join(rows))
    a, b = save(tmp_path, "a", tiny(tok, seed=0), tok), save(tmp_path, "b", tiny(tok, seed=1), tok)
    out = merge([a, b], tmp_path / "moe", tune={"part": "all", "data": [str(tmp_path / "cats.jsonl")], "steps": 20,
                                                "lr": 1e-2, "batch_size": 4, "seq_len": 32}, progress=False,
                echo=lambda *_: None)
    model, _ = load_merged(out)
    meta = json.loads((out / "mlx_grow.json").read_text())
    assert meta["combiner"]["adapter"] == "none"  # no adapter is added for part all
    assert meta["tuned"]["val_loss_after"] < meta["tuned"]["val_loss_before"]
    before = load(a)[0]
    tuned = model.experts[0]
    for name in ("layers.0.mlp.c_fc.weight", "layers.1.self_attn.q_proj.weight", "norm.weight", "lm_head.weight"):
        get = lambda m, n=name: np.array(dict(tree_flatten(m.parameters()))[n])  # noqa: E731
        assert not np.array_equal(get(before), get(tuned)), name
    np.testing.assert_array_equal(np.array(before.substrate.table), np.array(tuned.substrate.table))


def test_cli_merge(tok, tmp_path):
    from typer.testing import CliRunner

    from mlx_grow.cli import app

    a, b = save(tmp_path, "a", tiny(tok, seed=0), tok), save(tmp_path, "b", tiny(tok, seed=1), tok)
    run = CliRunner().invoke(app, ["merge", str(a), str(b), "-o", str(tmp_path / "m"), "--combiner", "mixture",
                                   "--weights", "0.7,0.3", "--router"])
    assert run.exit_code == 0, run.output
    assert run.output.strip().splitlines()[-1] == str(tmp_path / "m")
    run = CliRunner().invoke(app, ["generate", "-m", str(tmp_path / "m"), "-p", "Hello", "-n", "5"])
    assert run.exit_code == 0 and "Generation: 5 tokens" in run.output
    run = CliRunner().invoke(app, ["merge", str(a), str(tmp_path / "zz"), "-o", str(tmp_path / "m2")])
    assert run.exit_code == 2 and "does not exist" in run.output
    assert nothing_written(tmp_path, "m2")


# trains two experts and tunes a merge (~20 s on 2 cores): in the slow set
@pytest.mark.slow
def test_two_domain_experts_merge_beats_the_worse(tmp_path):
    """Grow one expert on KJV and one on Shakespeare; the merge's validation loss
    on the union of both domains is below the worse expert's."""
    from mlx_grow.config import RunConfig
    from mlx_grow.data import corpora
    from mlx_grow.generate import generate
    from mlx_grow.merge.tune import compare
    from mlx_grow.training.grow import grow

    domains = ["builtin:kjv", "builtin:shakespeare"]
    chars = set()
    for src in domains:
        for doc in corpora.documents(src):
            chars.update(doc)
    tok = char_tokenizer(tmp_path / "tok", chars)

    def config(src):
        return RunConfig.from_dict(dict(
            name="e2e", tokenizer=str(tmp_path / "tok"), data={"sources": [src]},
            model=dict(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=64, substrate={"kind": "binary", "bits": 7}),
            grow=dict(blocks_per_stage=1, steps_per_stage=60),
            train=dict(batch_size=16, seq_len=64, lr=3e-3, warmup_steps=5, eval_every=0, checkpoint_every=0,
                       val_batches=2, log_every=20)))

    quiet = lambda *a, **k: None  # noqa: E731
    experts = [grow(config(src), tmp_path / src.split(":")[1], progress=False, echo=quiet)[0] for src in domains]
    table = compare(experts, domains, batches=4)
    names = list(table)
    worse = max(table[n]["union"] for n in names[:2])
    assert table["mean-logits"]["union"] < worse, table
    assert table["mixture"]["union"] < worse, table
    # each expert is better on its own domain than on the other one
    assert table[names[0]]["builtin:kjv"] < table[names[1]]["builtin:kjv"], table
    assert table[names[1]]["builtin:shakespeare"] < table[names[0]]["builtin:shakespeare"], table
    model, mtok = load(merge(experts, tmp_path / "merged"))
    assert len(generate(model, mtok, "And God said", max_tokens=20)) > 0


def test_cli_tune_without_tune_data_reads_the_experts_sources(tmp_path):
    """`merge A B --adapter gate --tune` with no --tune-data (the documented default)
    tunes on the sources the experts' runs were grown on, read from their run.json."""
    from helpers import grow_config, kjv_slice
    from typer.testing import CliRunner

    from mlx_grow.cli import app
    from mlx_grow.training.grow import grow

    corpus = kjv_slice(tmp_path / "kjv.txt", docs=40)
    quiet = lambda *a, **k: None  # noqa: E731
    finals = [grow(grow_config(str(corpus), depth=2, grow={"steps_per_stage": 2}, train={"seed": s}),
                   tmp_path / f"run{s}", progress=False, echo=quiet)[0] for s in (0, 1)]
    run = CliRunner().invoke(app, ["merge", *map(str, finals), "-o", str(tmp_path / "m"), "--adapter", "gate",
                                   "--tune", "--tune-steps", "2", "--tune-batch-size", "2", "--tune-seq-len", "16"])
    assert run.exit_code == 0, run.output
    tuned = json.loads((tmp_path / "m" / "mlx_grow.json").read_text())["tuned"]
    assert str(corpus) in json.dumps(tuned), tuned

