"""Time and peak memory of `convert` on the paper's 16-layer 16-bit shape.

    python benchmarks/bench_convert.py [--dir /tmp/bench-convert] [--keep]

Builds a random model with ModelArgs defaults (vocab 65,536, d 1024, 16
layers, 16-bit binary substrate: ~270M parameters, ~1.08 GB in float32),
then exports it to Hugging Face (Starcoder2) and imports the export back,
each direction in a fresh process so its peak RSS is its own. Targets: each
direction <= 30 s and peak RSS <= 2x the model's size.
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

TARGET_S, TARGET_X = 30.0, 2.0


def rss_mb() -> float:
    """Peak RSS of this process so far. On Linux VmHWM (ru_maxrss would carry
    the parent's peak across fork + exec); on macOS ru_maxrss is in bytes."""
    status = Path("/proc/self/status")
    if status.exists():
        line = next(s for s in status.read_text().splitlines() if s.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(step: str, root: Path):
    from mlx_grow import convert

    base = rss_mb()
    tic = time.perf_counter()
    if step == "export":
        convert.export_model(root / "model", root / "hf")
    else:
        convert.import_checkpoint(root / "hf", root / "back")
    secs = time.perf_counter() - tic
    print(json.dumps({"step": step, "seconds": secs, "peak_mb": rss_mb(), "baseline_mb": base}))


def build(root: Path) -> int:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    import mlx_grow  # noqa: F401  (before mlx.core: the fast CPU BLAS)
    from mlx_grow.checkpoint import save_model
    from mlx_grow.model import Model, ModelArgs
    from mlx_grow.training.init import init_weights

    model = Model(ModelArgs())
    init_weights(model, 0)
    n = sum(v.size for _, v in tree_flatten(model.parameters()))
    save_model(model, root / "model")
    mx.clear_cache()
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/bench-convert")
    ap.add_argument("--keep", action="store_true", help="keep the model directories")
    ap.add_argument("--child", choices=["export", "import"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    root = Path(args.dir)
    if args.child:
        return child(args.child, root)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    n = build(root)
    size_mb = sum(f.stat().st_size for f in (root / "model").glob("*.safetensors")) / 2**20
    print(f"model: {n / 1e6:.1f}M parameters, {size_mb:,.0f} MiB of float32 weights")
    ok = True
    for step in ("export", "import"):
        out = subprocess.run([sys.executable, __file__, "--dir", str(root), "--child", step],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        x = r["peak_mb"] / size_mb
        good = r["seconds"] <= TARGET_S and x <= TARGET_X
        ok &= good
        print(f"{step:7s} {r['seconds']:6.1f} s   peak RSS {r['peak_mb']:,.0f} MiB = {x:.2f}x the model "
              f"(after imports {r['baseline_mb']:,.0f} MiB)   {'ok' if good else 'OVER TARGET'}")
    hf_mb = sum(f.stat().st_size for f in (root / "hf").glob("*.safetensors")) / 2**20
    print(f"export size {hf_mb:,.0f} MiB (the substrate written as a full [V, d] embedding)")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
