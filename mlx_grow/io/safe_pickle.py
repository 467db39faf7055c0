"""Read PyTorch .pt / .bin files without torch and without running pickled code.

A pickle can call any importable function while it loads. This reader only
lets through the handful of globals that tensors and state dicts need
(everything else raises UnsafePickleError before it is called), and it builds
tensors as NumPy arrays straight from the raw storage bytes. It reads the zip
format of torch.save and the legacy (pre-1.6) non-zip format.
"""

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from mlx_grow.base import UserError

# torch storage type -> numpy dtype of its raw bytes (bfloat16 read as uint16)
STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MAX_EXPANSION = 1 << 30  # bytes a tensor may have beyond its storage (a stride-0 broadcast view)
MAX_ZIP_RATIO = 64  # a torch zip stores its entries uncompressed; more than this is a zip bomb
ZIP_SLACK = 1 << 24  # small entries may compress well (16 MiB)


class UnsafePickleError(UserError):
    pass


class StorageType:
    """Stands in for torch.FloatStorage and friends."""

    def __init__(self, name):
        self.name, self.dtype = name, np.dtype(STORAGE_DTYPES[name])


def rebuild_tensor(storage, offset, size, stride, *_):
    if storage is None:  # first pass over a legacy file: storages not read yet
        return None
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or not all(isinstance(n, int) and n >= 0 for n in size + stride) \
            or not isinstance(offset, int):
        raise UserError("a tensor's size, stride or offset is malformed")
    if 0 not in size:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if offset < 0 or min(stride, default=0) < 0 or last >= storage.size:
            raise UserError("tensor runs past the end of its storage")
    numel = int(np.prod(size, dtype=object))
    if numel * storage.itemsize > storage.nbytes + MAX_EXPANSION:
        raise UserError(f"a tensor of shape {size} ({numel * storage.itemsize:,} bytes) expands a storage of "
                        f"{storage.nbytes:,} bytes: refusing a tensor that large")
    base = storage[offset:] if storage.size else storage
    strides = tuple(s * storage.itemsize for s in stride)
    return np.lib.stride_tricks.as_strided(base, size, strides, writeable=False).copy()


def rebuild_parameter(data, *_):
    return data


def rebuild_from_type(func, _type, args, state):
    if state:
        raise UnsafePickleError("refusing a tensor subclass with Python state")
    return func(*args)


SAFE_GLOBALS = {
    "torch._utils._rebuild_tensor_v2": rebuild_tensor,
    "torch._utils._rebuild_parameter": rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": rebuild_from_type,
    "torch.Tensor": "torch.Tensor",
    "torch.nn.parameter.Parameter": "torch.nn.Parameter",
    "torch.Size": tuple,
    "collections.OrderedDict": collections.OrderedDict,
    "_codecs.encode": lambda s, enc="utf-8": s.encode(enc),  # how protocol 2 stores bytes
    **{f"builtins.{t.__name__}": t for t in (set, frozenset, tuple, list, dict, complex, slice)},
    **{f"torch.{name}": StorageType(name) for name in STORAGE_DTYPES},
    **{
        f"torch.{d}": f"torch.{d}"
        for d in ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")
    },
}


class SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, where, read_storage):
        super().__init__(file)
        self.where, self.read_storage = where, read_storage

    def find_class(self, module, name):
        key = f"{module}.{name}"
        if key not in SAFE_GLOBALS:
            raise UnsafePickleError(
                f"refusing to load {key} from {self.where}: only tensors, dicts and numbers are allowed"
            )
        return SAFE_GLOBALS[key]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r:.80} in {self.where}")
        _, stype, key, _location, numel, *view = pid
        if not isinstance(stype, StorageType):
            raise UnsafePickleError(f"unexpected storage type {stype!r:.80} in {self.where}")
        return self.read_storage(stype.dtype, str(key), int(numel), view[0] if view else None)


def to_numpy_storage(raw: bytes, dtype, numel: int, big_endian: bool = False) -> np.ndarray:
    arr = np.frombuffer(raw, dtype=dtype.newbyteorder(">") if big_endian else dtype, count=numel)
    if dtype == np.uint16:  # bfloat16: the top half of a float32
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(dtype, copy=False)


def load_torch_file(path):
    """The object stored by torch.save: tensors become numpy arrays
    (bfloat16 -> float32), state dicts become (ordered) dicts."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        return _load_legacy(path)
    except MemoryError:
        raise UserError(f"{path} asks for more memory than this machine has while loading: it is damaged or "
                        "hostile (a PyTorch state dict needs about its file size)") from None


def _read_entry(zf, name: str, path: Path, limit: int | None = None) -> bytes:
    """One zip entry, refused when it would expand far past its stored size."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise UserError(f"{path} has no entry {name}: the checkpoint is incomplete") from None
    cap = max(ZIP_SLACK, MAX_ZIP_RATIO * info.compress_size)
    if info.file_size > cap:
        raise UserError(f"zip entry {name} in {path} expands to {info.file_size:,} bytes from "
                        f"{info.compress_size:,}: refusing it (torch.save stores entries uncompressed)")
    with zf.open(info) as f:
        return f.read(limit if limit is not None else -1)


def _load_zip(path: Path):
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = next((n for n in names if n == "data.pkl" or n.endswith("/data.pkl")), None)
        if pkl is None:
            raise UserError(f"{path} is a zip file but not a PyTorch checkpoint (no data.pkl)")
        prefix = pkl[: -len("data.pkl")]
        big = prefix + "byteorder" in names and _read_entry(zf, prefix + "byteorder", path, 16).strip() == b"big"
        cache = {}

        def read_storage(dtype, key, numel, _view):
            if key not in cache:
                raw = _read_entry(zf, f"{prefix}data/{key}", path, numel * dtype.itemsize)
                if len(raw) < numel * dtype.itemsize:
                    raise UserError(f"storage {key} in {path} is truncated")
                cache[key] = to_numpy_storage(raw, dtype, numel, big)
            return cache[key]

        return SafeUnpickler(io.BytesIO(_read_entry(zf, pkl, path)), path.name, read_storage).load()


def _load_legacy(path: Path):
    """torch.save(..., _use_new_zipfile_serialization=False): magic number,
    protocol, sys info, the object's pickle, the storage keys, then each
    storage as an 8-byte element count and its raw bytes."""
    with open(path, "rb") as f:
        data = f.read()
    f = io.BytesIO(data)

    def unpickle(read_storage):
        return SafeUnpickler(f, path.name, read_storage).load()

    try:
        magic = unpickle(None)
    except (pickle.UnpicklingError, EOFError) as e:
        raise UserError(f"{path} is neither a zip nor a legacy PyTorch file ({e})") from None
    if magic != LEGACY_MAGIC:
        raise UserError(f"{path} is not a PyTorch checkpoint (no torch.save magic number)")
    unpickle(None)  # protocol version
    sys_info = unpickle(None)
    big = isinstance(sys_info, dict) and not sys_info.get("little_endian", True)
    start, dtypes = f.tell(), {}

    def note(dtype, key, numel, view):  # first pass: learn each storage's dtype
        dtypes[key] = dtype
        return None

    unpickle(note)
    keys = unpickle(None)
    storages = {}
    for key in keys:
        key = str(key)
        (numel,) = struct.unpack(">q" if big else "<q", f.read(8))
        dtype = dtypes[key]
        raw = f.read(numel * dtype.itemsize)
        if len(raw) < numel * dtype.itemsize:
            raise UserError(f"storage {key} in {path} is truncated")
        storages[key] = to_numpy_storage(raw, dtype, numel, big)

    def read_storage(dtype, key, numel, view):
        base = storages[key]
        if view:  # (view key, offset, size) of an old storage view
            _vkey, off, size = view
            return base[off : off + size]
        return base

    f.seek(start)
    return unpickle(read_storage)


def load_state_dict(path) -> dict:
    """A state dict file as {name: numpy array} (non-tensor entries dropped)."""
    obj = load_torch_file(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
