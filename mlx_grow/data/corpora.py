"""Where documents come from: built-in corpora, readers for local files and
folders (text, jsonl, parquet and arrow shards, nested as FineWeb-Edu ships
them), saved `datasets` folders and Hub datasets streamed with `datasets`
(`hf:NAME[:CONFIG]`). Every reader yields plain-text documents; documents
longer than SECTION_CHARS are cut at a paragraph break into sections, and each
section counts as one document (it ends with the separator, and the validation
hold-out picks whole sections). A row's text is one field, or a template over
several fields (`render`).

The built-in corpora are in data/builtin_corpora.py, the Hub's streamed datasets in
data/hf_sources.py; their names stay importable from here.
"""

import json
import logging
import os
import re
import string
from pathlib import Path
from typing import Iterator, Optional

from mlx_grow.base import UserError, brief, check_unicode, key_list
# Built-in corpora and Hub sources have their own modules; their names stay importable from here.
from mlx_grow.data.builtin_corpora import BUILTINS, builtin  # noqa: F401
from mlx_grow.data.hf_sources import (  # noqa: F401
    data_root,
    hf_local,
    offline_message,
    offline_sources,
    open_hf,
    parse_hf,
)
from mlx_grow.io.read import json_rows, opener, utf8_error

log = logging.getLogger("mlx_grow.data")

SECTION_CHARS = 1 << 16  # longer documents are cut into sections of about this size
TEXT_EXT = (".txt", ".md", ".txt.gz")
ROW_EXT = (".jsonl", ".jsonl.gz", ".json", ".parquet", ".arrow")
COLUMNAR = (".parquet", ".arrow")
BATCH_ROWS = 1024  # rows per record batch read from a parquet or arrow file


class BadFileError(UserError):
    """A file that is not UTF-8 text; `skip_bad` turns it into a warning."""


# --- local files, folders and datasets ---


def _cut(text: str, limit: int) -> int:
    """Where to cut `text` near `limit`: after a blank line, else a newline, else a space."""
    for sep in ("\n\n", "\n", " "):
        i = text.rfind(sep, limit // 2, limit)
        if i >= 0:
            return i + len(sep)
    return limit


def sections(text: str, limit: int = SECTION_CHARS) -> Iterator[str]:
    while len(text) > limit:
        i = _cut(text, limit)
        yield text[:i]
        text = text[i:]
    if text.strip():
        yield text


# --- row text: one field, or a template over several ---


def template_fields(template: str) -> list:
    """The row fields a template names, in order ("{answers[text]}" names answers)."""
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise UserError(f"template {template!r} is not a valid template ({e}); write fields in braces, as in "
                         "'Question: {question}\\nAnswer: {answer}', and double literal braces") from None
    for _, name, _, _ in parsed:
        if name is None:
            continue
        top = re.split(r"[.\[]", name, maxsplit=1)[0]
        if not top or top.isdigit():
            raise UserError(f"template {template!r}: each {{...}} must name a row field, as in {{question}}")
        if top not in names:
            names.append(top)
    if not names:
        raise UserError(f"template {template!r} names no row field; write fields in braces, as in "
                         "'Question: {question}\\nAnswer: {answer}'")
    return names


def _plain(value):
    """A field value as template text: a list joins its items with '; ', a {label, text}
    record (multiple-choice options) becomes 'A. text' lines, a bool yes/no, null nothing."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict) and isinstance(value.get("label"), list) and isinstance(value.get("text"), list):
        return "\n".join(f"{a}. {b}" for a, b in zip(value["label"], value["text"]))
    if isinstance(value, (list, tuple)):
        return "; ".join(str(_plain(v)) for v in value)
    return value


class _Formatter(string.Formatter):
    def format_field(self, value, format_spec):
        return super().format_field(_plain(value), format_spec)


_FORMAT = _Formatter()


def render(template: str, row, where: str) -> str:
    """One row's text from a template over its fields (see _plain for lists and records)."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: a template needs rows with fields, got {type(row).__name__}")
    try:
        return _FORMAT.vformat(template, (), row)
    except KeyError as e:
        raise UserError(f"{where}: the template names {e.args[0]!r}, which the row does not have (it has: "
                         f"{', '.join(map(str, row))}); fix the template") from None
    except (IndexError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{where}: cannot fill the template {template!r} from this row ({e}); fix the "
                         "template") from None


def row_text(row, field: Optional[str], where: str, template: Optional[str] = None) -> str:
    if template:
        return check_unicode(render(template, row, where), where)
    if isinstance(row, str):
        return row
    key = field or "text"
    if isinstance(row, dict) and key in row and not isinstance(row[key], str):
        raise UserError(f"{where}: field {brief(key)} holds {type(row[key]).__name__} {brief(row[key])}, not text; "
                         "fix the row, or set `field:` (--field) to the column that holds the text")
    if not isinstance(row, dict) or key not in row:
        keys = key_list(row) if isinstance(row, dict) else type(row).__name__
        raise UserError(f"{where}: row has no text field {brief(key)} (it has: {keys}); set `field:` "
                         "(--field) to the column that holds the text")
    return check_unicode(row[key], where)


def _needed(field: Optional[str], template: Optional[str]) -> list:
    return template_fields(template) if template else [field or "text"]


def _missing_columns(where, names, need, template):
    missing = [c for c in need if c not in names]
    if missing:
        fix = "fix the template" if template else "set `field:` (--field) to the column that holds the text"
        raise UserError(f"{where} has no column {missing[0]!r} (it has: {', '.join(names)}); {fix}")


# --- local files, folders and datasets ---


def _arrow_reader(path: Path):
    """Record batches of an Arrow IPC file (stream format, as `datasets` writes it, or file
    format), memory-mapped: only the columns read are touched."""
    import pyarrow as pa

    source = pa.memory_map(str(path))
    try:
        return pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        reader = pa.ipc.open_file(source)
        return (reader.get_batch(i) for i in range(reader.num_record_batches))


def _arrow_schema(path: Path):
    import pyarrow as pa

    source = pa.memory_map(str(path))
    try:
        return pa.ipc.open_stream(source).schema
    except pa.ArrowInvalid:
        return pa.ipc.open_file(source).schema


def _batches(path: Path, columns: list):
    """Record batches of `columns` of a parquet or arrow file, BATCH_ROWS rows at a time
    (a parquet file is read by row group, never as one table)."""
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        f = pq.ParquetFile(path)
        return f.schema_arrow.names, f.iter_batches(batch_size=BATCH_ROWS, columns=columns)
    names = _arrow_schema(path).names
    return names, (b.select(columns) for b in _arrow_reader(path) if b.num_rows)


def _columnar_documents(path: Path, field, template) -> Iterator[str]:
    import pyarrow as pa

    need = _needed(field, template)
    names, batches = _batches(path, need)
    _missing_columns(str(path), names, need, template)
    n = 0
    for batch in batches:
        if template:
            for row in batch.to_pylist():
                n += 1
                yield from sections(render(template, row, f"{path} row {n}"))
            continue
        col = batch.column(0)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            raise UserError(f"{path}: column {need[0]!r} holds {col.type}, not text; set `field:` (--field) to "
                             "the column that holds the text")
        for text in col.to_pylist():
            if text:  # arrow strings are valid UTF-8; nulls and empty rows are skipped
                yield from sections(text)


def _rows(path: Path) -> Iterator:
    if path.name.endswith(COLUMNAR):
        names, batches = _batches(path, None)
        for batch in batches:
            yield from batch.to_pylist()
    else:
        yield from json_rows(path, "data file")


def _check_file(path: Path, skip_bad: bool) -> bool:
    if path.name.endswith(COLUMNAR):
        return True
    off = utf8_error(path)
    if off is None:
        return True
    gz = " (uncompressed)" if path.name.endswith(".gz") else ""
    msg = f"{path} is not UTF-8 text: invalid byte at{gz} offset {off}"
    if not skip_bad:
        raise BadFileError(f"{msg}; convert it to UTF-8, remove it, or skip bad files (--skip-bad, "
                           "skip_bad_files: true)")
    log.warning(f"skipping {msg}")
    return False


def file_documents(path: Path, field: Optional[str] = None, skip_bad: bool = False,
                   template: Optional[str] = None) -> Iterator[str]:
    if not _check_file(path, skip_bad):
        return
    if path.name.endswith(TEXT_EXT):
        if template:
            raise UserError(f"{path} is a text file, and a template reads rows with fields (.jsonl, .parquet, "
                             ".arrow); drop the template or the file")
        with opener(path)(path, "rt", encoding="utf-8", newline="") as f:
            yield from sections(f.read())  # a text file is one document
        return
    if path.name.endswith(COLUMNAR):
        yield from _columnar_documents(path, field, template)
        return
    for n, row in enumerate(_rows(path), 1):
        yield from sections(row_text(row, field, f"{path} row {n}", template))


def mlx_lm_splits(source: str) -> Optional[dict]:
    """The files of an mlx-lm data folder (`train.jsonl`, optional `valid.jsonl` and
    `test.jsonl`) as {"train": path, "val": path or None, "test": path or None};
    None for any other source. Training reads train, validation reads valid, and
    nothing reads test."""
    if source.startswith(("builtin:", "hf:")):
        return None
    p = Path(source).expanduser()
    if not (p.is_dir() and (p / "train.jsonl").is_file()):
        return None
    found = {k: p / f for k, f in (("val", "valid.jsonl"), ("test", "test.jsonl"))}
    return {"train": p / "train.jsonl", **{k: f if f.is_file() else None for k, f in found.items()}}


def is_dataset_dir(p: Path) -> bool:
    return p.is_dir() and any((p / n).exists() for n in ("dataset_info.json", "dataset_dict.json", "state.json"))


def _dataset(ds, field, where, split="train", template=None) -> Iterator[str]:
    """Documents of a `datasets` Dataset, DatasetDict or (streamed) IterableDataset, or of
    any iterable of row mappings."""
    if hasattr(ds, "keys") and not hasattr(ds, "column_names"):  # a DatasetDict
        if split not in ds:
            raise UserError(f"{where} has splits {', '.join(ds)}, not {brief(split)}; set `split:`")
        ds = ds[split]
    need = _needed(field, template)
    names = getattr(ds, "column_names", None)  # a streamed dataset may not know its columns up front
    if names:
        _missing_columns(where, names, need, template)
        if hasattr(ds, "select_columns") and set(need) != set(names):
            ds = ds.select_columns(need)
    for n, row in enumerate(_dataset_rows(ds), 1):
        if template:
            yield from sections(row_text(row, None, f"{where} row {n}", template))
            continue
        if not isinstance(row, dict) or need[0] not in row:
            _missing_columns(where, list(row) if isinstance(row, dict) else [], need, None)
        text = row[need[0]]
        if text:
            yield from sections(row_text(row, need[0], f"{where} row {n}"))


def _dataset_rows(ds) -> Iterator[dict]:
    if not hasattr(ds, "iter"):  # any iterable of row mappings
        yield from ds
        return
    for batch in ds.iter(batch_size=BATCH_ROWS):  # a batch of rows at a time, as lists per column
        keys = list(batch)
        for i in range(len(batch[keys[0]]) if keys else 0):
            yield {k: batch[k][i] for k in keys}


def _load(fn, where: str, *args, **kw):
    """A `datasets` loader whose refusals (a dataset script, which never runs; a
    folder it cannot read) are one line naming the source."""
    try:
        return fn(*args, **kw)
    except (RuntimeError, ValueError, TypeError, KeyError) as e:
        msg = " ".join(str(e).split())
        raise UserError(f"data source {where}: the datasets library cannot load it ({type(e).__name__}: "
                        f"{msg[:300]}{'…' if len(msg) > 300 else ''})") from None


def folder_files(root: Path) -> list:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(TEXT_EXT + ROW_EXT)
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise UserError(f"no text files under {root}: it needs .txt, .md, .jsonl, .json, .parquet or .arrow files")
    return files


def _not_found(source) -> FileNotFoundError:
    return FileNotFoundError(f"data source {source} not found: give a file, a folder, hf:NAME[:CONFIG] or "
                             + ", ".join(f"builtin:{n}" for n in BUILTINS))


def check_source(source: str):
    """Refuse, without reading it, a source that cannot be read: an unknown built-in
    corpus or a path that does not exist (a hf: dataset is found when it is read)."""
    if source.startswith("builtin:"):
        builtin(source[len("builtin:"):])
    elif not source.startswith("hf:") and not Path(source).expanduser().exists():
        raise _not_found(source)


def documents(source: str, field: Optional[str] = None, skip_bad: bool = False, template: Optional[str] = None,
              split: str = "train") -> Iterator[str]:
    """The documents of one source, sectioned. `template` builds each row's text from
    several fields instead of reading `field`; `split` picks the split of a Hub or a
    saved `datasets` dataset."""
    if source.startswith("builtin:"):
        corpus = builtin(source[len("builtin:"):])
        if template:
            raise UserError(f"{source} is plain text, and a template reads rows with fields; drop the template")
        for doc in corpus.read():
            yield from sections(doc)
        return
    if source.startswith("hf:"):
        yield from _dataset(open_hf(source, split), field, source, split, template)
        return
    p = Path(source).expanduser()
    splits = mlx_lm_splits(source)
    if splits:  # train, then valid; test.jsonl is never read
        for f in (splits["train"], splits["val"]):
            if f is not None:
                yield from file_documents(f, field, skip_bad, template)
    elif is_dataset_dir(p):
        import datasets

        yield from _dataset(_load(datasets.load_from_disk, str(p), str(p)), field, str(p), split, template)
    elif p.is_dir():
        for f in folder_files(p):
            yield from file_documents(f, field, skip_bad, template)
    elif p.is_file():
        if not p.name.endswith(TEXT_EXT + ROW_EXT):
            raise UserError(f"{p}: unknown file type; use .txt, .md, .jsonl, .json, .parquet or .arrow (or .gz of "
                             "txt/jsonl)")
        yield from file_documents(p, field, skip_bad, template)
    else:
        raise _not_found(source)


# --- sizes without reading everything (the passes check) ---


def _gz_size(path: Path) -> int:
    """Uncompressed size of a .gz file from its trailer (modulo 4 GiB, as gzip stores it)."""
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        isize = int.from_bytes(f.read(4), "little")
    return max(isize, path.stat().st_size)


def _json_share(path: Path, field, template, probe: int = 1 << 20) -> float:
    """The share of a jsonl/json file's bytes that is document text, on its first MiB."""
    raw = text = 0
    with opener(path)(path, "rb") as f:
        head = f.read(probe)
    if path.name.endswith(".json"):
        return 0.9  # a JSON list: rows cannot be read from a prefix
    for line in head.splitlines()[:-1] or head.splitlines():
        raw += len(line) + 1
        try:
            t = row_text(json.loads(line), field, str(path), template)
        except (ValueError, UserError):
            continue
        text += len(t.encode("utf-8", "replace"))
    return text / raw if raw else 1.0


def _file_text_bytes(path: Path, field, template) -> int:
    name = path.name
    need = _needed(field, template)
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        md = pq.ParquetFile(path).metadata
        cols = [i for i in range(md.num_columns) if md.schema.column(i).path.split(".")[0] in need]
        return sum(md.row_group(g).column(i).total_uncompressed_size for g in range(md.num_row_groups)
                   for i in cols)
    if name.endswith(".arrow"):
        total = 0
        for batch in _arrow_reader(path):  # memory-mapped: only buffer sizes are read
            for c in need:
                if c in batch.schema.names:
                    total += sum(b.size for b in batch.column(c).buffers() if b is not None)
        return total
    size = _gz_size(path) if name.endswith(".gz") else path.stat().st_size
    if name.endswith(TEXT_EXT):
        return size
    return int(size * _json_share(path, field, template))


def text_bytes(source: str, field: Optional[str] = None, template: Optional[str] = None) -> int:
    """About how many UTF-8 bytes of document text a local source or built-in corpus
    holds, from file sizes and parquet/arrow metadata (built-in corpora are read).
    An mlx-lm data folder counts train.jsonl only."""
    if source.startswith("builtin:"):
        return sum(len(d.encode("utf-8")) for d in documents(source))
    p = Path(source).expanduser()
    splits = mlx_lm_splits(source)
    if splits:
        files = [splits["train"]]
    elif is_dataset_dir(p):
        files = sorted(p.rglob("*.arrow"))
    elif p.is_dir():
        files = folder_files(p)
    elif p.is_file():
        files = [p]
    else:
        raise FileNotFoundError(f"data source {source} not found")
    return sum(_file_text_bytes(f, field, template) for f in files)


# --- instruction pairs ---

PAIR_KEYS = (("question", "answer"), ("prompt", "response"), ("instruction", "output"))


def instruction_pairs(path) -> Iterator[tuple]:
    """(question, answer) pairs from a .jsonl/.json/.parquet file with
    question/answer, prompt/response or instruction/output fields."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"instruction file {path} not found")
    _check_file(path, skip_bad=False)
    for n, row in enumerate(_rows(path), 1):
        for q, a in PAIR_KEYS:
            if isinstance(row, dict) and isinstance(row.get(q), str) and isinstance(row.get(a), str):
                yield row[q], row[a]
                break
        else:
            raise UserError(f"{path} row {n} has no question/answer pair: give question+answer, "
                             "prompt+response or instruction+output fields")
