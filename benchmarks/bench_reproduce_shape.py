"""`reproduce --scale tiny`'s training step at its new shape against the old one, side by side.

Old tiny: d 128, 9 blocks, bvv241-2-3 (65,536 ids). New tiny: d 128, 9 blocks, an
8,192-piece BPE (V = 64 d, the papers' economics). Both with batch 8 x 64, float32,
the 16-bit id substrate and AdamW, through the same compiled Stepper the runs use.
Per shape: the monolithic step (all 9 blocks + head train), a grown run's last stage
(blocks 7-9 + head train, blocks 1-6 a plain forward pass; no prefix cache, as in
reproduce) and a grown run's first stage (3 blocks). The modes are interleaved round
by round so that other work on the machine hits them alike; the load average is
printed before and after.

    python benchmarks/bench_reproduce_shape.py [--rounds 5] [--steps 5]
"""

import argparse
import os
import platform
import subprocess
import time

import mlx_grow  # noqa: F401, I001  (first, before mlx.core: the fast CPU BLAS on Linux)
import mlx.core as mx
import numpy as np

from mlx_grow.config import TrainConfig
from mlx_grow.model import Model, ModelArgs, init_weights
from mlx_grow.training.grow import set_trainable
from mlx_grow.training.schedule import Stage
from mlx_grow.training.step import Stepper

SHAPES = {"old tiny (V 65,536)": 65536, "new tiny (V 8,192)": 8192}
MODES = {"monolithic (9 blocks train)": (9, 9), "grown, stage 3 (3 of 9 train)": (9, 3),
         "grown, stage 1 (3 blocks)": (3, 3)}


def setup(vocab, depth, new, batch, seq):
    args = ModelArgs(vocab_size=vocab, hidden_size=128, num_hidden_layers=depth, num_attention_heads=4,
                     max_position_embeddings=seq, substrate={"kind": "binary", "bits": 16})
    model = Model(args)
    init_weights(model, 0)
    stage = Stage(index=0, new=new, depth=depth, steps=1, train_all=new == depth)
    first = set_trainable(model, stage, False)
    cfg = TrainConfig(batch_size=batch, seq_len=seq, warmup_steps=0)
    stepper = Stepper(model, cfg, 1000, frozen_below=first)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, vocab, (batch, seq + 1)).astype(np.int32) for _ in range(4)]
    k = [0]

    def step():
        b = mx.array(batches[k[0] % len(batches)])
        k[0] += 1
        return stepper.step(b[:, :-1], b[:, 1:])

    return step


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    load0 = os.getloadavg()
    steps = {}
    for shape, vocab in SHAPES.items():
        for mode, (depth, new) in MODES.items():
            steps[shape, mode] = setup(vocab, depth, new, a.batch, a.seq)
            steps[shape, mode]()  # compile
            steps[shape, mode]()
    times = {k: [] for k in steps}
    for _ in range(a.rounds):
        for k, step in steps.items():
            t = time.perf_counter()
            for _ in range(a.steps):
                step()
            times[k].append((time.perf_counter() - t) / a.steps)
    load1 = os.getloadavg()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        commit = "?"
    tokens = a.batch * a.seq
    print(f"{platform.platform()}, {os.cpu_count()} CPUs, MLX {mx.__version__} on {mx.default_device()}; commit "
          f"{commit}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"batch {a.batch} x {a.seq}, d 128, float32; median of {a.rounds} rounds of {a.steps} steps; load average "
          f"(1/5/15 min) {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f} before, "
          f"{load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f} after")
    old, new = SHAPES
    print(f"{'step':32} {old + ' tok/s':>26} {new + ' tok/s':>26} {'ratio':>7}")
    for mode in MODES:
        o, n = (tokens / np.median(times[s, mode]) for s in (old, new))
        print(f"{mode:32} {o:26.0f} {n:26.0f} {n / o:7.2f}")


if __name__ == "__main__":
    main()
