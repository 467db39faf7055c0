"""Atomic writes and file checksums, and the one rule for outputs: a new path
is written; an existing one is replaced only with --overwrite, and only when
mlx-grow wrote it (a folder whose marker file lists every file in it)."""

import contextlib
import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path

# The names of the temp and set-aside copies mlx-grow makes beside an output:
# `.NAME.tmp-1a2b3c4d` while it is written, `.NAME.old-1a2b3c4d` while it is replaced.
TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-[0-9a-f]{8}")


def temp_name(path, kind: str = "tmp") -> Path:
    """A fresh temp (`tmp`) or set-aside (`old`) name beside `path`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{uuid.uuid4().hex[:8]}")


def temp_of(name: str, outputs) -> bool:
    """Whether `name` is a temp or set-aside copy of an output whose name matches
    the regex `outputs` in full (so `.notes.tmp-backup` of a user is never one)."""
    m = TEMP_NAME.fullmatch(name)
    return bool(m and re.fullmatch(outputs, m["name"]))


def named_error(e: OSError, path, tmp=None) -> OSError:
    """An OSError that names the output `path`: when it named nothing (a write that
    fills the disk), or a file in the temp copy `tmp` (the same file under `path`)."""
    if e.errno is None:
        return e
    name = str(e.filename) if e.filename else ""
    if name and not (tmp is not None and (name == str(tmp) or name.startswith(str(tmp) + os.sep))):
        return e
    where = str(path) + name[len(str(tmp)):] if name else str(path)
    try:
        return type(e)(e.errno, e.strerror or os.strerror(e.errno), where)
    except TypeError:  # a subclass with its own signature: keep it as it is
        return e


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the
    block succeeds, so a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if (named := named_error(e, path, tmp)) is e:
            raise
        raise named from e
    finally:
        if tmp.exists():
            tmp.unlink()


MARKER = "mlx_grow.json"  # the metadata file of a model, merge or checkpoint directory
REPORT_MARKER = "mlx_grow_report.json"  # the marker of a report folder (eval -o, reproduce's figures)


def file_list(root, skip=()) -> dict:
    """{relative posix path: sha256} of every regular file under `root` (symlinks not
    followed), less `skip`: what a marker lists as the files mlx-grow wrote."""
    root = Path(root)
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for name in sorted(files):
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if rel not in skip and p.is_file() and not p.is_symlink():
                out[rel] = sha256_file(p)
    return out


def write_marker(root, name: str, record: dict):
    """The marker file `name` of folder `root`, written last: `record` and `files`,
    every file beside it (what makes the folder replaceable, see `replaceable`)."""
    import json

    (Path(root) / name).write_text(json.dumps({**record, "files": file_list(root, skip=(name,))}, indent=2))


def foreign_files(path, listed, marker: str) -> list:
    """Entries under `path` mlx-grow did not write: files not in `listed`, and every
    symlink (to a file or a folder; never followed)."""
    path = Path(path)
    others = []
    for dirpath, dirnames, files in os.walk(path):
        for name in dirnames + files:
            p = Path(dirpath) / name
            rel = p.relative_to(path).as_posix()
            if p.is_symlink():
                others.append(rel)
            elif name in files and rel != marker and name != ".DS_Store" and rel not in listed:
                others.append(rel)
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]
    return sorted(others)


def replaceable(path, inputs=(), marker: str = MARKER):
    """Refuse (FileExistsError, one line) to replace `path` unless mlx-grow wrote it
    as this kind of output: a directory holding `marker` whose `files` lists every
    file in it (a marker without that list proves nothing), with no symlink inside,
    and which contains none of `inputs`."""
    from mlx_grow.base import UserError
    from mlx_grow.io.read import read_json

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
    if not meta.is_file() or meta.is_symlink():
        raise FileExistsError(f"{path} exists and has no {marker}, so mlx-grow did not write it; --overwrite "
                              "only replaces folders mlx-grow wrote: choose another output or remove it yourself")
    try:
        listed = read_json(meta).get("files")
    except (OSError, UserError):
        listed = None
    if not isinstance(listed, dict):
        raise FileExistsError(f"{path}/{marker} lists no files, so nothing shows which files in {path} mlx-grow "
                              "wrote; --overwrite would delete them all: choose another output or remove it yourself")
    others = foreign_files(path, listed, marker)
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
    tmp = temp_name(path)
    tmp.mkdir()
    try:
        try:
            yield tmp
            fsync_tree(tmp)
        except OSError as e:
            if (named := named_error(e, path, tmp)) is e:
                raise
            raise named from e
        old = None
        if path.exists() or path.is_symlink():
            old = temp_name(path, "old")
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
