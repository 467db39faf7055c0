"""File I/O at the bottom of the package: atomic writes and checksums
(`atomic`), tensor files (`tensors`), the allow-listed unpickler
(`safe_pickle`) and progress display (`progress`)."""

from mlx_grow.io.atomic import (
    atomic_dir,
    atomic_path,
    check_output,
    fsync_tree,
    sha256_file,
)

__all__ = ["atomic_dir", "atomic_path", "check_output", "fsync_tree", "sha256_file"]
