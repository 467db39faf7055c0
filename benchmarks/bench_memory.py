"""Check the memory planner (mlx_grow/training/memory.py) against measured peaks.

    python benchmarks/bench_memory.py [--shapes NAME ...] [--steps 2]

Each shape is a real `grow` run on a KJV slice, in a fresh process (a process
that already trained keeps buffers that would skew its peak). The peak is
reset with mx.reset_peak_memory() at the first step of every stage and read
with mx.get_peak_memory() at the first step of the next (so it covers the
stage's steps and its closing evaluation) or when the run ends; the table
prints it next to the prediction, per stage. Target: within 15 %.
"""

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# name: model (d, heads, depth), grow, train
SHAPES = {
    "grow-d128": dict(model=(128, 4, 4), grow={"stages": [2, 2]}, train={"batch_size": 8, "seq_len": 128}),
    "mono-d128": dict(model=(128, 4, 4), grow={"stages": [2, 2], "monolithic": True},
                      train={"batch_size": 8, "seq_len": 128}),
    "grow-d64-bf16": dict(model=(64, 4, 2), grow={"stages": [1, 1]},
                          train={"batch_size": 4, "seq_len": 128, "dtype": "bfloat16"}),
    "grow-d256-t512": dict(model=(256, 8, 4), grow={"stages": [1, 3]}, train={"batch_size": 2, "seq_len": 512}),
    "cache-d128": dict(model=(128, 4, 4), grow={"stages": [2, 2], "prefix_cache": True},
                       train={"batch_size": 8, "seq_len": 64}),
    "accum-d128": dict(model=(128, 4, 4), grow={"stages": [2, 2]},
                       train={"batch_size": 8, "seq_len": 128, "grad_accum": 2}),
    "update-d512": dict(model=(512, 8, 2), grow={"stages": [1, 1]}, train={"batch_size": 1, "seq_len": 32}),
    "chunks-d128-t512": dict(model=(128, 4, 2), grow={"stages": [1, 1]}, train={"batch_size": 8, "seq_len": 512}),
}

# small vocabularies (no tokenizer has them, so one Stepper on random ids, not a
# grow run) where the blocks' backward, not the head, sets the peak:
# (d, heads, depth, new blocks, vocab, batch, seq)
STEP_SHAPES = {
    "step-v512-t128": (128, 4, 4, 4, 512, 8, 128),
    "step-v512-t256": (128, 4, 4, 3, 512, 8, 256),
    "step-v512-d256": (256, 8, 4, 3, 512, 8, 128),
    "step-v4096-t256": (128, 4, 4, 2, 4096, 8, 256),
}


def measure_step(name: str) -> tuple:
    """(measured, predicted) peak bytes of 3 training steps of one stage."""
    import mlx.core as mx
    import numpy as np

    import mlx_grow  # noqa: F401  (before mlx.core: the fast CPU BLAS)
    from mlx_grow.config import TrainConfig
    from mlx_grow.model import Model, ModelArgs
    from mlx_grow.training.init import init_weights
    from mlx_grow.training.loop import set_trainable
    from mlx_grow.training.memory import Shape, stage_peak
    from mlx_grow.training.schedule import Stage
    from mlx_grow.training.step import Stepper, split_xy

    d, heads, depth, new, vocab, batch, seq = STEP_SHAPES[name]
    args = ModelArgs(vocab_size=vocab, hidden_size=d, num_hidden_layers=depth, num_attention_heads=heads,
                     max_position_embeddings=seq, substrate={"kind": "binary", "bits": 16})
    model = Model(args)
    init_weights(model, 0)
    stage = Stage(index=1, new=new, depth=depth, steps=3)
    stepper = Stepper(model, TrainConfig(batch_size=batch, seq_len=seq), 10,
                      frozen_below=set_trainable(model, stage, False))
    rng = np.random.default_rng(0)
    mx.reset_peak_memory()
    for _ in range(3):
        stepper.step(*split_xy(rng.integers(0, vocab, (batch, seq + 1)).astype(np.int32)))
    pred = stage_peak(args, stage, Shape(batch, seq, batch))
    return mx.get_peak_memory(), pred["peak"], pred["peak_moment"]


def config(shape: dict, corpus: str, steps: int):
    from mlx_grow.config import RunConfig
    from mlx_grow.model import ModelArgs

    d, heads, depth = shape["model"]
    seq = shape["train"]["seq_len"]
    model = ModelArgs.from_dict(dict(vocab_size=65536, hidden_size=d, num_hidden_layers=depth,
                                     num_attention_heads=heads, max_position_embeddings=seq,
                                     substrate={"kind": "binary", "bits": 16}))
    train = {"lr": 1e-3, "warmup_steps": 1, "eval_every": 0, "val_batches": 1, "checkpoint_every": 0,
             "log_every": 1, **shape["train"]}
    return RunConfig(model=model, tokenizer="bvv241-2-3", name="bench", data={"sources": [corpus]},
                     grow={"steps_per_stage": steps, **shape["grow"]}, train=train)


def measure(name: str, corpus: str, steps: int) -> list:
    """Run one shape here; return the measured peak bytes of every stage (its
    steps and its closing evaluation)."""
    import mlx.core as mx

    import mlx_grow  # noqa: F401  (before mlx.core: the fast CPU BLAS)
    import mlx_grow.training.grow as G
    from mlx_grow.training.schedule import plan

    cfg = config(SHAPES[name], corpus, steps)
    G.save_model = lambda *a, **k: None  # stage models are not part of training; skip writing them
    starts = list(itertools.accumulate([0] + [s.steps for s in plan(cfg)]))[:-1]
    peaks = []

    def window(step, model):  # called before every step
        if step in starts:
            if step:
                peaks.append(mx.get_peak_memory())
            mx.reset_peak_memory()

    with tempfile.TemporaryDirectory() as out:
        G.grow(cfg, Path(out) / "run", progress=False, on_step=window, echo=lambda *a, **k: None)
    return peaks + [mx.get_peak_memory()]


def kjv_slice(path: Path):
    from mlx_grow.data.corpora import BUILTINS

    docs = list(itertools.islice(BUILTINS["kjv"].read(), 200))
    path.write_text("\n\n".join(docs), encoding="utf-8")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=[*SHAPES, *STEP_SHAPES], choices=[*SHAPES, *STEP_SHAPES])
    ap.add_argument("--steps", type=int, default=2, help="steps per stage")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child mode: measure one shape
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        got = measure_step(args.one) if args.one in STEP_SHAPES else measure(args.one, args.corpus, args.steps)
        print("PEAKS " + json.dumps(got))
        return

    from mlx_grow.training.memory import plan_config

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "kjv.txt"
        kjv_slice(corpus)
        env = {**os.environ, "MLX_GROW_CACHE": os.environ.get("MLX_GROW_CACHE", str(Path(tmp) / "cache"))}
        print(f"{'shape':16} {'stage':>5} {'moment':>8} {'predicted':>10} {'measured':>10} {'error':>7}")
        worst = 0.0
        for name in args.shapes:
            p = subprocess.run([sys.executable, __file__, "--one", name, "--corpus", str(corpus),
                                "--steps", str(args.steps)], env=env, capture_output=True, text=True)
            line = [x for x in p.stdout.splitlines() if x.startswith("PEAKS ")]
            if p.returncode or not line:
                print(f"{name}: failed\n{p.stderr[-2000:]}")
                worst = float("inf")
                continue
            got = json.loads(line[0][6:])
            if name in STEP_SHAPES:
                rows = [(got[1], got[2], got[0])]
            else:
                plan = plan_config(config(SHAPES[name], str(corpus), args.steps))["stages"]
                rows = [(p["peak"], p["peak_moment"], m) for p, m in zip(plan, got)]
            for k, (pred, moment, got) in enumerate(rows):
                err = (pred - got) / got
                worst = max(worst, abs(err))
                print(f"{name:16} {k + 1:>5} {moment:>8} {pred / 2**20:>8.0f}MB {got / 2**20:>8.0f}MB "
                      f"{err:>+7.1%}", flush=True)
        print(f"largest error: {worst:.1%} (target: within 15 %)")
        sys.exit(0 if worst <= 0.15 else 1)


if __name__ == "__main__":
    main()
