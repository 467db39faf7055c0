"""Evaluate mlx-grow models: log-likelihood multiple choice (as lm-evaluation-harness
scores it), the papers' generative protocol, perplexity and bits per byte, and an
lm-evaluation-harness adapter (model name `mlx-grow`, registered on import when
lm-eval is installed).

Scoring shares work: a batch of contexts is run once (left-padded, with a mask)
and its KV cache is repeated for every choice, or for every sampled run of the
paper protocol, so 4 choices or 10 runs cost little more than one.
"""

import copy
import inspect
import logging
from typing import Callable, List, Optional, Sequence

import mlx.core as mx
import numpy as np

from mlx_grow.base import UserError
from mlx_grow.eval.protocol import cut_prompt
from mlx_grow.generate import pad_mask, prompt_affixes
from mlx_grow.sample import without_padding
from mlx_grow.tokenizer import check_vocab

log = logging.getLogger("mlx_grow.evaluate")


DEFAULT_BATCH_TOKENS = 8192


MAX_LOGITS = 1 << 26  # scored logits (positions x vocabulary) held at once


def _mask(pads, offset: int, length: int):
    return pad_mask(mx.array(pads), offset, length)


def _take_cache(cache, index):
    """A copy of a (nested) KV cache holding the batch rows `index`; a merge's cache
    (a list of expert caches) also carries its router state [E, B, ...] and padding [B]."""
    if isinstance(cache, list):
        new = copy.copy(cache)  # a list subclass keeps its attributes
        new[:] = [_take_cache(c, index) for c in cache]
        for name, axis in (("score", 1), ("last", 1), ("pad", 0)):
            v = getattr(cache, name, None)
            if isinstance(v, mx.array):
                setattr(new, name, mx.take(v, index, axis=axis))
        return new
    if isinstance(getattr(cache, "keys", None), mx.array):
        new = copy.copy(cache)
        new.keys, new.values = cache.keys[index], cache.values[index]
        return new
    raise TypeError(f"cannot repeat a cache of type {type(cache).__name__}")


def check_pair(model, tokenizer, name: str = "model"):
    vocab = getattr(getattr(model, "args", None), "vocab_size", None)
    if vocab is not None:
        check_vocab(tokenizer, vocab, f"{name}: the tokenizer")


class Scorer:
    """Batched log-likelihoods, rolling NLL and sampling for one model."""

    def __init__(self, model, tokenizer, batch_tokens: int = DEFAULT_BATCH_TOKENS, max_len: Optional[int] = None,
                 name: str = "model", prompt_start: Optional[str] = None):
        check_pair(model, tokenizer, name)
        self.model, self.tok, self.name = model, tokenizer, name
        args = getattr(model, "args", None)
        self.vocab = getattr(args, "vocab_size", tokenizer.vocab_size)
        self.max_len = max_len or getattr(args, "max_position_embeddings", 2048)
        self.batch_tokens = batch_tokens
        self.fast_head = hasattr(model, "hidden") and hasattr(model, "lm_head")
        try:
            self.masked = "mask" in inspect.signature(model.__call__).parameters
        except (TypeError, ValueError):
            self.masked = False
        # Log-likelihood contexts and rolling windows start after the separator `</s>` (every
        # training document follows it; lm-eval's rolling windows start at the end-of-text token).
        first = next((i for i in (tokenizer.eos_id, tokenizer.bos_id) if i is not None), None)
        self.start = [] if first is None else [first]
        # Paper-protocol prompts start as generation starts them: as the model's tokenizer says
        # (bare for bvv241 as built, as the author's harness encodes them), or `prompt_start`.
        self.prompt_before, self.prompt_after = prompt_affixes(tokenizer, prompt_start)

    def encode(self, text: str, where: str = "") -> List[int]:
        ids = self.tok.encode(text)
        if ids and max(ids) >= self.vocab:
            raise UserError(f"{where or 'text'}: token id {max(ids)} is outside {self.name}'s vocabulary "
                             f"({self.vocab}): the tokenizer does not match the model")
        return ids

    def encode_pair(self, context: str, continuation: str, where: str = ""):
        """lm-evaluation-harness's split: trailing context spaces move to the continuation;
        the continuation is the tail of encode(context + continuation)."""
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        whole = self.encode(context + continuation, where)
        ctx = self.encode(context, where) if context else []
        if not self.start and not ctx:
            raise UserError(f"{where or 'request'}: empty context and the tokenizer has no </s> or <s> to start from")
        return self.start + ctx, whole[len(ctx):]

    # --- model calls ---

    def _logits_at(self, x, mask, cache, rows, cols):
        """Logits [N, V] (float32) at positions (rows[n], cols[n]) of a forward pass over x [B, L];
        with an mlx-grow Model the head runs at those positions only."""
        flat = mx.array(np.asarray(rows) * x.shape[1] + np.asarray(cols))
        if self.fast_head:
            h = self.model.hidden(x, mask, cache)
            return self.model.lm_head(h.reshape(-1, h.shape[-1])[flat]).astype(mx.float32)
        out = self.model(x, cache=cache, **({"mask": mask} if mask is not None else {}))
        return out.reshape(-1, out.shape[-1])[flat].astype(mx.float32)

    @staticmethod
    def _score(logits, targets):
        """(log-probability, is-argmax) numpy arrays of `targets` [N] under `logits` [N, V]."""
        t = mx.array(targets)[:, None]
        lp = mx.take_along_axis(logits, t, axis=-1)[:, 0] - mx.logsumexp(logits, axis=-1)
        best = mx.argmax(logits, axis=-1) == t[:, 0]
        mx.eval(lp, best)
        return np.array(lp, np.float64), np.array(best)

    def _prefill(self, seqs):
        """Run left-padded contexts once: (last-position logits [B,V], cache, pads, width)."""
        width = max(map(len, seqs))
        pads = [width - len(s) for s in seqs]
        x = mx.array([[0] * p + list(s) for p, s in zip(pads, seqs)])
        cache = self.model.make_cache()
        if any(pads) and hasattr(cache, "pad"):  # a merge's router skips the padding
            cache.pad = mx.array(pads)
        mask = _mask(pads, 0, width) if any(pads) else None
        return self._logits_at(x, mask, cache, range(len(seqs)), [width - 1] * len(seqs)), cache, pads, width

    def _batches(self, order, length, rows, extra=lambda i: 0, scored=lambda i: 1):
        """Split `order` (longest first) into batches whose padded size, width x (contexts + cache
        copies) + extra tokens, stays within the token budget and whose scored logits stay within
        MAX_LOGITS; one item at least. Models without a mask argument get one context per batch."""
        batch, width, n_rows, n_extra, held = [], 0, 0, 0, 0
        for i in order:
            w, r, e, h = max(width, length(i)), n_rows + 1 + rows(i), n_extra + extra(i), held + scored(i) * self.vocab
            if batch and (w * r + e > self.batch_tokens or h > MAX_LOGITS or not self.masked):
                yield batch
                batch, w, r, e, h = [], length(i), 1 + rows(i), extra(i), scored(i) * self.vocab
            batch.append(i)
            width, n_rows, n_extra, held = w, r, e, h
        if batch:
            yield batch

    # --- log-likelihood ---

    def loglikelihood(self, requests: Sequence, progress: Optional[Callable] = None) -> List[tuple]:
        """[(context_ids, continuation_ids)] -> [(log-probability, is_greedy)], every distinct
        context computed once."""
        groups = {}
        for i, (ctx, cont) in enumerate(requests):
            if not cont:
                raise UserError(f"request {i}: the continuation is empty")
            groups.setdefault(tuple(ctx), []).append((i, list(cont)))
        keys = list(groups)
        ctxs = []
        for k in keys:  # keep context + continuation within the model's length
            keep = max(1, self.max_len + 1 - max(len(c) for _, c in groups[k]))
            ctxs.append(list(k)[-keep:])
        out = [None] * len(requests)
        order = sorted(range(len(keys)), key=lambda g: -len(ctxs[g]))
        scored = lambda g: sum(len(c) for _, c in groups[keys[g]])
        for batch in self._batches(order, lambda g: len(ctxs[g]), lambda g: len(groups[keys[g]]), scored, scored):
            last, cache, pads, offset = self._prefill([ctxs[g] for g in batch])
            rows = [(b, i, c) for b, g in enumerate(batch) for i, c in groups[keys[g]]]
            src = mx.array([b for b, _, _ in rows])
            # the first token of each continuation is scored by its context's last position
            parts, tgt, owner = [last[src]], [c[0] for _, _, c in rows], list(range(len(rows)))
            width = max(len(c) for _, _, c in rows) - 1
            if width:
                long = [r for r, (_, _, c) in enumerate(rows) if len(c) > 1]
                sel = mx.array([rows[r][0] for r in long])
                sub = _take_cache(cache, sel) if len(batch) > 1 or len(long) > 1 else cache
                x = mx.array([rows[r][2][:-1] + [0] * (width + 1 - len(rows[r][2])) for r in long])
                row_pads = [pads[rows[r][0]] for r in long]
                mask = _mask(row_pads, offset, width) if any(row_pads) else None
                at = [(k, j) for k, r in enumerate(long) for j in range(len(rows[r][2]) - 1)]
                parts.append(self._logits_at(x, mask, sub, [k for k, _ in at], [j for _, j in at]))
                tgt += [rows[long[k]][2][j + 1] for k, j in at]
                owner += [long[k] for k, _ in at]
            lp, best = self._score(mx.concatenate(parts), tgt)
            score, greedy = np.zeros(len(rows)), np.ones(len(rows), bool)
            np.add.at(score, owner, lp)
            np.logical_and.at(greedy, owner, best)
            for (_, i, _), s, g in zip(rows, score.tolist(), greedy.tolist()):
                out[i] = (s, g)
            if progress:
                progress(len(rows))
        return out

    def rolling_nll(self, docs: Sequence[List[int]]) -> List[float]:
        """Total negative log-likelihood (nats) of each token list, the first token predicted after
        the start token `</s>`, in disjoint windows of the model's length (lm-eval's rolling windows)."""
        wins = []  # (doc, inputs, targets, number scored at the end)
        for d, ids in enumerate(docs):
            seq, start = self.start + list(ids), 0
            while start < len(seq) - 1:
                end = min(start + self.max_len, len(seq) - 1)
                a = max(0, end - self.max_len)
                wins.append((d, seq[a:end], seq[a + 1:end + 1], end - start))
                start = end
        nll = np.zeros(len(docs))
        cap = max(1, min(self.batch_tokens // self.max_len, MAX_LOGITS // (self.max_len * self.vocab)))
        for i in range(0, len(wins), cap):
            batch = wins[i:i + cap]
            width = max(len(w[1]) for w in batch)
            x = mx.array([w[1] + [0] * (width - len(w[1])) for w in batch])
            at = [(k, j) for k, w in enumerate(batch) for j in range(len(w[1]) - w[3], len(w[1]))]
            logits = self._logits_at(x, None, None, [k for k, _ in at], [j for _, j in at])
            lp, _ = self._score(logits, [batch[k][2][j] for k, j in at])
            np.subtract.at(nll, [batch[k][0] for k, _ in at], lp)
        return nll.tolist()

    # --- sampling ---

    def sample(self, prompts: Sequence[List[int]], max_new: Sequence[int], runs: int, temp: float, top_k: int = 0,
               seed: int = 0, greedy: bool = True, until: Sequence[str] = (), progress=None) -> List[List[List[int]]]:
        """New token ids [item][row]: `runs` sampled rows (then a greedy row when `greedy`). Each item's
        prompt is computed once; row r of item i draws from numpy's generator seeded (seed, i, r), so
        results do not depend on batching. Generation runs max_new tokens (no stop at end-of-text)
        unless `until` strings are given."""
        R = runs + int(greedy)
        prompts = [list(p)[-max(1, self.max_len - m):] for p, m in zip(prompts, max_new)]
        out = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        for batch in self._batches(order, lambda i: len(prompts[i]), lambda i: R if max_new[i] > 1 else 0,
                                   lambda i: R * max_new[i], lambda i: R):
            last, cache, pads, offset = self._prefill([prompts[i] for i in batch])
            src = mx.array(np.repeat(np.arange(len(batch)), R))
            rngs = [np.random.default_rng([seed, i, r]) for i in batch for r in range(R)]
            is_greedy = np.tile(np.arange(R) == runs, len(batch)) if greedy else np.zeros(len(rngs), bool)
            steps = max(max_new[i] for i in batch)
            ids = np.zeros((len(rngs), steps), np.int64)
            done = np.zeros(len(rngs), bool)
            logits, sub = last[src], None
            for t in range(steps):
                ids[:, t] = self._pick(without_padding(logits, self.tok.vocab_size), temp, top_k, rngs, is_greedy)
                if until:
                    done |= [ids[j, t] == self.tok.eos_id or any(u in self.tok.decode(ids[j, :t + 1]) for u in until)
                             for j in range(len(rngs))]
                if t + 1 == steps or done.all():
                    break
                sub = sub if sub is not None else _take_cache(cache, src)
                row_pads = [pads[j // R] for j in range(len(rngs))]
                mask = _mask(row_pads, offset + t, 1) if any(row_pads) else None
                logits = self._logits_at(mx.array(ids[:, t:t + 1]), mask, sub, range(len(rngs)), [0] * len(rngs))
            for b, i in enumerate(batch):
                out[i] = [ids[b * R + r, :max_new[i]].tolist() for r in range(R)]
            if progress:
                progress(len(batch))
        return out

    @staticmethod
    def _pick(logits, temp, top_k, rngs, is_greedy):
        logits = logits.astype(mx.float32)
        best = np.array(mx.argmax(logits, axis=-1))
        if temp <= 0 or is_greedy.all():
            return best
        lg = logits / temp
        if top_k and top_k < lg.shape[-1]:
            kth = mx.partition(lg, lg.shape[-1] - top_k, axis=-1)[:, lg.shape[-1] - top_k:][:, :1]
            lg = mx.where(lg < kth, -mx.inf, lg)
        cdf = np.cumsum(np.array(mx.softmax(lg, axis=-1)), axis=-1, dtype=np.float64)
        drawn = np.array([min(int(np.searchsorted(c, r.random() * c[-1], side="right")), len(c) - 1)
                          for c, r in zip(cdf, rngs)])
        return np.where(is_greedy, best, drawn)

    def paper_outputs(self, prompts: Sequence[str], max_new: Sequence[int], runs: int, temp: float, top_k: int,
                      seed: int, progress=None):
        """(sampled [run][item], greedy [item]) outputs, each the decoded prompt + new tokens with `<s>`
        removed and the prompt cut off by its character length (the papers' extraction)."""
        ids = [self.encode(p, f"prompt {i + 1}") for i, p in enumerate(prompts)]
        bad = sum(self.tok.decode(i).replace("<s>", "") != p for p, i in zip(prompts, ids))
        if bad:
            log.warning(f"{bad} of {len(prompts)} prompts do not decode back to themselves (characters outside "
                        "the vocabulary?): the papers' cut by character length misplaces their answers")
        new = self.sample([self.prompt_before + i + self.prompt_after for i in ids], max_new, runs, temp, top_k, seed,
                          progress=progress)
        text = [[cut_prompt(p, self.tok.decode(i + row)) for row in rows] for p, i, rows in zip(prompts, ids, new)]
        return [[t[r] for t in text] for r in range(runs)], [t[runs] for t in text]
