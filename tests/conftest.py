import os

import pytest

import mlx_grow  # noqa: F401  first: it loads the fast CPU BLAS before any test module imports mlx.core


# Tests write caches (tokenizers, shards) into a per-session temp dir, never $HOME.
@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    if "MLX_GROW_CACHE" not in os.environ:
        os.environ["MLX_GROW_CACHE"] = str(tmp_path_factory.mktemp("mlx-grow-cache"))
    yield
