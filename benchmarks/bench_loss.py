"""Chunked vs unchunked cross-entropy through the LM head: peak memory and speed.

Forward + backward of the mean token loss of `h @ W.T` with respect to h and W,
at a few shapes, each mode in its own process (so one's buffers do not skew the
other's peak). "unchunked" is the previous default (the [N, V] float32 logits,
their exp and their gradient held at once, one exp per element); "chunked" is
`mlx_grow.training.loss.head_cross_entropy` at its default chunk. The timed
runs of the two modes are interleaved, so machine load hits both alike.

    python benchmarks/bench_loss.py [--shapes tiny d512 paper] [--reps 3] [--no-time]
"""

import argparse
import json
import subprocess
import sys
import time

# name: (d, V, tokens)
SHAPES = {
    "tiny": (128, 65536, 8 * 128),  # the default run's head (configs/tiny.yaml)
    "d512": (512, 65536, 4 * 512),
    "paper": (1024, 65536, 8 * 1024),  # the paper configs' head, 8 x 1024 tokens
}


def child(mode: str, shape: str, reps: int, timed: bool):
    import mlx.core as mx

    import mlx_grow  # noqa: F401  (the fast BLAS, before mlx.core)
    from mlx_grow.training.loss import head_cross_entropy
    from mlx_grow.training.step import cross_entropy

    d, V, n = SHAPES[shape]
    key = mx.random.key(0)
    h = mx.random.normal((n, d), key=key)
    w = mx.random.normal((V, d), key=mx.random.split(key)[1]) * 0.02
    t = mx.random.randint(0, V, (n,), key=mx.random.split(key)[0])
    mx.eval(h, w, t)
    if mode == "chunked":
        f = lambda h, w: head_cross_entropy(h, w, t)  # noqa: E731
    else:
        f = lambda h, w: cross_entropy(h @ w.T, t)  # noqa: E731
    step = mx.compile(mx.value_and_grad(f, argnums=(0, 1)))
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    mx.eval(step(h, w))
    peak = mx.get_peak_memory() - base
    times = []
    if timed:
        for _ in range(reps):
            t0 = time.perf_counter()
            mx.eval(step(h, w))
            times.append(time.perf_counter() - t0)
    print("RESULT " + json.dumps({"peak": peak, "times": times}))


def run(mode, shape, reps, timed):
    p = subprocess.run([sys.executable, __file__, "--one", mode, "--shapes", shape, "--reps", str(reps)]
                       + ([] if timed else ["--no-time"]), capture_output=True, text=True)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode or not line:
        raise SystemExit(f"{mode} {shape} failed:\n{p.stderr[-3000:]}")
    return json.loads(line[0][7:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved process pairs per shape")
    ap.add_argument("--no-time", action="store_true", help="peak memory only")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        child(a.one, a.shapes[0], a.reps, not a.no_time)
        return
    import numpy as np

    from mlx_grow.training.loss import default_chunk

    print(f"{'shape':8} {'d':>5} {'V':>6} {'tokens':>6} {'chunk':>5} {'peak unchunked':>15} {'peak chunked':>13} "
          f"{'ratio':>6} {'s unchunked':>12} {'s chunked':>10} {'speed-up':>9}")
    for s in a.shapes:
        d, V, n = SHAPES[s]
        res = {"unchunked": [], "chunked": []}
        for _ in range(a.rounds):
            for m in res:
                res[m].append(run(m, s, a.reps, not a.no_time))
        pu, pc = (min(r["peak"] for r in res[m]) / 2**20 for m in ("unchunked", "chunked"))
        if a.no_time:
            tu = tc = float("nan")
        else:
            tu, tc = (float(np.median([t for r in res[m] for t in r["times"]])) for m in ("unchunked", "chunked"))
        print(f"{s:8} {d:>5} {V:>6} {n:>6} {default_chunk(V):>5} {pu:>13.0f}MB {pc:>11.0f}MB {pc / pu:>6.2f} "
              f"{tu:>12.3f} {tc:>10.3f} {tu / tc:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
