"""Token data: corpora -> packed token shards on disk -> deterministic batches.

A shard folder holds one source: `train.bin` and `val.bin` (uint16 token ids
when the vocabulary fits, else uint32, read with np.memmap), `*.idx.npy`
(document start offsets) and `meta.json`. Every document ends with the
separator id; separator-like strings inside the text stay text. The
validation split holds whole documents, picked by a hash of their text.
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
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from mlx_grow.base import UserError, brief, key_list, need_bool, need_str, opt
from mlx_grow.data import corpora, encode
from mlx_grow.io import atomic_dir

log = logging.getLogger("mlx_grow.data")

FORMAT = 1  # bump when the shard layout or the tokenization rules change
BLOCK_CHARS = 1 << 22  # characters per piece: one encode_batch call, one part file (encode.py)
UNK_WARN = 0.25  # warn when more than this share of tokens is <unk>
VAL_SEED = 0x5EED  # validation batches do not depend on the training seed
STAGE_DATA = ("continue", "restart")


SOURCE_KEYS = ("source", "weight", "field", "template", "split", "tokens")


@dataclass
class SourceSpec:
    source: str = opt(help="A text or row file, a folder (of .txt/.md/.jsonl(.gz)/.json/.parquet/.arrow files, "
                           "nested as FineWeb-Edu ships them), hf:NAME[:CONFIG] (a Hub dataset, streamed) or "
                           "builtin:NAME")
    weight: float = opt(1.0, "Mixture weight: the share of rows drawn from this source, relative to the others")
    field: Optional[str] = opt(None, "Text field of jsonl / parquet / dataset rows; default text")
    template: Optional[str] = opt(None, "Instead of field: a row's text from several fields, e.g. 'Question: "
                                        "{question}\\nAnswer: {answer}'; {answers[text]} reads inside a field; a "
                                        "list joins with '; ', a {label, text} choices record gives 'A. ...' lines, a "
                                        "bool yes/no")
    split: str = opt("train", "Split of an hf: dataset or a saved datasets folder")
    tokens: Optional[int] = opt(None, "Token budget: stop reading the source once this many tokens (training + "
                                      "validation) are prepared; null: all of it. A streamed source with no budget "
                                      "counts as unbounded in the passes check")

    @classmethod
    def parse(cls, item, where: str) -> "SourceSpec":
        if isinstance(item, str):
            item = {"source": item}
        if not isinstance(item, dict) or "source" not in item:
            raise UserError(f"{where} must be a source string or a mapping with source: (and weight:, field:, "
                             "template:, split:, tokens:)")
        unknown = [k for k in item if k not in SOURCE_KEYS]
        if unknown:
            raise UserError(f"unknown key(s) {key_list(unknown)} in {where}; valid: {', '.join(SOURCE_KEYS)}")
        source = item["source"]
        if not isinstance(source, str) or not source:
            raise UserError(f"{where}: source must be a path, hf:NAME[:CONFIG] or builtin:NAME, got {brief(source)}")
        if source.startswith("hf:"):
            corpora.parse_hf(source)
        w = item.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w <= 0:
            raise UserError(f"{where}: weight must be a positive number, got {brief(w)}")
        fld, template = item.get("field"), item.get("template")
        for key, v in (("field", fld), ("template", template)):
            if v is not None and (not isinstance(v, str) or not v):
                raise UserError(f"{where}: {key} must be a string, got {brief(v)}")
        if fld and template:
            raise UserError(f"{where}: give field (one column) or template (several), not both")
        if template:
            try:
                corpora.template_fields(template)
            except UserError as e:
                raise UserError(f"{where}: {e}") from None
        split = item.get("split", "train")
        if not isinstance(split, str) or not split:
            raise UserError(f"{where}: split must be a split name such as train, got {brief(split)}")
        tokens = item.get("tokens")
        if isinstance(tokens, float) and tokens.is_integer():
            tokens = int(tokens)
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
            raise UserError(f"{where}: tokens (a token budget) must be a positive whole number, got {brief(tokens)}")
        return cls(source, float(w), fld, template, split, tokens)

    def extras(self) -> dict:
        """The keys beyond source, weight and field that differ from their defaults."""
        return {k: v for k, v in (("template", self.template), ("split", self.split), ("tokens", self.tokens))
                if v != ("train" if k == "split" else None)}

    @property
    def label(self) -> str:
        """How messages name the source."""
        bits = [f"{k} {v}" for k, v in (("split", self.split if self.split != "train" else None),
                                         ("field", self.field)) if v]
        return self.source + (f" ({', '.join(bits)})" if bits else "")


@dataclass
class DataConfig:
    sources: list = opt([], "Training sources: strings, or mappings {source, weight, field, template, split, "
                            "tokens} (see data.sources[]); empty: builtin:default")
    val_fraction: float = opt(0.01, "Share of documents held out for validation, between 0 and 0.5")
    separator: str = opt("</s>", "Token that ends every document")
    instruction_files: list = opt([], "Question/answer files (.jsonl, .json, .parquet) mixed into training")
    instruction_ratio: float = opt(0.0, "Share of rows drawn from instruction_files, in [0, 1)")
    stages: list = opt([], "One mixture per growth stage, each a list like sources (the last repeats); empty: "
                           "sources for every stage")
    stage_data: str = opt("continue", "continue: each stage reads on where its mixture stopped; restart: every "
                                      "stage reads from batch 0")
    cache_dir: Optional[str] = opt(None, "Shard cache folder; null: $MLX_GROW_CACHE/shards, else "
                                         "~/.cache/mlx-grow/shards")
    skip_bad_files: bool = opt(False, "Skip files that are not UTF-8, with a warning, instead of failing")
    max_passes: float = opt(4.0, "Most times a run may read any source: planned tokens drawn from it over the "
                                 "tokens it holds for training. grow refuses more before it starts; grow "
                                 "--allow-repeat N sets it")

    @classmethod
    def from_dict(cls, d: Optional[dict], where: str = "data config") -> "DataConfig":
        if not isinstance(d or {}, dict):
            raise UserError(f"{where} must be a mapping, got {brief(d)}")
        d = dict(d or {})
        names = list(cls.__dataclass_fields__)
        unknown = [k for k in d if k not in names]
        if unknown:
            raise UserError(f"unknown key(s) {key_list(unknown)} in {where}; valid: {', '.join(names)}")
        for key in ("sources", "instruction_files"):
            if isinstance(d.get(key), str):
                d[key] = [d[key]]
        cfg = cls(**{k: v for k, v in d.items() if v is not None})
        for key in ("sources", "instruction_files", "stages"):
            if not isinstance(getattr(cfg, key), list):
                raise UserError(f"{where}: {key} must be a list")
        for i, s in enumerate(cfg.sources):
            SourceSpec.parse(s, f"{where}: sources[{i}]")
        for k, stage in enumerate(cfg.stages):
            if not isinstance(stage, list) or not stage:
                raise UserError(f"{where}: stages[{k}] must be a non-empty list of sources")
            for i, s in enumerate(stage):
                SourceSpec.parse(s, f"{where}: stages[{k}][{i}]")
        for key in ("val_fraction", "instruction_ratio", "max_passes"):
            if isinstance(getattr(cfg, key), bool) or not isinstance(getattr(cfg, key), (int, float)):
                raise UserError(f"{where}: {key} must be a number, got {brief(getattr(cfg, key))}")
        if not 0 <= cfg.val_fraction <= 0.5:
            raise UserError(f"{where}: val_fraction must be between 0 and 0.5, got {cfg.val_fraction}")
        if not 0 <= cfg.instruction_ratio < 1:
            raise UserError(f"{where}: instruction_ratio must be in [0, 1), got {cfg.instruction_ratio}")
        if cfg.instruction_ratio > 0 and not cfg.instruction_files:
            raise UserError(f"{where}: instruction_ratio is {cfg.instruction_ratio} but instruction_files is "
                             "empty; give your question/answer .jsonl files")
        if cfg.max_passes <= 0:
            raise UserError(f"{where}: max_passes must be positive, got {cfg.max_passes}")
        if cfg.stage_data not in STAGE_DATA:
            raise UserError(f"{where}: stage_data must be one of {', '.join(STAGE_DATA)}, got {brief(cfg.stage_data)}")
        need_bool(f"{where}: skip_bad_files", cfg.skip_bad_files)
        need_str(f"{where}: cache_dir", cfg.cache_dir, optional=True)
        if not isinstance(cfg.separator, str) or not cfg.separator:
            raise UserError(f"{where}: separator must be a token string such as '</s>'")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)

    def mixture(self, stage: int = 0) -> list:
        """The source specs of a growth stage (stages[min(stage, last)], else `sources`)."""
        items = self.stages[min(stage, len(self.stages) - 1)] if self.stages else self.sources
        return [SourceSpec.parse(s, "data source") for s in (items or ["builtin:default"])]

    def mixture_key(self, stage: int = 0) -> str:
        """Names a stage's mixture: stages with equal keys read one stream (and, with
        `stage_data: continue`, one read position)."""
        return json.dumps([[s.source, s.weight, s.field] + ([s.extras()] if s.extras() else [])
                           for s in self.mixture(stage)])


def cache_root(cache_dir=None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    root = os.environ.get("MLX_GROW_CACHE") or Path.home() / ".cache" / "mlx-grow"
    return Path(root).expanduser() / "shards"


class Shard:
    """A prepared shard folder: tokens(split) is a read-only memmap."""

    def __init__(self, path):
        from mlx_grow.io.read import read_json

        self.path = Path(path)
        fix = "prepare it again with `mlx-grow data prepare`"
        try:
            self.meta = m = read_json(self.path / "meta.json", dict, fix=fix)
        except OSError:
            raise UserError(f"{self.path} is not a prepared shard folder (no readable meta.json); "
                             "make one with `mlx-grow data prepare`") from None
        counts = ("tokens", "documents", "characters", "unk")
        ok = all(isinstance(m.get(k), str) for k in ("name", "source", "tokenizer_fingerprint")) \
            and m.get("dtype") in ("uint16", "uint32") and all(
                isinstance(m.get(k), dict) and all(type(m[k].get(s)) is int and m[k][s] >= 0 for s in ("train", "val"))
                for k in counts)
        if not ok:
            raise UserError(f"{self.path}/meta.json is damaged (a name, source, tokenizer_fingerprint, dtype or "
                            f"{'/'.join(counts)} entry is missing or of the wrong type); {fix}")
        for split in ("train", "val"):
            f, want = self.path / f"{split}.bin", m["tokens"][split] * np.dtype(m["dtype"]).itemsize
            if want and (not f.is_file() or f.stat().st_size != want):
                raise UserError(f"{f} does not hold the {m['tokens'][split]:,} tokens meta.json lists; {fix}")
        self._tokens = {}

    name = property(lambda self: self.meta["name"])

    def tokens(self, split: str = "train") -> np.ndarray:
        if split not in self._tokens:
            n, dtype = self.meta["tokens"][split], np.dtype(self.meta["dtype"])
            path = self.path / f"{split}.bin"
            self._tokens[split] = np.memmap(path, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
        return self._tokens[split]

    def doc_starts(self, split: str = "train") -> np.ndarray:
        return np.load(self.path / f"{split}.idx.npy")


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


def _slug(s: str) -> str:
    s = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(s.rstrip("/")).name or s)
    return s.strip("-.")[:40] or "source"


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
    path = cache_root(out_dir) / f"{_slug(spec.source)}-{key}"
    with _lock(path):  # ranks that share a cache prepare a source once
        if not (path / "meta.json").exists():
            dtype = np.dtype("uint16" if tok.vocab_size <= 1 << 16 else "uint32")
            meta = dict(format=FORMAT, name=_slug(spec.source), source=spec.source, field=spec.field,
                        template=spec.template, split=spec.split, token_budget=spec.tokens, streamed=streamed,
                        kind="instruction" if instruction else "text", tokenizer=getattr(tok, "name", None),
                        tokenizer_fingerprint=tok.fingerprint, vocab_size=tok.vocab_size, dtype=dtype.name,
                        separator=separator, separator_id=ids["sep"], val_fraction=val_fraction,
                        content_hash=content)
            if splits:
                meta["splits"] = {k: f.name if f else None for k, f in splits.items()}
            _build(spec, tok, path, meta, ids, dtype, scan, chars, n_forced, instruction, skip_bad_files, progress,
                   workers, echo)
    return _checked(Shard(path))


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


def split_note(meta: dict):
    """What an mlx-lm data folder's shard trains and validates on, or None."""
    splits = meta.get("splits")
    if not splits:
        return None
    val = (f"validates on {splits['val']}" if splits["val"] else
           f"has no valid.jsonl, so validation holds out {meta['val_fraction']:.0%} of {splits['train']}")
    test = f"; {splits['test']} is never read" if splits.get("test") else ""
    return f"{meta['source']} is an mlx-lm data folder: training reads {splits['train']}, {val}{test}"


def _checked(shard: Shard) -> Shard:
    m = shard.meta
    total = sum(m["tokens"].values())
    share = sum(m["unk"].values()) / max(total, 1)
    if share > UNK_WARN:
        log.warning(f"{m['source']}: {share:.0%} of its tokens are <unk> with tokenizer {m['tokenizer']}; "
                    "the tokenizer does not cover this text, pick one that does")
    return shard


def check_val_fraction(v, name: str = "val_fraction"):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 0.5:
        raise UserError(f"{name} must be a number from 0 to 0.5 (the share of documents held out for "
                         f"validation), got {brief(v)}")


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
