"""Merged model directories: check experts, write and load merges (through
checkpoint.py's writer and reader), find the experts' data sources."""

import math
import os
from dataclasses import asdict, fields
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from mlx_grow.base import UserError
from mlx_grow.checkpoint import (
    ADAPTER,
    META,
    CheckpointError,
    load_args,
    load_experts,
    model_weights,
    open_model_dir,
    read_meta,
    read_tokenizer,
    weights_substrate,
    write_model_dir,
)
from mlx_grow.merge.combine import ADAPTERS, COMBINERS, Combiner, MergedModel
from mlx_grow.substrate.tables import describe_fingerprint, fingerprint_diff


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
            raise UserError(f"experts use different tokenizers ({a}: {describe_fingerprint(metas[0].get('tokenizer'))}, {d}: "
                            f"{describe_fingerprint(m.get('tokenizer'))}); merge only experts trained with the same tokenizer")
        if v != vocab[0]:
            raise UserError(f"experts have different vocabularies: {a} has {vocab[0]:,} ids, {d} has {v:,}")
    for d, m in zip(dirs, metas):  # the table in the weights, never the record of it in mlx_grow.json
        m["substrate"] = weights_substrate(d)
    for d, m in zip(dirs[1:], metas[1:]):
        if m["substrate"] != metas[0]["substrate"]:
            raise UserError(f"experts differ in their substrate, so their inputs mean different things ({a}: "
                            f"{describe_fingerprint(metas[0]['substrate'])}; {d}: {describe_fingerprint(m['substrate'])};"
                            f" {fingerprint_diff(metas[0]['substrate'], m['substrate'])}); merge only experts "
                            "trained on the same frozen substrate table")
    return dirs, metas


def save_merged(model: MergedModel, out, tokenizer, dirs, metas, tuned=None, overwrite=False) -> Path:
    experts = [(e.args, model_weights(e, table=False),
                {"origin": str(d.resolve()), "substrate": m.get("substrate"), "tokenizer": m.get("tokenizer"),
                 "lineage": m.get("lineage"), "files": m.get("files", {})})
               for e, d, m in zip(model.experts, dirs, metas)]
    adapter = dict(tree_flatten(model.adapter.parameters())) if model.adapter is not None else None
    with write_model_dir(out, overwrite=overwrite) as w:
        w.merged(experts, model.experts[0].substrate.table, tokenizer, asdict(model.combiner), adapter, tuned,
                 substrate=metas[0]["substrate"])
    return Path(out)


def load_merged(path, verify: bool = True):
    """(MergedModel, tokenizer) from a merged directory."""
    path = Path(path)
    meta = open_model_dir(path, verify, what="merged model directory")
    comb = meta["combiner"]
    n = len(meta["experts"])
    weights, temps = comb.get("weights") or [], comb.get("temperature") or []
    ok = not set(comb) - {f.name for f in fields(Combiner)} and comb.get("kind", "mean-logits") in COMBINERS \
        and comb.get("adapter", "none") in ADAPTERS and comb.get("rank", 8) >= 1 \
        and len(weights) in (0, n) and all(math.isfinite(w) and w >= 0 for w in weights) \
        and len(temps) in (0, n) and all(math.isfinite(t) and t > 0 for t in temps)
    if not ok:  # mlx_grow.json's types are checked when read; these are the values a combiner accepts
        raise CheckpointError(f"{path / META} is corrupt (its combiner record is not one mlx-grow writes); restore it "
                              "or re-create the merge")
    model = MergedModel(load_experts(path, meta), Combiner(**comb))
    if model.adapter is not None:
        f = path / ADAPTER
        if not f.exists():
            raise CheckpointError(f"{f} is missing: the merge's {comb['adapter']} adapter has no weights")
        model.adapter.load_weights(str(f), strict=True)
    mx.eval(model.parameters())
    return model, read_tokenizer(path, model.args)


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
            data = read_run_config(run).data if run else None
        except (FileNotFoundError, ValueError):
            data = None
        # A run's sources: its one mixture, or every stage's mixture; none given means the built-in corpus.
        found = [] if data is None else (
            [*data.sources, *(s for stage in data.stages for s in stage)] or ["builtin:default"])
        if not found:
            raise UserError("tuning needs data, and an expert's run directory was not found to read its "
                             "sources from: give --tune-data SOURCE (repeat it for each domain)")
        sources += [s for s in found if s not in sources]
    return sources
