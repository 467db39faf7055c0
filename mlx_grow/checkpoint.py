"""Model directories: save and load, atomically, with checksums.

A model directory holds `config.json` (ModelArgs), `model.safetensors` (or
shards + `model.safetensors.index.json`; the substrate table is the tensor
`substrate.table`), the tokenizer files and `mlx_grow.json` (substrate and
tokenizer fingerprints, lineage, and a sha256 of every file).
"""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from mlx_grow.base import UserError
from mlx_grow.io import atomic_dir, sha256_file
from mlx_grow.io.paths import inside
from mlx_grow.io.tensors import SHARD_BYTES
from mlx_grow.model import Model, ModelArgs
from mlx_grow.substrate.tables import fingerprint

FORMAT_VERSION = 1
META = "mlx_grow.json"


class CheckpointError(UserError):
    pass


def write_weights(weights: dict, out: Path, shard_bytes: int = SHARD_BYTES, metadata=None):
    """Write `weights` as model.safetensors, or as shards plus an index above `shard_bytes`."""
    metadata = {"format": "mlx", **(metadata or {})}
    total = sum(v.nbytes for v in weights.values())
    if total <= shard_bytes:
        mx.save_safetensors(str(out / "model.safetensors"), weights, metadata=metadata)
        return ["model.safetensors"]
    shards, cur, size = [], {}, 0
    for k in sorted(weights):
        if cur and size + weights[k].nbytes > shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = weights[k]
        size += weights[k].nbytes
    shards.append(cur)
    names, index = [], {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        mx.save_safetensors(str(out / name), shard, metadata=metadata)
        names.append(name)
        index.update({k: name for k in shard})
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": index}, indent=1)
    )
    return names + ["model.safetensors.index.json"]


def save_model(model: Model, out, tokenizer=None, meta: dict | None = None, overwrite: bool = False,
               shard_bytes: int = SHARD_BYTES, extra_writer=None):
    """Save a self-contained model directory atomically (temp dir + rename)."""
    out = Path(out)
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)
    args = model.args
    args.num_hidden_layers = len(model.layers)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_weights(weights, tmp, shard_bytes)
        (tmp / "config.json").write_text(json.dumps(args.to_dict(), indent=2))
        if tokenizer is not None:
            tokenizer.save(tmp)
        if extra_writer is not None:  # e.g. optimizer and trainer state of a checkpoint
            extra_writer(tmp)
        info = {
            "format_version": FORMAT_VERSION,
            "substrate": fingerprint(args.substrate, np.array(model.substrate.table.astype(mx.float32))),
            "tokenizer": getattr(tokenizer, "fingerprint", None),
            **(meta or {}),
        }
        info["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / META).write_text(json.dumps(info, indent=2))
    return out


def read_meta(path) -> dict:
    p = Path(path) / META
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p} is corrupt ({e}); restore it or re-create the model directory") from e


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


def read_weights(path) -> dict:
    path = Path(path)
    index = path / "model.safetensors.index.json"
    files = ["model.safetensors"]
    if index.exists():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index} is damaged ({e!r}); restore it or re-create the model directory") from None
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
    f = Path(path) / "config.json"
    if not f.exists():
        raise CheckpointError(f"{path} has no config.json: not a mlx-grow model directory")
    return ModelArgs.from_dict(json.loads(f.read_text()), where=str(f))


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


def load_model(path, verify: bool = True) -> Model:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist")
    meta = read_meta(path)
    if verify:
        verify_files(path, meta)
    args = load_args(path)
    weights = read_weights(path)
    table = weights.get("substrate.table")
    model = Model(args, substrate_table=np.array(table) if table is not None and table.shape[0] == args.vocab_size
                  and table.shape[1] <= args.hidden_size else None)
    check_shapes(model, weights, path)
    model.load_weights(list(weights.items()), strict=True)
    if not args.substrate.trainable:
        model.substrate.freeze()
    mx.eval(model.parameters())
    return model


def check_vocab(args: ModelArgs, tokenizer, where):
    if tokenizer.vocab_size != args.vocab_size:
        raise CheckpointError(
            f"tokenizer in {where} has {tokenizer.vocab_size} ids but the model's vocab_size is "
            f"{args.vocab_size}: use the tokenizer the model was trained with"
        )


__all__ = ["save_model", "load_model", "read_meta", "CheckpointError"]
