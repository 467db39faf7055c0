"""The memory planner's predictions for every packaged config at one batch shape
(default: the papers' 32 x 1024 tokens in bfloat16), as the table in docs/scaling-out.md.

    python benchmarks/plan_table.py [--batch 32] [--seq 1024] [--dtype bfloat16] [--ranks 1 2 8]

Per rank: the largest and smallest stage peak, the monolithic peak, and what
dominates the largest stage. Nothing is allocated (benchmarks/bench_memory.py
checks the planner against measured peaks).
"""

import argparse
from pathlib import Path

from mlx_grow.config import load_config
from mlx_grow.training.memory import plan_config

CONFIGS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def gib(n: float) -> str:
    return f"{n / 2**30:.1f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 8])
    ap.add_argument("--configs", nargs="+", default=[c for c in CONFIGS if c != "tiny"])
    a = ap.parse_args()
    head = " | ".join(f"stage peak, {r} rank{'s' if r > 1 else ''}" for r in a.ranks)
    print(f"| config (V) | {head} | monolithic, 1 rank | largest stage's peak moment |")
    print("|---|" + "---|" * (len(a.ranks) + 2))
    for name in a.configs:
        cfg = load_config(name)
        cfg = cfg.with_flags(train={"dtype": a.dtype})
        cols, mono, moment = [], None, None
        for r in a.ranks:
            p = plan_config(cfg, a.batch, a.seq, ranks=r)
            peaks = [s["peak"] for s in p["stages"]]
            lo, hi = min(peaks), max(peaks)
            cols.append(gib(hi) if gib(lo) == gib(hi) else f"{gib(lo)}–{gib(hi)}")
            if r == 1:
                mono = gib(p["monolithic"]["peak"])
                worst = max(p["stages"], key=lambda s: s["peak"])
                moment = worst["peak_moment"]
        print(f"| {name} ({cfg.model.vocab_size:,}) | " + " | ".join(f"{c} GiB" for c in cols)
              + f" | {mono} GiB | {moment} |")


if __name__ == "__main__":
    main()
