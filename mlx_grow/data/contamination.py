"""What prepared shards hold: per-source statistics (`mlx-grow data info`) and
which task items occur in the training text (`data info --against TASK`).

The contamination check compares word n-grams: words are lower-cased
letter/digit runs (each CJK character is one word), hashed per n-gram, and
n-grams never cross documents.
"""

import re
from pathlib import Path

import numpy as np

from mlx_grow.base import UserError, need_int
from mlx_grow.data.shards import Shard, checked, split_note
from mlx_grow.data.stream import Stream, _tokenizer, prepare
from mlx_grow.data.task_file import read_task_file


def _shards(items, tokenizer="bvv241-2-3", **kw) -> list:
    """Shards from shard folders, a Stream, or source specs (prepared or cached)."""
    if isinstance(items, Stream):
        return items.shards
    items = [items] if isinstance(items, (str, Path, Shard)) else list(items or ["builtin:default"])
    out = []
    for it in items:
        if isinstance(it, Shard):
            out.append(it)
        elif (Path(str(it)).expanduser() / "meta.json").exists():
            out.append(checked(Shard(Path(str(it)).expanduser())))
        else:
            out += prepare([it], tokenizer, **kw)
    return out


def info(items=None, tokenizer="bvv241-2-3", **prepare_kw) -> list:
    """Per source: documents, characters, tokens, characters per token, <unk> share."""
    rows = []
    for s in _shards(items, tokenizer, **prepare_kw):
        m = s.meta
        tot = {k: sum(m[k].values()) for k in ("documents", "characters", "tokens", "unk")}
        rows.append(dict(source=m["source"], **tot, chars_per_token=tot["characters"] / max(tot["tokens"], 1),
                         unk_share=tot["unk"] / max(tot["tokens"], 1), train_tokens=m["tokens"]["train"],
                         val_tokens=m["tokens"]["val"], path=str(s.path), note=split_note(m)))
    return rows


def info_table(rows):
    from rich.table import Table

    t = Table("source", "documents", "characters", "tokens", "chars/token", "<unk>", "train / val tokens")
    for r in rows:
        t.add_row(r["source"], f"{r['documents']:,}", f"{r['characters']:,}", f"{r['tokens']:,}",
                  f"{r['chars_per_token']:.2f}", f"{r['unk_share']:.2%}",
                  f"{r['train_tokens']:,} / {r['val_tokens']:,}")
    return t


def _words(text: str) -> list:
    # Lower-cased words; each CJK character counts as a word.
    return re.findall(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]|[^\W_]+", text.lower())


def _ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    h = np.zeros(len(ids) - n + 1, np.uint64)
    with np.errstate(over="ignore"):
        for i in range(n):
            h = h * np.uint64(0x100000001B3) + ids[i : len(ids) - n + 1 + i].astype(np.uint64)
    return h


def contamination(shards_or_stream, task_file, n: int = 13, tokenizer=None) -> dict:
    """Which items of a task file (read as `mlx-grow eval` reads it, data/task_file.py)
    have a question or gold-answer word n-gram in the training shards; the gold
    answer is the right choice, the first SQuAD answer or a translation's target
    (its source stands for the question). Words are lower-cased letter/digit runs
    (each CJK character is one word); n-grams never cross documents. A question
    shorter than n words is looked up whole; an answer shorter than n words is not
    checked (None)."""
    need_int("-n", n, 1)
    items = [(it.question or it.source, it.gold) for it in read_task_file(task_file)[1]]
    shards, vocab = _shards(shards_or_stream), {}

    def wids(text):
        return np.array([vocab.setdefault(w, len(vocab)) for w in _words(text)], np.int64)

    probes = {}  # n-gram length -> {hash: [(item, "question"|"answer")]}
    for i, (q, a) in enumerate(items):
        for kind, text, min_len in (("question", q, 1), ("answer", a, n)):
            w = wids(text)
            if len(w) >= min_len:
                for h in set(_ngram_hashes(w, min(n, len(w))).tolist()):
                    probes.setdefault(min(n, len(w)), {}).setdefault(h, []).append((i, kind))
    keys = {k: np.fromiter(t, np.uint64, len(t)) for k, t in probes.items()}
    hit = set()
    for s in shards:
        tok = _tokenizer(tokenizer or s.meta["tokenizer"])
        if tok.fingerprint != s.meta["tokenizer_fingerprint"]:
            raise UserError(f"{s.path} was made with another tokenizer than {getattr(tok, 'name', '?')}; "
                             "pass the tokenizer it was prepared with")
        toks, starts = s.tokens("train"), s.doc_starts("train")
        ends = np.append(starts[1:], len(toks))
        for b in range(0, len(starts), 256):
            seqs = [toks[st:en].tolist() for st, en in zip(starts[b : b + 256], ends[b : b + 256])]
            for text in tok.backend.decode_batch(seqs, skip_special_tokens=True):
                w = wids(text)
                for k, table in probes.items():
                    if len(w) >= k:
                        h = _ngram_hashes(w, k)
                        for x in h[np.isin(h, keys[k])].tolist():
                            hit.update(table[x])
    per_item = [dict(index=i, question=(i, "question") in hit,
                     answer=((i, "answer") in hit) if len(_words(a)) >= n else None)
                for i, (_, a) in enumerate(items)]
    return dict(items=len(items), contaminated=sum(1 for r in per_item if r["question"] or r["answer"]), n=n,
                unit="words", per_item=per_item, shards=[str(s.path) for s in shards])
