"""Time start-up: `import mlx_grow` and `mlx-grow --help` against a bare `import mlx.core`.

    python benchmarks/bench_startup.py [--repeats 5]

Each command runs in a fresh interpreter, the three in turn (the order rotates
every repeat) after one untimed warm-up round; wall times are the medians and
minimums over the repeats. `mlx-grow --help` is the console script next to this
interpreter, else `python -m mlx_grow.cli --help`. Target: `--help` within
0.5 s of the bare `mlx.core` import.
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 0.5


def help_command():
    script = Path(sys.executable).parent / "mlx-grow"
    if script.exists():
        return [str(script), "--help"], "mlx-grow --help"
    return [sys.executable, "-m", "mlx_grow.cli", "--help"], "python -m mlx_grow.cli --help"


def run(cmd) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    help_cmd, help_name = help_command()
    commands = [
        ('python -c "import mlx.core"', [sys.executable, "-c", "import mlx.core"]),
        ('python -c "import mlx_grow"', [sys.executable, "-c", "import mlx_grow"]),
        (help_name, help_cmd),
    ]
    print(f"machine: {platform.machine()} {platform.system()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; {args.repeats} repeats")

    for _, cmd in commands:
        run(cmd)
    times = {name: [] for name, _ in commands}
    for i in range(args.repeats):
        for name, cmd in commands[i % 3:] + commands[: i % 3]:
            times[name].append(run(cmd))

    bare = commands[0][0]
    base_med, base_min = statistics.median(times[bare]), min(times[bare])
    for name, _ in commands:
        med, low = statistics.median(times[name]), min(times[name])
        print(f"{name:34s} median {med:5.2f} s  min {low:5.2f} s  "
              f"(+{med - base_med:5.2f} s / +{low - base_min:5.2f} s over mlx.core)")
    extra = statistics.median(times[help_name]) - base_med
    print(f"--help over mlx.core (medians): {extra:.2f} s (target <= {TARGET_S} s: "
          f"{'OK' if extra <= TARGET_S else 'TOO SLOW'})")


if __name__ == "__main__":
    main()
