"""Fixed codes for the n-bit substrates and the PCA + L2 projection."""

import numpy as np

from mlx_grow.base import UserError


def id_bits(vocab_size: int, bits: int, order: str = "msb") -> np.ndarray:
    """[V, bits] 0/1 table of the token ids."""
    if vocab_size > 2**bits:
        raise UserError(f"{bits} bits cannot number {vocab_size} tokens; need {int(np.ceil(np.log2(vocab_size)))}")
    ids = np.arange(vocab_size, dtype=np.int64)[:, None]
    shifts = np.arange(bits - 1, -1, -1) if order == "msb" else np.arange(bits)
    return ((ids >> shifts) & 1).astype(np.float32)


def gf2_invertible(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random invertible n x n matrix over GF(2) (rejection sampling)."""
    while True:
        a = rng.integers(0, 2, (n, n), dtype=np.uint8)
        if gf2_rank(a) == n:
            return a


def gf2_rank(a: np.ndarray) -> int:
    a = a.copy() % 2
    rank, rows, cols = 0, *a.shape
    for c in range(cols):
        pivot = next((r for r in range(rank, rows) if a[r, c]), None)
        if pivot is None:
            continue
        a[[rank, pivot]] = a[[pivot, rank]]
        for r in range(rows):
            if r != rank and a[r, c]:
                a[r] ^= a[rank]
        rank += 1
    return rank


def gf2_code(vocab_size: int, bits: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = gf2_invertible(bits, rng)
    b = rng.integers(0, 2, bits, dtype=np.uint8)
    x = id_bits(vocab_size, bits, "msb").astype(np.uint8)
    return (((x @ a.T) % 2) ^ b).astype(np.float32)


def random_code(vocab_size: int, bits: int, seed: int) -> np.ndarray:
    """Collision-free random codes: colliding rows are redrawn from the same RNG."""
    if vocab_size > 2**bits:
        raise UserError(f"{bits}-bit codes cannot be distinct for {vocab_size} tokens")
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2, (vocab_size, bits), dtype=np.uint8)
    while True:
        _, first = np.unique(codes, axis=0, return_index=True)
        dup = np.setdiff1d(np.arange(vocab_size), first)
        if dup.size == 0:
            return codes.astype(np.float32)
        codes[dup] = rng.integers(0, 2, (dup.size, bits), dtype=np.uint8)


def pca_l2(x: np.ndarray, n_components: int) -> np.ndarray:
    """Mean-centred PCA (no whitening) onto the top `n_components`, then
    L2-normalised rows, float32. Each component's sign is fixed so its
    largest-magnitude loading is positive, so every machine gets one matrix."""
    x = x.astype(np.float64)
    x -= x.mean(axis=0, keepdims=True)
    cov = x.T @ x
    w, v = np.linalg.eigh(cov)
    order = np.argsort(-w, kind="stable")[:n_components]
    v = v[:, order]
    idx = np.argmax(np.abs(v), axis=0)
    v *= np.where(v[idx, np.arange(v.shape[1])] < 0, -1.0, 1.0)
    y = x @ v
    norm = np.linalg.norm(y, axis=1, keepdims=True)
    return (y / np.where(norm == 0, 1.0, norm)).astype(np.float32)


def padded_width(bits: int, d_model: int) -> int:
    """Smallest divisor of d_model that holds `bits` (the code is zero-padded to it)."""
    if bits > d_model:
        raise UserError(f"a {bits}-bit code does not fit d_model {d_model}")
    return next(w for w in range(bits, d_model + 1) if d_model % w == 0)
