"""Decode speed: our model vs mlx-lm on the same weights, and a 2-expert merge
vs one expert.

    python benchmarks/bench_generate.py

The mlx-lm model is a Starcoder2 built in-process from our weights by renaming
(`model.embed_tokens.weight` = the expanded substrate table, `model.layers.N…`,
`model.norm`, `lm_head`). Its MLP uses exact GELU (nn.gelu), like ours with
hidden_act "gelu", so both produce the same tokens; the script checks that.
Both sides decode greedily with the same pipelined loop shape (mlx-lm's
generate_step vs ours); rounds alternate to share the machine's noise, and
ratios are medians of per-round ratios. Targets: ours >= 0.95 x mlx-lm; a 2-expert
merge >= 0.5 x one expert.
"""

import argparse
import json
import platform
import statistics
import time

import mlx_grow  # noqa: F401, I001  (first, before mlx.core: the fast CPU BLAS on Linux)
import mlx.core as mx
import numpy as np


SIZES = {  # name: (hidden, layers, heads)
    "tiny (d128 x 9)": (128, 9, 4),
    "small (d512 x 8)": (512, 8, 8),
}


def our_model(d, layers, heads, seed=0, vocab=65536):
    from mlx_grow.model import Model, ModelArgs
    from mlx_grow.training.init import init_weights

    args = ModelArgs(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                     max_position_embeddings=1024, substrate={"kind": "binary", "bits": 16})
    m = Model(args)
    init_weights(m, seed)
    return m


def mlx_lm_model(ours):
    """A mlx-lm Starcoder2 with our weights (renamed)."""
    from mlx.utils import tree_flatten
    from mlx_lm.models import starcoder2

    a = ours.args
    args = starcoder2.ModelArgs(model_type="starcoder2", hidden_size=a.hidden_size,
                                num_hidden_layers=len(ours.layers), intermediate_size=a.intermediate_size,
                                num_attention_heads=a.num_attention_heads,
                                num_key_value_heads=a.num_attention_heads, norm_epsilon=a.norm_eps,
                                vocab_size=a.vocab_size, rope_theta=a.rope_theta, tie_word_embeddings=False)
    ref = starcoder2.Model(args)
    weights = [("model.embed_tokens.weight", ours.substrate(mx.arange(a.vocab_size)))]
    for k, v in tree_flatten(ours.parameters()):
        if k.startswith("layers.") or k.startswith("norm."):
            weights.append(("model." + k, v))
        elif k == "lm_head.weight":
            weights.append((k, v))
    ref.load_weights(weights, strict=True)
    mx.eval(ref.parameters())
    return ref


def decode_ours(model, prompt, n):
    from mlx_grow.generate import generate_step
    from mlx_grow.sample import make_sampler

    sampler = make_sampler(model.args.vocab_size)
    toks, tic = [], None
    for i, (y, _) in enumerate(generate_step(model, mx.array([prompt]), n, sampler)):
        toks.append(y.item())
        if i == 0:
            tic = time.perf_counter()
    return toks, (n - 1) / (time.perf_counter() - tic)


def decode_mlx_lm(model, prompt, n):
    from mlx_lm.generate import generate_step

    toks, tic = [], None
    for i, (y, _) in enumerate(generate_step(mx.array(prompt), model, max_tokens=n)):
        toks.append(int(y))
        if i == 0:
            tic = time.perf_counter()
    return toks, (n - 1) / (time.perf_counter() - tic)


def decode_stream(model, tok, prompt, n):
    """Our user-facing stream_generate (detokenizing as it goes)."""
    from mlx_grow.generate import stream_generate

    last = None
    for last in stream_generate(model, tok, prompt, max_tokens=n):
        pass
    return last.generation_tps


def rounds(fns, repeats):
    """Run each fn once per round; tokens/s of every fn in every round. Ratios are
    taken within a round (neighbours share the machine's load), then the median."""
    out = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            out[k].append(fn())
    return out


def ratio(runs, a, b):
    return statistics.median(x / y for x, y in zip(runs[a], runs[b]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--sizes", default=",".join(SIZES), help="comma-separated names from SIZES")
    args = ap.parse_args()

    from mlx_grow.merge.combine import MergedModel

    class Ids:  # a tokenizer stand-in for stream_generate: ids in, ids "text" out
        eos_id, unk_id, inst_ids = None, None, None

        def decode(self, ids):
            return " ".join(map(str, ids))

    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 60000, args.prompt).tolist()
    n = args.tokens
    print(f"machine: {platform.machine()}, {platform.processor() or platform.system()}, "
          f"mlx {mx.__version__}, device {mx.default_device()}")
    print(f"greedy decode of {n} tokens after a {len(prompt)}-token prompt; {args.repeats} rounds "
          "(tokens/s: median; ratios: median of per-round ratios)\n")
    results = []
    for name in args.sizes.split(","):
        d, layers, heads = SIZES[name]
        ours = our_model(d, layers, heads)
        ref = mlx_lm_model(ours)
        t_ours, _ = decode_ours(ours, prompt, n)
        t_ref, _ = decode_mlx_lm(ref, prompt, n)
        same = t_ours == t_ref
        other = our_model(d, layers, heads, seed=1)
        merged = MergedModel([ours, other])
        decode_ours(merged, prompt, 4)  # warm up
        runs = rounds({
            "mlx-lm": lambda: decode_mlx_lm(ref, prompt, n)[1],
            "ours": lambda: decode_ours(ours, prompt, n)[1],
            "ours (stream_generate)": lambda: decode_stream(ours, Ids(), prompt, n),
            "merge of 2": lambda: decode_ours(merged, prompt, n)[1],
        }, args.repeats)
        tps = {k: statistics.median(v) for k, v in runs.items()}
        r = {"size": name, "same_tokens": same, **{k: round(v, 1) for k, v in tps.items()},
             "ours/mlx-lm": round(ratio(runs, "ours", "mlx-lm"), 3),
             "stream/mlx-lm": round(ratio(runs, "ours (stream_generate)", "mlx-lm"), 3),
             "merge/single": round(ratio(runs, "merge of 2", "ours"), 3)}
        results.append(r)
        print(f"{name}: identical greedy tokens: {same}")
        for k, v in tps.items():
            print(f"  {k:24s} {v:8.1f} tokens/s")
        print(f"  ours / mlx-lm            {r['ours/mlx-lm']:.3f}   (target >= 0.95)")
        print(f"  stream_generate / mlx-lm {r['stream/mlx-lm']:.3f}")
        print(f"  merge / single           {r['merge/single']:.3f}   (target >= 0.5)\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
