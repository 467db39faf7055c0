"""The model-directory format: its one writer and its one reader.

A model directory holds
  config.json            ModelArgs
  model.safetensors      the weights; the substrate table is the tensor `substrate.table`
                         (above SHARD_BYTES: model-0000N-of-0000M.safetensors + model.safetensors.index.json)
  tokenizer files        tokenizer.json, tokenizer_config.json, special_tokens_map.json, …
  mlx_grow.json          format_version, the substrate and tokenizer fingerprints, lineage and
                         other records, and `files`: a sha256 of every other file (relative
                         posix paths); written last
A training checkpoint adds its optimizer and trainer state (training/runs.py).
A merged directory holds, in place of model.safetensors:
  substrate.safetensors  the shared substrate table, once
  experts/N/             each expert's config.json and weights, without the table
  adapter.safetensors    the fusion adapter, when there is one
and its mlx_grow.json adds `experts`, `combiner`, `lineage` (and `tuned`).

Every model directory is written through `write_model_dir` (grow, checkpoints,
merge, average, import): a temp dir, renamed into place after the manifest.
Every one is read through `read_weights` and `build_model` (`load_model`,
`load_experts`, training/runs.load_checkpoint).
"""

import contextlib
import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from mlx_grow.base import UserError
from mlx_grow.io import atomic_dir, sha256_file
from mlx_grow.io.atomic import file_list
from mlx_grow.io.paths import inside
from mlx_grow.io.read import NUMBER, read_json
from mlx_grow.io.tensors import SHARD_BYTES
from mlx_grow.io.tensors import write_weights as write_tensors
from mlx_grow.model import Model, ModelArgs
from mlx_grow.substrate.files import load_table_file
from mlx_grow.substrate.tables import fingerprint, save_table
from mlx_grow.tokenizer import check_vocab, copy_tokenizer, load_tokenizer

FORMAT_VERSION = 1
META = "mlx_grow.json"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
SUBSTRATE = "substrate.safetensors"
ADAPTER = "adapter.safetensors"
EXPERTS = "experts"
TABLE = "substrate.table"

# mx dtype -> safetensors dtype of a stored tensor
ST_OF = {mx.float32: "F32", mx.float16: "F16", mx.bfloat16: "BF16", mx.int64: "I64", mx.int32: "I32",
         mx.int16: "I16", mx.int8: "I8", mx.uint8: "U8", mx.bool_: "BOOL"}


class CheckpointError(UserError):
    pass


def as_numpy(a) -> np.ndarray:
    """An mx array as numpy (bfloat16, which numpy lacks, as float32)."""
    if isinstance(a, mx.array):
        return np.array(a.astype(mx.float32) if a.dtype == mx.bfloat16 else a)
    return np.asarray(a)


def array_plan(weights: dict) -> list:
    """A write plan [(name, shape, safetensors dtype, make)] of mx arrays, by
    name. bfloat16 passes through float32 and back, which is exact."""
    plan = []
    for k in sorted(weights):
        v = weights[k]
        if v.dtype not in ST_OF:
            raise ValueError(f"tensor {k} is {v.dtype}, which a model directory does not store")
        plan.append((k, tuple(v.shape), ST_OF[v.dtype], lambda v=v: as_numpy(v)))
    return plan


def model_weights(model: Model, table: bool = True) -> dict:
    """The model's weights by name (evaluated)."""
    weights = {k: v for k, v in tree_flatten(model.parameters()) if table or k != TABLE}
    mx.eval(weights)
    return weights


# --- writing ---


class ModelDirWriter:
    """The parts of one model directory, written into the temp dir `root`.
    `meta` becomes mlx_grow.json when `write_model_dir`'s block ends."""

    def __init__(self, root: Path, shard_bytes: int = SHARD_BYTES):
        self.root, self.shard_bytes = Path(root), shard_bytes
        self.meta = {"format_version": FORMAT_VERSION, "substrate": None, "tokenizer": None}

    def path(self, name) -> Path:
        """Where to write file `name` (a relative path); its folder is made."""
        if Path(name).as_posix() == META:
            raise ValueError(f"{META} is written last, by write_model_dir")
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def weights(self, weights, sub: str = ""):
        """Weights (a dict of mx arrays, or a plan [(name, shape, safetensors
        dtype, make)] streamed one tensor at a time) into folder `sub`:
        model.safetensors, or shards plus an index above `shard_bytes`."""
        plan = array_plan(weights) if isinstance(weights, dict) else list(weights)
        folder = self.root / sub
        folder.mkdir(parents=True, exist_ok=True)
        write_tensors(folder, plan, {"format": "mlx"}, self.shard_bytes)

    def config(self, args: ModelArgs, sub: str = ""):
        self.json(f"{sub}/{CONFIG}" if sub else CONFIG, args.to_dict())

    def json(self, name, obj):
        self.path(name).write_text(json.dumps(obj, indent=2))

    def arrays(self, name, arrays: dict):
        """One unsharded safetensors file of mx arrays (optimizer state, an adapter)."""
        mx.save_safetensors(str(self.path(name)), arrays)

    def copy(self, src, name):
        shutil.copy2(src, self.path(name))

    def tokenizer(self, tok, copy_from=None):
        """The tokenizer's files and fingerprint (None: no tokenizer). With
        `copy_from`, the files there are copied as they are; the tokenizer is
        saved afresh when that folder has no tokenizer.json."""
        self.meta["tokenizer"] = getattr(tok, "fingerprint", None)
        if tok is not None and not (copy_from is not None and copy_tokenizer(Path(copy_from), self.root)):
            tok.save(self.root)

    def single(self, args: ModelArgs, weights, table, tokenizer=None, copy_tokenizer_from=None):
        """A single model: `weights` (holding `substrate.table`; a dict or a
        plan), config.json, the tokenizer, and the fingerprint of `table`."""
        self.weights(weights)
        self.config(args)
        self.tokenizer(tokenizer, copy_tokenizer_from)
        self.meta["substrate"] = fingerprint(args.substrate, table)

    def model(self, model: Model, tokenizer=None):
        """A Model (and its tokenizer) as a single model directory."""
        weights = model_weights(model)
        args = replace(model.args, num_hidden_layers=len(model.layers))  # a grown model's depth
        self.single(args, weights, as_numpy(model.substrate.table), tokenizer)

    def merged(self, experts, table, tokenizer, combiner: dict, adapter=None, tuned=None, substrate=None,
               copy_tokenizer_from=None):
        """A merged directory. `experts`: [(ModelArgs, weights without the
        table, record)], each record (origin, substrate, tokenizer, lineage,
        files) listed in mlx_grow.json under its `dir`; `table`: the shared
        substrate table, stored once; `adapter`: a dict of mx arrays or a file
        to copy; `substrate`: the fingerprint to record (default: the table's)."""
        first = experts[0][0]
        save_table(self.root / SUBSTRATE, first.substrate, as_numpy(table))
        entries = []
        for i, (args, weights, record) in enumerate(experts):
            sub = f"{EXPERTS}/{i}"
            self.weights(weights, sub)
            self.config(args, sub)
            entries.append({"dir": sub, **record})
        if isinstance(adapter, dict):
            self.arrays(ADAPTER, adapter)
        elif adapter is not None:
            self.copy(adapter, ADAPTER)
        self.config(first)
        self.tokenizer(tokenizer, copy_tokenizer_from)
        self.meta["substrate"] = substrate if substrate is not None else fingerprint(first.substrate, as_numpy(table))
        self.meta.update(experts=entries, combiner=combiner, lineage={"merge": [e["origin"] for e in entries]},
                         **({"tuned": tuned} if tuned else {}))

    def finish(self):
        """mlx_grow.json: the records and a sha256 of every file, written last."""
        info = dict(self.meta)
        info["files"] = file_list(self.root)
        (self.root / META).write_text(json.dumps(info, indent=2))


@contextlib.contextmanager
def write_model_dir(out, overwrite: bool = False, shard_bytes: int = SHARD_BYTES, inputs=()):
    """Write a model directory atomically. Yields a ModelDirWriter on a temp
    dir beside `out`; when the block succeeds, mlx_grow.json is written last
    and the directory renamed onto `out`. On any error `out` is unchanged. An
    existing `out` is replaced only with `overwrite`, only when mlx-grow wrote
    it, and never when one of `inputs` is inside it."""
    with atomic_dir(out, overwrite=overwrite, inputs=inputs) as tmp:
        w = ModelDirWriter(tmp, shard_bytes)
        yield w
        w.finish()


def save_model(model: Model, out, tokenizer=None, meta: dict | None = None, overwrite: bool = False,
               shard_bytes: int = SHARD_BYTES, extra_writer=None):
    """Save a self-contained model directory atomically (temp dir + rename).
    `extra_writer(tmp)` may add files to the temp dir; they are checksummed too."""
    with write_model_dir(out, overwrite, shard_bytes) as w:
        w.model(model, tokenizer)
        if extra_writer is not None:
            extra_writer(w.root)
        w.meta.update(meta or {})
    return Path(out)


# --- reading ---


# What mlx_grow.json holds, as far as anything reads it (io.read.shaped; `key?`: when
# present). Nothing covers this file with a checksum, so every entry is checked when read.
NONE = type(None)
SUMMARY = [{"stage": int, "depth": int, "active_params": int, "steps": int, "tokens": int, "train_loss": NUMBER,
            "val_loss": NUMBER}]
LINEAGE = ({"run?": (str, NONE), "stage?": (int, NONE), "summary?": (SUMMARY, dict, NONE), "from?": (dict, NONE),
            "parent?": (str, NONE), "base?": (str, NONE), "merge?": ([str], NONE)}, NONE)
META_SHAPE = {"format_version?": int, "files?": {"*": str}, "substrate?": (dict, NONE), "tokenizer?": (str, NONE),
              "lineage?": LINEAGE, "experts?": [{"dir": str, "origin?": (str, NONE), "lineage?": LINEAGE}],
              "combiner?": {"kind?": str, "weights?": [NUMBER], "temperature?": [NUMBER], "router?": bool,
                            "adapter?": str, "rank?": int},
              "separator?": (str, NONE), "seed?": (int, NONE), "converted_from?": (dict, NONE)}


def read_meta(path) -> dict:
    p = Path(path) / META
    if not p.exists():
        return {}
    meta = read_json(p, dict, CheckpointError, "restore it or re-create the model directory", word="corrupt",
                     shape=META_SHAPE)
    if "experts" in meta and not isinstance(meta.get("combiner"), dict):
        raise CheckpointError(f"{p} is corrupt (a merge without its combiner); restore it or re-create the merge")
    return meta


def weights_digest(path: Path, meta: dict) -> str:
    """One sha256 of the model's weight files (model.safetensors, or its shards and index)."""
    files = sorted(f.name for f in path.iterdir() if f.is_file() and f.name.startswith("model")
                   and f.name.endswith((".safetensors", ".safetensors.index.json")))
    if not files:
        raise UserError(f"{path} has no {WEIGHTS}: not a model directory")
    known = meta.get("files") or {}
    digests = {name: known.get(name) or sha256_file(path / name) for name in files}
    if files == [WEIGHTS]:
        return digests[WEIGHTS]
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()


def weights_substrate(path, args: ModelArgs | None = None):
    """The substrate fingerprint of the table in a model directory's weights (which
    its checksums cover), never mlx_grow.json's record of it (which nothing covers:
    one edit would make it say anything); None without a table. Only that tensor is read."""
    from mlx_grow.io.tensors import Source

    args = args or load_args(path)
    src = Source(path)
    return fingerprint(args.substrate, src.get(TABLE)) if TABLE in src.keys() else None


def verify_files(path, meta: dict):
    """Compare every file against the checksums recorded at save time."""
    path = Path(path)
    files = meta.get("files", {})
    if not isinstance(files, dict):
        raise CheckpointError(f"{path / META} is damaged: its `files` entry is not a mapping")
    for name, digest in files.items():
        f = inside(path, name, f"the {META} `files` entry", CheckpointError)
        if not f.exists():
            raise CheckpointError(f"{f} is missing (listed in {META}); the model directory is incomplete")
        if sha256_file(f) != digest:
            raise CheckpointError(
                f"{f} does not match its checksum in {META}: the file is truncated or corrupt; "
                "restore it from a backup or an earlier checkpoint"
            )


def open_model_dir(path, verify: bool = True, what: str = "model directory") -> dict:
    """mlx_grow.json of an existing directory, its files checked against it."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {path} does not exist")
    meta = read_meta(path)
    if verify:
        verify_files(path, meta)
    return meta


def read_weights(path) -> dict:
    path = Path(path)
    index = path / WEIGHTS_INDEX
    files = [WEIGHTS]
    if index.exists():
        fix = "restore it or re-create the model directory"
        wmap = read_json(index, dict, CheckpointError, fix).get("weight_map")
        if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
            raise CheckpointError(f"{index} is damaged (no `weight_map` of tensor names to files); {fix}")
        files = sorted(set(wmap.values()))
    weights = {}
    for name in files:
        f = inside(path, name, f"the {index.name} entry" if index.exists() else "weights file", CheckpointError)
        if not f.exists():
            raise CheckpointError(f"no weights at {f}: is {path} a mlx-grow model directory?")
        try:
            weights.update(mx.load(str(f)))
        except Exception as e:  # mlx raises RuntimeError/ValueError on bad headers
            raise CheckpointError(f"cannot read {f}: {e}; the file is truncated or corrupt") from e
    return weights


def load_args(path) -> ModelArgs:
    f = Path(path) / CONFIG
    if not f.exists():
        raise CheckpointError(f"{path} has no config.json: not a mlx-grow model directory")
    d = read_json(f, dict, CheckpointError, "restore it or re-create the model directory")
    try:
        return ModelArgs.from_dict(d, where=str(f))
    except UserError as e:
        raise CheckpointError(str(e) if str(f) in str(e) else f"{f}: {e}") from None


def check_shapes(model: Model, weights: dict, where):
    """load_weights(strict=False) does not check shapes; do it here, naming each tensor."""
    want = dict(tree_flatten(model.parameters()))
    missing = sorted(set(want) - set(weights))
    extra = sorted(set(weights) - set(want))
    bad = [f"{k}: file {tuple(weights[k].shape)} vs model {tuple(want[k].shape)}"
           for k in want if k in weights and weights[k].shape != want[k].shape]
    if missing or extra or bad:
        parts = []
        if missing:
            parts.append(f"missing tensors: {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
        if extra:
            parts.append(f"unexpected tensors: {', '.join(extra[:8])}{' …' if len(extra) > 8 else ''}")
        if bad:
            parts.append("mis-shaped: " + "; ".join(bad[:8]))
        raise CheckpointError(f"{where} does not match its config.json — " + " | ".join(parts))


def build_model(args: ModelArgs, weights: dict, where, table=None, prepare=None) -> Model:
    """A Model from config.json's args and its weights, every tensor checked by
    name and shape before loading. `table`: a merge's shared substrate table
    (stored beside the experts); `prepare(model)` changes the structure before
    loading (a checkpoint's LoRA adapters)."""
    if table is not None:
        weights = {**weights, TABLE: table if isinstance(table, mx.array) else mx.array(table)}
    t = weights.get(TABLE)
    fits = t is not None and t.ndim == 2 and t.shape[0] == args.vocab_size and t.shape[1] <= args.hidden_size
    model = Model(args, substrate_table=as_numpy(t) if fits else None)
    if prepare is not None:
        prepare(model)
    check_shapes(model, weights, where)
    model.load_weights(list(weights.items()), strict=True)
    if not args.substrate.trainable:
        model.substrate.freeze()
    mx.eval(model.parameters())
    return model


def load_model(path, verify: bool = True) -> Model:
    path = Path(path)
    open_model_dir(path, verify)
    return build_model(load_args(path), read_weights(path), path)


def load_experts(path, meta: dict) -> list:
    """The experts of a merged directory, all on the one shared table. Each
    `experts[].dir` must be a folder inside the merged directory."""
    path = Path(path)
    table = mx.array(load_table_file(path / SUBSTRATE))
    experts = []
    for e in meta["experts"]:
        sub = inside(path, e.get("dir") if isinstance(e, dict) else None, f"the {META} `experts[].dir` entry",
                     CheckpointError, kind="dir")
        if not sub.is_dir():
            raise CheckpointError(f"{sub} is missing (an expert listed in {path / META}); the merge is incomplete")
        experts.append(build_model(load_args(sub), read_weights(sub), sub, table=table))
    return experts


def read_tokenizer(path, args: ModelArgs):
    """The directory's tokenizer, checked against the model's vocabulary."""
    tok = load_tokenizer(str(path))
    check_vocab(tok, args.vocab_size, f"tokenizer in {path}", error=CheckpointError)
    return tok


__all__ = ["save_model", "load_model", "read_meta", "write_model_dir", "build_model", "read_weights",
           "CheckpointError"]
