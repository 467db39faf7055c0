"""The Tokenizer type: a `tokenizers` tokenizer with the ids a model needs, the
same interface over a transformers or mlx-lm tokenizer (`as_tokenizer`), the
tokenizer folders mlx-grow writes, and measures of how a tokenizer fits a text
and a model.

Encoding never adds BOS/EOS; callers add them. A tokenizer may carry a
post-processor (a template such as `</s> $A`) that says how a prompt starts:
transformers and mlx-lm apply it by default, mlx-grow's generation and paper
evaluation apply it through `affixes()`, and data encoding never does. A model
that mlx-grow trains records its separator there (`with_prompt_start`).
"""

import hashlib
import json
import os
import re
import shutil
import threading
from functools import cached_property
from pathlib import Path
from typing import Iterable, List, Sequence

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, processors

from mlx_grow.base import UserError, brief, check_unicode

RESERVED = re.compile(r"<(unused|special_token)_\d+>")  # placeholder names of ids with no token


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
            if t.special and t.content not in named.values() and not RESERVED.fullmatch(t.content)
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


# --- tokenizer folders written by the CLI (`tokenizer build`, `tokenizer train`) ---

MARKER = "mlx_grow_tokenizer.json"  # what marks a tokenizer folder as ours (see io.atomic.replaceable)


def write_marker(tok: "Tokenizer", out, **record):
    """The marker, written last: it lists every file of the folder (io.atomic.replaceable)."""
    from mlx_grow.io.atomic import write_marker as write

    write(out, MARKER, {"format_version": 1, "vocab_size": tok.vocab_size, "fingerprint": tok.fingerprint, **record})


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




def check_vocab(tokenizer, vocab_size: int, where: str, fix: str = "use the tokenizer the model was trained with",
                exact: bool = False, error=UserError):
    """The one rule for a tokenizer and a model's vocabulary (its table rows and
    logits): every id the tokenizer can produce needs a row, so more ids than
    `vocab_size` are refused. Fewer are padding, which imported models often carry
    (GPT-NeoX/Pythia: 50,277 ids for 50,304 rows; nanoGPT pads GPT-2's 50,257 to
    50,304), and generation never samples those rows. `exact`: a model grown here
    for this tokenizer has no padding, so the counts must be equal (a smaller
    tokenizer there is the wrong one)."""
    n = tokenizer.vocab_size
    if n > vocab_size or (exact and n != vocab_size):
        theirs = "model.vocab_size" if exact else "the model's vocab_size"
        raise error(f"{where} has {n} ids but {theirs} is {vocab_size}: {fix}")


def _write_json(path: Path, obj):
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
