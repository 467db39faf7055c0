"""The reproduction's own tokenizer: a SentencePiece BPE of about 64 pieces per
unit of width (the papers' economics: 65,536 ids at d_model 1,024), trained at
the start of a reproduction on the TRAINING documents of its corpora only.

Which documents validate is the data preparation's rule (data/stream.py
`_split`): the `val_fraction` of a source's kept documents with the smallest
hashes of their text (or an mlx-lm folder's valid.jsonl). Here the same rule
runs on the same documents before any tokenizer exists, so the tokenizer never
sees a validation document:
- a source read whole (built-in corpora, local files and folders without a token
  budget): exactly the documents `_split` holds out are left out;
- a source with a token budget (a Hub stream): which documents are kept depends
  on the tokenizer, so the rule cannot be run exactly; a text sample from the
  start of the source is used and every document whose hash lies below
  HASH_MARGIN times the validation share of the hash range is left out. The
  held-out documents are those with the smallest hashes among thousands of kept
  ones, so their hashes lie near that share and below twice it (the chance that
  one lies above is below 1e-9 for 100 validation documents).
A document held out by any of the corpora is left out of the tokenizer's text.
"""

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from mlx_grow.base import UserError
from mlx_grow.reproduce.records import MARK, write_json
from mlx_grow.reproduce.scales import SCALE_DATA, TRAINED, source_name

HASH_MARGIN = 2.0  # budgeted sources: leave out hashes below this many times the validation share
SAMPLE_CHARS = 40_000_000  # budgeted sources: characters of text read from each to train the tokenizer
TOKENIZER_DIR = "tokenizer"


def _source_docs(spec, val_fraction: float, sample_chars: int):
    """(training documents, hashes of the held-out documents, {counts}) of one source by
    the data preparation's split rule."""
    from mlx_grow.data import corpora, encode
    from mlx_grow.data.stream import _split

    splits = corpora.mlx_lm_splits(spec.source)
    if splits and splits["val"] is not None:  # validation is valid.jsonl: read train.jsonl only
        docs = list(corpora.file_documents(splits["train"], spec.field, False, spec.template))
        held = {encode.doc_hash(d) for d in corpora.file_documents(splits["val"], spec.field, False, spec.template)}
        return docs, held, {"documents": len(docs), "held_out": len(held), "rule": "mlx-lm folder: train.jsonl only"}
    if spec.tokens or spec.source.startswith("hf:"):
        docs, chars, held = [], 0, set()
        cut = int(min(0.5, HASH_MARGIN * val_fraction) * 2.0**64) if val_fraction else 0
        for d in corpora.documents(spec.source, spec.field, False, spec.template, spec.split):
            h = encode.doc_hash(d)
            if int(np.frombuffer(h, "<u8")[0]) < cut:
                held.add(h)
                continue
            docs.append(d)
            chars += len(d)
            if chars >= sample_chars:
                break
        return docs, held, {"documents": len(docs), "held_out": len(held),
                            "rule": f"a sample from the start; hashes below {HASH_MARGIN:g} x val_fraction left out"}
    docs = list(corpora.documents(spec.source, spec.field, False, spec.template, spec.split))
    hashes = [encode.doc_hash(d) for d in docs]
    recs = np.zeros(len(docs), [("hash", "<u8"), ("tokens", "<i8")])
    recs["hash"] = np.frombuffer(b"".join(hashes), "<u8")
    _, is_val = _split(recs, None, val_fraction, 0, spec.source)
    train = [d for d, v in zip(docs, is_val) if not v]
    held = {h for h, v in zip(hashes, is_val) if v}
    return train, held, {"documents": len(train), "held_out": len(held), "rule": "exact (data preparation's split)"}


def training_text(sources, val_fraction: float, out_file: Path, sample_chars: int = SAMPLE_CHARS) -> dict:
    """Write the training documents of `sources` (strings or source mappings) to `out_file`,
    each once: a document any source holds out for validation is left out everywhere (a
    corpus and a part of it, builtin:default and builtin:kjv, pick their validation
    documents apart). Returns what was written and what was held out per source."""
    from mlx_grow.data import encode
    from mlx_grow.data.stream import SourceSpec

    per, kept, held_all, seen = {}, [], set(), set()
    for s in sources:
        spec = SourceSpec.parse(s, "data source")
        key = (spec.source, spec.field, spec.template, spec.split)
        if key in seen:
            continue
        seen.add(key)
        docs, held, info = _source_docs(spec, val_fraction, sample_chars)
        per[spec.label] = info
        held_all |= held
        kept.append(docs)
    total, written = 0, set()
    with open(out_file, "w", encoding="utf-8") as f:
        for docs in kept:
            for d in docs:
                h = encode.doc_hash(d)
                if h in held_all or h in written:
                    continue
                written.add(h)
                f.write(d)
                f.write("\n")
                total += len(d)
    return {"sources": per, "documents": len(written), "held_out": len(held_all), "characters": total}


def build(sources, vocab_size: int, out_dir: Path, val_fraction: float = 0.01, echo=print) -> dict:
    """Train the reproduction's tokenizer into `out_dir` (written whole); return its record."""
    import tempfile

    from mlx_grow.io import atomic_dir
    from mlx_grow.tokenizer import MARKER, train_sentencepiece, write_marker

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "train-split.txt"
        info = training_text(sources, val_fraction, text)
        if not info["characters"]:
            raise UserError("the reproduction's corpora have no training text to build a tokenizer from")
        with atomic_dir(out_dir, overwrite=True, marker=MARKER) as d:
            tok = train_sentencepiece([text], vocab_size, d)
            write_marker(tok, d, source="sentencepiece", corpus="the training split of " + ", ".join(info["sources"]))
    rec = {"path": str(out_dir), "vocab_size": tok.vocab_size, "fingerprint": tok.fingerprint,
           "model_type": "bpe", "val_fraction": val_fraction, **info, "build_s": time.perf_counter() - t0}
    echo(f"tokenizer: {tok.vocab_size:,}-piece BPE trained on {info['characters'] / 1e6:.1f}M characters of the "
         f"training split ({info['held_out']} validation documents left out) "
         f"in {rec['build_s']:.1f} s")
    return rec


def fingerprint_of(path: Path) -> str:
    """The fingerprint of the tokenizer folder at `path` (as Tokenizer.fingerprint)."""
    from mlx_grow.tokenizer import load_tokenizer

    return load_tokenizer(str(path), save_cache=False).fingerprint


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# --- the tokenizer of one reproduction (OUT/tokenizer) ---


def tokenizer_sources(s, data, experts) -> list:
    """Every corpus of the reproduction (parts 1-3 and both experts): one tokenizer serves every part."""
    return [*(data or SCALE_DATA.get(s.name) or ["builtin:default"]), *experts]


class PendingTokenizer:
    """The reproduction's tokenizer before OUT holds it, for the passes check of a dry run
    or of a new reproduction: trained in a temporary folder when first needed, on the
    local corpora only (a dry run reads nothing from the Hub; streamed sources need no
    tokenizer for that check). When every corpus is local it is the tokenizer itself,
    and ensure_tokenizer moves it into OUT instead of training it again."""

    def __init__(self, s, sources):
        self.s, self.sources = s, list(sources)
        self.local = [x for x in self.sources if not source_name(x).startswith("hf:")]
        self.dir, self.rec = None, None

    @property
    def complete(self) -> bool:
        return self.dir is not None and len(self.local) == len(self.sources)

    def __call__(self):
        import tempfile

        from mlx_grow.tokenizer import load_tokenizer

        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="mlx-grow-tok-")) / "tokenizer"
            self.rec = build(self.local, self.s.vocab, self.dir, echo=lambda *a: None)
        return load_tokenizer(str(self.dir), save_cache=False)


def ensure_tokenizer(s, out: Path, state: dict, sources, echo, pending: PendingTokenizer | None = None) -> dict | None:
    """The reproduction's tokenizer in OUT/tokenizer: built once (recorded with its
    fingerprint in reproduce.json) and checked against that record when reused."""
    import shutil


    if s.tokenizer != TRAINED:
        return None
    path = out / TOKENIZER_DIR
    rec = state.get("tokenizer")
    if rec is not None:
        fp = fingerprint_of(path) if (path / "tokenizer.json").is_file() else None
        if fp != rec.get("fingerprint"):
            raise UserError(f"{path} is not the tokenizer this reproduction built (its fingerprint differs from "
                            f"{out / MARK}); the finished runs were trained with that one: restore it, or choose a "
                            "new --out")
        return rec
    if pending is not None and pending.complete:
        if path.exists():
            shutil.rmtree(path)
        shutil.copytree(pending.dir, path)
        rec = dict(pending.rec)
        echo(f"tokenizer: {rec['vocab_size']:,}-piece BPE trained on {rec['characters'] / 1e6:.1f}M characters of the "
             f"training split in {rec['build_s']:.1f} s")
    else:
        rec = build(sources, s.vocab, path, echo=echo)
    rec["path"] = TOKENIZER_DIR
    state["tokenizer"] = rec
    write_json(out / MARK, state)
    return rec
