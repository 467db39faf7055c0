"""Merge experts trained on one frozen substrate and tokenizer.

Combiners of the experts' next-token scores: `mean-logits` (the papers' rule),
`weighted` (a weighted mean of logits), `mixture` (log-sum-exp of the experts'
log-probabilities plus log-weights), each with an optional temperature per
expert. On top: a training-free router (a posterior over experts from how well
each predicted the sequence so far) and small fusion adapters that `--tune`
trains with the experts frozen. `average` averages the weights instead, which
only makes sense for experts of one growth lineage.

A merged directory is self-contained (checkpoint.py writes and reads it):
  config.json             the first expert's ModelArgs (tools reading vocab_size work)
  substrate.safetensors   the shared substrate table, once
  experts/0/, experts/1/  each expert's config.json and weights, without the table
  adapter.safetensors     the fusion adapter, when there is one
  tokenizer files; mlx_grow.json (experts with origin, fingerprints and hashes,
  the combiner, and a checksum of every file)
"""

import math
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_grow.base import UserError, brief

COMBINERS = ("mean-logits", "weighted", "mixture")


ADAPTERS = ("none", "token", "lowrank", "gate")


@dataclass
class Combiner:
    kind: str = "mean-logits"
    weights: list = field(default_factory=list)  # one per expert, summing to 1
    temperature: list = field(default_factory=list)  # one per expert
    router: bool = False
    adapter: str = "none"
    rank: int = 8  # of the low-rank adapter


class ExpertCache(list):
    """One expert's per-layer KV caches, one cache to mlx-lm's generation loops:
    `state` and the batch operations (merge, extract, filter, extend, prepare,
    finalize) apply to every layer."""

    @property
    def state(self):
        return [c.state for c in self]

    def merge(self, caches):
        return ExpertCache(layer[0].merge(list(layer)) for layer in zip(*caches))

    def extract(self, idx):
        return ExpertCache(c.extract(idx) for c in self)

    def filter(self, keep):
        for c in self:
            c.filter(keep)

    def extend(self, other):
        for a, b in zip(self, other):
            a.extend(b)

    def prepare(self, **kw):
        for c in self:
            c.prepare(**kw)

    def finalize(self):
        for c in self:
            c.finalize()


class MergedCache(list):
    """One ExpertCache per expert, plus the router's running state."""

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
        self.train_experts = False  # set while `tune_merged(part="all")` trains the experts' blocks
        self.freeze()

    def make_cache(self):
        return MergedCache([ExpertCache(e.make_cache()) for e in self.experts])

    def __call__(self, inputs, mask=None, cache=None):
        c = self.combiner
        caches = cache if cache is not None else [None] * len(self.experts)
        # The experts' blocks stay frozen (only heads and the adapter train) unless a
        # `--tune-part all` run trains them: then the gradient must reach them.
        hs = [e.hidden(inputs, mask, k) for e, k in zip(self.experts, caches)]
        if not self.train_experts:
            hs = [mx.stop_gradient(h) for h in hs]
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
        if cache is not None and not isinstance(cache, MergedCache):
            raise UserError("a merge with a router keeps a running score per sequence, which mlx-lm's batched "
                            "generation drops: use mlx_grow.batch_generate")
        state = cache
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


def parse_floats(text, n: int, what: str):
    """'0.7,0.3' (or a list) -> n floats; one value is repeated n times."""
    if text is None or text == "":
        return None
    try:
        vals = [float(x) for x in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise UserError(f"{what} must be comma-separated numbers such as 0.7,0.3, got {brief(text)}") from None
    if len(vals) == 1 and what == "temperature":
        vals = vals * n
    if len(vals) != n:
        raise UserError(f"{what} has {len(vals)} value(s) but there are {n} experts: give one per expert")
    if not all(math.isfinite(v) for v in vals):
        raise UserError(f"{what} must be finite numbers, got {brief(text)}")
    return vals


def expert_weights(weights, n: int):
    """--weights for `n` experts ('0.7,0.3' or a list), scaled to sum to 1; None when not given."""
    w = parse_floats(weights, n, "weights")
    if w is None:
        return None
    if any(x < 0 for x in w) or sum(w) <= 0:
        raise UserError(f"weights must be >= 0 and sum to a positive number, got {brief(weights)}")
    return [x / sum(w) for x in w]


def make_combiner(n, combiner="mean-logits", weights=None, temperature=None, router=False, adapter="none",
                  rank=8) -> Combiner:
    if combiner not in COMBINERS:
        raise UserError(f"unknown combiner {brief(combiner)}: use {', '.join(COMBINERS)} or average")
    if adapter not in ADAPTERS:
        raise UserError(f"unknown adapter {brief(adapter)}: use {', '.join(ADAPTERS)}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise UserError(f"adapter rank must be a positive integer, got {brief(rank)}")
    w = expert_weights(weights, n)
    if w is not None and combiner == "mean-logits":
        raise UserError("mean-logits gives every expert the same weight; use --combiner weighted "
                         "(or mixture) with --weights")
    t = parse_floats(temperature, n, "temperature")
    if t is not None and any(x <= 0 for x in t):
        raise UserError(f"temperatures must be > 0, got {brief(temperature)}")
    return Combiner(combiner, w or [], t or [], bool(router), adapter, rank)
