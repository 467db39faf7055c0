"""Merged model directories: read experts, write and load merges, weight averaging."""

import json
import os
from dataclasses import asdict
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from mlx_grow.base import UserError
from mlx_grow.checkpoint import (
    FORMAT_VERSION,
    META,
    CheckpointError,
    check_shapes,
    check_vocab,
    load_args,
    read_meta,
    read_weights,
    verify_files,
    write_weights,
)
from mlx_grow.io import atomic_dir, sha256_file
from mlx_grow.io.paths import inside
from mlx_grow.merge.combine import Combiner, MergedModel
from mlx_grow.model import Model
from mlx_grow.tokenizer import load_tokenizer


def _short(fp) -> str:
    if isinstance(fp, dict):
        recipe = ", ".join(f"{k}={v}" for k, v in fp.items() if k not in ("shape", "sha256"))
        return f"{recipe}; table {fp.get('shape')} sha256 {str(fp.get('sha256'))[:12]}…"
    return str(fp)[:16] + "…" if fp else "none recorded"


def read_experts(expert_dirs):
    """Check that every expert exists and that all share substrate, tokenizer and vocabulary."""
    dirs = [Path(d) for d in expert_dirs]
    if len(dirs) < 2:
        raise UserError(f"merge needs at least two expert model directories, got {len(dirs)}")
    metas, vocab = [], []
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"expert model directory {d} does not exist")
        meta = read_meta(d)
        if "experts" in meta:
            raise UserError(f"{d} is already a merge; merge its source experts instead")
        if not meta or not (d / "config.json").exists():
            raise FileNotFoundError(f"{d} is not a mlx-grow model directory (no config.json / {META})")
        metas.append(meta)
        vocab.append(load_args(d).vocab_size)
    a = dirs[0]
    for d, m, v in zip(dirs[1:], metas[1:], vocab[1:]):
        if m.get("tokenizer") != metas[0].get("tokenizer"):
            raise UserError(f"experts use different tokenizers:\n  {a}: {_short(metas[0].get('tokenizer'))}\n"
                             f"  {d}: {_short(m.get('tokenizer'))}\nmerge only experts trained with the same tokenizer")
        if v != vocab[0]:
            raise UserError(f"experts have different vocabularies: {a} has {vocab[0]:,} ids, {d} has {v:,}")
        if m.get("substrate") != metas[0].get("substrate"):
            raise UserError(f"experts differ in their substrate, so their inputs mean different things:\n"
                             f"  {a}: {_short(metas[0].get('substrate'))}\n  {d}: {_short(m.get('substrate'))}\n"
                             "merge only experts trained on the same frozen substrate table")
    return dirs, metas


def save_merged(model: MergedModel, out, tokenizer, dirs, metas, tuned=None, overwrite=False) -> Path:
    from mlx_grow.substrate.tables import save_table

    first = model.experts[0]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_table(tmp / "substrate.safetensors", first.args.substrate, np.array(first.substrate.table))
        experts = []
        for i, (e, d, m) in enumerate(zip(model.experts, dirs, metas)):
            sub = tmp / "experts" / str(i)
            sub.mkdir(parents=True)
            weights = {k: v for k, v in tree_flatten(e.parameters()) if k != "substrate.table"}
            write_weights(weights, sub)
            (sub / "config.json").write_text(json.dumps(e.args.to_dict(), indent=2))
            experts.append({"dir": f"experts/{i}", "origin": str(d.resolve()), "substrate": m.get("substrate"),
                            "tokenizer": m.get("tokenizer"), "lineage": m.get("lineage"),
                            "files": m.get("files", {})})
        if model.adapter is not None:
            mx.save_safetensors(str(tmp / "adapter.safetensors"), dict(tree_flatten(model.adapter.parameters())))
        (tmp / "config.json").write_text(json.dumps(first.args.to_dict(), indent=2))
        tokenizer.save(tmp)
        info = {"format_version": FORMAT_VERSION, "substrate": metas[0].get("substrate"),
                "tokenizer": tokenizer.fingerprint, "experts": experts, "combiner": asdict(model.combiner),
                "lineage": {"merge": [e["origin"] for e in experts]}, **({"tuned": tuned} if tuned else {})}
        info["files"] = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / META).write_text(json.dumps(info, indent=2))
    return Path(out)


def load_merged(path, verify: bool = True):
    """(MergedModel, tokenizer) from a merged directory."""
    from mlx_grow.substrate.files import load_table_file

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"merged model directory {path} does not exist")
    meta = read_meta(path)
    if verify:
        verify_files(path, meta)
    table = load_table_file(path / "substrate.safetensors")
    shared = mx.array(table)
    experts = []
    for entry in meta["experts"]:
        sub = inside(path, entry.get("dir") if isinstance(entry, dict) else None, f"the {META} `experts[].dir` entry",
                     CheckpointError, kind="dir")
        if not sub.is_dir():
            raise CheckpointError(f"{sub} is missing (an expert listed in {path / META}); the merge is incomplete")
        expert = Model(load_args(sub), substrate_table=table)
        weights = {**read_weights(sub), "substrate.table": shared}
        check_shapes(expert, weights, sub)
        expert.load_weights(list(weights.items()), strict=True)
        experts.append(expert)
    comb = meta["combiner"]
    model = MergedModel(experts, Combiner(**comb))
    if model.adapter is not None:
        f = path / "adapter.safetensors"
        if not f.exists():
            raise CheckpointError(f"{f} is missing: the merge's {comb['adapter']} adapter has no weights")
        model.adapter.load_weights(str(f), strict=True)
    mx.eval(model.parameters())
    tok = load_tokenizer(path)
    check_vocab(model.args, tok, path)
    return model, tok


def lineage_roots(meta) -> set:
    lin = meta.get("lineage") or {}
    return {os.path.normpath(str(lin[k])) for k in ("run", "parent", "base") if lin.get(k)}


def run_sources(metas) -> list:
    """The data sources the experts were grown on (from their run directories)."""
    from mlx_grow.training.runs import read_run_config

    sources = []
    for m in metas:
        run = (m.get("lineage") or {}).get("run")
        try:
            found = read_run_config(run).data.get("sources") or [] if run else []
        except (FileNotFoundError, ValueError):
            found = []
        if not found:
            raise UserError("tuning needs data, and an expert's run directory was not found to read its "
                             "sources from: give --tune-data SOURCE (repeat it for each domain)")
        sources += [s for s in found if s not in sources]
    return sources
