"""Tokenizing a source into a shard: in pieces, in parallel, resumable.

Documents are cut, in order, into pieces of about `piece_chars` characters.
Each piece is encoded (by a worker process when there are several, else here)
into two part files in a work folder beside the shard: `part-NNNNNN.bin`, the
piece's tokens (every document followed by the separator), and
`part-NNNNNN.docs.npy`, one record per document (hash, tokens, characters,
<unk> count), written last under a temporary name and renamed, so a part whose
`.docs.npy` exists is whole. A killed or interrupted preparation keeps its
finished parts and the next one encodes only the missing pieces. `assemble`
then picks the validation documents over all parts (whole documents, by hash)
and writes the shard's train/val files, so sequential and parallel preparation
write the same shard.

Documents are plain strings, or (question, answer) pairs written as
`[INST] question [/INST] answer</s>` with the control tokens as ids.
"""

import hashlib
import json
import os
import shutil
import time
from collections import deque
from itertools import chain
from pathlib import Path

import numpy as np

from mlx_grow.base import UserError, check_unicode
from mlx_grow.io.faults import maybe_fail

DOC = np.dtype([("hash", "<u8"), ("tokens", "<i8"), ("chars", "<i8"), ("unk", "<i8")])
PARALLEL_MIN_CHARS = 1 << 23  # smaller sources are encoded in this process


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def size(d) -> int:  # characters of a document or of an instruction pair
    return len(d) if isinstance(d, str) else len(d[0]) + len(d[1])


def doc_hash(d) -> bytes:
    """8-byte hash of a document (of an instruction pair: of its JSON)."""
    text = d if isinstance(d, str) else json.dumps(d, ensure_ascii=False)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        check_unicode(text, "a document")  # raises, naming the character
    return hashlib.blake2b(data, digest_size=8).digest()


def hashes(docs) -> np.ndarray:
    return np.frombuffer(b"".join(map(doc_hash, docs)), "<u8").astype(np.uint64)


def pieces(docs, piece_chars: int):
    """(k, documents) of consecutive pieces of about piece_chars characters each."""
    block, chars, k = [], 0, 0
    for d in docs:
        block.append(d)
        chars += size(d)
        if chars >= piece_chars:
            yield k, block
            block, chars, k = [], 0, k + 1
    if block:
        yield k, block


def encode_piece(docs: list, tok, ids: dict, dtype, unk_id):
    """(tokens, DOC records) of a list of documents. Vectorised: one encode_batch call,
    one flat array of ids, and the separators and control tokens placed by offset."""
    texts, lead, last = [], [], []
    for d in docs:
        if isinstance(d, str):
            texts.append(d), lead.append(-1), last.append(True)
        else:  # [INST] question [/INST] answer</s>
            texts += [f" {d[0]} ", f" {d[1]}"]
            lead += [ids["inst"], ids["end"]]
            last += [False, True]
    enc = tok.encode_batch(texts)
    lens = np.fromiter(map(len, enc), np.int64, len(enc))
    lead, last = np.array(lead, np.int64), np.array(last, bool)
    span = lens + (lead >= 0) + last  # tokens each text takes, with its control token and separator
    off = np.cumsum(span) - span
    out = np.empty(int(span.sum()), dtype)
    fill = np.ones(out.size, bool)
    has = lead >= 0
    out[off[has]], fill[off[has]] = lead[has], False
    ends = (off + span - 1)[last]
    out[ends], fill[ends] = ids["sep"], False
    out[fill] = np.fromiter(chain.from_iterable(enc), dtype, int(lens.sum()))
    recs = np.zeros(len(docs), DOC)
    recs["hash"] = hashes(docs)
    recs["tokens"] = np.add.reduceat(span, np.flatnonzero(np.r_[True, last[:-1]]))
    recs["chars"] = np.fromiter(map(size, docs), np.int64, len(docs))
    if unk_id is not None and (unk := out == unk_id).any():
        recs["unk"] = np.add.reduceat(unk, np.cumsum(recs["tokens"]) - recs["tokens"], dtype=np.int64)
    return out, recs


def part_paths(work: Path, k: int):
    return work / f"part-{k:06d}.bin", work / f"part-{k:06d}.docs.npy"


def write_part(work: Path, k: int, toks: np.ndarray, recs: np.ndarray):
    bin_path, docs_path = part_paths(work, k)
    tmp = bin_path.with_name(f".{bin_path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(toks.tobytes())
    os.replace(tmp, bin_path)
    tmp = docs_path.with_name(f".{docs_path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, recs)
    os.replace(tmp, docs_path)  # the part is whole once this name exists


def read_part(work: Path, k: int):
    """A finished part's DOC records, or None."""
    bin_path, docs_path = part_paths(work, k)
    try:
        recs = np.load(docs_path)
    except (OSError, ValueError):
        return None
    if recs.dtype != DOC or not bin_path.is_file():
        return None
    return recs


# --- worker processes ---

_W = {}


def _init_worker(tok_json: str, special: dict, name, ids: dict, dtype: str, unk_id, work: str):
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process
    from tokenizers import Tokenizer as HFTokenizer

    from mlx_grow.tokenizer import Tokenizer

    _W.update(tok=Tokenizer(HFTokenizer.from_str(tok_json), name=name, **special), ids=ids,
              dtype=np.dtype(dtype), unk_id=unk_id, work=Path(work))


def _encode_in_worker(k: int, docs: list):
    toks, recs = encode_piece(docs, _W["tok"], _W["ids"], _W["dtype"], _W["unk_id"])
    write_part(_W["work"], k, toks, recs)
    return k, recs


def _pool(workers: int, tok, ids, dtype, work: Path):
    import multiprocessing
    import sys
    from concurrent.futures import ProcessPoolExecutor

    # Linux forks (fast; the workers touch only numpy and tokenizers, never MLX); elsewhere
    # a fork of a process that has started Metal is not safe, so workers start fresh.
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(tok.backend.to_str(), tok.special, getattr(tok, "name", None), ids,
                                         np.dtype(dtype).str, tok.unk_id, str(work)))


def _submit(pool, *args):
    # tokenizers warns in a forked child when the parent has used its thread pool, unless
    # TOKENIZERS_PARALLELISM is set; set it while the workers start (they run one thread each)
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        return pool.submit(*args)
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


# --- the pass over a source ---


def start_work(work: Path, piece_chars: int):
    """The work folder of a preparation; parts of another piece size are dropped."""
    stamp = {"piece_chars": piece_chars, "doc": DOC.descr}
    mark = work / "pieces.json"
    if work.is_dir():
        try:
            same = json.loads(mark.read_text()) == json.loads(json.dumps(stamp))
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not mark.is_file():
        mark.write_text(json.dumps(stamp))


def encode_parts(docs, tok, work: Path, ids: dict, dtype, *, piece_chars: int, workers: int = 1,
                 total_chars=None, budget=None, label="tokenizing", progress=True, echo=None) -> list:
    """Encode `docs` into part files under `work` (reusing finished ones); returns the
    DOC records of every part, in order. With a token budget, reading stops once the
    parts hold at least `budget` tokens (assemble cuts at the exact document)."""
    from rich.progress import TaskProgressColumn, TextColumn

    from mlx_grow.io.progress import rich_bar

    dtype = np.dtype(dtype)
    parallel = workers > 1 and (total_chars is None or total_chars >= PARALLEL_MIN_CHARS)
    pool, pending, recs = None, deque(), {}
    t0, done = time.perf_counter(), dict(chars=0, tokens=0, docs=0, new_chars=0, new_docs=0, reused=0)
    total = budget if budget else total_chars

    with rich_bar(TaskProgressColumn(), TextColumn("{task.fields[rate]}"), enabled=progress) as bar:
        task = bar.add_task(label, total=total, rate="")

        def record(k, r, new):
            recs[k] = r
            c, n, t = int(r["chars"].sum()), len(r), int(r["tokens"].sum())
            done.update(chars=done["chars"] + c, tokens=done["tokens"] + t, docs=done["docs"] + n)
            if new:
                done.update(new_chars=done["new_chars"] + c, new_docs=done["new_docs"] + n)
                maybe_fail("piece", k + 1)
            else:
                done["reused"] += 1
            dt = max(time.perf_counter() - t0, 1e-9)
            bar.update(task, completed=done["tokens"] if budget else done["chars"],
                       rate=f"{done['tokens'] / 1e6:,.1f}M tokens, {done['new_docs'] / dt:,.0f} docs/s, "
                            f"{done['new_chars'] / dt / 1e6:.2f}M chars/s")

        def collect(block=True):
            while pending and (block or pending[0].done()):
                k, r = pending.popleft().result()
                record(k, r, True)

        try:
            if parallel:  # the workers start before the source is opened (a stream may start threads)
                pool = _pool(workers, tok, ids, dtype, work)
                _submit(pool, int).result()
            for k, block in pieces(docs, piece_chars):
                if budget and done["tokens"] >= budget:
                    break
                old = read_part(work, k)
                if old is not None:
                    record(k, old, False)
                    continue
                if parallel:
                    pending.append(pool.submit(_encode_in_worker, k, block))
                    while len(pending) >= 2 * workers:  # bounded read-ahead
                        k0, r = pending.popleft().result()
                        record(k0, r, True)
                    collect(block=False)
                else:
                    toks, r = encode_piece(block, tok, ids, dtype, tok.unk_id)
                    write_part(work, k, toks, r)
                    record(k, r, True)
            collect()
        finally:
            if pool is not None:
                for f in pending:
                    f.cancel()
                pool.shutdown(wait=True, cancel_futures=True)
    if done["reused"] and echo:
        echo(f"{label}: resumed; {done['reused']} finished part(s) reused")
    if sorted(recs) != list(range(len(recs))):  # assemble reads part k at position k
        raise RuntimeError(f"parts {sorted(recs)} of {work} are not contiguous")
    return [recs[k] for k in range(len(recs))]


def assemble(work: Path, parts: list, keep: np.ndarray, is_val: np.ndarray, out: Path, dtype) -> dict:
    """Write train.bin / val.bin and their document indexes from the parts: the kept
    documents, validation ones to val. Returns the per-split statistics."""
    dtype = np.dtype(dtype)
    recs = np.concatenate(parts) if parts else np.zeros(0, DOC)
    files = {s: open(out / f"{s}.bin", "wb") for s in ("train", "val")}
    try:
        start = 0
        for k, r in enumerate(parts):
            n = len(r)
            kept, val = keep[start:start + n], is_val[start:start + n]
            start += n
            if not kept.any():
                continue
            toks = np.fromfile(part_paths(work, k)[0], dtype)
            if toks.size != int(r["tokens"].sum()):
                raise UserError(f"{part_paths(work, k)[0]} is damaged; delete {work} and prepare again")
            for s, m in (("train", kept & ~val), ("val", kept & val)):
                if m.any():
                    files[s].write(toks[np.repeat(m, r["tokens"])].tobytes())
    finally:
        for f in files.values():
            f.close()
    stats = {k: {} for k in ("documents", "characters", "tokens", "unk")}
    for s, m in (("train", keep & ~is_val), ("val", keep & is_val)):
        t = recs["tokens"][m]
        np.save(out / f"{s}.idx.npy", (np.cumsum(t) - t).astype(np.int64))
        stats["documents"][s], stats["characters"][s] = int(m.sum()), int(recs["chars"][m].sum())
        stats["tokens"][s], stats["unk"][s] = int(t.sum()), int(recs["unk"][m].sum())
    return stats
