"""Post-merge tuning and expert-vs-merge comparison on held-out data."""

from pathlib import Path

import numpy as np

from mlx_grow.base import UserError, brief, need_int, need_number
from mlx_grow.checkpoint import load_model
from mlx_grow.merge.combine import MergedModel, make_combiner
from mlx_grow.merge.store import load_merged, read_experts
from mlx_grow.tokenizer import load_tokenizer

TUNE_PARTS = ("adapter", "heads", "both", "all")  # all: every expert's blocks, norms and heads (+ adapter)


def check_tune(steps=100, lr=3e-3, batch_size=8, seq_len=None, **_):
    """Refuse tuning options that would tune nothing (0 steps) or nonsense, before any work."""
    need_int("--tune-steps", steps, 1)
    need_number("--tune-lr", lr, 0, open_lo=True)
    need_int("--tune-batch-size", batch_size, 1)
    need_int("--tune-seq-len", seq_len, 1, optional=True)


def tune_merged(model: MergedModel, tokenizer, sources, part="adapter", steps=100, lr=3e-3, batch_size=8,
                seq_len=None, seed=0, progress=True, echo=print) -> dict:
    """Train the adapter and/or the experts' heads on mixed data, experts' blocks
    frozen, with the grow loop's compiled step; `part="all"` also trains every
    expert's blocks and norms (the substrate stays frozen), the papers' recipe for
    their *_moe models (v1: trained further after merging). Returns a record with
    the validation loss on the mixture before and after."""
    from mlx_grow.data.stream import open_stream
    from mlx_grow.training.step import (
        Stepper,
        TrainConfig,
        check_finite,
        evaluate,
        split_xy,
    )

    if part not in TUNE_PARTS:
        raise UserError(f"unknown tune part {brief(part)}: use {', '.join(TUNE_PARTS)}")
    if part in ("adapter", "both") and model.adapter is None:
        raise UserError("tuning the adapter needs one: choose --adapter token, lowrank or gate")
    seq_len = seq_len or min(128, *(e.args.max_position_embeddings for e in model.experts))
    cfg = TrainConfig.from_dict({"batch_size": batch_size, "seq_len": seq_len, "lr": lr, "seed": seed,
                                 "warmup_steps": max(1, steps // 10), "weight_decay": 0.0})
    stream = open_stream({"sources": list(sources)}, tokenizer, seq_len, batch_size, seed, progress=progress)
    val = stream.val_batches(4)
    before = evaluate(model, val)
    model.freeze()
    if part != "heads" and model.adapter is not None:
        model.adapter.unfreeze()
    for e in model.experts:
        if part == "all":
            e.unfreeze()
            if not e.args.substrate.trainable:
                e.substrate.freeze()
        elif part != "adapter":
            e.lm_head.unfreeze()
    model.train_experts = part == "all"
    try:
        stepper = Stepper(model, cfg, steps)
        for step in range(steps):
            loss, _ = stepper.step(*split_xy(stream.batch(step)))
            check_finite(loss, step)
    finally:
        model.train_experts = False
    model.freeze()
    after = evaluate(model, val)
    echo(f"tuned {part} for {steps} steps on {', '.join(map(str, sources))}: "
         f"validation loss {before:.4f} -> {after:.4f}")
    return {"part": part, "sources": list(sources), "steps": steps, "lr": lr, "batch_size": batch_size,
            "seq_len": seq_len, "val_loss_before": before, "val_loss_after": after}


VARIANTS = {"mean-logits": {}, "mixture": {"combiner": "mixture"},
            "mean-logits+router": {"router": True}, "mixture+router": {"combiner": "mixture", "router": True}}


def compare(expert_dirs, sources, merged=(), seq_len=None, batches=4, batch_size=8, progress=False) -> dict:
    """Validation loss {model: {source: loss, 'union': loss}} of each expert, each
    training-free combiner over them, and each given merged directory."""
    from mlx_grow.data.stream import open_stream
    from mlx_grow.training.step import evaluate

    need_int("--batches", batches, 1)
    need_int("--seq-len", seq_len, 1, optional=True)
    dirs, _ = read_experts(expert_dirs)
    if not sources:
        raise UserError("compare needs at least one --data SOURCE whose validation text to score")
    experts = [load_model(d) for d in dirs]
    tok = load_tokenizer(dirs[0])
    seq_len = seq_len or min(128, *(e.args.max_position_embeddings for e in experts))
    models = {"/".join(d.resolve().parts[-2:]): e for d, e in zip(dirs, experts)}
    for name, kw in VARIANTS.items():
        models[name] = MergedModel(experts, make_combiner(len(experts), **kw))
    for m in merged:
        models[f"merged:{Path(m).name}"] = load_merged(m)[0]
    vals = {(s["source"] if isinstance(s, dict) else str(s)):
            open_stream({"sources": [s]}, tok, seq_len, batch_size, 0, progress=progress).val_batches(batches)
            for s in sources}
    table = {}
    for name, model in models.items():
        row = {s: evaluate(model, b) for s, b in vals.items()}
        row["union"] = float(np.mean(list(row.values())))
        table[name] = row
    return table
