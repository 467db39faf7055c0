"""Where mlx-grow keeps its caches, and paths read from our own files (an index,
a manifest, a merge record), which are data, not trust: each must stay inside the
folder that names it."""

import os
from pathlib import Path

from mlx_grow.base import UserError, brief


def cache_home() -> Path:
    """mlx-grow's cache folder: $MLX_GROW_CACHE, else ~/.cache/mlx-grow (built
    tokenizers, token shards and downloaded datasets each have a folder in it)."""
    return Path(os.environ.get("MLX_GROW_CACHE") or Path.home() / ".cache" / "mlx-grow").expanduser()


def hub_blobs(folder: Path):
    """The blobs folder of the huggingface_hub cache repository whose snapshot holds
    `folder` (.../models--org--name/snapshots/<commit>[/sub]), else None: the cache
    links each snapshot file to a blob there."""
    for p in (folder, *folder.parents):
        if p.parent.name == "snapshots" and p.parent.parent.name.startswith("models--"):
            return p.parent.parent / "blobs"
    return None


def inside(root, name, what: str, error=UserError, kind: str = "file") -> Path:
    """`root / name`, refused (with `error`, naming the entry) unless it resolves
    inside `root` (or, in a Hub cache snapshot, is a link inside `root` to one of
    the repository's blobs) and is a regular file (kind="file") or a folder
    (kind="dir"). A missing entry is returned as it is, for the caller's own message."""
    root = Path(root)
    if not isinstance(name, str) or not name or "\x00" in name:
        raise error(f"{what} {brief(name)} is not a file name: the entry is damaged")
    path = root / name
    try:
        real, base = path.resolve(), root.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise error(f"{what} {brief(name)} cannot be resolved ({e}): the entry is damaged") from None
    named = Path(os.path.normpath(root / name))
    blobs = hub_blobs(base) if Path(os.path.normpath(root)) in named.parents else None
    if (real == base or base not in real.parents) and not (blobs is not None and blobs.resolve() in real.parents):
        raise error(f"{what} {brief(name)} points outside {root}: refusing to read it (only files inside the "
                    "folder are read)")
    if path.exists():
        ok = real.is_file() if kind == "file" else real.is_dir()
        if not ok:
            raise error(f"{what} {brief(name)} in {root} is not a {'regular file' if kind == 'file' else 'folder'}: "
                        "refusing to read it")
    return path
