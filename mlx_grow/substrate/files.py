"""Read substrate tables from .npy / .safetensors / .pt files."""

from pathlib import Path

import numpy as np

from mlx_grow.base import UserError, brief


def load_table_file(path) -> np.ndarray:
    """Read a table from .npy, .safetensors (first tensor, or 'table') or a
    PyTorch .pt (never executing pickled code)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"substrate table file {path} does not exist")
    try:
        if path.suffix == ".npy":
            table = np.load(path, allow_pickle=False)
        elif path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
            table = tensors.get("table", next(iter(tensors.values())))
        elif path.suffix in (".pt", ".bin", ".pth"):
            from mlx_grow.io.safe_pickle import load_torch_file

            obj = load_torch_file(path)
            if isinstance(obj, dict):
                obj = next(iter(obj.values()))
            table = np.asarray(obj)
        else:
            raise UserError(f"unknown table format {brief(path.suffix)}: use .npy, .safetensors or .pt")
    except Exception as e:  # safetensors, numpy and pickle readers raise their own types
        if isinstance(e, ValueError) and "unknown table format" in str(e):
            raise
        raise UserError(f"cannot read substrate table {path}: {e}") from e
    if table.ndim != 2:
        raise UserError(f"substrate table {path} has shape {table.shape}; expected [V, d]")
    return np.ascontiguousarray(table, dtype=np.float32)
