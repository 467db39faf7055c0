"""Tensor files: safetensors read lazily (the header checked against the file
size, so a truncated file is an error; one tensor per plain file read, no mmap),
PyTorch .bin / .pt read through the allow-listed unpickler (safe_pickle.py),
and safetensors written as a stream, one tensor at a time, sharded with an
index as model directories are (checkpoint.py).

A write plan is a list of (name, shape, safetensors dtype, make), where make()
returns the tensor as a numpy array; nothing is made before it is written.
"""

import json
import math
import struct
from pathlib import Path

import numpy as np

from mlx_grow.base import UserError, brief
from mlx_grow.io.paths import inside
from mlx_grow.io.read import parse_json, read_json, shaped

ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
             "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
WRAPPERS = ("_orig_mod.", "module.")  # torch.compile / DDP prefixes, stripped before matching
TABLE_FILES = ("embeddings.txt", "normalized_embeddings_weights.pt")  # an input table beside the weights
SHARD_BYTES = 2 << 30  # model directories shard their weights above this size
NOT_WEIGHTS = TABLE_FILES + ("training_args.bin", "optimizer.pt", "scheduler.pt")


def tensor_bytes(shape, st: str) -> int:
    """Bytes of a tensor of `shape` in safetensors dtype `st`."""
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(ST_DTYPES[st]).itemsize


# --- reading ---


class SafetensorsFile:
    """A .safetensors header, checked against the file size; tensors are read
    on demand with plain file reads (no full load, no mmap)."""

    def __init__(self, path: Path):
        self.path, size = path, path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if n < 2 or n > size - 8:
                raise UserError(f"{path} is truncated or not a safetensors file (bad header length)")
            try:
                header = parse_json(f.read(n), "it")
            except UserError as e:  # bad JSON, or nested too deep
                raise UserError(f"{path} has a corrupt safetensors header ({str(e).removeprefix('it ')})") from None
        if not isinstance(header, dict):
            raise UserError(f"{path} has a corrupt safetensors header (not a JSON object)")
        header.pop("__metadata__", None)
        self.base, self.tensors = 8 + n, {}
        entry = {"dtype": str, "shape": [int], "data_offsets": [int]}
        for name, t in header.items():
            if not shaped(t, entry) or t["dtype"] not in ST_DTYPES or len(t["data_offsets"]) != 2 \
                    or min(t["shape"] + t["data_offsets"], default=0) < 0:
                raise UserError(f"tensor {brief(name)} in {path} has a corrupt or unsupported header entry")
            dt, shape, (start, end) = t["dtype"], tuple(t["shape"]), t["data_offsets"]
            want = math.prod(shape) * np.dtype(ST_DTYPES[dt]).itemsize  # Python ints: no overflow
            if end - start != want:
                raise UserError(f"tensor {name} in {path} is corrupt: {end - start} bytes for shape {list(shape)}")
            if self.base + end > size:
                raise UserError(f"{path} is truncated: tensor {name} needs {self.base + end} bytes, "
                                 f"the file has {size}")
            self.tensors[name] = (dt, shape, start)

    def get(self, name) -> np.ndarray:
        dt, shape, start = self.tensors[name]
        arr = np.fromfile(self.path, ST_DTYPES[dt], int(np.prod(shape, dtype=np.int64)), offset=self.base + start)
        arr = arr.reshape(shape)
        return (arr.astype(np.uint32) << 16).view(np.float32) if dt == "BF16" else arr


class Arrays:
    """Tensors already in memory (a PyTorch file, a table) behind the same interface."""

    def __init__(self, arrays: dict):
        self.arrays = arrays
        self.tensors = {k: (str(v.dtype), tuple(v.shape), None) for k, v in arrays.items()}

    def get(self, name):
        return self.arrays[name]


class Source:
    """Every tensor of a checkpoint (safetensors, sharded or not, or PyTorch
    .bin / .pt through the allow-listed unpickler), keyed with torch.compile /
    DDP wrappers stripped. `config` is config.json (or a nanoGPT .pt's model_args)."""

    def __init__(self, path):
        self.path = path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        self.root = path if path.is_dir() else path.parent
        self.config, self.prefix, readers, self._last = {}, "", {}, (None, None)
        cfg = self.root / "config.json"
        if cfg.is_file():
            self.config = read_json(cfg, dict, word="not usable")
        for f in [path] if path.is_file() else self._weight_files(path):
            r = SafetensorsFile(f) if f.suffix == ".safetensors" else self._read_torch(f)
            readers.update({k: r for k in r.tensors})
        self.names = {}  # our key -> (reader, the file's key)
        for k, r in readers.items():
            s = k
            while s.startswith(WRAPPERS):
                s = s.split(".", 1)[1]
            self.names[s] = (r, k)

    @staticmethod
    def _weight_files(d: Path):
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (d / index).is_file():
                wmap = read_json(d / index, dict, word="not a valid shard index").get("weight_map")
                if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
                    raise UserError(f"{d / index} is not a valid shard index (no `weight_map` of names to files)")
                names = sorted(set(wmap.values()))
                files = [inside(d, n, f"the {index} entry") for n in names]
                lost = [f.name for f in files if not f.is_file()]
                if lost:
                    raise FileNotFoundError(f"{d / index} lists missing shard(s) {', '.join(lost)}")
                return files
        files = sorted(d.glob("*.safetensors")) or sorted(
            f for f in (*d.glob("*.bin"), *d.glob("*.pt"), *d.glob("*.pth")) if f.name not in NOT_WEIGHTS)
        if not files and not (d / "experts").is_dir():  # a merge's weights sit in experts/N
            raise FileNotFoundError(f"{d} holds no *.safetensors, *.bin or *.pt weights")
        return files

    def _read_torch(self, f: Path) -> Arrays:
        from mlx_grow.io.safe_pickle import load_torch_file

        try:
            obj = load_torch_file(f)
        except Exception as e:  # UnsafePickleError, zip and pickle errors
            raise UserError(f"cannot read {f}: {e}") from None
        if isinstance(obj, dict):
            cfg = next((obj[k] for k in ("model_args", "config") if isinstance(obj.get(k), dict)), None)
            self.config = self.config or dict(cfg or {})
            obj = next((obj[k] for k in ("model", "state_dict") if isinstance(obj.get(k), dict)), obj)
        if not isinstance(obj, dict):
            raise UserError(f"{f} holds a {type(obj).__name__}, not a state dict")
        return Arrays({str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)})

    def view(self, prefix: str):
        """The tensors under `prefix`, with it stripped (one expert of a merge)."""
        v = object.__new__(Source)
        v.__dict__.update(self.__dict__, path=Path(f"{self.path}:{prefix}"), prefix=prefix, _last=(None, None),
                          names={k[len(prefix):]: r for k, r in self.names.items() if k.startswith(prefix)})
        return v

    def add(self, key, array):
        self.names[key] = (Arrays({key: array}), key)

    def keys(self):
        return list(self.names)

    def shape(self, key):
        r, k = self.names[key]
        return r.tensors[k][1]

    def dtype(self, key):
        r, k = self.names[key]
        return r.tensors[k][0]

    def get(self, key) -> np.ndarray:
        """The tensor as float32 (the last one is kept: a fused qkv is read once)."""
        if self._last[0] != key:
            r, k = self.names[key]
            self._last = (key, np.asarray(r.get(k), dtype=np.float32))
        return self._last[1]


# --- writing ---


def to_dtype(arr: np.ndarray, st: str) -> np.ndarray:
    """`arr` as the bytes of safetensors dtype `st` (BF16: float32 rounded to the top half)."""
    if st != "BF16":
        return np.ascontiguousarray(arr, ST_DTYPES[st])
    bits = np.ascontiguousarray(arr, np.float32).view(np.uint32)  # round to nearest even
    return np.where(np.isnan(arr), np.uint16(0x7FC0), ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16))


def nbytes(entry) -> int:  # of a plan entry
    return tensor_bytes(entry[1], entry[2])


def write_safetensors(path: Path, plan, metadata: dict):
    """Stream a plan [(name, shape, dtype, make)] into one safetensors file,
    making one tensor at a time."""
    header, off = {}, 0
    for entry in plan:
        header[entry[0]] = {"dtype": entry[2], "shape": list(entry[1]), "data_offsets": [off, off + nbytes(entry)]}
        off += nbytes(entry)
    raw = json.dumps({**header, "__metadata__": metadata}, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape, dt, make in plan:
            arr = make()
            if tuple(arr.shape) != tuple(shape):
                raise UserError(f"tensor {name} came out {list(arr.shape)}, expected {list(shape)}")
            f.write(memoryview(to_dtype(arr, dt)).cast("B"))


def write_weights(out: Path, plan, metadata: dict, shard_bytes: int = SHARD_BYTES):
    """model.safetensors, or shards plus model.safetensors.index.json (the one
    sharding rule: a new shard when the next tensor would pass `shard_bytes`)."""
    shards, size = [[]], 0
    for entry in plan:
        if shards[-1] and size + nbytes(entry) > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes(entry)
    if len(shards) == 1:
        return write_safetensors(out / "model.safetensors", plan, metadata)
    index = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(out / name, shard, metadata)
        index.update({e[0]: name for e in shard})
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": sum(map(nbytes, plan))}, "weight_map": index}, indent=1))
