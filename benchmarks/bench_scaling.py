"""Data-parallel scaling on this machine: tokens/s of 2 local ranks vs 1.

    python benchmarks/bench_scaling.py [--steps 24] [--batch 16] [--seq 128] [--d 128]

Every run trains the same global batch on a KJV slice (one growth stage of 3
blocks + head, vocab 65,536): 1 rank as a plain `mlx-grow grow` process; 2
ranks under `mlx.launch --backend ring -n 2` with OpenBLAS preloaded in the
workers; and 2 ranks started directly with the variables mlx.launch sets
(MLX_RANK, MLX_HOSTFILE), because mlx.launch's output loop keeps about one core
busy while it waits (seen with MLX 0.32 on Linux), which a 2-core machine
cannot spare. Throughput is taken between step 4 and the last step
(compilation and warm-up left out) from metrics.jsonl; efficiency = speedup / 2.
Two ranks on one small machine share its cores and memory bandwidth, so expect
< 1 here. The peak memory of rank 0 is printed next to the planner's prediction.
"""

import argparse
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp: Path, a) -> Path:
    from mlx_grow.data.corpora import BUILTINS

    corpus = tmp / "kjv.txt"
    corpus.write_text("\n\n".join(itertools.islice(BUILTINS["kjv"].read(), 400)), encoding="utf-8")
    cfg = {"name": "scaling", "tokenizer": "bvv241-2-3",
           "model": dict(vocab_size=65536, hidden_size=a.d, num_hidden_layers=3, num_attention_heads=4,
                         max_position_embeddings=a.seq, substrate={"kind": "binary", "bits": 16}),
           "data": {"sources": [str(corpus)]},
           "grow": {"stages": [3], "steps_per_stage": a.steps},
           "train": {"batch_size": a.batch, "seq_len": a.seq, "lr": 1e-3, "warmup_steps": 2, "eval_every": 0,
                     "val_batches": 1, "checkpoint_every": 0, "log_every": 1}}
    path = tmp / "scaling.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(mode: str, cfg: Path, out: Path, env: dict) -> dict:
    """mode: "1" (one process), "launch" (mlx.launch, 2 ranks), "direct" (2 ranks
    started here with the variables mlx.launch would set: MLX_RANK, MLX_HOSTFILE)."""
    cmd = [sys.executable, "-m", "mlx_grow.cli", "grow", "--config", str(cfg), "--out", str(out), "--no-progress"]
    t0 = time.perf_counter()
    if mode == "launch":
        cmd = [str(Path(sys.executable).with_name("mlx.launch")), "--backend", "ring", "-n", "2",
               "-p", str(port()), "--", *cmd]
    if mode == "direct":
        p = port()
        hosts = out.with_name(out.name + "-hosts.json")
        hosts.write_text(json.dumps([[f"127.0.0.1:{p + i}"] for i in range(2)]))
        procs = [subprocess.Popen(cmd, cwd=ROOT, env={**env, "MLX_RANK": str(i), "MLX_HOSTFILE": str(hosts)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
        errs = [q.communicate()[1] for q in procs]
        code = max(abs(q.returncode) for q in procs)
    else:
        q = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        errs, code = [q.stderr], q.returncode
    wall = time.perf_counter() - t0
    if code:
        sys.exit(f"{mode} run failed:\n{errs[-1][-3000:]}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["event"] == "train"]
    tokens = train[0]["tokens"] // train[0]["global_step"]  # per step
    elapsed = {r["step"]: tokens * r["step"] / r["tok_s"] for r in train}
    first, last = 4, train[-1]["step"]
    rate = tokens * (last - first) / (elapsed[last] - elapsed[first])
    return {"tok_s": rate, "wall": wall, "peak": max(r["peak_mem_mb"] for r in train) * 2**20}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--d", type=int, default=128)
    a = ap.parse_args()

    from mlx_grow.config import load_config
    from mlx_grow.training.memory import plan_config

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = write_config(tmp, a)
        env = {**os.environ, "MLX_GROW_CACHE": os.environ.get("MLX_GROW_CACHE", str(tmp / "cache"))}
        run("1", cfg, tmp / "warm", env)  # prepares the shards once, outside the timings
        print(f"{os.cpu_count()} cores; global batch {a.batch} x {a.seq}, d {a.d}, {a.steps} steps")
        print(f"{'ranks':>16} {'tokens/s':>9} {'wall s':>7} {'peak/rank':>10} {'predicted':>17}")
        res = {}
        for mode, label in (("1", "1"), ("launch", "2 (mlx.launch)"), ("direct", "2 (direct)")):
            res[mode] = r = run(mode, cfg, tmp / f"r-{mode}", env)
            pred = plan_config(load_config(str(cfg)), ranks=1 if mode == "1" else 2)["stages"][0]["peak"]
            print(f"{label:>16} {r['tok_s']:>9.0f} {r['wall']:>7.1f} {r['peak'] / 2**20:>8.0f}MB "
                  f"{pred / 2**20:>8.0f}MB ({(pred - r['peak']) / r['peak']:+.1%})", flush=True)
        for mode in ("launch", "direct"):
            speedup = res[mode]["tok_s"] / res["1"]["tok_s"]
            print(f"2 ranks, {mode}: speedup {speedup:.2f}x, scaling efficiency {speedup / 2:.0%}")


if __name__ == "__main__":
    main()
