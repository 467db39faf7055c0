"""Check that an MLX backend is installed, without loading it (the launcher
must set LD_PRELOAD before MLX loads)."""

import importlib.util
import sys


def require_mlx():
    try:
        found = importlib.util.find_spec("mlx.core") is not None
    except ImportError:
        found = False
    if found:
        return
    if sys.platform == "darwin":
        how = "pip install mlx"
    else:
        how = "pip install 'mlx-grow[cpu]' (Linux CPU) or 'mlx-grow[cuda]' (NVIDIA GPU)"
    raise SystemExit(
        "mlx-grow needs an MLX backend, and none is installed.\n"
        f"Install one: {how}. Install only one backend per environment."
    )
