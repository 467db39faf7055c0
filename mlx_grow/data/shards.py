"""Prepared token shards on disk: one folder per source, named by its cache key
under the shard cache.

A shard folder holds `train.bin` and `val.bin` (uint16 token ids when the
vocabulary fits, else uint32, read with np.memmap), `*.idx.npy` (document start
offsets) and `meta.json` (written last). Every document ends with the separator
id; separator-like strings inside the text stay text. The validation split
holds whole documents, picked by a hash of their text (or an mlx-lm folder's
valid.jsonl). `stream.prepare` writes them; `Shard` reads one.
"""

import logging
from pathlib import Path

import numpy as np

from mlx_grow.base import UserError
from mlx_grow.io.paths import cache_home
from mlx_grow.io.read import read_json

log = logging.getLogger("mlx_grow.data")

FORMAT = 1  # bump when the shard layout or the tokenization rules change
UNK_WARN = 0.25  # warn when more than this share of tokens is <unk>


def cache_root(cache_dir=None) -> Path:
    """The shard cache: `cache_dir` (data.cache_dir), else the cache home's shards/."""
    return Path(cache_dir).expanduser() if cache_dir else cache_home() / "shards"


def slug(s: str) -> str:
    """The readable part of a shard folder's name: the source's last path part, cut to 40."""
    s = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(s.rstrip("/")).name or s)
    return s.strip("-.")[:40] or "source"


class Shard:
    """A prepared shard folder: tokens(split) is a read-only memmap."""

    def __init__(self, path):
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


def split_note(meta: dict):
    """What an mlx-lm data folder's shard trains and validates on, or None."""
    splits = meta.get("splits")
    if not splits:
        return None
    val = (f"validates on {splits['val']}" if splits["val"] else
           f"has no valid.jsonl, so validation holds out {meta['val_fraction']:.0%} of {splits['train']}")
    test = f"; {splits['test']} is never read" if splits.get("test") else ""
    return f"{meta['source']} is an mlx-lm data folder: training reads {splits['train']}, {val}{test}"


def checked(shard: Shard) -> Shard:
    """`shard`, with a warning when too much of it is <unk> (the tokenizer does not cover its text)."""
    m = shard.meta
    total = sum(m["tokens"].values())
    share = sum(m["unk"].values()) / max(total, 1)
    if share > UNK_WARN:
        log.warning(f"{m['source']}: {share:.0%} of its tokens are <unk> with tokenizer {m['tokenizer']}; "
                    "the tokenizer does not cover this text, pick one that does")
    return shard
