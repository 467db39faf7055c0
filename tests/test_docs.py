"""The docs: the generated config reference is current, the command line shows
the same help text as the config reference, and every relative link in README.md
and docs/ points at a file (and heading) that exists."""

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference" / "config.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_config_reference_is_current():
    from mlx_grow.reference import COMMAND, render

    assert REFERENCE.exists(), f"docs/reference/config.md is missing: run `{COMMAND}`"
    assert REFERENCE.read_text(encoding="utf-8") == render(), \
        f"docs/reference/config.md is stale: run `{COMMAND}`"


def test_every_config_key_has_help_text():
    from dataclasses import fields

    from mlx_grow.config import SECTIONS, config_sections

    missing = [f"{s}.{f.name}" if s else f.name for s, cls in config_sections().items() for f in fields(cls)
               if not f.metadata.get("help") and (s or f.name in SECTIONS)]
    assert not missing, f"config keys without help text (mlx_grow.base.opt): {missing}"


def test_flags_show_the_config_help_text():
    """The grow flags that set a config key take their help from the key's field."""
    from mlx_grow.base import field_help
    from mlx_grow.config import GrowConfig, TrainConfig
    from mlx_grow.reference import flags_by_key

    flags = flags_by_key()
    for key, flag in [("train.seed", "`grow --seed`"), ("train.lr", "`grow --lr`"),
                      ("train.batch_size", "`grow --batch-size`"), ("train.seq_len", "`grow --seq-len`"),
                      ("model.num_hidden_layers", "`grow --depth`"), ("grow.stages", "`grow --stages`"),
                      ("grow.blocks_per_stage", "`grow --blocks-per-stage`"),
                      ("grow.train_head", "`grow --freeze-head`"), ("data.sources", "`grow --data`")]:
        assert flag in flags.get(key, []), f"{flag} does not show the help of {key}"
    import typer.main

    from mlx_grow.cli import app

    grow = typer.main.get_command(app).commands["grow"]
    helps = {p.name: p.help for p in grow.params}
    assert helps["seed"].startswith(field_help(TrainConfig, "seed"))
    assert helps["block_init"].startswith(field_help(GrowConfig, "block_init"))


# --- links ---

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading.strip()).lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set:
    out, seen = set(), {}
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def links(path: Path):
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    for m in LINK.finditer(text):
        target = m.group(1) or m.group(2)
        if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: are not checked
            yield target


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    bad = []
    for target in links(page):
        file, _, fragment = target.partition("#")
        dest = (page.parent / unquote(file)).resolve() if file else page
        if not dest.exists():
            bad.append(f"{target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            bad.append(f"{target} (no heading #{fragment} in {dest.relative_to(ROOT)})")
    assert not bad, f"{page.relative_to(ROOT)}: broken links: {bad}"


def test_docs_are_linked_from_the_readme_or_the_index():
    """Every guide is reachable: README.md or docs/README.md links it."""
    linked = set()
    for page in (ROOT / "README.md", ROOT / "docs" / "README.md"):
        for target in links(page):
            file = target.partition("#")[0]
            if file:
                linked.add((page.parent / unquote(file)).resolve())
    guides = [p for p in (ROOT / "docs").rglob("*.md") if p.name != "README.md"]
    orphans = [str(p.relative_to(ROOT)) for p in guides if p.resolve() not in linked]
    assert not orphans, f"guides that neither README.md nor docs/README.md links: {orphans}"
