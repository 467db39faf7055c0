"""Time data preparation and the batch loader.

    python benchmarks/bench_data.py [--copies 4] [--workers N] [--steps 300]

1. `data prepare` against the `tokenizers` library, side by side in one run, on the
   same text with the same tokenizer (bvv241-2-3): the built-in corpora, copied
   `--copies` times with a per-copy prefix, written as a FineWeb-Edu-like folder of
   parquet shards (data/<dump>/NNN_NNNNN.parquet). Characters per second of
   - the library's own `Tokenizer.encode_batch` (and `encode_batch_fast`) on all the
     documents at once, already in memory;
   - `data prepare` end to end (hashing pass, reading the parquet shards, encoding,
     writing part files, assembling the shard) into a fresh cache, in one process and
     with one worker process per core;
   and their ratios. CPU seconds are printed next to wall seconds: on a shared machine
   the wall time says more about the other jobs than about the code. Target: >= 3M
   characters/s with bvv241-2-3 on the 2-core VM.
2. Reopening the prepared (cached) shards.
3. The loader: milliseconds per `Stream.batch` at the tiny config's shape and larger
   ones, with a two-source mixture, in training order (steady state) and for the first
   batch after a resume at a far step (builds that epoch's window permutation),
   against a 50 ms tiny training step. Target: under 5 %.
"""

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REF_STEP_MS = 50.0
TARGET = 3e6


def cpu_s() -> float:
    """CPU seconds of this process and its finished children."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def fineweb_like(root: Path, copies: int) -> tuple:
    """The built-in corpora, `copies` times, as parquet shards in FineWeb-Edu's layout."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlx_grow.data import corpora

    docs = list(corpora.documents("builtin:default"))
    chars = 0
    for c in range(copies):
        d = root / "data" / f"CC-MAIN-2024-{10 + c:02d}"
        d.mkdir(parents=True)
        rows = [f"[{c}] {t}" for t in docs]
        chars += sum(map(len, rows))
        for j in range(2):
            part = rows[j::2]
            pq.write_table(pa.table({"text": part, "id": [f"{c}-{j}-{i}" for i in range(len(part))]}),
                           d / f"000_{j:05d}.parquet", row_group_size=512)
    return chars, len(docs) * copies


def timed(fn) -> tuple:
    t0, c0 = time.perf_counter(), cpu_s()
    out = fn()
    return out, time.perf_counter() - t0, cpu_s() - c0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=4, help="copies of the built-in corpora (9.2M characters each)")
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()

    from mlx_grow.data import corpora, encode
    from mlx_grow.data.stream import DataConfig, open_stream, prepare
    from mlx_grow.tokenizer import load_tokenizer

    tok = load_tokenizer("bvv241-2-3")
    workers = args.workers or encode.default_workers()
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=Path(__file__).parent).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    print(f"machine: {platform.machine()} {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"commit {rev or '?'}; load average {os.getloadavg()[0]:.2f} (other jobs share the cores)")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        chars, n = fineweb_like(tmp / "fineweb-like", args.copies)
        docs = list(corpora.documents(str(tmp / "fineweb-like")))
        assert sum(map(len, docs)) == chars
        print(f"text: {n:,} documents, {chars / 1e6:.1f}M characters, parquet shards in FineWeb-Edu's layout")

        backend = tok.backend
        backend.encode_special_tokens = True  # as data preparation encodes: special strings stay text
        rows = []
        for name, fn in (("tokenizers encode_batch", backend.encode_batch),
                         ("tokenizers encode_batch_fast", backend.encode_batch_fast)):
            _, wall, cpu = timed(lambda fn=fn: fn(docs, add_special_tokens=False))
            rows.append((name, wall, cpu))
        backend.encode_special_tokens = False
        docs = None  # free them before preparing
        for w in (1, workers):
            cache = tmp / f"cache-{w}"
            (shard,), wall, cpu = timed(lambda: prepare([str(tmp / "fineweb-like")], tok, out_dir=cache,
                                                        progress=False, workers=w))
            rows.append((f"data prepare, {w} worker{'s' if w > 1 else ''}" + (" (in process)" if w == 1 else ""),
                         wall, cpu))
        base = rows[0][1]
        for name, wall, cpu in rows:
            print(f"{name:34s} {chars / wall / 1e6:5.2f}M chars/s  ({wall:5.1f} s wall, {cpu:5.1f} s CPU; "
                  f"{base / wall:4.2f}x encode_batch)")
        best = max(chars / w for name, w, _ in rows if name.startswith("data prepare"))
        print(f"target >= {TARGET / 1e6:.0f}M chars/s: {'ok' if best >= TARGET else 'BELOW TARGET'} "
              f"({best / 1e6:.2f}M); load average now {os.getloadavg()[0]:.2f}")
        tokens = sum(shard.meta["tokens"].values())
        print(f"shard: {tokens:,} tokens ({chars / tokens:.2f} characters per token)")
        _, wall, _ = timed(lambda: prepare([str(tmp / "fineweb-like")], tok, out_dir=tmp / f"cache-{workers}",
                                           progress=False))
        print(f"reopen cached shards:   {wall:5.2f} s (the hashing pass only)")

        sources = ["builtin:kjv", "builtin:shakespeare"]
        cfg = DataConfig.from_dict({"sources": [sources[0], {"source": sources[1], "weight": 2}],
                                    "cache_dir": str(tmp / "loader")})
        for batch, seq in ((16, 128), (64, 512), (32, 2048)):
            stream = open_stream(cfg, tok, seq, batch, seed=0, progress=False)
            t0 = time.perf_counter()
            for step in range(args.steps):
                stream.batch(step)
            ms = (time.perf_counter() - t0) / args.steps * 1e3
            t0 = time.perf_counter()
            stream.batch(987_654)
            resume = (time.perf_counter() - t0) * 1e3
            print(f"loader {batch:3d} x {seq + 1:5d}: {ms:6.3f} ms/batch = {100 * ms / REF_STEP_MS:5.2f} % of a "
                  f"{REF_STEP_MS:.0f} ms step; first batch after a resume: {resume:.1f} ms")
        t0 = time.perf_counter()
        stream.val_batches(8)
        print(f"val_batches(8) 32 x 2049: {(time.perf_counter() - t0) * 1e3:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
