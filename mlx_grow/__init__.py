"""mlx-grow: grow, compose, run and convert language models on a frozen input substrate."""

from mlx_grow.backend import load_fast_blas, require_mlx

require_mlx()
load_fast_blas()  # before anything imports mlx.core (Linux CPU: see mlx_grow/backend.py)

__version__ = "0.1.0"

from mlx_grow.api import batch_generate, generate, load, stream_generate  # noqa: E402

__all__ = ["load", "generate", "stream_generate", "batch_generate", "__version__"]
