"""Time evaluation scoring on a small random model.

    python benchmarks/bench_eval.py [--d-model 512] [--layers 8] [--context 768] [--vocab 65536]

1. Context reuse: one multiple-choice item with a long context, scored with 1 and
   with 4 choices (the context is computed once, its KV cache repeated for the
   choices), against 4 separate full forward passes. Target: 4 choices < 1.5 x one.
2. Batched scoring of many items: items per second with one item per batch and
   with the default token budget (contexts left-padded together).
3. The paper protocol: 10 sampled runs + a greedy run of a 2-token answer, each
   prompt computed once, against 11 separate greedy generations of the same prompt.
"""

import argparse
import os
import platform
import statistics
import time

import numpy as np

TARGET = 1.5


class Ids:
    """A tokenizer stand-in: the benchmark scores token ids directly."""

    def __init__(self, vocab):
        self.vocab_size, self.eos_id, self.bos_id, self.name = vocab, 2, 1, "ids"

    def decode(self, ids):
        return " ".join(map(str, ids))


def clock(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timed(fn, reps):
    fn()  # warm up (compilation, allocation)
    return min(clock(fn) for _ in range(reps))


def paired(a, b, reps):
    """Interleaved timings of a and b (robust to a busy machine): (min a, min b, median of b/a)."""
    a(), b()
    ta, tb = [], []
    for _ in range(reps):
        ta.append(clock(a))
        tb.append(clock(b))
    return min(ta), min(tb), statistics.median(y / x for x, y in zip(ta, tb))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--context", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    import mlx.core as mx

    import mlx_grow  # noqa: F401  (before mlx.core: the fast CPU BLAS)
    from mlx_grow.backend import loaded
    from mlx_grow.eval.scorer import Scorer
    from mlx_grow.model import Model, ModelArgs
    from mlx_grow.training.init import init_weights

    margs = ModelArgs(vocab_size=args.vocab, hidden_size=args.d_model, num_hidden_layers=args.layers,
                      num_attention_heads=max(1, args.d_model // 64), max_position_embeddings=1024,
                      substrate={"kind": "binary", "bits": int(np.ceil(np.log2(args.vocab)))})
    model = Model(margs)
    init_weights(model, 0)
    sc = Scorer(model, Ids(args.vocab))
    rng = np.random.default_rng(0)
    ids = lambda n: rng.integers(3, args.vocab, n).tolist()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"BLAS {loaded['library'] or 'bundled'}")
    print(f"model: d {args.d_model}, {args.layers} layers, vocab {args.vocab:,}; context {args.context} tokens")

    # 1. context reuse
    ctx = ids(args.context)
    choices = [ids(n) for n in (6, 9, 7, 8)]
    one, four, ratio = paired(lambda: sc.loglikelihood([(ctx, choices[0])]),
                              lambda: sc.loglikelihood([(ctx, c) for c in choices]), args.reps)

    def separate():
        for c in choices:
            mx.eval(model(mx.array([ctx + c])))

    naive = timed(separate, max(1, args.reps // 2))
    best = four / one
    print(f"1 choice: {one * 1e3:.1f} ms | 4 choices: {four * 1e3:.1f} ms (best of {args.reps}) | ratio {best:.2f} "
          f"(target < {TARGET}: {'OK' if best < TARGET else 'TOO SLOW'}; median of interleaved pairs {ratio:.2f}) | "
          f"4 separate full forwards: {naive * 1e3:.1f} ms ({naive / four:.1f}x the 4-choice time)")

    # 2. batched scoring of many items (shorter contexts of varied length)
    reqs = []
    for _ in range(args.items):
        c = ids(int(rng.integers(64, 256)))
        reqs += [(c, ids(int(rng.integers(2, 10)))) for _ in range(4)]
    rates = {}
    for label, budget in (("one item per batch", 1), ("batched (8192-token budget)", 8192)):
        sc.batch_tokens = budget
        t = timed(lambda: sc.loglikelihood(reqs), max(1, args.reps // 2))
        rates[label] = args.items / t
        print(f"{args.items} items x 4 choices, {label}: {t:6.2f} s  ({rates[label]:6.1f} items/s)")
    sc.batch_tokens = 8192

    # 3. paper protocol: 10 sampled runs + greedy, prompt computed once
    prompt = [sc.start + ids(args.context)]
    single, shared, r = paired(lambda: sc.sample(prompt, [2], runs=0, temp=0.0),
                               lambda: sc.sample(prompt, [2], runs=10, temp=1.0, seed=0), args.reps)
    print(f"paper protocol, 2 new tokens: 10 runs + greedy {shared * 1e3:.1f} ms vs one greedy run "
          f"{single * 1e3:.1f} ms ({r:.2f}x; 11 separate generations: ~{11 * single * 1e3:.0f} ms)")


if __name__ == "__main__":
    main()
