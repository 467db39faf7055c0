"""Merge experts trained on one frozen substrate and tokenizer.

Combiners of the experts' next-token scores: `mean-logits` (the papers' rule),
`weighted` (a weighted mean of logits), `mixture` (log-sum-exp of the experts'
log-probabilities plus log-weights), each with an optional temperature per
expert. On top: a training-free router (a posterior over experts from how well
each predicted the sequence so far) and small fusion adapters that `--tune`
trains with the experts frozen. `average` averages the weights instead, which
only makes sense for experts of one growth lineage.

A merged directory is self-contained:
  config.json             the first expert's ModelArgs (tools reading vocab_size work)
  substrate.safetensors   the shared substrate table, once
  experts/0/, experts/1/  each expert's config.json and weights, without the table
  adapter.safetensors     the fusion adapter, when there is one
  tokenizer files; mlx_grow.json (experts with origin, fingerprints and hashes,
  the combiner, and a checksum of every file)
"""

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from mlx_grow.checkpoint import (FORMAT_VERSION, META, CheckpointError, check_shapes, check_vocab, load_args,
                                 load_model, load_tokenizer_from, read_meta, read_weights, save_model,
                                 verify_files, write_weights)
from mlx_grow.io import atomic_dir, sha256_file
from mlx_grow.model import Model

COMBINERS = ("mean-logits", "weighted", "mixture")
ADAPTERS = ("none", "token", "lowrank", "gate")
TUNE_PARTS = ("adapter", "heads", "both")


@dataclass
class Combiner:
    kind: str = "mean-logits"
    weights: list = field(default_factory=list)  # one per expert, summing to 1
    temperature: list = field(default_factory=list)  # one per expert
    router: bool = False
    adapter: str = "none"
    rank: int = 8  # of the low-rank adapter


class MergedCache(list):
    """One KV cache list per expert, plus the router's running state."""

    def __init__(self, caches):
        super().__init__(caches)
        self.score = None  # [E, B] log-likelihood of the sequence so far under each expert
        self.last = None  # [E, B, V] log-probs at the last position (they score the next token)
        self.pad = None  # [B] left padding of each row (batched generation)

    @property
    def offset(self) -> int:
        return self[0][0].offset

    def arrays(self):
        return [[c.state for c in cs] for cs in self] + [a for a in (self.score, self.last) if a is not None]


class TokenWeights(nn.Module):
    """Per-expert, per-token-id weight logits [E, V], added to the log-weights."""

    def __init__(self, n: int, vocab: int):
        super().__init__()
        self.alpha = mx.zeros((n, vocab))


class LowRank(nn.Module):
    """A rank-r map of the experts' concatenated (centred) logits, added to the scores."""

    def __init__(self, n: int, vocab: int, rank: int, seed: int = 0):
        super().__init__()
        self.down = mx.random.normal((n, vocab, rank), key=mx.random.key(seed)) * (n * vocab) ** -0.5
        self.up = mx.zeros((rank, vocab))  # starts as the plain combiner

    def __call__(self, zs):
        r = sum((z - z.mean(axis=-1, keepdims=True)) @ self.down[e] for e, z in enumerate(zs))
        return r @ self.up


class Gate(nn.Module):
    """Gate logits per position from the experts' concatenated final hidden states."""

    def __init__(self, dims, n: int):
        super().__init__()
        self.proj = nn.Linear(sum(dims), n)
        self.proj.weight = mx.zeros_like(self.proj.weight)
        self.proj.bias = mx.zeros_like(self.proj.bias)

    def __call__(self, hs):
        return self.proj(mx.concatenate(hs, axis=-1)).transpose(2, 0, 1)


def _f32(x):
    return x if x.dtype == mx.float32 else x.astype(mx.float32)


def combine(kind: str, zs, lw):
    """Combine per-expert logits zs ([B, T, V] each) under log-weights lw
    ([E, ...] broadcastable, normalised here over the experts)."""
    lw = lw - mx.logsumexp(lw, axis=0, keepdims=True)
    if kind == "mixture":
        out = None
        for e, z in enumerate(zs):
            term = lw[e] + z - mx.logsumexp(z, axis=-1, keepdims=True)
            out = term if out is None else mx.logaddexp(out, term)
        return out
    return sum(mx.exp(lw[e]) * z for e, z in enumerate(zs))


class MergedModel(nn.Module):
    """Experts on one substrate whose next-token scores are combined at every step.
    `model(ids)` gives the combined scores [B, T, V] (log-probabilities for `mixture`)."""

    def __init__(self, experts, combiner: Combiner | None = None):
        super().__init__()
        self.experts = list(experts)
        n = len(self.experts)
        c = combiner or Combiner()
        c.weights = list(c.weights) or [1.0 / n] * n
        c.temperature = list(c.temperature) or [1.0] * n
        self.combiner = c
        self.args = self.experts[0].args
        with np.errstate(divide="ignore"):
            self._log_w = mx.array(np.log(np.array(c.weights, np.float32)))[:, None, None]
        vocab = self.args.vocab_size
        if c.adapter == "token":
            self.adapter = TokenWeights(n, vocab)
        elif c.adapter == "lowrank":
            self.adapter = LowRank(n, vocab, c.rank)
        elif c.adapter == "gate":
            self.adapter = Gate([e.args.hidden_size for e in self.experts], n)
        else:
            self.adapter = None
        self.freeze()

    def make_cache(self):
        return MergedCache([e.make_cache() for e in self.experts])

    def __call__(self, inputs, mask=None, cache=None):
        c = self.combiner
        caches = cache if cache is not None else [None] * len(self.experts)
        # The experts stay frozen: only their heads and the adapter ever train.
        hs = [mx.stop_gradient(e.hidden(inputs, mask, k)) for e, k in zip(self.experts, caches)]
        if c.kind != "mixture" and not c.router and c.adapter == "none" and self._plain_heads():
            return self._weighted_heads(hs)
        zs = [_f32(e.lm_head(h)) for e, h in zip(self.experts, hs)]
        zs = [z if t == 1.0 else z * (1.0 / t) for z, t in zip(zs, c.temperature)]
        lw = self._log_w
        if c.router:
            lw = lw + self._route(inputs, zs, cache)
        if c.adapter == "gate":
            lw = lw + self.adapter(hs)
        lw = lw[..., None] + (self.adapter.alpha[:, None, None, :] if c.adapter == "token" else 0)
        out = combine(c.kind, zs, lw)
        return out + self.adapter(zs) if c.adapter == "lowrank" else out

    def _plain_heads(self) -> bool:
        return all(type(e.lm_head) is nn.Linear and "bias" not in e.lm_head for e in self.experts)

    def _weighted_heads(self, hs):
        """sum_e w_e / t_e * (h_e @ W_e.T), as chained addmm: no extra pass over the vocabulary."""
        c = self.combiner
        scale = [w / t for w, t in zip(c.weights, c.temperature)]
        out = _f32(hs[0] @ self.experts[0].lm_head.weight.T)
        for i, (e, h) in enumerate(zip(self.experts[1:], hs[1:])):
            W = _f32(e.lm_head.weight).T
            out = mx.addmm(out, _f32(h), W, alpha=scale[i + 1], beta=scale[0] if i == 0 else 1.0)
        return out

    def _route(self, inputs, zs, cache):
        """Log-likelihood [E, B, T] of the tokens up to each position under each expert."""
        lps = [z - mx.logsumexp(z, axis=-1, keepdims=True) for z in zs]
        B, T = inputs.shape
        state = cache if isinstance(cache, MergedCache) else None
        if state is not None and state.last is not None:  # the first token, scored by the last step
            first = mx.take_along_axis(state.last, mx.broadcast_to(inputs[None, :, :1], (len(zs), B, 1)), axis=-1)
        else:
            first = mx.zeros((len(zs), B, 1))
        parts = [first]
        if T > 1:
            parts.append(mx.stack([mx.take_along_axis(lp[:, :-1], inputs[:, 1:, None], axis=-1)[..., 0]
                                   for lp in lps]))
        a = mx.concatenate(parts, axis=-1)
        if state is not None and state.pad is not None:  # score a token only after a real one
            pos = state.offset - T + mx.arange(T)
            a = mx.where((pos[None] - 1 >= state.pad[:, None])[None], a, 0.0)
        cum = mx.cumsum(a, axis=-1)
        if state is not None:
            if state.score is not None:
                cum = cum + state.score[..., None]
            state.score, state.last = cum[..., -1], mx.stack([lp[:, -1] for lp in lps])
        return cum


# --- checks ---


def _short(fp) -> str:
    if isinstance(fp, dict):
        recipe = ", ".join(f"{k}={v}" for k, v in fp.items() if k not in ("shape", "sha256"))
        return f"{recipe}; table {fp.get('shape')} sha256 {str(fp.get('sha256'))[:12]}…"
    return str(fp)[:16] + "…" if fp else "none recorded"


def read_experts(expert_dirs):
    """Check that every expert exists and that all share substrate, tokenizer and vocabulary."""
    dirs = [Path(d) for d in expert_dirs]
    if len(dirs) < 2:
        raise ValueError(f"merge needs at least two expert model directories, got {len(dirs)}")
    metas, vocab = [], []
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"expert model directory {d} does not exist")
        meta = read_meta(d)
        if "experts" in meta:
            raise ValueError(f"{d} is already a merge; merge its source experts instead")
        if not meta or not (d / "config.json").exists():
            raise FileNotFoundError(f"{d} is not a mlx-grow model directory (no config.json / {META})")
        metas.append(meta)
        vocab.append(load_args(d).vocab_size)
    a = dirs[0]
    for d, m, v in zip(dirs[1:], metas[1:], vocab[1:]):
        if m.get("tokenizer") != metas[0].get("tokenizer"):
            raise ValueError(f"experts use different tokenizers:\n  {a}: {_short(metas[0].get('tokenizer'))}\n"
                             f"  {d}: {_short(m.get('tokenizer'))}\nmerge only experts trained with the same tokenizer")
        if v != vocab[0]:
            raise ValueError(f"experts have different vocabularies: {a} has {vocab[0]:,} ids, {d} has {v:,}")
        if m.get("substrate") != metas[0].get("substrate"):
            raise ValueError(f"experts differ in their substrate, so their inputs mean different things:\n"
                             f"  {a}: {_short(metas[0].get('substrate'))}\n  {d}: {_short(m.get('substrate'))}\n"
                             "merge only experts trained on the same frozen substrate table")
    return dirs, metas


def parse_floats(text, n: int, what: str):
    """'0.7,0.3' (or a list) -> n floats; one value is repeated n times."""
    if text is None or text == "":
        return None
    try:
        vals = [float(x) for x in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers such as 0.7,0.3, got {text!r}") from None
    if len(vals) == 1 and what == "temperature":
        vals = vals * n
    if len(vals) != n:
        raise ValueError(f"{what} has {len(vals)} value(s) but there are {n} experts: give one per expert")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{what} must be finite numbers, got {text!r}")
    return vals


def make_combiner(n, combiner="mean-logits", weights=None, temperature=None, router=False, adapter="none",
                  rank=8) -> Combiner:
    if combiner not in COMBINERS:
        raise ValueError(f"unknown combiner {combiner!r}: use {', '.join(COMBINERS)} or average")
    if adapter not in ADAPTERS:
        raise ValueError(f"unknown adapter {adapter!r}: use {', '.join(ADAPTERS)}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"adapter rank must be a positive integer, got {rank!r}")
    w = parse_floats(weights, n, "weights")
    if w is not None and combiner == "mean-logits":
        raise ValueError("mean-logits gives every expert the same weight; use --combiner weighted "
                         "(or mixture) with --weights")
    if w is not None:
        if any(x < 0 for x in w) or sum(w) <= 0:
            raise ValueError(f"weights must be >= 0 and sum to a positive number, got {weights!r}")
        w = [x / sum(w) for x in w]
    t = parse_floats(temperature, n, "temperature")
    if t is not None and any(x <= 0 for x in t):
        raise ValueError(f"temperatures must be > 0, got {temperature!r}")
    return Combiner(combiner, w or [], t or [], bool(router), adapter, rank)


# --- merge, save, load ---


def merge(expert_dirs, out, combiner="mean-logits", weights=None, temperature=None, router=False,
          adapter="none", rank=8, tune=None, overwrite=False, progress=True, echo=print) -> Path:
    """Write a merged model directory; nothing is written when a check fails.
    `tune` (a dict of `tune()` options) trains the adapter and/or heads first."""
    dirs, metas = read_experts(expert_dirs)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or remove it")
    if any(out.resolve() == d.resolve() for d in dirs):
        raise ValueError(f"--out {out} is one of the experts; choose a new directory")
    if combiner == "average":
        return average(dirs, metas, out, weights, overwrite)
    tune = dict(tune) if tune is not None else None
    if tune is not None and adapter == "none" and tune.get("part", "adapter") != "heads":
        adapter = "gate"  # tuning the adapter needs one; the gate is the cheapest
    comb = make_combiner(len(dirs), combiner, weights, temperature, router, adapter, rank)
    experts = [load_model(d) for d in dirs]
    tok = load_tokenizer_from(dirs[0])
    check_vocab(experts[0].args, tok, dirs[0])
    model = MergedModel(experts, comb)
    record = None
    if tune is not None:
        sources = tune.pop("data", None) or run_sources(metas)
        record = tune_merged(model, tok, sources, progress=progress, echo=echo, **tune)
    return save_merged(model, out, tok, dirs, metas, record, overwrite)


def save_merged(model: MergedModel, out, tokenizer, dirs, metas, tuned=None, overwrite=False) -> Path:
    from mlx_grow.substrate import save_table

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
    from mlx_grow.substrate import load_table_file

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
        sub = path / entry["dir"]
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
    tok = load_tokenizer_from(path)
    check_vocab(model.args, tok, path)
    return model, tok


# --- parameter averaging ---


def lineage_roots(meta) -> set:
    lin = meta.get("lineage") or {}
    return {os.path.normpath(str(lin[k])) for k in ("run", "parent", "base") if lin.get(k)}


def average(dirs, metas, out, weights=None, overwrite=False) -> Path:
    """Average the weights of experts from one growth lineage into a single model."""
    roots = [lineage_roots(m) for m in metas]
    if not set.intersection(*roots):
        seen = "; ".join(f"{d}: {', '.join(sorted(r)) or 'no lineage recorded'}" for d, r in zip(dirs, roots))
        raise ValueError("parameter averaging needs experts of one growth lineage (a common run or parent "
                         f"recorded in {META}); these come from different ones ({seen}). Weights of separately "
                         "trained models do not line up: use a logit combiner (mean-logits, weighted, mixture)")
    cfgs = [json.loads((d / "config.json").read_text()) for d in dirs]
    for d, c in zip(dirs[1:], cfgs[1:]):
        if c != cfgs[0]:
            diff = ", ".join(f"{k} {cfgs[0].get(k)} vs {c.get(k)}" for k in sorted(set(c) | set(cfgs[0]))
                             if c.get(k) != cfgs[0].get(k))
            raise ValueError(f"parameter averaging needs identical architectures; {dirs[0]} and {d} differ: {diff}")
    w = parse_floats(weights, len(dirs), "weights") or [1.0] * len(dirs)
    if any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"weights must be >= 0 and sum to a positive number, got {weights!r}")
    w = [x / sum(w) for x in w]
    models = [load_model(d) for d in dirs]
    flat = [dict(tree_flatten(m.parameters())) for m in models]
    avg = {k: sum(wi * f[k] for wi, f in zip(w, flat)) for k in flat[0] if k != "substrate.table"}
    models[0].load_weights(list(avg.items()), strict=False)
    tok = load_tokenizer_from(dirs[0])
    lineage = {**(metas[0].get("lineage") or {}), "averaged": [str(d.resolve()) for d in dirs], "weights": w}
    return save_model(models[0], out, tok, meta={"lineage": lineage}, overwrite=overwrite)


# --- tuning and comparison ---


def run_sources(metas) -> list:
    """The data sources the experts were grown on (from their run directories)."""
    from mlx_grow.runs import read_run_config

    sources = []
    for m in metas:
        run = (m.get("lineage") or {}).get("run")
        try:
            found = read_run_config(run).data.get("sources") or [] if run else []
        except (FileNotFoundError, ValueError):
            found = []
        if not found:
            raise ValueError("tuning needs data, and an expert's run directory was not found to read its "
                             "sources from: give --tune-data SOURCE (repeat it for each domain)")
        sources += [s for s in found if s not in sources]
    return sources


def tune_merged(model: MergedModel, tokenizer, sources, part="adapter", steps=100, lr=3e-3, batch_size=8,
                seq_len=None, seed=0, progress=True, echo=print) -> dict:
    """Train the adapter and/or the experts' heads on mixed data, experts frozen,
    with the grow loop's compiled step. Returns a record with the validation loss
    on the mixture before and after."""
    from mlx_grow.data import open_stream
    from mlx_grow.train import Stepper, TrainConfig, check_finite, evaluate, split_xy

    if part not in TUNE_PARTS:
        raise ValueError(f"unknown tune part {part!r}: use {', '.join(TUNE_PARTS)}")
    if part != "heads" and model.adapter is None:
        raise ValueError("tuning the adapter needs one: choose --adapter token, lowrank or gate")
    seq_len = seq_len or min(128, *(e.args.max_position_embeddings for e in model.experts))
    cfg = TrainConfig.from_dict({"batch_size": batch_size, "seq_len": seq_len, "lr": lr, "seed": seed,
                                 "warmup_steps": max(1, steps // 10), "weight_decay": 0.0})
    stream = open_stream({"sources": list(sources)}, tokenizer, seq_len, batch_size, seed, progress=progress)
    val = stream.val_batches(4)
    before = evaluate(model, val)
    model.freeze()
    if part != "heads":
        model.adapter.unfreeze()
    if part != "adapter":
        for e in model.experts:
            e.lm_head.unfreeze()
    stepper = Stepper(model, cfg, steps)
    for step in range(steps):
        loss, _ = stepper.step(*split_xy(stream.batch(step)))
        check_finite(loss, step)
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
    from mlx_grow.data import open_stream
    from mlx_grow.train import evaluate

    dirs, _ = read_experts(expert_dirs)
    if not sources:
        raise ValueError("compare needs at least one --data SOURCE whose validation text to score")
    experts = [load_model(d) for d in dirs]
    tok = load_tokenizer_from(dirs[0])
    seq_len = seq_len or min(128, *(e.args.max_position_embeddings for e in experts))
    models = {"/".join(d.resolve().parts[-2:]): e for d, e in zip(dirs, experts)}
    for name, kw in VARIANTS.items():
        models[name] = MergedModel(experts, make_combiner(len(experts), **kw))
    for m in merged:
        models[f"merged:{Path(m).name}"] = load_merged(m)[0]
    vals = {str(s): open_stream({"sources": [s]}, tok, seq_len, batch_size, 0, progress=progress).val_batches(batches)
            for s in sources}
    table = {}
    for name, model in models.items():
        row = {s: evaluate(model, b) for s, b in vals.items()}
        row["union"] = float(np.mean(list(row.values())))
        table[name] = row
    return table
