"""The passes check: how many times a run reads each of its sources.

Per source: the planned tokens drawn from it (its weight's share of every stage's
tokens, summed over the growth stages, a monolithic run's segments and the LoRA
phases) over the training tokens it holds. What a source holds comes from its
prepared shard when one is in the cache; else a streamed (`hf:`) source holds
its `tokens` budget (less the validation share) or counts as unbounded; else a
local source is estimated from its text size and the tokenizer's tokens per
byte on a sample of it (counted exactly when the sample is all of it).

Data read more than about four times stops acting like new data, so `grow`
refuses a run that reads any source more than `data.max_passes` times (default
4; `--allow-repeat N` sets it) before anything is written.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mlx_grow.base import UserError
from mlx_grow.training.params import human

SAMPLE_CHARS = 1 << 21  # characters of a local source encoded to measure its tokens per byte


@dataclass
class SourcePasses:
    label: str
    drawn: float  # planned tokens drawn from the source
    held: Optional[int]  # training tokens it holds; None: unbounded
    how: str  # prepared | counted | estimate | budget | unbounded

    @property
    def passes(self) -> float:
        return self.drawn / self.held if self.held else (0.0 if self.held is None else math.inf)

    def line(self) -> str:
        if self.held is None:
            return (f"{self.label}: draws {human(round(self.drawn))} tokens; streamed with no tokens: budget, so "
                    "unbounded")
        how = {"estimate": "an estimate", "budget": "its tokens: budget", "prepared": "its prepared shard",
               "counted": "counted"}[self.how]
        return (f"{self.label}: draws {human(round(self.drawn))} of the {human(self.held)} training tokens it holds "
                f"({how}) = {fmt(self.passes)} passes")


def fmt(p: float) -> str:
    return f"{p:,.0f}" if p >= 100 else f"{p:.1f}" if p >= 10 else f"{p:.2f}"


def _key(spec, instruction: bool) -> tuple:
    return instruction, spec.source, spec.field, spec.template, spec.split, spec.tokens


def planned_draws(cfg, stages=None) -> dict:
    """{key: [spec, instruction, tokens drawn]} over the whole plan of `cfg` (its
    stages, default schedule.plan(cfg))."""
    from mlx_grow.data.config import SourceSpec
    from mlx_grow.training.schedule import plan

    d, t = cfg.data, cfg.train
    per_step = t.batch_size * t.seq_len
    out = {}
    inst_tokens = 0.0
    for st in plan(cfg) if stages is None else stages:
        # a monolithic stage walks the grown stages' mixtures in order; a LoRA phase reads its stage's
        segments = list(enumerate(st.segments)) if st.segments else [(st.grown, st.steps)]
        for k, steps in segments:
            tokens = steps * per_step
            specs = d.mixture(k)
            share = (1 - d.instruction_ratio) if d.instruction_ratio > 0 else 1.0
            wsum = sum(s.weight for s in specs)
            for s in specs:
                out.setdefault(_key(s, False), [s, False, 0.0])[2] += tokens * share * s.weight / wsum
            if d.instruction_ratio > 0:
                inst_tokens += tokens * d.instruction_ratio
    if d.instruction_ratio > 0:  # split by the files' sizes when the holdings are known (see table)
        for f in d.instruction_files:
            s = SourceSpec(str(f))
            out[_key(s, True)] = [s, True, inst_tokens]
    return out


def find_shard(spec, data_cfg, tok, instruction: bool = False):
    """The newest prepared shard of `spec` in the cache (matched on its meta.json), or None.
    `tok`: the tokenizer, or a function that returns it (called only when needed)."""
    import json

    from mlx_grow.data.shards import FORMAT, cache_root, slug

    root = cache_root(data_cfg.cache_dir)
    if not root.is_dir():
        return None
    want = dict(format=FORMAT, source=spec.source, field=spec.field, template=spec.template, split=spec.split,
                token_budget=spec.tokens, kind="instruction" if instruction else "text",
                separator=data_cfg.separator, val_fraction=data_cfg.val_fraction)
    defaults = {"template": None, "split": "train", "token_budget": None}
    best = None
    for meta_path in root.glob(f"{slug(spec.source)}-*/meta.json"):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if all(meta.get(k, defaults.get(k)) == v for k, v in want.items()) \
                and meta.get("tokenizer_fingerprint") == _tok(tok).fingerprint:
            m = meta_path.stat().st_mtime
            if best is None or m > best[0]:
                best = (m, meta)
    return best[1] if best else None


def _tok(tok):
    return tok() if callable(tok) and not hasattr(tok, "encode_batch") else tok


def estimate_tokens(spec, tok, instruction: bool = False) -> tuple:
    """(tokens, "counted" | "estimate") of a local source or built-in corpus, every
    document with its separator."""
    from mlx_grow.data import corpora
    from mlx_grow.data.encode import size

    docs = (corpora.instruction_pairs(spec.source) if instruction else
            corpora.documents(spec.source, spec.field, False, spec.template, spec.split))
    sample, chars = [], 0
    for d in docs:
        sample.append(d)
        chars += size(d)
        if chars >= SAMPLE_CHARS:
            break
    else:
        docs = None  # the sample is the whole source
    texts = [t for d in sample for t in ([d] if isinstance(d, str) else [f" {d[0]} ", f" {d[1]}"])]
    tokens = sum(map(len, _tok(tok).encode_batch(texts))) + len(sample) * (3 if instruction else 1)
    if docs is None:
        return tokens, "counted"
    if instruction:
        raw = Path(spec.source).expanduser().stat().st_size
        sample_bytes = sum(len(q.encode()) + len(a.encode()) for q, a in sample)
        return round(tokens * raw / max(sample_bytes, 1) * 0.9), "estimate"
    sample_bytes = sum(len(d.encode("utf-8")) for d in sample)
    return round(tokens * corpora.text_bytes(spec.source, spec.field, spec.template) / max(sample_bytes, 1)), \
        "estimate"


def holding(spec, data_cfg, tok, instruction: bool = False) -> tuple:
    """(training tokens the source holds or None for unbounded, how it is known)."""
    from mlx_grow.data import corpora

    meta = find_shard(spec, data_cfg, tok, instruction)
    if meta is not None:
        return meta["tokens"]["train"], "prepared"
    vf = data_cfg.val_fraction
    if spec.source.startswith("hf:") and not instruction:
        return (round(spec.tokens * (1 - vf)), "budget") if spec.tokens else (None, "unbounded")
    total, how = estimate_tokens(spec, tok, instruction)
    if spec.tokens:
        total = min(total, spec.tokens)
    splits = None if instruction else corpora.mlx_lm_splits(spec.source)
    if splits and splits["val"] is not None:  # validation reads valid.jsonl; text_bytes counted train.jsonl
        return total, how
    return round(total * (1 - vf)), how


def table(cfg, tok=None, memo=None, stages=None) -> list:
    """SourcePasses for every source `cfg` reads, in the order the plan first reads them.
    Without `tok`, the config's tokenizer is loaded when a holding needs it (writing nothing).
    `memo`: a dict that keeps holdings between calls (configs that share sources);
    `stages`: the stage plan, when made already."""
    if tok is None:
        from functools import lru_cache

        from mlx_grow.tokenizer import load_tokenizer

        tok = lru_cache(maxsize=1)(lambda: load_tokenizer(cfg.tokenizer, save_cache=False))
    rows = []
    inst = []
    for spec, instruction, drawn in planned_draws(cfg, stages).values():
        k = (_key(spec, instruction), cfg.tokenizer, cfg.data.cache_dir, cfg.data.separator, cfg.data.val_fraction)
        if memo is not None and k in memo:
            held, how = memo[k]
        else:
            held, how = holding(spec, cfg.data, tok, instruction)
            if memo is not None:
                memo[k] = held, how
        row = SourcePasses(spec.label + (" (instruction file)" if instruction else ""), drawn, held, how)
        rows.append(row)
        if instruction:
            inst.append(row)
    total = sum(r.held or 0 for r in inst)
    for r in inst:  # instruction files share their tokens by size, as the stream draws them
        r.drawn = r.drawn * (r.held or 0) / total if total else r.drawn / len(inst)
    return rows


def lines(rows: list, limit: float) -> list:
    out = [f"data: {r.line()}" for r in rows]
    worst = max((r for r in rows if r.held), key=lambda r: r.passes, default=None)
    if worst is not None:
        out.append(f"data: at most {fmt(worst.passes)} passes over a source (data.max_passes {limit:g})")
    return out


def check(cfg, rows: list, flag: str = "--allow-repeat"):
    """Refuse a plan that reads a source more than data.max_passes times."""
    limit = cfg.data.max_passes
    over = sorted((r for r in rows if r.held is not None and r.passes > limit), key=lambda r: -r.passes)
    if not over:
        return
    first = over[0]
    others = "".join(f", {r.label} {fmt(r.passes)} times" for r in over[1:4]) + \
        (f" and {len(over) - 4} more" if len(over) > 4 else "")
    n = math.ceil(first.passes)
    raise UserError(
        f"{first.label} would be read {fmt(first.passes)} times ({human(round(first.drawn))} planned tokens drawn "
        f"from the {human(first.held)} training tokens it holds{', ' + first.how if first.how == 'estimate' else ''})"
        f"{others}; more than {limit:g} passes (data.max_passes) stop acting like new data. Give it more "
        f"data (a larger source or tokens: budget, or fewer planned tokens), or allow the repeats with {flag} {n} "
        f"(data.max_passes: {n}). Nothing was written")
