"""Time data preparation and the batch loader.

    python benchmarks/bench_data.py [--sources builtin:default] [--steps 300]

1. Preparation of the built-in corpus into a fresh temporary cache: characters
   per second end to end (hashing pass, batch encoding, writing shards), and the
   bare batch encoder on the same documents. Target: >= 1M characters/s.
2. Reopening the prepared (cached) shards.
3. The loader: milliseconds per `Stream.batch` at the tiny config's shape and
   larger ones, with a two-source mixture, in training order (steady state) and
   for the first batch after a resume at a far step (builds that epoch's window
   permutation), against a 50 ms tiny training step. Target: under 5 %.
"""

import argparse
import os
import platform
import tempfile
import time

REF_STEP_MS = 50.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sources", nargs="+", default=["builtin:kjv", "builtin:shakespeare"])
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()

    from mlx_grow.data import corpora
    from mlx_grow.data.stream import DataConfig, open_stream, prepare
    from mlx_grow.tokenizer import load_tokenizer

    tok = load_tokenizer("bvv241-2-3")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")

    docs = [d for s in args.sources for d in corpora.documents(s)]
    chars = sum(map(len, docs))
    t0 = time.perf_counter()
    tok.encode_batch(docs)
    t_enc = time.perf_counter() - t0
    print(f"batch encoder alone:    {chars / t_enc / 1e6:5.2f} M chars/s ({chars:,} chars, {t_enc:.2f} s)")

    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        shards = prepare(args.sources, tok, out_dir=cache, progress=False)
        t_prep = time.perf_counter() - t0
        tokens = sum(sum(s.meta["tokens"].values()) for s in shards)
        ok = "ok" if chars / t_prep >= 1e6 else "BELOW TARGET"
        print(f"prepare (end to end):   {chars / t_prep / 1e6:5.2f} M chars/s ({tokens:,} tokens, "
              f"{t_prep:.2f} s; target >= 1.00: {ok})")
        t0 = time.perf_counter()
        prepare(args.sources, tok, out_dir=cache, progress=False)
        print(f"reopen cached shards:   {time.perf_counter() - t0:5.2f} s (hashing pass only)")

        cfg = DataConfig.from_dict({"sources": [args.sources[0]] + [{"source": s, "weight": 2}
                                                                    for s in args.sources[1:]], "cache_dir": cache})
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
    main()
