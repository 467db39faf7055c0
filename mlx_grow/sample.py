"""Samplers and logit processors for generation, checked up front.

The filters (top-k, top-p, min-p) and the categorical draw are mlx-lm's; they
work on a batch of log-probabilities [B, V]. The repetition penalty here is
per row, so batched prompts are penalised by their own history only.
"""

import math

import mlx.core as mx

from mlx_grow.base import UserError, brief
from mlx_grow.mlx_lm_parts import make_sampler as _mlx_lm_sampler


def check_options(max_tokens=256, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0):
    """Raise one clear ValueError for the first out-of-range option."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise UserError(f"max_tokens must be a positive integer, got {brief(max_tokens)}")
    if not math.isfinite(temp) or temp < 0:
        raise UserError(f"temperature must be >= 0 (0 is greedy), got {temp}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise UserError(f"top_k must be an integer >= 0 (0 turns it off), got {brief(top_k)}")
    if not 0 < top_p <= 1:
        raise UserError(f"top_p must be in (0, 1] (1 turns it off), got {top_p}")
    if not 0 <= min_p <= 1:
        raise UserError(f"min_p must be in [0, 1] (0 turns it off), got {min_p}")
    if not math.isfinite(repetition_penalty) or repetition_penalty <= 0:
        raise UserError(f"repetition_penalty must be > 0 (1 turns it off), got {repetition_penalty}")


def make_sampler(vocab_size: int, temp=0.0, top_k=0, top_p=1.0, min_p=0.0):
    """logprobs [B, V] -> token ids [B]. temp 0 is greedy (the filters are then moot)."""
    top_k = 0 if top_k >= vocab_size else int(top_k)
    return _mlx_lm_sampler(temp=temp, top_p=top_p if top_p < 1 else 0.0, min_p=min_p, top_k=top_k)


def without_padding(logits, n_ids):
    """`logits` [..., V] with the rows from `n_ids` on at -inf: a model's rows past its
    tokenizer's ids are padding (tokenizer.check_vocab), never sampled. None: no padding."""
    if n_ids is None or n_ids >= logits.shape[-1]:
        return logits
    return mx.where(mx.arange(logits.shape[-1]) < n_ids, logits, -mx.inf)


def repetition_penalty(logits, history, penalty: float):
    """Divide positive (multiply negative) logits of the tokens in `history` [B, n] by `penalty`."""
    seen = mx.take_along_axis(logits, history, axis=-1)
    seen = mx.where(seen < 0, seen * penalty, seen / penalty)
    return mx.put_along_axis(logits, history, seen, axis=-1)
