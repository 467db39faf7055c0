"""Time the glyph substrate build for a 65,536-token vocabulary at d 1024.

    python benchmarks/bench_glyph.py [--augment 2-3] [--d-model 1024]

Uses the bvv241-2-3 token strings when mlx_grow.tokenizer can build them,
otherwise chr(i) for the valid code points below 65,536 and `<unused_{i}>`
for the surrogates. Target: under 3 minutes in total.
"""

import argparse
import platform
import time

import numpy as np

TARGET_S = 180.0
V = 65536


def token_strings():
    try:
        from mlx_grow.tokenizer import load_tokenizer

        strings = load_tokenizer("bvv241-2-3").token_strings()
        return strings, "bvv241-2-3"
    except Exception as e:  # tokenizer not available: synthetic vocabulary
        print(f"(bvv241-2-3 unavailable: {e}; using code points)")
        strings = [f"<unused_{i}>" if 0xD800 <= i < 0xE000 else chr(i) for i in range(V)]
        return strings, "code points + placeholders"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--augment", default="2-3")
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--font", default=None)
    args = ap.parse_args()

    from mlx_grow.substrate.codes import pca_l2
    from mlx_grow.substrate.glyph import find_font, glyph_bits

    t0 = time.perf_counter()
    strings, source = token_strings()
    t_vocab = time.perf_counter() - t0
    lengths = np.array([len(s) for s in strings])
    print(f"vocabulary: {len(strings):,} strings from {source} ({t_vocab:.1f} s); "
          f"{(lengths > 1).sum():,} multi-character, {lengths.sum():,} characters")
    print(f"font: {find_font(args.font)}; machine: {platform.machine()}, {platform.python_version()}")

    t0 = time.perf_counter()
    bits = glyph_bits(strings, args.font, font_size=32, augment=args.augment, progress=True)
    t_render = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = pca_l2(bits, args.d_model)
    t_pca = time.perf_counter() - t0

    norms = np.linalg.norm(table, axis=1)
    total = t_render + t_pca
    print(f"render + augment + snake: {t_render:6.1f} s  ({t_render / len(strings) * 1e6:.0f} us/token)")
    print(f"PCA + L2 (d {args.d_model}):      {t_pca:6.1f} s")
    print(f"total:                    {total:6.1f} s  (target {TARGET_S:.0f} s: "
          f"{'OK' if total <= TARGET_S else 'TOO SLOW'})")
    print(f"table {table.shape} {table.dtype}; row norms {norms.min():.6f}..{norms.max():.6f}; "
          f"distinct bit rows {len(np.unique(bits, axis=0)):,}")


if __name__ == "__main__":
    main()
