"""mlx-grow: grow, compose, run and convert language models on a frozen input substrate."""

from mlx_grow.backend import require_mlx

require_mlx()

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy top-level API so `import mlx_grow` stays cheap.
    if name == "load":
        from mlx_grow.checkpoint import load

        return load
    if name in ("generate", "stream_generate"):
        from mlx_grow import generate as _g

        return getattr(_g, name)
    raise AttributeError(name)
