"""Growth-stage vs monolithic training throughput, measured side by side.

A stage that trains the newest 3 of 9 blocks (+ norm + head) against a
monolithic step over all 9 blocks, on the same batch and machine, next to what
a FLOP count predicts; with and without the prefix cache; peak memory of each;
and training throughput as a fraction of the measured matmul peak.

    python benchmarks/bench_grow.py [--d 512] [--vocab 8192] [--batch 4] [--seq 256]
"""

import argparse
import time

import mlx_grow  # noqa: F401, I001  (first, before mlx.core: the fast CPU BLAS on Linux)
import mlx.core as mx
import numpy as np

from mlx_grow.config import TrainConfig
from mlx_grow.model import Model, ModelArgs
from mlx_grow.training.init import init_weights
from mlx_grow.training.loop import set_trainable
from mlx_grow.training.params import block_param_count
from mlx_grow.training.prefix_cache import PrefixCache
from mlx_grow.training.schedule import Stage
from mlx_grow.training.step import Stepper


def matmul_peak(n=1024, reps=5):
    a = mx.random.normal((n, n))
    mx.eval(a @ a)
    t = time.perf_counter()
    for _ in range(reps):
        mx.eval(a @ a)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def setup(args, mode, cfg, batch):
    mx.random.seed(0)
    model = Model(ModelArgs.from_dict({**args.to_dict(), "num_hidden_layers": 9}))
    init_weights(model, 0)
    stage = Stage(index=0, new=9 if mode == "mono" else 3, depth=9, steps=1, train_all=mode == "mono")
    first = set_trainable(model, stage, False)
    # "stage (in graph)": the previous step, where the frozen blocks ran inside the differentiated
    # function behind a stop_gradient (the Stepper splits them off when it is given the boundary)
    cache = PrefixCache(4096) if mode == "stage+cache" else None
    stepper = Stepper(model, cfg, 1000, prefix_start=first if cache else None,
                      frozen_below=0 if mode == "stage-ingraph" else first)
    x, y = mx.array(batch[:, :-1]), mx.array(batch[:, 1:])

    def step():
        inp = cache(model, batch[:, :-1], first) if cache else x
        return stepper.step(inp, y)

    return step


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    args = ModelArgs(vocab_size=a.vocab, hidden_size=a.d, num_hidden_layers=9, num_attention_heads=a.heads,
                     max_position_embeddings=a.seq, substrate={"kind": "binary", "bits": int(np.ceil(np.log2(a.vocab)))})
    cfg = TrainConfig(batch_size=a.batch, seq_len=a.seq, warmup_steps=0)
    batch = np.random.default_rng(0).integers(0, a.vocab, (a.batch, a.seq + 1)).astype(np.int32)
    tokens = a.batch * a.seq
    B = 2 * (block_param_count(args) - 4 * a.d) + 4 * a.seq * a.d  # forward FLOPs/token of one block
    H = 2 * a.d * a.vocab
    flops = {"mono": 3 * (9 * B + H), "stage": 9 * B + 2 * 3 * B + 3 * H, "stage+cache": 3 * B + 2 * 3 * B + 3 * H}
    flops["stage-ingraph"] = flops["stage"]
    modes = ("mono", "stage", "stage+cache", "stage-ingraph")
    times = {m: [] for m in modes}
    peak = {}
    steps = {}
    for m in modes:
        base = mx.get_active_memory()  # the other modes' models stay resident: subtract them
        mx.reset_peak_memory()
        steps[m] = setup(args, m, cfg, batch)
        steps[m]()  # compile + (for the cache) fill it
        steps[m]()
        peak[m] = (mx.get_peak_memory() - base) / 2**20
    for _ in range(a.rounds):  # interleave the modes so machine load hits them alike
        for m in modes:
            t = time.perf_counter()
            for _ in range(a.steps):
                steps[m]()
            times[m].append((time.perf_counter() - t) / a.steps)
    peak_flops = matmul_peak()
    print(f"shape: d {a.d}, vocab {a.vocab}, batch {a.batch} x seq {a.seq}; matmul peak {peak_flops / 1e9:.1f} GFLOP/s")
    print(f"{'mode':13} {'s/step':>8} {'tok/s':>8} {'speed-up':>9} {'predicted':>10} {'ratio':>6} {'MFU':>6} {'peak MiB':>9}")
    print(f"{'':13} (peak: this mode's weights, optimizer state, activations and cache)")
    base = np.median(times["mono"])
    for m in modes:
        s = np.median(times[m])
        speed, pred = base / s, flops["mono"] / flops[m]
        mfu = tokens * flops[m] / s / peak_flops
        print(f"{m:13} {s:8.3f} {tokens / s:8.0f} {speed:9.2f} {pred:10.2f} {speed / pred:6.2f} {mfu:6.1%} {peak[m]:9.0f}")


if __name__ == "__main__":
    main()
