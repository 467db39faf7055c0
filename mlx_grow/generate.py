"""Generate text from a single or a merged model.

One KV cache per model (a merge holds one per expert and combines the experts'
next-token scores at every step), greedy or sampled decoding, stop at `</s>`
or user stop strings, streaming, and batched prompts with left padding.

A text prompt is encoded as the model's tokenizer says (its post-processor, as
transformers and mlx-lm apply it): bare for bvv241 as built, after the separator
`</s>` for a model mlx-grow trained (its directory records the separator its
documents follow). `prompt_start` overrides it: "none" (the bare prompt) or
"sep" (after the tokenizer's start token, or `</s>` when it has none). With
`instruct` the prompt is wrapped as `[INST] prompt [/INST]`, the layout of the
instruction data. A list of ids is used exactly as given.

mlx-lm's objects work here too: a model of `mlx_lm.load` (called without a mask;
its KV cache is mlx-lm's) and its tokenizer (read through `as_tokenizer`).
"""

import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Iterator, List, Optional

import mlx.core as mx

from mlx_grow.base import UserError, brief
from mlx_grow.sample import check_options, make_sampler, repetition_penalty, without_padding
from mlx_grow.tokenizer import Tokenizer, as_tokenizer

log = logging.getLogger("mlx_grow.generate")

PREFILL_STEP = 512  # prompt tokens per forward pass while filling the cache
PENALTY_CONTEXT = 20  # recent tokens the repetition penalty looks at (as mlx-lm)
generation_stream = mx.new_stream(mx.default_device())


@dataclass
class GenerationResponse:
    text: str  # the new piece of text (may be empty)
    token: int
    logprobs: mx.array
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    peak_memory: float  # GB
    finish_reason: Optional[str] = None  # "stop", "length" or None while going


@dataclass
class BatchStats:
    """Timings of a batch_generate call (mlx-lm's names)."""
    prompt_tokens: int = 0
    prompt_time: float = 0.0
    prompt_tps: float = 0.0
    generation_tokens: int = 0
    generation_time: float = 0.0
    generation_tps: float = 0.0
    peak_memory: float = 0.0  # GB


@dataclass
class BatchResponse:
    """What batch_generate returns, as mlx-lm's: the texts in prompt order, the timings,
    and the generated ids of each row (up to its stop)."""
    texts: List[str]
    stats: BatchStats = field(default_factory=BatchStats)
    token_ids: List[List[int]] = field(default_factory=list)


PROMPT_STARTS = ("none", "sep")


def prompt_affixes(tokenizer, start: Optional[str] = None) -> tuple:
    """(ids before, ids after) a prompt: the tokenizer's own (start None), none, or the
    start token ("sep": the one its post-processor puts first, else `</s>`)."""
    if start is not None and start not in PROMPT_STARTS:
        raise UserError(f"prompt start must be one of {', '.join(PROMPT_STARTS)}, got {brief(start)}")
    tokenizer = as_tokenizer(tokenizer)
    before, after = tokenizer.affixes()
    if start == "none":
        return [], []
    if start == "sep":
        if before:
            return before[:1], []
        sep = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.bos_id
        if sep is None:
            raise UserError("--prompt-start sep: this tokenizer has no start token, no </s> and no <s>")
        return [sep], []
    return list(before), list(after)


def encode_prompt(tokenizer, prompt, instruct: bool = False, where: str = "the prompt",
                  start: Optional[str] = None) -> List[int]:
    """Token ids of a prompt, started as `prompt_affixes(tokenizer, start)` says;
    warns when characters fall outside the vocabulary."""
    if not isinstance(prompt, str):
        ids = [int(i) for i in prompt]
        if not ids:
            raise UserError(f"{where} is empty: give at least one token id")
        return ids
    if not prompt.strip():
        raise UserError(f"{where} is empty: give some text (--prompt TEXT, --prompt-file FILE or --prompt -)")
    tokenizer = as_tokenizer(tokenizer)
    body = tokenizer.encode(f" {prompt} " if instruct else prompt)
    unk = tokenizer.unk_id
    n_unk = sum(1 for i in body if i == unk) if unk is not None else 0
    if n_unk:
        log.warning(f"{where} has {n_unk} <unk> token(s): characters outside the tokenizer's vocabulary, "
                    "which the model cannot read")
    if instruct:
        if tokenizer.inst_ids is None:
            raise UserError("this tokenizer has no [INST] / [/INST] tokens, so --instruct cannot be used")
        a, b = tokenizer.inst_ids
        body = [a, *body, b]
    before, after = prompt_affixes(tokenizer, start)
    return before + body + after


def fit_context(ids: List[int], model, where: str = "the prompt") -> List[int]:
    """A prompt longer than the model's context keeps its last context-length tokens, with a warning."""
    ctx = getattr(getattr(model, "args", None), "max_position_embeddings", None)
    if ctx and len(ids) > ctx:
        log.warning(f"{where} has {len(ids):,} tokens but the model's context is {ctx:,}: only its last {ctx:,} "
                    "tokens are used")
        return ids[-ctx:]
    return ids


def cache_offset(cache) -> int:
    first = cache[0]
    return (first[0] if isinstance(first, list) else first).offset


def cache_arrays(cache):
    """Everything a cache holds, for mx.eval (a merge's cache adds router state)."""
    if hasattr(cache, "arrays"):
        return cache.arrays()
    return [c.state for c in cache]


def pad_mask(pad, offset: int, n: int):
    """Attention mask [B, 1, n, offset + n] for left-padded rows: causal, no key
    before a row's first real token (a pad query sees itself, to stay finite)."""
    q = mx.arange(offset, offset + n)[:, None]
    k = mx.arange(offset + n)[None, :]
    real = k[None] >= pad[:, None, None]
    return ((k <= q)[None] & (real | (k == q)[None]))[:, None]


def takes_mask(model) -> bool:
    """Whether `model(x, mask=..., cache=...)` works (ours); mlx-lm's models take no mask."""
    try:
        return "mask" in inspect.signature(model.__call__).parameters
    except (TypeError, ValueError):
        return False


def make_cache(model, pad=None):
    """The model's KV cache. Ours masks left padding itself (`pad_mask`); an mlx-lm
    model gets mlx-lm's cache, batched with the padding when rows are padded."""
    if takes_mask(model):
        cache = model.make_cache()
        if pad is not None and hasattr(cache, "pad"):
            cache.pad = pad
        return cache
    from mlx_lm.models.cache import BatchKVCache, make_prompt_cache

    if pad is None:
        return make_prompt_cache(model)
    if hasattr(model, "make_cache"):
        raise UserError(f"{type(model).__name__} keeps its own cache kinds, which mlx-grow cannot batch: "
                        "generate one prompt at a time, or use mlx_lm.batch_generate")
    return [BatchKVCache(pad.tolist()) for _ in model.layers]


def generate_step(model, prompt, max_tokens: int, sampler, penalty: float = 1.0, pad=None, logits_processors=None,
                  prompt_progress_callback=None) -> Iterator:
    """Yield (tokens [B], logprobs [B, V]) per step for prompts [B, L].

    `logits_processors` are mlx-lm's: `f(tokens, logits) -> logits`, with the tokens
    so far ([L] for one row, as mlx-lm passes them; [B, L] for a batch).
    `prompt_progress_callback(done, total)` is called as the prompt is processed.
    The next step is queued (async_eval) before the current token is handed
    out, so Python work overlaps the model's, as in mlx-lm."""
    processors = list(logits_processors or [])
    track = penalty != 1.0 or bool(processors)
    total = prompt.shape[1]
    cache, masked = make_cache(model, pad), takes_mask(model)
    history = prompt
    if pad is not None:  # pad slots repeat the row's first real token (harmless to the penalty)
        first = mx.take_along_axis(prompt, pad[:, None], axis=1)
        history = mx.where(mx.arange(prompt.shape[1])[None] < pad[:, None], first, prompt)

    def forward(x):
        if not masked:
            return model(x, cache=cache)
        mask = None if pad is None else pad_mask(pad, cache_offset(cache), x.shape[1])
        return model(x, mask=mask, cache=cache)

    def step(x):
        nonlocal history
        logits = forward(x)[:, -1, :].astype(mx.float32)
        if penalty != 1.0:
            logits = repetition_penalty(logits, history[:, -PENALTY_CONTEXT:], penalty)
        for f in processors:
            logits = f(history[0] if history.shape[0] == 1 else history, logits)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        y = sampler(logprobs)
        if track:
            history = mx.concatenate([history, y[:, None].astype(history.dtype)], axis=1)
        return y, logprobs

    with mx.stream(generation_stream):
        while prompt.shape[1] > 1:
            n = min(PREFILL_STEP, prompt.shape[1] - 1)
            forward(prompt[:, :n])
            mx.eval(cache_arrays(cache))
            prompt = prompt[:, n:]
            if prompt_progress_callback is not None:
                prompt_progress_callback(total - prompt.shape[1], total)
        y, logprobs = step(prompt)
        if prompt_progress_callback is not None:
            prompt_progress_callback(total, total)
        mx.async_eval(y, logprobs)
        for n in range(max_tokens):
            if n + 1 < max_tokens:
                nxt = step(y[:, None])
                mx.async_eval(*nxt)
            yield y, logprobs
            if n % 256 == 255:
                mx.clear_cache()
            if n + 1 < max_tokens:
                y, logprobs = nxt


class TextStream:
    """The decoded text of one row, handed out in pieces that cannot be the
    start of a stop string (nor a half-decoded character)."""

    def __init__(self, tokenizer, stop=()):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.ids, self.text, self.sent, self.done = [], "", 0, False

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        hits = [i for s in self.stop if (i := text.find(s, max(0, self.sent - len(s)))) >= 0]
        if hits:
            self.text, self.done = text[: min(hits)], True
            return self._emit(len(self.text))
        self.text = text
        hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        end = len(text) - hold
        while end > self.sent and text[end - 1] == "\ufffd":
            end -= 1
        return self._emit(end)

    def finish(self) -> str:
        return self._emit(len(self.text))

    def _emit(self, end: int) -> str:
        piece, self.sent = self.text[self.sent:end], max(self.sent, end)
        return piece


def _setup(model, tokenizer, max_tokens, temp, top_k, top_p, min_p, repetition_penalty, seed, stop, sampler=None):
    check_options(max_tokens, temp, top_k, top_p, min_p, repetition_penalty)
    if isinstance(stop, str):
        stop = [stop]
    if seed is not None:
        mx.random.seed(int(seed))
    if sampler is not None and not callable(sampler):
        raise UserError(f"sampler must be a function logprobs [B, V] -> token ids [B] (as mlx-lm's make_sampler "
                        f"returns), got {type(sampler).__name__}")
    sampler = sampler or make_sampler(model.args.vocab_size, temp, top_k, top_p, min_p)
    tok = as_tokenizer(tokenizer)
    if isinstance(tok, Tokenizer) and tok.vocab_size < model.args.vocab_size:  # padding rows: never sampled
        draw, n = sampler, tok.vocab_size
        sampler = lambda logprobs: draw(without_padding(logprobs, n))  # noqa: E731
    return sampler, list(stop or [])


def stream_generate(model, tokenizer, prompt, max_tokens=256, temp=0.0, top_k=0, top_p=1.0, min_p=0.0,
                    repetition_penalty=1.0, seed=None, stop=None, instruct=False, sampler=None,
                    logits_processors=None, prompt_progress_callback=None, prompt_start=None
                    ) -> Iterator[GenerationResponse]:
    """Yield a GenerationResponse per generated token; the last one carries
    finish_reason ("stop" at `</s>` or a stop string, else "length"). `prompt_start`:
    None (as the model's tokenizer says), "none" or "sep" (see encode_prompt). As in
    mlx-lm, `sampler` (logprobs -> tokens) replaces temp/top_k/top_p/min_p, and
    `logits_processors` (tokens, logits -> logits) run before sampling. A prompt
    longer than the model's context keeps its last context-length tokens (warned)."""
    sampler, stop = _setup(model, tokenizer, max_tokens, temp, top_k, top_p, min_p, repetition_penalty, seed, stop,
                           sampler)
    tokenizer = as_tokenizer(tokenizer)
    ids = fit_context(encode_prompt(tokenizer, prompt, instruct, start=prompt_start), model)
    eos = tokenizer.eos_token_ids
    text = TextStream(tokenizer, stop)
    tic = time.perf_counter()
    steps = generate_step(model, mx.array([ids]), max_tokens, sampler, repetition_penalty,
                          logits_processors=logits_processors, prompt_progress_callback=prompt_progress_callback)
    prompt_tps = 0.0
    for n, (y, logprobs) in enumerate(steps):
        token = y.item()
        if n == 0:
            prompt_tps = len(ids) / (time.perf_counter() - tic)
            tic = time.perf_counter()
        finish = "stop" if token in eos else None
        piece = "" if finish else text.add(token)
        if text.done:
            finish = "stop"
        elif finish is None and n + 1 == max_tokens:
            finish = "length"
        if finish:
            piece += text.finish()
        yield GenerationResponse(piece, token, logprobs[0], len(ids), prompt_tps, n + 1,
                                 (n + 1) / max(time.perf_counter() - tic, 1e-9), mx.get_peak_memory() / 1e9,
                                 finish)
        if finish:
            steps.close()
            return


def generate(model, tokenizer, prompt, max_tokens=256, verbose=False, **kw) -> str:
    """The whole generated text; `verbose` streams it and prints tokens/s like mlx-lm."""
    out, last = [], None
    for last in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens, **kw):
        out.append(last.text)
        if verbose:
            print(last.text, end="", flush=True)
    if verbose:
        print()
        print_stats(last)
    return "".join(out)


def print_stats(r, file=None):
    """Token counts and tokens/s of a GenerationResponse or BatchStats (or such a dict), like mlx-lm."""
    if r is None:
        return
    r = r if isinstance(r, dict) else vars(r)
    print("=" * 10, file=file)
    print(f"Prompt: {r['prompt_tokens']} tokens, {r['prompt_tps']:.3f} tokens-per-sec", file=file)
    print(f"Generation: {r['generation_tokens']} tokens, {r['generation_tps']:.3f} tokens-per-sec", file=file)
    print(f"Peak memory: {r['peak_memory']:.3f} GB", file=file)


def batch_generate(model, tokenizer, prompts: List[str], max_tokens=256, verbose=False, temp=0.0, top_k=0,
                   top_p=1.0, min_p=0.0, repetition_penalty=1.0, seed=None, stop=None, instruct=False,
                   sampler=None, logits_processors=None, prompt_progress_callback=None,
                   prompt_start=None) -> BatchResponse:
    """Generate for several prompts (texts or lists of ids) at once (left padding +
    attention mask); each row stops on its own. Returns a BatchResponse (`.texts`,
    `.stats`, `.token_ids`) as mlx-lm's batch_generate does. `sampler` and
    `logits_processors` as in `stream_generate` (tokens are [B, L] here)."""
    sampler, stop = _setup(model, tokenizer, max_tokens, temp, top_k, top_p, min_p, repetition_penalty, seed, stop,
                           sampler)
    if isinstance(prompts, str) or not len(prompts):
        raise UserError("batch_generate takes a non-empty list of prompts")
    tokenizer = as_tokenizer(tokenizer)
    rows = [fit_context(encode_prompt(tokenizer, p, instruct, where=f"prompt {i + 1}", start=prompt_start), model,
                        f"prompt {i + 1}")
            for i, p in enumerate(prompts)]
    width = max(len(r) for r in rows)
    fill = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    pad = mx.array([width - len(r) for r in rows])
    ids = mx.array([[fill] * (width - len(r)) + r for r in rows])
    texts = [TextStream(tokenizer, stop) for _ in rows]
    eos, n_tokens = tokenizer.eos_token_ids, 0
    tic = time.perf_counter()
    prompt_time = 0.0
    steps = generate_step(model, ids, max_tokens, sampler, repetition_penalty, pad=pad,
                          logits_processors=logits_processors, prompt_progress_callback=prompt_progress_callback)
    for n, (y, _) in enumerate(steps):
        tokens = y.tolist()
        if n == 0:
            prompt_time = time.perf_counter() - tic
            tic = time.perf_counter()
        for t, token in zip(texts, tokens):
            if not t.done:
                n_tokens += 1
                if token in eos:
                    t.done = True
                else:
                    t.add(token)
        if all(t.done for t in texts):
            steps.close()
            break
    gen_time, n_prompt = time.perf_counter() - tic, sum(map(len, rows))
    stats = BatchStats(n_prompt, prompt_time, n_prompt / max(prompt_time, 1e-9), n_tokens, gen_time,
                       n_tokens / max(gen_time, 1e-9), mx.get_peak_memory() / 1e9)
    if verbose:
        print_stats(stats)
    return BatchResponse([t.text for t in texts], stats, [t.ids for t in texts])
