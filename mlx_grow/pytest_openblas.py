"""A pytest plugin (loaded with `-p` from pyproject's addopts, before pytest
captures output): on Linux, re-run pytest with OpenBLAS preloaded, because
MLX's bundled CPU BLAS is ~30x slower. It must happen before MLX loads."""

import os
import sys

from mlx_grow.launcher import openblas_env

if "mlx.core" not in sys.modules:
    _env = openblas_env()
    if _env.get("LD_PRELOAD") != os.environ.get("LD_PRELOAD"):
        os.execve(sys.executable, [sys.executable, "-m", "pytest", *sys.argv[1:]], _env)
