"""The bvv241 tokenizers (see mlx_grow/assets/bvv241/NOTICE), built from the
shipped n-gram files: a single character is its own Unicode code point; frequent
multi-character n-grams fill the code points no character can use (surrogates,
private use, and for "max" the plane 1 range). It is a plain `tokenizers` BPE
model with no normalizer and no pre-tokenizer.

Choices where the layout spec is silent:
- An n-gram candidate is skipped (it takes no slot) when it equals a single
  character or a reserved name (special token, `<special_token_N>`,
  `<unused_N>`), contains whitespace, or contains a character that has no id
  of its own (it could never be produced). Duplicates are dropped before
  sorting. The shipped files hold none of these except duplicates.
- Merge halves are single characters or placed n-grams, never special tokens.
- All of 0xE000-0xE0FF are registered as special tokens. `encode` treats
  special-token strings in the text as plain characters unless asked.
"""

import ast
import hashlib
from importlib import resources
from itertools import chain
from typing import List

from tokenizers import AddedToken, decoders, models
from tokenizers import Tokenizer as HFTokenizer

from mlx_grow.base import UserError, brief
from mlx_grow.io.atomic import atomic_path
from mlx_grow.io.paths import cache_home
from mlx_grow.tokenizer.core import RESERVED, Tokenizer

SPECIAL_TOKENS = (
    "<pad> <s> </s> <unk> <think> </think> <emotions> </emotions> <tool_call> </tool_call> "
    "<tool_response> </tool_response> [INST] [/INST] [EOT] [USER] [ASSISTANT] [FIM_PREFIX] "
    "[FIM_MIDDLE] [FIM_SUFFIX] [FIM_PAD] [REPO_NAME] [FILE_SEP]"
).split()
SPECIAL_BASE, SPECIAL_END = 0xE000, 0xE100

VARIANTS = {
    "2-3": dict(vocab_size=1 << 16, file="n-gramms-2-3.txt", top=338, intersection=False),
    "max": dict(vocab_size=1 << 17, file="n-gramms-2-3-4-5.txt", top=906, intersection=True),
}
BUILD_VERSION = "1"  # part of the cache key: bump when the layout code changes


def _asset(name: str):
    return resources.files("mlx_grow") / "assets" / "bvv241" / name


def _is_char_id(i: int) -> bool:
    return i < 0xD800 or 0xF900 <= i <= 0xFFFE


def _variant(variant: str) -> str:
    v = variant[len("bvv241-"):] if variant.startswith("bvv241-") else variant
    if v not in VARIANTS:
        raise UserError(f"unknown bvv241 variant {brief(variant)}: use '2-3' (65,536 ids) or 'max' (131,072 ids)")
    return v


def _source_files(variant: str):
    spec = VARIANTS[variant]
    return [spec["file"]] + (["n-gramms-intersection.txt"] if spec["intersection"] else [])


def _candidates(variant: str) -> List[str]:
    """The n-gram candidates, deduplicated, longer first, then string order."""
    spec = VARIANTS[variant]
    tables = ast.literal_eval(_asset(spec["file"]).read_text(encoding="utf-8"))
    cands = {g for lang in tables for grams in lang["top_ngrams"].values() for g, _ in grams[: spec["top"]]}
    if spec["intersection"]:
        lines = _asset("n-gramms-intersection.txt").read_text(encoding="utf-8").split("\n")
        cands |= {s.strip() for s in lines if len(s.strip()) > 1}
    return sorted((g for g in cands if isinstance(g, str) and len(g) > 1), key=lambda g: (-len(g), g))


def bvv241_layout(variant: str):
    """(vocab {string: id}, merges [(left, right)], report) of a bvv241 variant."""
    variant = _variant(variant)
    size = VARIANTS[variant]["vocab_size"]
    vocab = {chr(i): i for i in chain(range(0xD800), range(0xF900, 0xFFFF))}
    for i in range(SPECIAL_BASE, SPECIAL_END):
        k = i - SPECIAL_BASE
        vocab[SPECIAL_TOKENS[k] if k < len(SPECIAL_TOKENS) else f"<special_token_{i}>"] = i
    slot_ranges = [range(0xD800, 0xE000), range(0xE100, 0xF900)]
    if size > 0x10000:
        slot_ranges.append(range(0x10000, min(0x1FFFF, size)))
    slots = chain(*slot_ranges)
    cands = _candidates(variant)
    placed, skipped, dropped = [], 0, 0
    for g in cands:
        if (
            g in vocab
            or RESERVED.fullmatch(g)
            or any(c.isspace() or not _is_char_id(ord(c)) for c in g)
        ):
            skipped += 1
            continue
        slot = next(slots, None)
        if slot is None:
            dropped = len(cands) - len(placed) - skipped
            break
        vocab[g] = slot
        placed.append(g)
    used = set(vocab.values())
    for i in range(size):
        if i not in used:
            vocab[f"<unused_{i}>"] = i
    halves = set(placed)
    merges = [
        (g[:k], g[k:])
        for g in placed
        for k in range(1, len(g))
        if all(len(h) == 1 or h in halves for h in (g[:k], g[k:]))
    ]
    # An n-gram none of whose splits is in the vocabulary has an id but no merge.
    unreachable = len(halves - {a + b for a, b in merges})
    report = dict(
        candidates=len(cands), placed=len(placed), skipped=skipped, dropped=dropped,
        merges=len(merges), unreachable=unreachable,
    )  # fmt: skip
    return vocab, merges, report


def _cache_key(variant: str) -> str:
    h = hashlib.sha256(BUILD_VERSION.encode())
    for name in _source_files(variant):
        h.update(_asset(name).read_bytes())
    return f"bvv241-{variant}-{h.hexdigest()[:16]}"


def _wrap_bvv241(backend: HFTokenizer, variant: str) -> Tokenizer:
    return Tokenizer(backend, bos="<s>", eos="</s>", unk="<unk>", pad="<pad>", name=f"bvv241-{variant}")


def build_bvv241(variant: str, use_cache: bool = True, save: bool = True) -> Tokenizer:
    """Build the bvv241 tokenizer: "2-3" (65,536 ids) or "max" (131,072 ids).

    The result is cached as tokenizer.json under $MLX_GROW_CACHE/tokenizers
    (default ~/.cache/mlx-grow/tokenizers), keyed by the n-gram files' hash.
    save=False reads the cache but writes nothing (`grow --dry-run`)."""
    variant = _variant(variant)
    path = cache_home() / "tokenizers" / f"{_cache_key(variant)}.json"
    if use_cache and path.is_file():
        try:
            return _wrap_bvv241(HFTokenizer.from_file(str(path)), variant)
        except Exception:
            pass  # a broken cache file: build again
    vocab, merges, _ = bvv241_layout(variant)
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=False, byte_fallback=False)
    backend = HFTokenizer(bpe)
    backend.decoder = decoders.Fuse()  # concatenate token strings, nothing added or stripped
    specials = sorted((i, s) for s, i in vocab.items() if SPECIAL_BASE <= i < SPECIAL_END)
    backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for _, s in specials])
    if use_cache and save:
        try:
            with atomic_path(path) as tmp:
                tmp.write_text(backend.to_str(), encoding="utf-8")
        except OSError:
            pass  # a read-only cache is not an error
    return _wrap_bvv241(backend, variant)
