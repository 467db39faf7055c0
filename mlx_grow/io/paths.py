"""Paths read from our own files (an index, a manifest, a merge record) are
data, not trust: each must stay inside the folder that names it."""

from pathlib import Path

from mlx_grow.base import UserError, brief


def inside(root, name, what: str, error=UserError, kind: str = "file") -> Path:
    """`root / name`, refused (with `error`, naming the entry) unless it resolves
    inside `root` and is a regular file (kind="file") or a folder (kind="dir").
    A missing entry is returned as it is, for the caller's own message."""
    root = Path(root)
    if not isinstance(name, str) or not name or "\x00" in name:
        raise error(f"{what} {brief(name)} is not a file name: the entry is damaged")
    path = root / name
    try:
        real, base = path.resolve(), root.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise error(f"{what} {brief(name)} cannot be resolved ({e}): the entry is damaged") from None
    if real == base or base not in real.parents:
        raise error(f"{what} {brief(name)} points outside {root}: refusing to read it (only files inside the "
                    "folder are read)")
    if path.exists():
        ok = real.is_file() if kind == "file" else real.is_dir()
        if not ok:
            raise error(f"{what} {brief(name)} in {root} is not a {'regular file' if kind == 'file' else 'folder'}: "
                        "refusing to read it")
    return path
