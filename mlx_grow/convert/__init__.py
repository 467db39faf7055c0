"""Convert checkpoints: PyTorch / Hugging Face <-> mlx-grow model directories.

Import reads a checkpoint's tensors lazily (io/tensors.py), finds its layout
(layouts.py), rebuilds the substrate table, and writes a mlx-grow model
directory (or a merge, for experts).
Export writes a Hugging Face directory that transformers and mlx-lm load with
no custom code (Starcoder2, or GPT-NeoX) plus `mlx_grow_export.json`, so a
re-import restores the substrate recipe and fingerprint exactly. Tensors are
streamed one at a time, and every output goes to a temp dir renamed on success.
"""

from mlx_grow.convert.export import export_model
from mlx_grow.convert.importer import import_checkpoint, plan_import
from mlx_grow.convert.inspect import inspect, verify

__all__ = ["export_model", "import_checkpoint", "plan_import", "inspect", "verify"]
