"""Convert: import from PyTorch / Hugging Face layouts, export to Starcoder2 and
GPT-NeoX, round trips, and bad input. Fixtures are built here (no network);
imports are checked against an independent numpy forward pass."""

import json
import math
import struct
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from helpers import tiny_args
from mlx.utils import tree_flatten

from mlx_grow import convert
from mlx_grow.checkpoint import load_model, read_meta, read_weights, save_model
from mlx_grow.convert.common import block_shapes
from mlx_grow.model import Model
from mlx_grow.substrate.codes import id_bits

V, D, H, NL, F = 512, 32, 4, 2, 128
IDS = [3, 17, 200, 5, 511, 42, 42, 9]


# --- fixtures: a tokenizer, random weights by role, and the numpy reference ---


def save_tokenizer(out, vocab=V):
    from tokenizers import Tokenizer as HF
    from tokenizers import models, pre_tokenizers

    from mlx_grow.tokenizer import Tokenizer

    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    hf = HF(models.WordLevel(words, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.add_special_tokens(["<unk>", "<s>", "</s>"])
    Tokenizer(hf, bos="<s>", eos="</s>", unk="<unk>").save(out)


def roles(seed=0, f=F):
    """Random weights by role, large enough that a wrong mapping shows."""
    rng = np.random.default_rng(seed)

    def n(*shape, std=0.2):
        return (std * rng.standard_normal(shape)).astype(np.float32)

    layers = [dict(ln1_w=1 + n(D, std=0.1), ln1_b=n(D, std=0.1), wq=n(D, D), bq=n(D), wk=n(D, D), bk=n(D),
                   wv=n(D, D), bv=n(D), wo=n(D, D), bo=n(D), ln2_w=1 + n(D, std=0.1), ln2_b=n(D, std=0.1),
                   w1=n(f, D), b1=n(f), w2=n(D, f, std=0.1), b2=n(D)) for _ in range(NL)]
    return dict(layers=layers, lnf_w=1 + n(D, std=0.1), lnf_b=n(D, std=0.1), head=n(V, D, std=0.5),
                emb=n(V, D, std=1.0))


def layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


def gelu(x, tanh=False):
    if tanh:
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + np.frompyfunc(math.erf, 1, 1)(x / math.sqrt(2)).astype(np.float64))


def rotary(x, interleaved, theta=10000.0):
    """x [H, T, hd]: rotate pairs (2j, 2j+1) or halves (j, j + hd/2) by angle t * theta^(-2j/hd)."""
    hd, T = x.shape[-1], x.shape[1]
    ang = np.arange(T)[:, None] * theta ** (-np.arange(0, hd, 2) / hd)[None]
    cos, sin = np.cos(ang), np.sin(ang)
    a, b = (x[..., 0::2], x[..., 1::2]) if interleaved else (x[..., : hd // 2], x[..., hd // 2:])
    ra, rb = a * cos - b * sin, a * sin + b * cos
    if not interleaved:
        return np.concatenate([ra, rb], -1)
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = ra, rb
    return out


def reference(r, emb, ids=IDS, interleaved=False, tanh=False, eps=1e-5):
    """Logits [T, V] of the pre-LN block written out in float64 numpy."""
    x = emb[ids].astype(np.float64)
    T = len(ids)
    causal = np.triu(np.full((T, T), -np.inf), 1)
    for p in r["layers"]:
        h = layer_norm(x, p["ln1_w"], p["ln1_b"], eps)
        q, k, v = ((h @ p[w].T + p[b]).reshape(T, H, -1).transpose(1, 0, 2)
                   for w, b in (("wq", "bq"), ("wk", "bk"), ("wv", "bv")))
        q, k = rotary(q, interleaved), rotary(k, interleaved)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(D // H) + causal
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        x = x + (a @ v).transpose(1, 0, 2).reshape(T, D) @ p["wo"].T + p["bo"]
        h = layer_norm(x, p["ln2_w"], p["ln2_b"], eps)
        x = x + gelu(h @ p["w1"].T + p["b1"], tanh) @ p["w2"].T + p["b2"]
    return layer_norm(x, r["lnf_w"], r["lnf_b"], eps) @ r["head"].T


def ours(model_dir, ids=IDS):
    return np.array(load_model(model_dir)(mx.array([ids]))[0])


def close(a, b, tol=1e-4):
    err = np.abs(a - b).max()
    assert err < tol * max(1.0, np.abs(b).max()), f"max diff {err}"


def nanogpt(r, fused=True, prefix="", emb=True):
    """nanoGPT names: fused c_attn rows [q; k; v] (or separate q/k/v), the causal-mask buffer."""
    t = {f"{prefix}transformer.ln_f.weight": r["lnf_w"], f"{prefix}transformer.ln_f.bias": r["lnf_b"],
         f"{prefix}lm_head.weight": r["head"]}
    if emb:
        t[f"{prefix}transformer.wte.weight"] = r["emb"]
    for i, p in enumerate(r["layers"]):
        h = f"{prefix}transformer.h.{i}."
        t.update({h + "ln_1.weight": p["ln1_w"], h + "ln_1.bias": p["ln1_b"], h + "ln_2.weight": p["ln2_w"],
                  h + "ln_2.bias": p["ln2_b"], h + "attn.c_proj.weight": p["wo"], h + "attn.c_proj.bias": p["bo"],
                  h + "mlp.c_fc.weight": p["w1"], h + "mlp.c_fc.bias": p["b1"], h + "mlp.c_proj.weight": p["w2"],
                  h + "mlp.c_proj.bias": p["b2"], h + "attn.bias": np.tril(np.ones((1, 1, 8, 8), np.float32))})
        if fused:
            t[h + "attn.c_attn.weight"] = np.concatenate([p["wq"], p["wk"], p["wv"]])
            t[h + "attn.c_attn.bias"] = np.concatenate([p["bq"], p["bk"], p["bv"]])
        else:
            t.update({h + f"attn.{x}_proj.{s}": p[f"{'w' if s == 'weight' else 'b'}{x}"]
                      for x in "qkv" for s in ("weight", "bias")})
    return t


def neox(r):
    """GPT-NeoX names: query_key_value fused per head, rows [h][q k v]."""
    t = {"gpt_neox.embed_in.weight": r["emb"], "gpt_neox.final_layer_norm.weight": r["lnf_w"],
         "gpt_neox.final_layer_norm.bias": r["lnf_b"], "embed_out.weight": r["head"]}
    for i, p in enumerate(r["layers"]):
        h = f"gpt_neox.layers.{i}."
        t.update({h + "input_layernorm.weight": p["ln1_w"], h + "input_layernorm.bias": p["ln1_b"],
                  h + "post_attention_layernorm.weight": p["ln2_w"], h + "post_attention_layernorm.bias": p["ln2_b"],
                  h + "attention.dense.weight": p["wo"], h + "attention.dense.bias": p["bo"],
                  h + "mlp.dense_h_to_4h.weight": p["w1"], h + "mlp.dense_h_to_4h.bias": p["b1"],
                  h + "mlp.dense_4h_to_h.weight": p["w2"], h + "mlp.dense_4h_to_h.bias": p["b2"],
                  h + "attention.rotary_emb.inv_freq": np.ones(4, np.float32)})
        w = np.stack([p[x].reshape(H, D // H, D) for x in ("wq", "wk", "wv")], 1).reshape(3 * D, D)
        b = np.stack([p[x].reshape(H, D // H) for x in ("bq", "bk", "bv")], 1).reshape(3 * D)
        t.update({h + "attention.query_key_value.weight": w, h + "attention.query_key_value.bias": b})
    return t


NANO_CONFIG = {"n_embd": D, "n_layer": NL, "n_head": H, "vocab_size": V, "block_size": 64}
NEOX_CONFIG = {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "vocab_size": V,
               "hidden_size": D, "num_hidden_layers": NL, "num_attention_heads": H, "intermediate_size": F,
               "hidden_act": "gelu", "rotary_pct": 1.0, "rotary_emb_base": 10000, "layer_norm_eps": 1e-5,
               "use_parallel_residual": False, "max_position_embeddings": 64, "tie_word_embeddings": False}


def write_dir(d, tensors, config=None, name="model.safetensors"):
    from safetensors.numpy import save_file

    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(d / name))
    if config is not None:
        (d / "config.json").write_text(json.dumps(config))
    return d


def torch_save(obj, path):
    torch = pytest.importorskip("torch")
    conv = lambda v: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v  # noqa: E731
    torch.save({k: conv(v) for k, v in obj.items()} if isinstance(obj, dict) else conv(obj), str(path))


# --- import ---


def test_nanogpt_fused_qkv(tmp_path):
    r = roles(1)
    src = write_dir(tmp_path / "src", nanogpt(r), NANO_CONFIG)
    rep = convert.import_checkpoint(src, tmp_path / "out")
    assert rep["layout"] == "nanogpt" and rep["args"]["substrate"]["kind"] == "trainable"
    close(ours(tmp_path / "out"), reference(r, r["emb"]))


def test_separate_qkv_bin_with_compile_prefix_and_tanh(tmp_path):
    r = roles(2)
    (tmp_path / "src").mkdir()
    torch_save(nanogpt(r, fused=False, prefix="_orig_mod."), tmp_path / "src" / "pytorch_model.bin")
    (tmp_path / "src" / "config.json").write_text(json.dumps({**NANO_CONFIG, "activation_function": "gelu_new"}))
    rep = convert.import_checkpoint(tmp_path / "src", tmp_path / "out")
    assert rep["layout"] == "nanogpt-split" and rep["args"]["hidden_act"] == "gelu_tanh"
    close(ours(tmp_path / "out"), reference(r, r["emb"], tanh=True))


def test_gpt_neox_per_head_qkv(tmp_path):
    r = roles(3)
    src = write_dir(tmp_path / "src", neox(r), NEOX_CONFIG)
    rep = convert.import_checkpoint(src, tmp_path / "out")
    assert rep["layout"] == "gpt-neox"
    close(ours(tmp_path / "out"), reference(r, r["emb"]))


def test_neox_fixture_matches_transformers(tmp_path):
    """The test's own per-head packing is the real GPT-NeoX one (else the import test proves nothing)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    r = roles(3)
    src = write_dir(tmp_path / "src", neox(r), NEOX_CONFIG)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf(torch.tensor([IDS])).logits[0].numpy()
    close(logits, reference(r, r["emb"]))


MAP = """
base: nanogpt
tensors:
  embed: tok_emb
  layers.{i}.input_layernorm: blocks.{i}.ln1
  layers.{i}.self_attn.qkv: blocks.{i}.attn.qkv
  layers.{i}.self_attn.o_proj: blocks.{i}.attn.out
  layers.{i}.post_attention_layernorm: blocks.{i}.ln2
  layers.{i}.mlp.c_fc: blocks.{i}.ff.up
  layers.{i}.mlp.c_proj: blocks.{i}.ff.down
  norm: ln_f
  lm_head: head
config:
  num_attention_heads: 4
  rope: interleaved
  hidden_act: gelu_tanh
  expansion: repeat
"""


def custom(r, table):
    names = {"transformer.wte.weight": "tok_emb.weight", "transformer.ln_f": "ln_f", "lm_head": "head",
             "transformer.h.": "blocks.", ".ln_1": ".ln1", ".ln_2": ".ln2", "attn.c_attn": "attn.qkv",
             "attn.c_proj": "attn.out", "mlp.c_fc": "ff.up", "mlp.c_proj": "ff.down"}
    out = {}
    for k, v in nanogpt(r).items():
        if k.endswith(".attn.bias"):  # the causal-mask buffer
            continue
        for a, b in names.items():
            k = k.replace(a, b)
        out[k] = v
    out["tok_emb.weight"] = table
    return out


def test_pt_with_bit_table_and_mapping(tmp_path):
    """A .pt holding a [V, 16] LSB-first bit table, custom names, interleaved rope, tanh GELU."""
    r = roles(4)
    bits = id_bits(V, 16, "lsb")
    (tmp_path / "src").mkdir()
    torch_save(custom(r, bits), tmp_path / "src" / "model.pt")
    (tmp_path / "src" / "config.json").write_text(json.dumps(
        {"model_type": "model_n_embed_16_binary_n_layer_2", "n_embd": D, "vocab_size": V}))
    (tmp_path / "map.yaml").write_text(MAP)
    rep = convert.import_checkpoint(tmp_path / "src", tmp_path / "out", mapping=tmp_path / "map.yaml")
    sub = rep["args"]["substrate"]
    assert (sub["kind"], sub["bits"], sub["order"], sub["expansion"]) == ("binary", 16, "lsb", "repeat")
    assert rep["args"]["rope_traditional"] is True
    emb = np.repeat(bits, D // 16, axis=1)
    close(ours(tmp_path / "out"), reference(r, emb, interleaved=True, tanh=True))
    # converting the rotary style permutes q/k rows; the outputs stay the same
    convert.import_checkpoint(tmp_path / "src", tmp_path / "half", mapping=tmp_path / "map.yaml",
                              output_rope="rotate-half")
    assert load_model(tmp_path / "half").args.rope_traditional is False
    close(ours(tmp_path / "half"), reference(r, emb, interleaved=True, tanh=True))


def test_embeddings_txt_bit_order_detected(tmp_path):
    r = roles(5)
    src = write_dir(tmp_path / "src", nanogpt(r, emb=False), NANO_CONFIG)
    bits = id_bits(V, 16, "msb").astype(int)
    (src / "embeddings.txt").write_text("".join(f"{i}\n{b.tolist()}\n" for i, b in enumerate(bits)))
    rep = convert.import_checkpoint(src, tmp_path / "out", expansion="tile")
    sub = rep["args"]["substrate"]
    assert (sub["kind"], sub["order"], sub["expansion"]) == ("binary", "msb", "tile")
    close(ours(tmp_path / "out"), reference(r, np.tile(bits, (1, 2)).astype(np.float32)))


def test_glyph_matrix_from_tokenizer_dir_pt(tmp_path):
    r = roles(6)
    src = write_dir(tmp_path / "src", nanogpt(r, emb=False), NANO_CONFIG)
    g = np.random.default_rng(0).standard_normal((V, D)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    torch_save(g, tmp_path / "normalized_embeddings_weights.pt")
    rep = convert.import_checkpoint(src, tmp_path / "out", table=tmp_path / "normalized_embeddings_weights.pt")
    assert rep["args"]["substrate"]["kind"] == "glyph"
    close(ours(tmp_path / "out"), reference(r, g))


def test_pickled_callable_refused_without_running(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "src").mkdir()
    torch.save({"transformer.wte.weight": torch.zeros(2, 2), "x": Evil()}, str(tmp_path / "src" / "model.pt"))
    with pytest.raises(ValueError, match=r"refusing to load io.open"):
        convert.import_checkpoint(tmp_path / "src", tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


# --- export and round trips ---


def make_model(kind="binary", seed=0, **kw):
    sub = {"binary": {"kind": "binary", "bits": 9}, "gf2": {"kind": "gf2", "bits": 9, "seed": 1},
           "random": {"kind": "random", "bits": 12, "seed": 2},
           "float": {"kind": "float", "bits": 16, "seed": 3, "expansion": "tile"},
           "glyph": {"kind": "glyph"}, "trainable": {"kind": "trainable", "trainable": True, "seed": 4}}[kind]
    args = tiny_args(substrate=sub, **kw)
    table = None
    if kind == "glyph":  # a random unit-norm [V, d] stand-in for rendered glyphs
        table = np.random.default_rng(7).standard_normal((V, D)).astype(np.float32)
        table /= np.linalg.norm(table, axis=1, keepdims=True)
    m = Model(args, substrate_table=table)
    rng = np.random.default_rng(seed)
    m.load_weights([(k, mx.array((0.2 * rng.standard_normal(v.shape) + ("norm" in k and k.endswith("weight")))
                                 .astype(np.float32)))
                    for k, v in tree_flatten(m.parameters()) if k != "substrate.table"], strict=False)
    mx.eval(m.parameters())
    return m


def saved(tmp_path, name="m", kind="binary", **kw):
    from mlx_grow.tokenizer import load_tokenizer

    save_tokenizer(tmp_path / "tok")
    m = make_model(kind, **kw)
    save_model(m, tmp_path / name, tokenizer=load_tokenizer(tmp_path / "tok"), meta={"lineage": {"run": "r1"}})
    return m, tmp_path / name


@pytest.mark.parametrize("kind", ["binary", "gf2", "random", "float", "glyph", "trainable"])
def test_round_trip_bit_identical(tmp_path, kind):
    _, src = saved(tmp_path, kind=kind, rope_traditional=kind == "gf2")
    convert.export_model(src, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "starcoder2"
    rep = convert.import_checkpoint(tmp_path / "hf", tmp_path / "back")
    assert rep["recipe"] == "exact"
    a, b = read_weights(src), read_weights(tmp_path / "back")
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(np.array(a[k]), np.array(b[k])), k
    assert (src / "config.json").read_text() == (tmp_path / "back" / "config.json").read_text()
    ma, mb = read_meta(src), read_meta(tmp_path / "back")
    assert ma["substrate"] == mb["substrate"] and ma["tokenizer"] == mb["tokenizer"]
    assert mb["lineage"] == {"run": "r1"}
    load_model(tmp_path / "back")  # checksums verify


def test_rmsnorm_model_loads_back_and_export_says_why_not(tmp_path):
    m, src = saved(tmp_path, norm="rmsnorm")
    assert np.array_equal(np.array(m(mx.array([IDS]))), np.array(load_model(src)(mx.array([IDS]))))
    with pytest.raises(ValueError, match="RMSNorm.*LayerNorm"):
        convert.export_model(src, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_sharded_gpt_neox_round_trip(tmp_path):
    _, src = saved(tmp_path, rope_traditional=True)
    convert.export_model(src, tmp_path / "hf", to="gpt-neox", shard_bytes=40_000)
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    convert.import_checkpoint(tmp_path / "hf", tmp_path / "back")
    a, b = read_weights(src), read_weights(tmp_path / "back")
    assert all(np.array_equal(np.array(a[k]), np.array(b[k])) for k in a)


@pytest.mark.parametrize("to,interleaved,act", [("starcoder2", False, "gelu"), ("starcoder2", True, "gelu_tanh"),
                                                ("gpt-neox", True, "gelu")])
def test_transformers_logits_match(tmp_path, to, interleaved, act):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    m, src = saved(tmp_path, rope_traditional=interleaved, hidden_act=act)
    convert.export_model(src, tmp_path / "hf", to=to)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor([IDS])).logits[0].numpy()
    mine = np.array(m(mx.array([IDS]))[0])
    assert np.abs(mine).max() > 1.0  # not a near-zero model that matches anything
    assert np.abs(theirs - mine).max() < 1e-4


@pytest.mark.parametrize("to,act", [("starcoder2", "gelu"), ("gpt-neox", "gelu_tanh")])
def test_mlx_lm_greedy_tokens_match(tmp_path, to, act):
    import mlx_lm
    from mlx_lm.generate import generate_step as lm_step

    from mlx_grow.generate import generate_step

    m, src = saved(tmp_path, hidden_act=act, intermediate_size=4 * D)
    convert.export_model(src, tmp_path / "hf", to=to)
    lm, _ = mlx_lm.load(str(tmp_path / "hf"))
    greedy = lambda lp: mx.argmax(lp, axis=-1)  # noqa: E731
    theirs = [int(t) for t, _ in lm_step(mx.array(IDS), lm, max_tokens=12, sampler=greedy)]
    mine = [int(t.item()) for t, _ in generate_step(m, mx.array([IDS]), 12, greedy)]
    assert theirs == mine and len(set(mine)) > 1


def three_tools_greedy(hf_dir, ours_dir, prompt, n=8):
    """Greedy tokens for a text prompt from transformers and mlx-lm (on the Hugging Face directory)
    and from mlx-grow (on its model directory), each encoding the prompt its own default way."""
    import mlx_lm
    import torch
    import transformers

    from mlx_grow import load
    from mlx_grow.generate import stream_generate

    hf_tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    ids = hf_tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = hf.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=hf_tok.eos_token_id)
    theirs = out[0, ids.shape[1]:].tolist()
    lm, lm_tok = mlx_lm.load(str(hf_dir))
    greedy = lambda lp: mx.argmax(lp, axis=-1)  # noqa: E731
    lm_tokens = [r.token for r in mlx_lm.stream_generate(lm, lm_tok, prompt, max_tokens=n, sampler=greedy)]
    m, tok = load(ours_dir)
    mine = [r.token for r in stream_generate(m, tok, prompt, max_tokens=n)]
    return ids[0].tolist(), theirs, lm_tokens, mine


def test_prompts_start_alike_in_mlx_grow_transformers_and_mlx_lm(tmp_path):
    pytest.importorskip("torch")
    from mlx_grow.generate import encode_prompt
    from mlx_grow.tokenizer import load_tokenizer

    prompt = "w17 w200 w5 w42"
    bare = [17, 200, 5, 42]
    save_tokenizer(tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    # a model mlx-grow trained records its separator in the tokenizer it saves (as the grow loop does)
    grown = tok.with_prompt_start("</s>")
    save_model(make_model(seed=5), tmp_path / "grown", tokenizer=grown, meta={"separator": "</s>"})
    assert encode_prompt(grown, prompt) == [2] + bare and encode_prompt(grown, prompt, start="none") == bare
    convert.export_model(tmp_path / "grown", tmp_path / "hf")
    ids, theirs, lm_tokens, mine = three_tools_greedy(tmp_path / "hf", tmp_path / "grown", prompt)
    assert ids == [2] + bare  # transformers starts the prompt after </s>, as mlx-grow trained it
    assert theirs == lm_tokens == mine and len(set(mine)) > 1
    # the other direction: a Hugging Face checkpoint whose tokenizer adds nothing (bvv241 as built)
    save_model(make_model(seed=5), tmp_path / "plain", tokenizer=tok)
    convert.export_model(tmp_path / "plain", tmp_path / "hf-plain")
    convert.import_checkpoint(tmp_path / "hf-plain", tmp_path / "imported")
    ids, theirs, lm_tokens, mine = three_tools_greedy(tmp_path / "hf-plain", tmp_path / "imported", prompt)
    assert ids == bare and encode_prompt(load_tokenizer(tmp_path / "imported"), prompt) == bare
    assert theirs == lm_tokens == mine
    assert mine != three_tools_greedy(tmp_path / "hf", tmp_path / "grown", prompt)[3]  # the start matters
    assert encode_prompt(tok, prompt, start="sep") == [2] + bare  # --prompt-start sep on a bare tokenizer
    with pytest.raises(ValueError, match="prompt start must be one of none, sep"):
        encode_prompt(tok, prompt, start="bos")


def test_export_dtypes(tmp_path):
    pytest.importorskip("torch")
    from safetensors.torch import load_file

    m, src = saved(tmp_path, kind="float")
    for dtype in ("float16", "bfloat16"):
        convert.export_model(src, tmp_path / dtype, dtype=dtype)
        w = load_file(str(tmp_path / dtype / "model.safetensors"))["model.layers.0.mlp.c_fc.weight"]
        assert str(w.dtype) == f"torch.{dtype}"
        want = np.array(m.layers[0].mlp.c_fc.weight.astype(getattr(mx, dtype)).astype(mx.float32))
        assert np.array_equal(w.float().numpy(), want)
    rep = convert.import_checkpoint(tmp_path / "bfloat16", tmp_path / "back")
    assert any("fingerprint differs" in n for n in rep["notes"])


def test_verify_reports_tiny_difference(tmp_path):
    pytest.importorskip("transformers")
    _, src = saved(tmp_path)
    convert.export_model(src, tmp_path / "hf")
    convert.import_checkpoint(tmp_path / "hf", tmp_path / "back")
    rep = convert.verify(tmp_path / "hf", tmp_path / "back", prompt="w3 w17 w200 w5")
    assert rep["tokens"] == 4 and rep["max_abs_diff"] < 1e-4 and rep["argmax_agree"] == 1.0


def test_block_shapes_match_model():
    args = tiny_args()
    flat = dict(tree_flatten(Model(args).parameters()))
    assert {k: tuple(flat[f"layers.0.{k}"].shape) for k in block_shapes(args)} == block_shapes(args)
    assert len([k for k in flat if k.startswith("layers.0.")]) == len(block_shapes(args))


# --- merges ---


def test_merge_export_and_import(tmp_path):
    from mlx_grow.merge.build import merge
    from mlx_grow.merge.store import load_merged

    _, a = saved(tmp_path, "a")
    m2 = make_model(seed=9)
    from mlx_grow.tokenizer import load_tokenizer

    save_model(m2, tmp_path / "b", tokenizer=load_tokenizer(tmp_path / "tok"))
    merge([a, tmp_path / "b"], tmp_path / "merged", combiner="mixture", progress=False)
    rep = convert.export_model(tmp_path / "merged", tmp_path / "hf")
    assert (tmp_path / "hf" / "experts" / "1" / "config.json").exists()
    convert.import_checkpoint(tmp_path / "hf", tmp_path / "back")
    before, _ = load_merged(tmp_path / "merged")
    after, _ = load_merged(tmp_path / "back")
    assert after.combiner.kind == "mixture" and any("experts" in n for n in rep["notes"])
    ids = mx.array([IDS])
    assert mx.array_equal(before(ids), after(ids)).item()


def test_prefixed_experts_checkpoint_imports_as_merge(tmp_path):
    from mlx_grow.merge.store import load_merged

    r1, r2 = roles(11), roles(12)
    table = id_bits(V, 16, "msb")
    t = {**{k: v for k, v in nanogpt(r1, prefix="experts.0.", emb=False).items()},
         **{k: v for k, v in nanogpt(r2, prefix="experts.1.", emb=False).items()},
         "shared.wte.weight": table, "router.weight": np.zeros((2, D), np.float32)}
    src = write_dir(tmp_path / "src", t, NANO_CONFIG)
    save_tokenizer(src)
    rep = convert.import_checkpoint(src, tmp_path / "out")
    assert rep["experts"] == 2 and any("router.weight" in n for n in rep["notes"])
    model, _ = load_merged(tmp_path / "out")
    emb = np.repeat(table, 2, axis=1)
    got = [np.array(e(mx.array([IDS]))[0]) for e in model.experts]
    close(got[0], reference(r1, emb))
    close(got[1], reference(r2, emb))


# --- bad input: one clear error naming the key, nothing left behind ---


def nothing_left(tmp_path):
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith((".out", "out"))]


def nano_src(tmp_path, drop=None, reshape=None, config=NANO_CONFIG):
    t = nanogpt(roles(1))
    if drop:
        del t[drop]
    if reshape:
        t[reshape] = t[reshape][:, :-1]
    return write_dir(tmp_path / "src", t, config)


@pytest.mark.parametrize("case,match", [
    ("missing", "transformer.h.1.mlp.c_fc.weight"),
    ("misshaped", r"transformer.h.0.attn.c_proj.weight has shape \[32, 31\]"),
    ("config", "n_embd=64"),
    ("truncated", "truncated: tensor"),
    ("header", "corrupt safetensors header"),
    ("unknown", r"foo.\{i\}.bar.weight.*--map"),
    ("bad-map", "unknown tensor name"),
    ("no-heads", "num_attention_heads"),
])
def test_bad_input(tmp_path, case, match):
    mapping = None
    if case == "missing":
        src = nano_src(tmp_path, drop="transformer.h.1.mlp.c_fc.weight")
    elif case == "misshaped":
        src = nano_src(tmp_path, reshape="transformer.h.0.attn.c_proj.weight")
    elif case == "config":
        src = nano_src(tmp_path, config={**NANO_CONFIG, "n_embd": 64})
    elif case == "no-heads":
        src = nano_src(tmp_path, config={k: v for k, v in NANO_CONFIG.items() if k != "n_head"})
    elif case == "unknown":
        src = write_dir(tmp_path / "src", {f"foo.{i}.bar.weight": np.zeros(2, np.float32) for i in range(3)})
    elif case == "bad-map":
        src = nano_src(tmp_path)
        mapping = tmp_path / "m.yaml"
        mapping.write_text("tensors:\n  layers.{i}.attn: x\n")
    else:
        src = nano_src(tmp_path)
        f = src / "model.safetensors"
        data = f.read_bytes()
        if case == "truncated":
            f.write_bytes(data[: len(data) - 100])
        else:
            n = struct.unpack("<Q", data[:8])[0]
            f.write_bytes(data[:8] + b"{" * n + data[8 + n:])
    with pytest.raises(ValueError, match=match):
        convert.import_checkpoint(src, tmp_path / "out", mapping=mapping)
    nothing_left(tmp_path)


def test_own_layout_config_disagreeing_with_weights(tmp_path):
    _, src = saved(tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="num_hidden_layers=3 but the weights' 2 numbered layers"):
        convert.import_checkpoint(src, tmp_path / "out")
    nothing_left(tmp_path)


def test_inspect_lists_tensors_and_layout(tmp_path):
    src = write_dir(tmp_path / "src", neox(roles(3)), NEOX_CONFIG)
    rep = convert.inspect(src)
    assert rep["layout"] == "gpt-neox" and rep["layers"] == NL
    qkv = ["gpt_neox.layers.0.attention.query_key_value.weight", [3 * D, D], "F32"]
    assert qkv in [list(t) for t in rep["tensors"]]
    bad = convert.inspect(write_dir(tmp_path / "bad", {"foo.0.bar.weight": np.zeros(2, np.float32)}))
    assert bad["layout"] is None and "--map" in bad["problem"]


def test_cli_convert(tmp_path):
    from typer.testing import CliRunner

    from mlx_grow.cli import app

    runner = CliRunner()
    src = write_dir(tmp_path / "src", neox(roles(3)), NEOX_CONFIG)
    res = runner.invoke(app, ["convert", "inspect", str(src)])
    assert res.exit_code == 0 and "gpt-neox" in res.output and "embed_out.weight" in res.output
    res = runner.invoke(app, ["convert", "import", str(src), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["convert", "export", str(tmp_path / "out"), "-o", str(tmp_path / "hf"),
                              "--dtype", "float16"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["convert", "export", str(tmp_path / "out"), "-o", str(tmp_path / "x"), "--to", "llama"])
    assert res.exit_code == 2 and "llama" in res.output and not (tmp_path / "x").exists()
    bad = write_dir(tmp_path / "bad", {"blocks.0.ln1.weight": np.zeros(2, np.float32)})
    res = runner.invoke(app, ["convert", "inspect", str(bad)])
    assert res.exit_code == 1 and "blocks.{i}.ln1.weight" in res.output and "layers.{i}.mlp.c_fc:" in res.output
    res = runner.invoke(app, ["convert", "import", str(bad), "-o", str(tmp_path / "y")])
    assert res.exit_code == 2 and "--map" in res.output and not (tmp_path / "y").exists()
