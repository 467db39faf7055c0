"""Tokenizers: the bvv241 family, Hugging Face tokenizer folders, and
SentencePiece training on your own text.

bvv241 (see mlx_grow/assets/bvv241/NOTICE): a single character is its own
Unicode code point; frequent multi-character n-grams fill the code points no
character can use (surrogates, private use, and for "max" the plane 1 range).
It is a plain `tokenizers` BPE model with no normalizer and no pre-tokenizer.

Choices where the layout spec is silent:
- An n-gram candidate is skipped (it takes no slot) when it equals a single
  character or a reserved name (special token, `<special_token_N>`,
  `<unused_N>`), contains whitespace, or contains a character that has no id
  of its own (it could never be produced). Duplicates are dropped before
  sorting. The shipped files hold none of these except duplicates.
- Merge halves are single characters or placed n-grams, never special tokens.
- All of 0xE000-0xE0FF are registered as special tokens. `encode` treats
  special-token strings in the text as plain characters unless asked.
- Encoding never adds BOS/EOS; callers add them. A tokenizer may carry a
  post-processor (a template such as `</s> $A`) that says how a prompt starts:
  transformers and mlx-lm apply it by default, mlx-grow's generation and paper
  evaluation apply it through `affixes()`, and data encoding never does. A model
  that mlx-grow trains records its separator there (`with_prompt_start`).
"""

import ast
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from functools import cached_property
from importlib import resources
from itertools import chain
from pathlib import Path
from typing import Iterable, List, Sequence

from tokenizers import (
    AddedToken,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers import Tokenizer as HFTokenizer

from mlx_grow.base import UserError, brief
from mlx_grow.io.read import read_json

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
_RESERVED = re.compile(r"<(unused|special_token)_\d+>")
_COMMON = {  # guesses for a bare tokenizer.json without a config
    "bos": ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"),
    "eos": ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "<|im_end|>"),
    "unk": ("<unk>", "<|unk|>"),
    "pad": ("<pad>", "<|pad|>", "[PAD]"),
}


def check_unicode(text: str):
    """Lone surrogates (e.g. from a JSON "\\ud800" escape) are not valid Unicode text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"text holds a lone surrogate (U+{ord(text[e.start]):04X}) at character {e.start}, "
                         "which is not valid Unicode and cannot be tokenized; remove or replace it") from None


def split_affixes(bare: list, full: list, name=None) -> tuple:
    """(ids before, ids after) `bare` inside `full`: one text encoded without and with
    the tokenizer's special tokens."""
    bare, full = list(bare), list(full)
    at = next((i for i in range(len(full) - len(bare) + 1) if full[i:i + len(bare)] == bare), None)
    if not bare or at is None:
        raise UserError(f"cannot tell where tokenizer {name or ''} puts its special tokens around a text")
    return full[:at], full[at + len(bare):]


class Tokenizer:
    """A thin wrapper over a `tokenizers.Tokenizer` with the ids a model needs."""

    def __init__(self, backend: HFTokenizer, bos=None, eos=None, unk=None, pad=None, name=None):
        self.backend = backend
        self.name = name
        self.special = {"bos": bos, "eos": eos, "unk": unk, "pad": pad}
        self._lock = threading.Lock()  # guards the backend's encode_special_tokens flag
        self._vocab_size = 1 + max(backend.get_vocab(with_added_tokens=True).values(), default=-1)

    def __repr__(self):
        return f"Tokenizer({self.name or 'custom'}, vocab_size={self.vocab_size})"

    def _id(self, key):
        tok = self.special[key]
        return None if tok is None else self.backend.token_to_id(tok)

    vocab_size = property(lambda self: self._vocab_size, doc="the full id space, unused ids included")
    bos_id = property(lambda self: self._id("bos"))
    eos_id = property(lambda self: self._id("eos"))
    unk_id = property(lambda self: self._id("unk"))
    pad_id = property(lambda self: self._id("pad"))

    # transformers' and mlx-lm's names, so mlx_lm.generate / batch_generate take this tokenizer
    bos_token_id, eos_token_id, unk_token_id, pad_token_id = bos_id, eos_id, unk_id, pad_id
    bos_token = property(lambda self: self.special["bos"])
    eos_token = property(lambda self: self.special["eos"])
    unk_token = property(lambda self: self.special["unk"])
    pad_token = property(lambda self: self.special["pad"])
    chat_template = None
    clean_up_tokenization_spaces = False  # decode keeps " ." as it is

    @property
    def eos_token_ids(self) -> set:
        """The ids that end generation (mlx-lm's name)."""
        return set() if self.eos_id is None else {self.eos_id}

    def get_vocab(self) -> dict:
        """{token string: id}, special tokens included (transformers' name)."""
        return self.backend.get_vocab(with_added_tokens=True)

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int):
            return self.backend.id_to_token(ids)
        return [self.backend.id_to_token(int(i)) for i in ids]

    def apply_chat_template(self, *args, **kwargs):
        raise UserError(f"tokenizer {self.name or ''} has no chat template: give the prompt as text "
                        "(an instruction model takes --instruct)")

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self.backend.token_to_id(tokens)
        return [self.backend.token_to_id(t) for t in tokens]

    @property
    def inst_ids(self):
        a, b = self.backend.token_to_id("[INST]"), self.backend.token_to_id("[/INST]")
        return None if a is None or b is None else (a, b)

    def _encode(self, fn, allow_special):
        # With encode_special_tokens on, "</s>" in the text is just characters.
        with self._lock:
            self.backend.encode_special_tokens = not allow_special
            try:
                return fn()
            finally:
                self.backend.encode_special_tokens = False

    def encode(self, text: str, add_special_tokens: bool = False, allow_special: bool = False) -> List[int]:
        """The ids of `text`. `add_special_tokens` puts the post-processor's tokens around
        it, as transformers and mlx-lm do by default (here off: data is encoded bare)."""
        if not isinstance(text, str):
            raise UserError(f"encode takes a str, got {type(text).__name__}")
        check_unicode(text)
        ids = self._encode(lambda: self.backend.encode(text, add_special_tokens=False).ids, allow_special)
        if add_special_tokens:
            before, after = self.affixes()
            ids = before + ids + after
        return ids

    def encode_batch(self, texts: Sequence[str], allow_special: bool = False) -> List[List[int]]:
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise UserError("encode_batch takes a list of str")
        for t in texts:
            check_unicode(t)
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        encs = self._encode(lambda: encode(texts, add_special_tokens=False), allow_special)
        return [e.ids for e in encs]

    def decode(self, ids: Iterable[int], skip_special: bool = False, skip_special_tokens=None) -> str:
        if skip_special_tokens is not None:  # transformers' name
            skip_special = skip_special_tokens
        ids = [int(ids)] if isinstance(ids, int) else [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise UserError(f"token id(s) {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        return self.backend.decode(ids, skip_special_tokens=skip_special)

    def affixes(self) -> tuple:
        """(ids before, ids after) a single text that this tokenizer's post-processor
        adds: what transformers' `tokenizer(text)` and mlx-lm's `encode` put around a
        prompt. ([], []) when it has none (bvv241 as built)."""
        if self.backend.post_processor is None:
            return [], []
        with self._lock:
            bare = self.backend.encode("a", add_special_tokens=False).ids
            full = self.backend.encode("a", add_special_tokens=True).ids
        return split_affixes(bare, full, self.name)

    def with_prompt_start(self, token) -> "Tokenizer":
        """A copy whose post-processor puts `token` (a special-token string, e.g. the
        documents' separator `</s>`) before every single text, or nothing (None). Only
        generation and exports see it: `encode` never applies it."""
        backend = HFTokenizer.from_str(self.backend.to_str())
        if token is None:
            backend.post_processor = None
        else:
            i = backend.token_to_id(token)
            if i is None:
                raise UserError(f"prompt start {brief(token)} is not a token of tokenizer {self.name or ''}")
            backend.post_processor = processors.TemplateProcessing(
                single=f"{token} $A", pair=f"{token} $A {token} $B", special_tokens=[(token, i)])
        return Tokenizer(backend, name=self.name, **self.special)

    @cached_property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.backend.to_str().encode("utf-8")).hexdigest()

    def token_strings(self) -> List[str]:
        """The string of every id 0..vocab_size-1 (`<unused_{id}>` where none)."""
        out = [None] * self.vocab_size
        for s, i in self.backend.get_vocab(with_added_tokens=True).items():
            out[i] = s
        return [s if s is not None else f"<unused_{i}>" for i, s in enumerate(out)]

    def save(self, out_dir, model_max_length: int = 4096) -> Path:
        """Write a Hugging Face tokenizer folder (tokenizers / transformers can load it)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        library_write(self.backend.save, out / "tokenizer.json")
        if isinstance(self.backend.model, models.BPE):
            library_write(self.backend.model.save, out)  # vocab.json and merges.txt
        named = {f"{k}_token": v for k, v in self.special.items() if v is not None}
        added = sorted(self.backend.get_added_tokens_decoder().items())
        extra = [
            t.content
            for _, t in added
            if t.special and t.content not in named.values() and not _RESERVED.fullmatch(t.content)
        ]
        smap = dict(named, **({"additional_special_tokens": extra} if extra else {}))
        config = dict(
            smap,
            tokenizer_class="PreTrainedTokenizerFast",
            model_max_length=model_max_length,
            clean_up_tokenization_spaces=False,  # keep " ." as it is on decode
            add_bos_token=False,
            add_eos_token=False,
        )
        _write_json(out / "special_tokens_map.json", smap)
        _write_json(out / "tokenizer_config.json", config)
        return out


class ForeignTokenizer:
    """A transformers or mlx-lm tokenizer (e.g. the TokenizerWrapper of `mlx_lm.load`)
    under the names mlx-grow's generation reads: `encode` is bare, `affixes()` gives
    what its own encode adds around a text."""

    def __init__(self, tok):
        self.tok = tok
        self.name = getattr(tok, "name_or_path", None)
        self.bos_id, self.eos_id, self.unk_id, self.pad_id = (
            getattr(tok, f"{k}_token_id", None) for k in ("bos", "eos", "unk", "pad"))
        eos = getattr(tok, "eos_token_ids", None)
        self.eos_token_ids = set(eos) if eos else ({self.eos_id} if self.eos_id is not None else set())
        vocab = tok.get_vocab()
        a, b = vocab.get("[INST]"), vocab.get("[/INST]")
        self.inst_ids = None if a is None or b is None else (a, b)

    def encode(self, text: str) -> List[int]:
        if not isinstance(text, str):
            raise UserError(f"encode takes a str, got {type(text).__name__}")
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])

    def affixes(self) -> tuple:
        full = self.tok.encode("a", add_special_tokens=True)
        return split_affixes(self.tok.encode("a", add_special_tokens=False), full, self.name)


def as_tokenizer(tok):
    """Ours as it is (also inside an mlx-lm TokenizerWrapper), anything else as a ForeignTokenizer."""
    inner = getattr(tok, "_tokenizer", None)
    if isinstance(inner, Tokenizer):
        return inner
    return tok if isinstance(tok, (Tokenizer, ForeignTokenizer)) else ForeignTokenizer(tok)


# --- bvv241 ---


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
            or _RESERVED.fullmatch(g)
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


def _cache_dir() -> Path:
    root = os.environ.get("MLX_GROW_CACHE") or Path.home() / ".cache" / "mlx-grow"
    return Path(root) / "tokenizers"


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
    path = _cache_dir() / f"{_cache_key(variant)}.json"
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
            _write_atomic(path, backend.to_str())
        except OSError:
            pass  # a read-only cache is not an error
    return _wrap_bvv241(backend, variant)


# --- tokenizer files ---

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model")


def copy_tokenizer(src: Path, dst: Path) -> bool:
    """Copy the tokenizer files in `src` to `dst` as they are; True if there was a tokenizer.json."""
    for n in TOKENIZER_FILES:
        if (src / n).is_file():
            shutil.copy2(src / n, dst / n)
    return (src / "tokenizer.json").is_file()


def library_write(fn, path):
    """fn(str(path)) for a `tokenizers` writer, which reports an OS error (a full
    disk) as a plain Exception "... (os error 28)": as the OSError it is, naming `path`."""
    try:
        return fn(str(path))
    except OSError:
        raise
    except Exception as e:
        m = re.search(r"os error (\d+)", str(e))
        if m is None:
            raise
        raise OSError(int(m[1]), os.strerror(int(m[1])), str(path)) from None


# --- tokenizer folders written by the CLI ---

MARKER = "mlx_grow_tokenizer.json"  # what marks a tokenizer folder as ours (see io.atomic.replaceable)


def write_marker(tok: "Tokenizer", out, **record):
    """The marker, written last: it lists every file of the folder (io.atomic.replaceable)."""
    from mlx_grow.io.atomic import write_marker as write

    write(out, MARKER, {"format_version": 1, "vocab_size": tok.vocab_size, "fingerprint": tok.fingerprint, **record})


def save_dir(tok: "Tokenizer", out, overwrite: bool = False, inputs=(), **record) -> Path:
    """Write a tokenizer folder atomically; an existing one is replaced only with
    `overwrite` and only when mlx-grow wrote it."""
    from mlx_grow.io import atomic_dir

    with atomic_dir(out, overwrite, inputs, marker=MARKER) as tmp:
        tok.save(tmp)
        write_marker(tok, tmp, **record)
    return Path(out)


# --- loading ---


def _token_content(tok):
    return tok.get("content") if isinstance(tok, dict) else tok


def load_tokenizer(spec, save_cache: bool = True) -> Tokenizer:
    """Load "bvv241-2-3" / "bvv241-max" (or "2-3" / "max"), a Hugging Face
    tokenizer folder, or a tokenizer.json file. save_cache=False writes nothing
    (a bvv241 tokenizer not in the cache is built in memory only)."""
    if isinstance(spec, Tokenizer):
        return spec
    s = str(spec)
    if s in VARIANTS or (s.startswith("bvv241-") and s[len("bvv241-"):] in VARIANTS):
        return build_bvv241(s, save=save_cache)
    path = Path(s).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"tokenizer {brief(s)} not found: give 'bvv241-2-3', 'bvv241-max', "
            "a Hugging Face tokenizer folder or a tokenizer.json file"
        )
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"{path} has no tokenizer.json: only 'fast' Hugging Face tokenizers are supported "
            "(save one with transformers' tokenizer.save_pretrained)"
        )
    try:
        backend = HFTokenizer.from_file(str(file))
    except Exception as e:
        raise UserError(f"{file} is not a tokenizers JSON file ({e})") from None
    config = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = file.parent / name
        if f.is_file():
            config.update(read_json(f, dict))
    known = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
    roles = {}
    for role, guesses in _COMMON.items():
        key = f"{role}_token"
        if key in config:  # the config wins, even when it says null
            roles[role] = _token_content(config[key])
            if not isinstance(roles[role], (str, type(None))):
                raise UserError(f"{file.parent}: {key} must be a token string, got {brief(roles[role])}")
        else:
            roles[role] = next((g for g in guesses if g in known), None)
    if roles["unk"] is None:
        roles["unk"] = getattr(backend.model, "unk_token", None)
    return Tokenizer(backend, **roles, name=str(path))


# --- SentencePiece ---


def train_sentencepiece(corpus_paths, vocab_size: int, out_dir, model_type: str = "bpe") -> Tokenizer:
    """Train a SentencePiece model on text files and save it as a Hugging Face
    tokenizer folder (special tokens <pad> <s> </s> <unk> = ids 0..3).

    Byte fallback is on, so any text round-trips through encode/decode. With
    model_type="unigram" and a corpus without '<' or '>', a literal "<s>" in
    text can still come out as the control token (use "bpe" to avoid this)."""
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise UserError(f"model_type must be 'bpe' or 'unigram', not {brief(model_type)}")
    paths = [Path(p) for p in ([corpus_paths] if isinstance(corpus_paths, (str, Path)) else corpus_paths)]
    if not paths:
        raise UserError("give at least one corpus text file")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"corpus file {p} does not exist")
    if vocab_size < 300:
        raise UserError(
            f"vocab_size {vocab_size} is too small: it must hold 256 byte tokens, 4 specials and pieces"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "sp")
        try:
            spm.SentencePieceTrainer.train(
                input=[str(p) for p in paths], model_prefix=prefix, vocab_size=vocab_size,
                model_type=model_type, character_coverage=1.0, byte_fallback=True,
                normalization_rule_name="identity", remove_extra_whitespaces=False,
                add_dummy_prefix=True, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
                pad_piece="<pad>", bos_piece="<s>", eos_piece="</s>", unk_piece="<unk>",
                input_sentence_size=2_000_000, shuffle_input_sentence=True,
                num_threads=os.cpu_count() or 1, minloglevel=2,
            )  # fmt: skip
        except RuntimeError as e:
            raise UserError(
                f"SentencePiece training failed ({e}); with a small corpus, lower vocab_size or add text"
            ) from None
        shutil.copy(prefix + ".model", out / "sentencepiece.model")
    sp = spm.SentencePieceProcessor(model_file=str(out / "sentencepiece.model"))
    backend = _sentencepiece_to_hf(sp, model_type)
    tok = Tokenizer(backend, bos="<s>", eos="</s>", unk="<unk>", pad="<pad>", name=str(out))
    tok.save(out)
    return tok


def _sentencepiece_to_hf(sp, model_type: str) -> HFTokenizer:
    """Rebuild a SentencePiece model as a `tokenizers` model (Llama-style)."""
    n = sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(n)]
    normal = [not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i)) for i in range(n)]
    if model_type == "bpe":
        vocab = {p: i for i, p in enumerate(pieces)}
        merges = []
        # SP BPE pieces are in merge order; every split into two normal pieces is a merge.
        for i in sorted((i for i in range(n) if normal[i]), key=lambda i: -sp.get_score(i)):
            p = pieces[i]
            local = [(p[:k], p[k:]) for k in range(1, len(p))]
            local = [(a, b) for a, b in local if all(h in vocab and normal[vocab[h]] for h in (a, b))]
            merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
        model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    else:
        low = -1e6  # control and byte pieces never match text (bytes come from fallback)
        scores = [sp.get_score(i) if normal[i] else low for i in range(n)]
        model = models.Unigram(list(zip(pieces, scores)), unk_id=sp.unk_id(), byte_fallback=True)
    backend = HFTokenizer(model)
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")  # like SP's words
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.add_special_tokens([AddedToken(pieces[i], special=True, normalized=False) for i in range(4)])
    return backend


# --- measuring ---


def chars_per_token(tokenizer: Tokenizer, text: str) -> float:
    return len(text) / max(1, len(tokenizer.encode(text)))


def stats(tokenizer: Tokenizer, text: str) -> dict:
    """Characters, tokens, characters per token and the share of <unk> tokens."""
    ids = tokenizer.encode(text)
    unk = tokenizer.unk_id
    n_unk = sum(1 for i in ids if i == unk) if unk is not None else 0
    return dict(
        characters=len(text),
        tokens=len(ids),
        chars_per_token=len(text) / max(1, len(ids)),
        unk_share=n_unk / max(1, len(ids)),
    )


# --- files ---


def _write_atomic(path: Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_json(path: Path, obj):
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
