"""Token data: corpora -> packed token shards on disk -> deterministic batches.

A shard folder holds one source: `train.bin` and `val.bin` (uint16 token ids
when the vocabulary fits, else uint32, read with np.memmap), `*.idx.npy`
(document start offsets) and `meta.json`. Every document ends with the
separator id; separator-like strings inside the text stay text. The
validation split holds whole documents, picked by a hash of their text.
Folders are cached under a key of (document contents, tokenizer, separator,
split) and written to a temp name, then renamed.

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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from mlx_grow.base import UserError, brief, key_list, need_bool, need_str
from mlx_grow.data import corpora
from mlx_grow.io import atomic_dir

log = logging.getLogger("mlx_grow.data")

FORMAT = 1  # bump when the shard layout or the tokenization rules change
BLOCK_CHARS = 1 << 22  # characters per encode_batch call
UNK_WARN = 0.25  # warn when more than this share of tokens is <unk>
VAL_SEED = 0x5EED  # validation batches do not depend on the training seed
STAGE_DATA = ("continue", "restart")


@dataclass
class SourceSpec:
    source: str
    weight: float = 1.0
    field: Optional[str] = None  # text field of jsonl / parquet / dataset rows ("text" by default)

    @classmethod
    def parse(cls, item, where: str) -> "SourceSpec":
        if isinstance(item, str):
            return cls(item)
        if not isinstance(item, dict) or "source" not in item:
            raise UserError(f"{where} must be a source string or a mapping with source:, weight:, field:")
        unknown = [k for k in item if k not in ("source", "weight", "field")]
        if unknown:
            raise UserError(f"unknown key(s) {key_list(unknown)} in {where}; valid: source, weight, field")
        w = item.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w <= 0:
            raise UserError(f"{where}: weight must be a positive number, got {brief(w)}")
        need_str(f"{where}: source", item["source"])
        need_str(f"{where}: field", item.get("field"), optional=True)
        return cls(item["source"], float(w), item.get("field"))


@dataclass
class DataConfig:
    sources: list = field(default_factory=list)  # empty -> builtin:default
    val_fraction: float = 0.01  # share of documents held out for validation
    separator: str = "</s>"
    instruction_files: list = field(default_factory=list)  # question/answer .jsonl/.json/.parquet
    instruction_ratio: float = 0.0  # share of rows drawn from instruction_files
    stages: list = field(default_factory=list)  # per growth stage: a list like `sources`
    stage_data: str = "continue"  # continue: each stage reads on where its mixture stopped; restart: from batch 0
    cache_dir: Optional[str] = None  # default $MLX_GROW_CACHE/shards or ~/.cache/mlx-grow/shards
    skip_bad_files: bool = False  # skip non-UTF-8 files with a warning instead of failing

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
        for key in ("val_fraction", "instruction_ratio"):
            if isinstance(getattr(cfg, key), bool) or not isinstance(getattr(cfg, key), (int, float)):
                raise UserError(f"{where}: {key} must be a number, got {brief(getattr(cfg, key))}")
        if not 0 <= cfg.val_fraction <= 0.5:
            raise UserError(f"{where}: val_fraction must be between 0 and 0.5, got {cfg.val_fraction}")
        if not 0 <= cfg.instruction_ratio < 1:
            raise UserError(f"{where}: instruction_ratio must be in [0, 1), got {cfg.instruction_ratio}")
        if cfg.instruction_ratio > 0 and not cfg.instruction_files:
            raise UserError(f"{where}: instruction_ratio is {cfg.instruction_ratio} but instruction_files is "
                             "empty; give your question/answer .jsonl files")
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
        return json.dumps([[s.source, s.weight, s.field] for s in self.mixture(stage)])


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


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                    TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), disable=not enabled,
                    console=Console(stderr=True))  # results go to stdout, bars never do


def _docs(spec: SourceSpec, instruction: bool, skip_bad: bool):
    if instruction:
        return corpora.instruction_pairs(spec.source)
    return corpora.documents(spec.source, spec.field, skip_bad)


def _size(d) -> int:  # characters of a document or of an instruction pair
    return len(d) if isinstance(d, str) else len(d[0]) + len(d[1])


def _scan(docs):
    """Pass 1: a 64-bit hash per document, the character count, and a content digest."""
    hashes, chars, whole = [], 0, hashlib.sha256()
    for d in docs:
        text = d if isinstance(d, str) else json.dumps(d, ensure_ascii=False)
        h = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
        whole.update(h)
        hashes.append(int.from_bytes(h, "little"))
        chars += _size(d)
    return np.array(hashes, np.uint64), chars, whole.hexdigest()


def prepare_source(spec, tok, out_dir=None, separator="</s>", val_fraction=0.01, skip_bad_files=False,
                   instruction=False, progress=True) -> Shard:
    """Tokenize one source into a shard folder, or reuse the cached one.
    instruction=True reads question/answer pairs and writes `[INST] q [/INST] a</s>`."""
    spec = spec if isinstance(spec, SourceSpec) else SourceSpec.parse(spec, "data source")
    check_val_fraction(val_fraction)
    tok = _tokenizer(tok)
    ids = dict(sep=_special_id(tok, separator, "separator"))
    if instruction:
        ids.update(inst=_special_id(tok, "[INST]", "control token"), end=_special_id(tok, "[/INST]", "control token"))
    hashes, chars, content = _scan(_docs(spec, instruction, skip_bad_files))
    if len(hashes) == 0:
        raise UserError(f"data source {spec.source} has no text (no non-empty documents)")
    n_val = 0 if val_fraction == 0 else max(1, round(val_fraction * len(hashes)))
    if n_val and len(hashes) < 2:
        raise UserError(f"data source {spec.source} has one document, and a validation split needs two: "
                         "add text, or set val_fraction: 0")
    key = hashlib.sha256(json.dumps([FORMAT, content, tok.fingerprint, separator, val_fraction,
                                     corpora.SECTION_CHARS, instruction]).encode()).hexdigest()[:16]
    path = cache_root(out_dir) / f"{_slug(spec.source)}-{key}"
    with _lock(path):  # ranks that share a cache prepare a source once
        if not (path / "meta.json").exists():
            is_val = np.zeros(len(hashes), bool)
            is_val[np.argsort(hashes, kind="stable")[:n_val]] = True
            meta = dict(format=FORMAT, name=_slug(spec.source), source=spec.source, field=spec.field,
                        kind="instruction" if instruction else "text", tokenizer=getattr(tok, "name", None),
                        tokenizer_fingerprint=tok.fingerprint, vocab_size=tok.vocab_size,
                        dtype="uint16" if tok.vocab_size <= 1 << 16 else "uint32", separator=separator,
                        separator_id=ids["sep"], val_fraction=val_fraction, content_hash=content)
            with atomic_dir(path, overwrite=True, marker="meta.json") as tmp:
                meta.update(_encode(_docs(spec, instruction, skip_bad_files), tok, tmp, is_val, chars, ids,
                                    np.dtype(meta["dtype"]), f"tokenizing {spec.source}", progress))
                (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return _checked(Shard(path))


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


def _encode(docs, tok, out: Path, is_val, chars, ids, dtype, label, progress) -> dict:
    """Pass 2: batch-encode blocks of documents (all cores) into train/val .bin files."""
    stats = {s: dict(documents=0, characters=0, tokens=0, unk=0) for s in ("train", "val")}
    starts = {"train": [], "val": []}
    files = {s: open(out / f"{s}.bin", "wb") for s in stats}
    block, done, t0 = [], 0, time.perf_counter()
    with _progress(progress) as bar:
        task = bar.add_task(label, total=chars, rate="")

        def flush():
            nonlocal done
            texts = [t for _, d in block for t in ([d] if isinstance(d, str) else [f" {d[0]} ", f" {d[1]}"])]
            enc = iter(tok.encode_batch(texts))
            for i, d in block:
                if isinstance(d, str):
                    seq = [*next(enc), ids["sep"]]
                else:  # [INST] question [/INST] answer</s>, the control tokens as ids
                    seq = [ids["inst"], *next(enc), ids["end"], *next(enc), ids["sep"]]
                arr = np.array(seq, dtype)
                st = stats["val" if is_val[i] else "train"]
                starts["val" if is_val[i] else "train"].append(st["tokens"])
                st["documents"] += 1
                st["characters"] += _size(d)
                st["tokens"] += arr.size
                st["unk"] += int(np.count_nonzero(arr == tok.unk_id)) if tok.unk_id is not None else 0
                files["val" if is_val[i] else "train"].write(arr.tobytes())
                done += _size(d)
            rate = done / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, completed=done, rate=f"{rate / 1e6:.1f}M chars/s")
            block.clear()

        pending, i = 0, -1
        for i, d in enumerate(docs):
            if i >= len(is_val):
                break
            block.append((i, d))
            pending += _size(d)
            if pending >= BLOCK_CHARS:
                flush()
                pending = 0
        flush()
    if i + 1 != len(is_val):
        raise UserError(f"{label[len('tokenizing '):]} changed while it was being prepared; run again")
    for s, f in files.items():
        f.close()
        np.save(out / f"{s}.idx.npy", np.array(starts[s], np.int64))
    return {k: {s: stats[s][k] for s in stats} for k in ("documents", "characters", "tokens", "unk")}


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
            skip_bad_files=False, progress=True) -> list:
    """Prepare (or reuse) one shard folder per source; returns the Shards."""
    tok = _tokenizer(tokenizer)
    specs = [SourceSpec.parse(s, "data source") for s in (sources or ["builtin:default"])]
    return [prepare_source(SourceSpec(s.source, s.weight, s.field or field), tok, out_dir, separator,
                           val_fraction, skip_bad_files, progress=progress) for s in specs]


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
