import logging

import mlx.core as mx
import numpy as np
import pytest
from helpers import char_tokenizer, tiny

from mlx_grow.generate import batch_generate, encode_prompt, generate, stream_generate
from mlx_grow.merge.combine import MergedModel, make_combiner
from mlx_grow.sample import repetition_penalty

@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return char_tokenizer(tmp_path_factory.mktemp("tok"))


def full_logprobs(model, ids):
    logits = model(mx.array([ids])).astype(mx.float32)[0]
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


@pytest.mark.parametrize("merged", [False, True])
def test_cached_decoding_equals_full_forward(tok, merged):
    model = tiny(tok)
    if merged:
        model = MergedModel([model, tiny(tok, seed=1)], make_combiner(2, "mixture", router=True))
    prompt = encode_prompt(tok, "The quick brown fox")
    steps = list(stream_generate(model, tok, prompt, max_tokens=12))
    gen = [r.token for r in steps]
    full = full_logprobs(model, prompt + gen)
    for i, r in enumerate(steps):
        ref = full[len(prompt) - 1 + i]
        assert mx.allclose(r.logprobs, ref, atol=1e-4).item(), f"step {i}"
        assert r.token == int(mx.argmax(ref).item())  # greedy


def test_long_prompt_prefill_in_chunks(tok, monkeypatch):
    import importlib

    G = importlib.import_module("mlx_grow.generate")  # the module; mlx_grow.generate is the function

    monkeypatch.setattr(G, "PREFILL_STEP", 3)
    model = tiny(tok)
    prompt = encode_prompt(tok, "a longer prompt, filled in chunks of three")
    r = next(iter(stream_generate(model, tok, prompt, max_tokens=1)))
    assert mx.allclose(r.logprobs, full_logprobs(model, prompt)[-1], atol=1e-4).item()


def test_seed_reproduces_sample(tok):
    model = tiny(tok)
    kw = dict(max_tokens=30, temp=1.0, top_k=40, top_p=0.95)
    a = generate(model, tok, "Hello", seed=7, **kw)
    b = generate(model, tok, "Hello", seed=7, **kw)
    c = generate(model, tok, "Hello", seed=8, **kw)
    assert a == b and len(a) > 0
    assert a != c


def test_batch_matches_one_by_one(tok):
    model = tiny(tok)
    prompts = ["Hi", "The quick brown fox jumps", "x"]
    single = [generate(model, tok, p, max_tokens=15) for p in prompts]
    out = batch_generate(model, tok, prompts, max_tokens=15)
    assert out.texts == single
    assert [tok.decode(ids) for ids in out.token_ids] == single
    assert out.stats.prompt_tokens == sum(len(encode_prompt(tok, p)) for p in prompts)


def test_batch_with_router_matches_one_by_one(tok):
    merged = MergedModel([tiny(tok), tiny(tok, seed=1)], make_combiner(2, router=True))
    prompts = ["abc", "a much longer prompt here"]
    single = [generate(merged, tok, p, max_tokens=10) for p in prompts]
    assert batch_generate(merged, tok, prompts, max_tokens=10).texts == single


def test_stop_string_and_streaming(tok):
    model = tiny(tok)
    text = generate(model, tok, "Hello", max_tokens=40)
    stop = text[10:13]
    pieces = list(stream_generate(model, tok, "Hello", max_tokens=40, stop=[stop]))
    out = "".join(p.text for p in pieces)
    assert out == text[: text.find(stop)]
    assert pieces[-1].finish_reason == "stop"
    assert batch_generate(model, tok, ["Hello"], max_tokens=40, stop=[stop]).texts == [out]


def test_stops_at_eos(tok):
    model = tiny(tok)
    # A LayerNorm bias of ones makes h . ones large, so the eos row wins every step.
    model.norm.bias = mx.ones_like(model.norm.bias)
    w = np.zeros(model.lm_head.weight.shape, np.float32)
    w[tok.eos_id] = 1.0
    model.lm_head.weight = mx.array(w)
    last = list(stream_generate(model, tok, "Hello", max_tokens=10))[-1]
    assert last.finish_reason == "stop" and last.token == tok.eos_id and last.generation_tokens == 1
    assert generate(model, tok, "Hello", max_tokens=10) == ""


def test_length_finish_and_stats(tok):
    rs = list(stream_generate(tiny(tok), tok, "Hello", max_tokens=5))
    assert len(rs) == 5 and rs[-1].finish_reason == "length" and rs[-1].generation_tokens == 5
    assert rs[-1].prompt_tokens == len(encode_prompt(tok, "Hello"))
    assert rs[-1].prompt_tps > 0 and rs[-1].generation_tps > 0


def test_prompt_layout(tok):
    # as the tokenizer says: this one adds nothing (bvv241 as built); --prompt-start sep puts </s> first
    assert encode_prompt(tok, "ab") == tok.encode("ab")
    assert encode_prompt(tok, "ab", start="sep") == [tok.eos_id, *tok.encode("ab")]
    a, b = tok.inst_ids
    assert encode_prompt(tok, "ab", instruct=True) == [a, *tok.encode(" ab "), b]
    trained = tok.with_prompt_start("</s>")  # what a model mlx-grow trained records
    assert encode_prompt(trained, "ab") == [tok.eos_id, *tok.encode("ab")]
    assert encode_prompt(trained, "ab", instruct=True) == [tok.eos_id, a, *tok.encode(" ab "), b]
    assert encode_prompt(trained, "ab", start="none") == tok.encode("ab")
    assert encode_prompt(tok, [5, 6]) == [5, 6]


def test_bad_prompts(tok, caplog):
    model = tiny(tok)
    with pytest.raises(ValueError, match="empty"):
        generate(model, tok, "   ")
    with pytest.raises(ValueError, match="prompt 2 is empty"):
        batch_generate(model, tok, ["ok", ""], max_tokens=2)
    with caplog.at_level(logging.WARNING, logger="mlx_grow.generate"):
        generate(model, tok, "caf\u00e9 \u00fc", max_tokens=1)
    assert "2 <unk> token" in caplog.text


@pytest.mark.parametrize("kw, msg", [({"temp": -1.0}, "temperature"), ({"top_p": 0.0}, "top_p"),
                                     ({"min_p": 2.0}, "min_p"), ({"top_k": -3}, "top_k"),
                                     ({"max_tokens": 0}, "max_tokens"), ({"repetition_penalty": 0.0}, "penalty")])
def test_bad_options(tok, kw, msg):
    with pytest.raises(ValueError, match=msg):
        generate(tiny(tok), tok, "Hello", **{"max_tokens": 3, **kw})


def test_repetition_penalty_matches_numpy():
    logits = np.array([[2.0, -1.0, 0.5, 3.0], [1.0, 1.0, -2.0, 0.0]], np.float32)
    hist = np.array([[0, 1, 1], [2, 2, 2]])
    got = np.array(repetition_penalty(mx.array(logits), mx.array(hist), 2.0))
    want = logits.copy()
    for b in range(2):
        for t in set(hist[b]):
            want[b, t] = want[b, t] / 2 if want[b, t] > 0 else want[b, t] * 2
    np.testing.assert_allclose(got, want)


def test_cli_generate(tok, tmp_path):
    from typer.testing import CliRunner

    from mlx_grow.checkpoint import save_model
    from mlx_grow.cli import app

    save_model(tiny(tok), tmp_path / "m", tok)
    want = generate(tiny(tok), tok, "Hello", max_tokens=8)
    run = CliRunner().invoke(app, ["generate", "--model", str(tmp_path / "m"), "--prompt", "Hello",
                                   "--max-tokens", "8"])
    assert run.exit_code == 0, run.output
    assert want in run.output and "tokens-per-sec" in run.output
    run = CliRunner().invoke(app, ["generate", "-m", str(tmp_path / "m"), "--prompt", "-", "-n", "8"],
                             input="Hello")
    assert run.exit_code == 0 and want in run.output
    (tmp_path / "p.txt").write_text("Hello\n\nThe fox\n")
    run = CliRunner().invoke(app, ["generate", "-m", str(tmp_path / "m"), "--prompt-file", str(tmp_path / "p.txt"),
                                   "-n", "8"])
    assert run.exit_code == 0 and want in run.output and "--- 2: The fox" in run.output
    run = CliRunner().invoke(app, ["generate", "-m", str(tmp_path / "m"), "--prompt", ""])
    assert run.exit_code == 2 and "empty" in run.output
    sep = generate(tiny(tok), tok, "Hello", max_tokens=8, prompt_start="sep")
    run = CliRunner().invoke(app, ["generate", "-m", str(tmp_path / "m"), "--prompt", "Hello", "-n", "8",
                                   "--prompt-start", "sep"])
    assert run.exit_code == 0 and sep in run.output and "Prompt: 6 tokens" in run.output  # </s> + "Hello"
    assert "Prompt: 5 tokens" in CliRunner().invoke(app, ["generate", "-m", str(tmp_path / "m"), "-p", "Hello",
                                                          "-n", "1"]).output  # this tokenizer adds nothing
    run = CliRunner().invoke(app, ["generate", "-m", str(tmp_path / "m"), "--prompt", "Hello", "--prompt-start", "x"])
    assert run.exit_code == 2 and "none, sep" in run.output


def test_one_vocabulary_rule_padding_rows_load_and_are_never_sampled(tok, tmp_path):
    """tokenizer.check_vocab: a tokenizer with more ids than the model has rows is refused;
    fewer are padding (imported models carry it), refused only where a model is grown for the
    tokenizer (exact). A padded model saves and loads, and neither generation nor the paper
    protocol's sampler ever picks a padding row, even when it holds the highest logits."""
    import mlx.nn as nn
    from helpers import tiny_args

    from mlx_grow.api import load
    from mlx_grow.checkpoint import save_model
    from mlx_grow.eval.scorer import Scorer
    from mlx_grow.model import Model
    from mlx_grow.training.init import init_weights
    from mlx_grow.tokenizer import check_vocab

    n = tok.vocab_size
    check_vocab(tok, n, "t")
    check_vocab(tok, n + 8, "t")
    with pytest.raises(ValueError, match=f"^t has {n} ids but the model's vocab_size is {n - 1}: use the tokenizer"):
        check_vocab(tok, n - 1, "t")
    with pytest.raises(ValueError, match=f"^t has {n} ids but model.vocab_size is {n + 8}: make them equal$"):
        check_vocab(tok, n + 8, "t", "make them equal", exact=True)

    m = Model(tiny_args(vocab_size=n + 8, substrate={"kind": "binary", "bits": 8}))
    init_weights(m, 0)
    model, tok2 = load(save_model(m, tmp_path / "padded", tok))
    assert model.args.vocab_size == n + 8 and tok2.vocab_size == n

    class Boosted(nn.Module):  # the padding rows win every draw unless they are masked
        def __init__(self, head):
            super().__init__()
            self.head = head

        def __call__(self, h):
            z = self.head(h)
            return z + mx.where(mx.arange(z.shape[-1]) >= n, 1e4, 0.0).astype(z.dtype)

    model.lm_head = Boosted(model.lm_head)
    for temp in (0.0, 1.0):
        ids = [r.token for r in stream_generate(model, tok2, "ab", max_tokens=6, temp=temp, seed=0)]
        assert ids and max(ids) < n, (temp, ids)
    rows = Scorer(model, tok2).sample([tok2.encode("ab")], [4], runs=2, temp=1.0)
    assert all(max(r) < n for r in rows[0]), rows
