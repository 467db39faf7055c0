"""CPU BLAS after a plain `import mlx_grow` vs the mlx[cpu] wheel's bundled one,
and MLX's CPU exp vs NumPy's, side by side.

    python benchmarks/bench_matmul.py [--n 1024] [--rounds 3]

Each BLAS is measured in its own fresh process (the library is chosen before
mlx.core loads: `MLX_GROW_BLAS=off` keeps the bundled one), alternating, so
machine load hits both alike. Run it in a venv made by the README's first
command: no environment variable, no apt package.
"""

import argparse
import json
import os
import platform
import subprocess
import sys

CHILD = r"""
import json, sys, time
import mlx_grow
import mlx.core as mx
from mlx_grow.backend import loaded
n, reps = int(sys.argv[1]), int(sys.argv[2])
a = mx.random.normal((n, n)); mx.eval(a @ a)
t = time.perf_counter()
for _ in range(reps):
    mx.eval(a @ a)
print(json.dumps({"library": loaded["library"], "threads": loaded.get("threads"),
                  "gflops": 2 * n**3 * reps / (time.perf_counter() - t) / 1e9}))
"""


def gflops(n, reps, blas):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_GROW_BLAS")}
    if blas == "bundled":
        env["MLX_GROW_BLAS"] = "off"
    p = subprocess.run([sys.executable, "-c", CHILD, str(n), str(reps)], env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(p.stderr[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def exp_ns(reps=5):
    import time

    import numpy as np

    import mlx_grow  # noqa: F401
    import mlx.core as mx

    z = mx.random.normal((64, 65536)) * 4
    mx.eval(z)
    zn, out = np.array(z), np.empty((64, 65536), np.float32)
    res = {}
    for name, f in (("mx.exp", lambda: mx.eval(mx.exp(z))), ("np.exp", lambda: np.exp(zn, out=out))):
        f()
        t = time.perf_counter()
        for _ in range(reps):
            f()
        res[name] = (time.perf_counter() - t) / reps / zn.size * 1e9
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}")
    got = {"fast": [], "bundled": []}
    for _ in range(a.rounds):
        got["fast"].append(gflops(a.n, 10, "fast"))
        got["bundled"].append(gflops(a.n, 2, "bundled"))
    fast = [g["gflops"] for g in got["fast"]]
    slow = [g["gflops"] for g in got["bundled"]]
    lib = got["fast"][0]["library"] or "bundled (no fast BLAS installed)"
    print(f"{a.n}^3 float32 matmul: after `import mlx_grow` ({lib}, {got['fast'][0]['threads']} threads) "
          f"{min(fast):.1f}-{max(fast):.1f} GFLOP/s; bundled {min(slow):.1f}-{max(slow):.1f} GFLOP/s; "
          f"ratio of medians {sorted(fast)[len(fast) // 2] / sorted(slow)[len(slow) // 2]:.0f}x")
    e = exp_ns()
    print(f"exp over 64 x 65,536 float32: mx.exp {e['mx.exp']:.1f} ns/element, np.exp {e['np.exp']:.1f} "
          f"ns/element ({e['mx.exp'] / e['np.exp']:.0f}x)")


if __name__ == "__main__":
    main()
