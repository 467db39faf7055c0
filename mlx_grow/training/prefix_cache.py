"""Cache of the frozen prefix's output hidden states."""

import mlx.core as mx
import numpy as np


class PrefixCache:
    """Hidden states at the input of the first trainable block, per token row.
    Keyed by (row bytes, boundary, version); `version` changes whenever
    anything below the boundary changes, which invalidates every entry."""

    def __init__(self, max_mb: int):
        self.max_bytes, self.store, self.used, self.version = max_mb << 20, {}, 0, 0
        self.hits = self.misses = 0

    def invalidate(self):
        self.store.clear()
        self.used = 0
        self.version += 1

    def __call__(self, model, x_np: np.ndarray, start: int):
        keys = [(r.tobytes(), start, self.version) for r in x_np]
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        if missing:
            h = model.hidden(mx.array(x_np[missing]), end=start)
            mx.eval(h)
            for j, i in enumerate(missing):
                if self.used + h[j].nbytes <= self.max_bytes:
                    self.store[keys[i]] = h[j]
                    self.used += h[j].nbytes
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if not missing:
            return mx.stack([self.store[k] for k in keys])
        got = {i: h[j] for j, i in enumerate(missing)}
        return mx.stack([got[i] if i in got else self.store[k] for i, k in enumerate(keys)])
