"""Build a merged directory from expert directories: a combiner over their
outputs (optionally tuned), or an average of their weights."""

from pathlib import Path

from mlx.utils import tree_flatten

from mlx_grow.base import UserError
from mlx_grow.checkpoint import (
    META,
    load_args,
    load_model,
    save_model,
)
from mlx_grow.io import check_output
from mlx_grow.merge.combine import MergedModel, expert_weights, make_combiner
from mlx_grow.merge.store import lineage_roots, read_experts, run_sources, save_merged
from mlx_grow.merge.tune import check_tune, tune_merged
from mlx_grow.tokenizer import check_vocab, load_tokenizer


def merge(expert_dirs, out, combiner="mean-logits", weights=None, temperature=None, router=False,
          adapter="none", rank=8, tune=None, overwrite=False, progress=True, echo=print) -> Path:
    """Write a merged model directory; nothing is written when a check fails.
    `tune` (a dict of `tune()` options) trains the adapter and/or heads first."""
    out = Path(out)
    if tune is not None:
        check_tune(**tune)
    given = [Path(d) for d in expert_dirs]
    if any(out.resolve() == d.resolve() for d in given):
        raise UserError(f"--out {out} is one of the experts; choose a new directory")
    check_output(out, overwrite, inputs=given)  # before reading the experts: the output rule comes first
    dirs, metas = read_experts(expert_dirs)
    for i, j in same_models(dirs, metas):
        echo(f"warning: experts {dirs[i]} and {dirs[j]} are the same model (identical weights); the merge "
             "behaves as that one model")
    if combiner == "average":
        return average(dirs, metas, out, weights, overwrite)
    tune = dict(tune) if tune is not None else None
    if tune is not None and adapter == "none" and tune.get("part", "adapter") in ("adapter", "both"):
        adapter = "gate"  # tuning the adapter needs one; the gate is the cheapest
    comb = make_combiner(len(dirs), combiner, weights, temperature, router, adapter, rank)
    experts = [load_model(d) for d in dirs]
    tok = load_tokenizer(dirs[0])
    check_vocab(tok, experts[0].args.vocab_size, f"tokenizer in {dirs[0]}")
    model = MergedModel(experts, comb)
    record = None
    if tune is not None:
        sources = tune.pop("data", None) or run_sources(metas)
        record = tune_merged(model, tok, sources, progress=progress, echo=echo, **tune)
    return save_merged(model, out, tok, dirs, metas, record, overwrite)


def average(dirs, metas, out, weights=None, overwrite=False) -> Path:
    """Average the weights of experts from one growth lineage into a single model."""
    roots = [lineage_roots(m) for m in metas]
    if not set.intersection(*roots):
        seen = "; ".join(f"{d}: {', '.join(sorted(r)) or 'no lineage recorded'}" for d, r in zip(dirs, roots))
        raise UserError("parameter averaging needs experts of one growth lineage (a common run or parent "
                         f"recorded in {META}); these come from different ones ({seen}). Weights of separately "
                         "trained models do not line up: use a logit combiner (mean-logits, weighted, mixture)")
    cfgs = [load_args(d).to_dict() for d in dirs]
    for d, c in zip(dirs[1:], cfgs[1:]):
        if c != cfgs[0]:
            diff = ", ".join(f"{k} {cfgs[0].get(k)} vs {c.get(k)}" for k in sorted(set(c) | set(cfgs[0]))
                             if c.get(k) != cfgs[0].get(k))
            raise UserError(f"parameter averaging needs identical architectures; {dirs[0]} and {d} differ: {diff}")
    w = expert_weights(weights, len(dirs)) or [1 / len(dirs)] * len(dirs)
    models = [load_model(d) for d in dirs]
    flat = [dict(tree_flatten(m.parameters())) for m in models]
    avg = {k: sum(wi * f[k] for wi, f in zip(w, flat)) for k in flat[0] if k != "substrate.table"}
    models[0].load_weights(list(avg.items()), strict=False)
    tok = load_tokenizer(dirs[0])
    lineage = {**(metas[0].get("lineage") or {}), "averaged": [str(d.resolve()) for d in dirs], "weights": w}
    return save_model(models[0], out, tok, meta={"lineage": lineage}, overwrite=overwrite)




def same_models(dirs, metas) -> list:
    """Pairs (i, j) of experts that are one model: the same folder, or the same recorded file checksums."""
    pairs = []
    for j in range(len(dirs)):
        for i in range(j):
            fi, fj = metas[i].get("files"), metas[j].get("files")
            if dirs[i].resolve() == dirs[j].resolve() or (fi and fi == fj):
                pairs.append((i, j))
                break
    return pairs
