"""Peak memory and step time of one training step with and without
train.grad_checkpoint, side by side in one process (fresh model each time).

    python benchmarks/bench_grad_checkpoint.py [--d 256] [--layers 6] [--batch 8] [--seq 256] [--vocab 4096]
"""

import argparse
import time

import mlx_grow  # noqa: F401, I001  (first, before mlx.core: the fast CPU BLAS on Linux)
import mlx.core as mx
import numpy as np

from mlx_grow.config import TrainConfig
from mlx_grow.model import Model, ModelArgs
from mlx_grow.training.init import init_weights
from mlx_grow.training.step import Stepper


def measure(a, checkpoint: bool) -> tuple:
    args = ModelArgs.from_dict(dict(vocab_size=a.vocab, hidden_size=a.d, num_hidden_layers=a.layers,
                                    num_attention_heads=max(1, a.d // 64), max_position_embeddings=a.seq,
                                    substrate={"kind": "binary", "bits": int(np.ceil(np.log2(a.vocab)))}))
    model = Model(args)
    init_weights(model, 0)
    model.substrate.freeze()
    cfg = TrainConfig(batch_size=a.batch, seq_len=a.seq, warmup_steps=0, grad_checkpoint=checkpoint)
    stepper = Stepper(model, cfg, total_steps=10)
    x = mx.array(np.random.default_rng(0).integers(0, a.vocab, (a.batch, a.seq + 1)))
    stepper.step(x[:, :-1], x[:, 1:])  # compile
    mx.synchronize()
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        stepper.step(x[:, :-1], x[:, 1:])
    dt = (time.perf_counter() - t0) / a.steps
    return mx.get_peak_memory(), dt


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args()
    off_mem, off_t = measure(a, False)
    on_mem, on_t = measure(a, True)
    print(f"d {a.d}, {a.layers} trainable blocks, batch {a.batch} x {a.seq}, vocab {a.vocab}")
    print(f"peak memory: {off_mem / 2**20:.0f} MiB without, {on_mem / 2**20:.0f} MiB with grad_checkpoint "
          f"({on_mem / off_mem:.2f}x)")
    print(f"step time:   {off_t * 1e3:.0f} ms without, {on_t * 1e3:.0f} ms with ({on_t / off_t:.2f}x)")


if __name__ == "__main__":
    main()
