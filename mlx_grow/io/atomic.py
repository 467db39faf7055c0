"""Atomic writes and file checksums."""

import contextlib
import hashlib
import os
import shutil
import uuid
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the
    block succeeds, so a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


MARKER = "mlx_grow.json"  # the metadata file of a model, merge or checkpoint directory


def replaceable(path, inputs=(), marker: str = MARKER):
    """Refuse (FileExistsError, one line) to replace `path` unless mlx-grow wrote it
    as this kind of output: a directory holding `marker`, whose files are all listed
    in it when it lists them (a model's `files`), and which contains none of `inputs`."""
    import json

    path = Path(path)
    real = path.resolve()
    for i in inputs or ():
        if not isinstance(i, (str, os.PathLike)) or not os.path.exists(i):
            continue
        src = Path(i).resolve()
        if src == real or real in src.parents:
            raise FileExistsError(f"{path} contains the input {i}: --overwrite never replaces a folder that "
                                  "holds an input; choose another output")
    if not path.is_dir() or path.is_symlink():
        raise FileExistsError(f"{path} exists and is not a folder mlx-grow wrote; --overwrite only replaces "
                              "those: choose another output or remove it yourself")
    meta = path / marker
    if not meta.is_file():
        raise FileExistsError(f"{path} exists and has no {marker}, so mlx-grow did not write it; --overwrite "
                              "only replaces folders mlx-grow wrote: choose another output or remove it yourself")
    try:
        listed = json.loads(meta.read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        listed = None
    if isinstance(listed, dict):
        others = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                        if not p.is_dir() and p != meta and p.name != ".DS_Store"
                        and p.relative_to(path).as_posix() not in listed)
        if others:
            raise FileExistsError(f"{path} holds files mlx-grow did not write ({', '.join(others[:5])}"
                                  f"{' …' if len(others) > 5 else ''}); --overwrite would delete them: move them "
                                  "out or choose another output")


def check_output(path, overwrite: bool = False, inputs=(), marker: str = MARKER):
    """The one rule for an output folder: a new path is fine; an existing one needs
    `overwrite` and must be replaceable (mlx-grow wrote it, no input inside)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} already exists; choose another --out, or pass --overwrite to replace "
                                  "a folder mlx-grow wrote")
        replaceable(path, inputs, marker)


@contextlib.contextmanager
def atomic_dir(path, overwrite: bool = False, inputs=(), marker: str = MARKER):
    """Yield a temporary directory beside `path`; on success it replaces `path`
    (kept as a `.old` copy until the rename is done). On failure nothing changes.
    An existing `path` is replaced only with `overwrite` and only when mlx-grow
    wrote it (see `replaceable`); `inputs` are never inside what is replaced."""
    path = Path(path)
    check_output(path, overwrite, inputs, marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        old = None
        if path.exists() or path.is_symlink():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def fsync_tree(root):
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())


def sha256_file(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
