"""From sources to batches: `prepare` tokenizes each source into a shard folder
(data/shards.py), or reuses the cached one; a `Stream` draws deterministic
batches from the shards of a mixture; `open_stream` does both for a config.

Folders are cached under a key of (document contents, tokenizer, separator,
split, and the token budget when there is one) and written to a temp name,
then renamed. A streamed Hub source (`hf:`) is read once, so its key is what
names it (dataset, config, split, field or template, budget) rather than its
contents. Tokenizing runs in pieces, in parallel and resumably (`encode`).

A Stream turns shards into batches: row g of the global stream (g = step *
global_batch + r) picks a source from the mixture weights and a window of
seq_len + 1 tokens from that source's per-epoch permutation of windows. Each
row is a pure function of (seed, g), so ranks slice one global batch and a
resumed run sees exactly the batches it would have seen.
"""

import contextlib
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from mlx_grow.base import UserError, brief
from mlx_grow.data import corpora, encode
from mlx_grow.data.config import DataConfig, SourceSpec, check_val_fraction
from mlx_grow.data.shards import FORMAT, Shard, cache_root, checked, slug, split_note
from mlx_grow.io import atomic_dir

log = logging.getLogger("mlx_grow.data")

BLOCK_CHARS = 1 << 22  # characters per piece: one encode_batch call, one part file (encode.py)
VAL_SEED = 0x5EED  # validation batches do not depend on the training seed

__all__ = ["BLOCK_CHARS", "DataConfig", "Shard", "SourceSpec", "Stream", "open_stream", "prepare", "prepare_source",
           "split_note"]


def _tokenizer(tok):
    if isinstance(tok, str):
        from mlx_grow.tokenizer import load_tokenizer

        return load_tokenizer(tok)
    return tok


def _special_id(tok, s: str, what: str) -> int:
    i = tok.backend.token_to_id(s)
    if i is None:
        raise UserError(f"{what} {brief(s)} is not a token of tokenizer {getattr(tok, 'name', '?')}; "
                         "use one of its special tokens, such as '</s>'")
    return i


def _docs(spec: SourceSpec, instruction: bool, skip_bad: bool):
    if instruction:
        return corpora.instruction_pairs(spec.source)
    return corpora.documents(spec.source, spec.field, skip_bad, spec.template, spec.split)


def _scan(docs):
    """Pass 1 over a local source: a 64-bit hash per document, the characters, and a
    content digest (the cache key reads it, so a changed text is prepared again)."""
    digests, chars = [], 0
    for d in docs:
        digests.append(encode.doc_hash(d))
        chars += encode.size(d)
    raw = b"".join(digests)
    return np.frombuffer(raw, "<u8").astype(np.uint64), chars, hashlib.sha256(raw).hexdigest()


def _check_count(source: str, n: int, val_fraction: float, n_forced: int = 0):
    if n == 0:
        raise UserError(f"data source {source} has no text (no non-empty documents)")
    if (n_forced or val_fraction) and n < 2:
        raise UserError(f"data source {source} has one document, and a validation split needs two: "
                         "add text, or set val_fraction: 0")


def _split(recs: np.ndarray, budget, val_fraction: float, n_forced: int, source: str):
    """(keep, is_val) over the encoded documents: a budget keeps the documents up to the
    one that reaches it; validation takes the last n_forced documents (an mlx-lm folder's
    valid.jsonl), else the val_fraction of kept documents with the smallest hashes."""
    n = len(recs)
    n_train = n - n_forced
    keep = np.ones(n, bool)
    if budget:
        k = int(np.searchsorted(np.cumsum(recs["tokens"][:n_train]), budget)) + 1
        keep[min(k, n_train):n_train] = False
    is_val = np.zeros(n, bool)
    if n_forced:
        is_val[n_train:] = True
        return keep, is_val
    idx = np.flatnonzero(keep)
    _check_count(source, len(idx), val_fraction)
    n_val = 0 if val_fraction == 0 else max(1, round(val_fraction * len(idx)))
    is_val[idx[np.argsort(recs["hash"][idx], kind="stable")[:n_val]]] = True
    return keep, is_val


def prepare_source(spec, tok, out_dir=None, separator="</s>", val_fraction=0.01, skip_bad_files=False,
                   instruction=False, progress=True, workers=None, echo=None) -> Shard:
    """Tokenize one source into a shard folder, or reuse the cached one.
    instruction=True reads question/answer pairs and writes `[INST] q [/INST] a</s>`.
    `workers`: processes that tokenize (default one per core; small sources are
    tokenized in this process). A killed preparation resumes from its finished pieces."""
    spec = spec if isinstance(spec, SourceSpec) else SourceSpec.parse(spec, "data source")
    check_val_fraction(val_fraction)
    tok = _tokenizer(tok)
    ids = dict(sep=_special_id(tok, separator, "separator"))
    if instruction:
        ids.update(inst=_special_id(tok, "[INST]", "control token"), end=_special_id(tok, "[/INST]", "control token"))
    streamed = spec.source.startswith("hf:") and not instruction
    splits = None if instruction or streamed else corpora.mlx_lm_splits(spec.source)
    scan, chars, n_forced, content = None, None, 0, None
    if streamed:  # read once: named by what it is, not by its contents
        if missing := corpora.offline_sources([spec.source]):  # before anything is written
            raise UserError(corpora.offline_message(missing))
        key = [FORMAT, "streamed", spec.source, spec.split, spec.field, spec.template, spec.tokens, tok.fingerprint,
               separator, val_fraction, corpora.SECTION_CHARS]
    else:
        if splits and splits["val"] is not None:  # the folder says which documents validate
            parts = [_scan(corpora.file_documents(splits[k], spec.field, skip_bad_files, spec.template))
                     for k in ("train", "val")]
            scan, chars = np.concatenate([p[0] for p in parts]), parts[0][1] + parts[1][1]
            content = hashlib.sha256((parts[0][2] + parts[1][2]).encode()).hexdigest()
            n_forced = len(parts[1][0])
        else:
            scan, chars, content = _scan(_docs(spec, instruction, skip_bad_files))
        _check_count(spec.source, len(scan), val_fraction, n_forced)
        key = [FORMAT, content, tok.fingerprint, separator, val_fraction, corpora.SECTION_CHARS, instruction] \
            + ([spec.tokens] if spec.tokens else [])
    key = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    path = cache_root(out_dir) / f"{slug(spec.source)}-{key}"
    with _lock(path):  # ranks that share a cache prepare a source once
        if not (path / "meta.json").exists():
            dtype = np.dtype("uint16" if tok.vocab_size <= 1 << 16 else "uint32")
            meta = dict(format=FORMAT, name=slug(spec.source), source=spec.source, field=spec.field,
                        template=spec.template, split=spec.split, token_budget=spec.tokens, streamed=streamed,
                        kind="instruction" if instruction else "text", tokenizer=getattr(tok, "name", None),
                        tokenizer_fingerprint=tok.fingerprint, vocab_size=tok.vocab_size, dtype=dtype.name,
                        separator=separator, separator_id=ids["sep"], val_fraction=val_fraction,
                        content_hash=content)
            if splits:
                meta["splits"] = {k: f.name if f else None for k, f in splits.items()}
            _build(spec, tok, path, meta, ids, dtype, scan, chars, n_forced, instruction, skip_bad_files, progress,
                   workers, echo)
    return checked(Shard(path))


def _build(spec, tok, path, meta, ids, dtype, scan, chars, n_forced, instruction, skip_bad, progress, workers, echo):
    """Encode a source into parts (resuming finished ones), then assemble the shard.
    An interrupted preparation (Ctrl-C, a kill, a lost worker, a read error of a
    streamed source) keeps its parts for the next run; any other error removes them."""
    from concurrent.futures.process import BrokenProcessPool

    work = path.with_name(f".{path.name}.parts")
    encode.start_work(work, BLOCK_CHARS)
    label = f"tokenizing {spec.source}"
    try:
        parts = encode.encode_parts(
            _docs(spec, instruction, skip_bad), tok, work, ids, dtype, piece_chars=BLOCK_CHARS,
            workers=workers or encode.default_workers(), total_chars=chars,
            budget=None if n_forced else spec.tokens, label=label, progress=progress, echo=echo)
        recs = np.concatenate(parts) if parts else np.zeros(0, encode.DOC)
        if scan is not None and (len(recs) > len(scan) or not np.array_equal(recs["hash"], scan[:len(recs)])
                                 or (len(recs) < len(scan) and not spec.tokens)):
            raise UserError(f"{spec.source} changed while it was being prepared; run again")
        keep, is_val = _split(recs, spec.tokens, meta["val_fraction"], n_forced, spec.source)
        if meta["content_hash"] is None:
            meta["content_hash"] = hashlib.sha256(recs["hash"][keep].astype("<u8").tobytes()).hexdigest()
        with atomic_dir(path, overwrite=True, marker="meta.json") as tmp:
            meta.update(encode.assemble(work, parts, keep, is_val, tmp, dtype))
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    except (KeyboardInterrupt, BrokenProcessPool):
        raise
    except BaseException as e:
        if not (meta["streamed"] and isinstance(e, Exception) and not isinstance(e, UserError)):
            shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        except ImportError:  # Windows: no lock
            pass
        yield


def prepare(sources, tokenizer, out_dir=None, separator="</s>", val_fraction=0.01, field=None,
            skip_bad_files=False, progress=True, workers=None, template=None, split=None, tokens=None,
            echo=None) -> list:
    """Prepare (or reuse) one shard folder per source; returns the Shards. field,
    template, split and tokens apply to the sources that do not set their own."""
    tok = _tokenizer(tokenizer)
    specs = [SourceSpec.parse(s, "data source") for s in (sources or ["builtin:default"])]
    out = []
    for s in specs:
        item = {"source": s.source, "weight": s.weight, "field": s.field or (None if s.template else field),
                "template": s.template or (None if s.field else template),
                "split": split if split and s.split == "train" else s.split, "tokens": s.tokens or tokens}
        spec = SourceSpec.parse(item, f"data source {s.source}")
        out.append(prepare_source(spec, tok, out_dir, separator, val_fraction, skip_bad_files, progress=progress,
                                  workers=workers, echo=echo))
    return out


# --- batches ---

_U64 = (1 << 64) - 1


def _hash(*keys) -> np.ndarray:
    """splitmix64 over a sequence of keys (ints or uint64 arrays), elementwise."""
    h = np.zeros((), np.uint64)
    with np.errstate(over="ignore"):
        for k in keys:
            h = h ^ (np.asarray(k, np.uint64) if isinstance(k, np.ndarray) else np.uint64(int(k) & _U64))
            h = h + np.uint64(0x9E3779B97F4A7C15)
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = h ^ (h >> np.uint64(31))
    return h


def _uniform(h) -> np.ndarray:
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class Stream:
    """Deterministic batches of seq_len + 1 tokens from weighted shards."""

    def __init__(self, shards, weights, seq_len: int, global_batch: int, seed: int):
        if seq_len < 1 or global_batch < 1:
            raise UserError(f"seq_len and global_batch must be positive, got {seq_len} and {global_batch}")
        self.shards, self.seq_len, self.global_batch, self.seed = list(shards), seq_len, global_batch, seed
        w = np.asarray(weights, np.float64)
        self.weights = w / w.sum()
        self._cum = np.cumsum(self.weights)
        L = seq_len
        self._n, self._max_off = [], []
        for s in self.shards:
            N = len(s.tokens("train"))
            if N < L + 1:
                raise UserError(f"data source {s.meta['source']} has {N:,} training tokens, fewer than one "
                                 f"context of seq_len + 1 = {L + 1:,}; add text or lower seq_len")
            n = max(1, (N - L) // L)  # windows per epoch; later epochs shift them by a random offset
            self._n.append(n)
            self._max_off.append(min(L - 1, N - 1 - n * L))
        self._perms = {}

    def _source(self, g: np.ndarray, seed: int) -> np.ndarray:
        src = np.searchsorted(self._cum, _uniform(_hash(seed, 1, g)), side="right")
        return np.minimum(src, len(self.shards) - 1)

    def _perm(self, j: int, epoch: int) -> np.ndarray:
        key = (j, epoch)
        if key not in self._perms:
            if len(self._perms) >= 2 * len(self.shards):
                self._perms.pop(next(iter(self._perms)))
            self._perms[key] = np.argsort(_hash(self.seed, 2, j, epoch, np.arange(self._n[j])), kind="stable")
        return self._perms[key]

    def _starts(self, j: int, g: np.ndarray) -> np.ndarray:
        """Token offsets of the windows that source j gives to global rows g."""
        epoch, k = np.divmod(g.astype(np.int64), self._n[j])
        off = (_hash(self.seed, 3, j, epoch.astype(np.uint64)) % np.uint64(self._max_off[j] + 1)).astype(np.int64)
        win = np.empty_like(k)
        for e in np.unique(epoch):
            win[epoch == e] = self._perm(j, int(e))[k[epoch == e]]
        return np.where(epoch == 0, 0, off) + win * self.seq_len

    def batch(self, step: int, rank: int = 0, world: int = 1) -> np.ndarray:
        """Rows [rank*B/world, (rank+1)*B/world) of global batch `step`: int32 [B/world, seq_len + 1]."""
        B = self.global_batch
        if world < 1 or B % world or not 0 <= rank < world:
            raise UserError(f"global batch {B} must split evenly over {world} ranks (rank {rank})")
        b = B // world
        g = np.arange(step * B + rank * b, step * B + (rank + 1) * b, dtype=np.uint64)
        src = self._source(g, self.seed)
        out = np.empty((b, self.seq_len + 1), np.int32)
        span = np.arange(self.seq_len + 1)
        for j in np.unique(src):
            rows = np.nonzero(src == j)[0]
            out[rows] = self.shards[j].tokens("train")[self._starts(j, g[rows])[:, None] + span]
        return out

    def val_batches(self, n_batches: int) -> list:
        """Fixed batches from the validation splits (the same for every training seed)."""
        L, B = self.seq_len, self.global_batch
        src = self._source(np.arange(n_batches * B, dtype=np.uint64), VAL_SEED)
        rows, used = [], [0] * len(self.shards)
        for j in src:
            toks = self.shards[j].tokens("val")
            if len(toks) == 0:
                raise UserError(f"data source {self.shards[j].meta['source']} has no validation split "
                                 "(val_fraction is 0); set val_fraction > 0 to get validation batches")
            k, used[j] = used[j], used[j] + 1
            n = (len(toks) - 1) // L
            if n >= 1:
                rows.append(toks[(k % n) * L : (k % n) * L + L + 1])
            else:  # a validation split shorter than one context: read it cyclically
                rows.append(toks[(k * L + np.arange(L + 1)) % len(toks)])
        out = np.array(rows, np.int32).reshape(n_batches, B, L + 1)
        return list(out)

    def describe(self) -> list:
        return [(s.meta["source"], float(w)) for s, w in zip(self.shards, self.weights)]


def open_stream(cfg: DataConfig, tokenizer, seq_len: int, global_batch: int, seed: int, stage: int = 0,
                progress=True) -> Stream:
    """Prepare (or reuse) the shards of a stage's mixture and return its Stream."""
    cfg = cfg if isinstance(cfg, DataConfig) else DataConfig.from_dict(cfg)
    tok = _tokenizer(tokenizer)
    common = dict(out_dir=cfg.cache_dir, separator=cfg.separator, val_fraction=cfg.val_fraction,
                  progress=progress)
    specs = cfg.mixture(stage)
    shards = [prepare_source(s, tok, skip_bad_files=cfg.skip_bad_files, **common) for s in specs]
    w = np.array([s.weight for s in specs]) / sum(s.weight for s in specs)
    if cfg.instruction_ratio > 0:
        inst = [prepare_source(f, tok, instruction=True, **common) for f in cfg.instruction_files]
        sizes = np.array([s.meta["tokens"]["train"] for s in inst], np.float64)
        w = np.concatenate([w * (1 - cfg.instruction_ratio), cfg.instruction_ratio * sizes / sizes.sum()])
        shards += inst
    elif cfg.instruction_files:
        log.warning("instruction_files are set but instruction_ratio is 0, so they are not used")
    return Stream(shards, w, seq_len, global_batch, seed)
