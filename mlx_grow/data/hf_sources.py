"""Hub datasets, streamed with `datasets` (`hf:NAME[:CONFIG]`): read from a copy
downloaded under data_root() when there is one, else from the Hub; a source that
can be read neither way gets one line that says what to download and where."""

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Optional

from mlx_grow.base import UserError
from mlx_grow.io.paths import cache_home

# The files of the Hub configs the packaged configs name (from each dataset card's
# `configs:` section): what to download for offline use.
HF_FILES = {
    "HuggingFaceFW/fineweb-edu": lambda c: f"sample/{c.removeprefix('sample-')}/*" if c and c.startswith("sample-")
    else f"data/{c}/*" if c else "data/*",
    "HuggingFaceTB/cosmopedia": lambda c: f"data/{c}/*",
    "wikimedia/wikipedia": lambda c: f"{c}/*",
    "rajpurkar/squad_v2": lambda c: f"{c or 'squad_v2'}/*",
    "mandarjoshi/trivia_qa": lambda c: f"{c}/*",
    "hotpotqa/hotpot_qa": lambda c: f"{c}/*",
    "google-research-datasets/nq_open": lambda c: f"{c or 'nq_open'}/*",
    "google/boolq": lambda c: "data/*",
    "tau/commonsense_qa": lambda c: "data/*",
    "allenai/ai2_arc": lambda c: f"{c}/*",
}
_TRUE = ("1", "true", "yes", "on")


def parse_hf(source: str) -> tuple:
    """`hf:NAME[:CONFIG]` -> (NAME, CONFIG or None)."""
    name, _, config = source[len("hf:"):].partition(":")
    if not name or name.startswith("/") or name.endswith("/") or " " in name:
        raise UserError(f"data source {source!r}: write hf:NAME or hf:NAME:CONFIG, e.g. "
                         "hf:HuggingFaceFW/fineweb-edu:sample-10BT")
    return name, config or None


def data_root() -> Path:
    """Where Hub datasets downloaded for offline use live: $MLX_GROW_DATA, else
    $MLX_GROW_CACHE/datasets, else ~/.cache/mlx-grow/datasets (one folder per NAME)."""
    if os.environ.get("MLX_GROW_DATA"):
        return Path(os.environ["MLX_GROW_DATA"]).expanduser()
    return cache_home() / "datasets"


def hf_local(name: str) -> Optional[Path]:
    """Where NAME of `hf:NAME` is read without the Hub: a local folder it names
    (`hf:./folder`, as datasets.load_dataset takes a path), or the downloaded copy of
    Hub dataset NAME (a folder under data_root() with its README.md); else None."""
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    d = data_root() / name
    return d if (d / "README.md").is_file() else None


def download_command(name: str, config: Optional[str]) -> str:
    files = HF_FILES.get(name)
    include = f" --include '{files(config)}'" if files else ""
    return (f"hf download {name} --repo-type dataset --include README.md{include} "
            f"--local-dir {data_root() / name}")


def hub_unreachable() -> Optional[str]:
    """Why the Hugging Face Hub cannot be reached now, or None when it can."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var} is set"
    from urllib.parse import urlparse

    from huggingface_hub import constants  # its endpoint: HF_ENDPOINT, else the Hub's own

    return _probe(urlparse(constants.ENDPOINT).hostname)


@lru_cache(maxsize=4)
def _probe(host: str) -> Optional[str]:
    try:
        socket.create_connection((host, 443), timeout=5).close()
        return None
    except OSError as e:
        return f"{host} cannot be reached ({e.strerror or e})"


def offline_sources(sources) -> list:
    """The hf: sources of `sources` (strings) that can be read neither from a downloaded
    copy nor from the Hub now: [(source, reason)]."""
    hub = [s for s in dict.fromkeys(sources) if s.startswith("hf:") and hf_local(parse_hf(s)[0]) is None]
    reason = hub_unreachable() if hub else None
    return [(s, reason) for s in hub] if reason else []


def offline_message(missing: list) -> str:
    """One line: what to download for the hf: sources that cannot be read, and where."""
    wanted = {}
    for s, _ in missing:
        name, config = parse_hf(s)
        wanted.setdefault(name, []).append(config)
    cmds = []
    for name, configs in wanted.items():
        files = HF_FILES.get(name)
        include = "".join(f" --include '{files(c)}'" for c in dict.fromkeys(configs)) if files else \
            " (and the files of " + ", ".join(str(c) for c in configs) + " its README lists)"
        cmds.append(f"`hf download {name} --repo-type dataset --include README.md{include} "
                    f"--local-dir {data_root() / name}`")
    names = ", ".join(s for s, _ in missing)
    return (f"{names} cannot be streamed: {missing[0][1]}. Download {'them' if len(missing) > 1 else 'it'} on a "
            f"machine with network with {'; '.join(cmds)} and copy the folder{'s' if len(cmds) > 1 else ''} to "
            f"the same place here ($MLX_GROW_DATA, default {data_root()}), where mlx-grow reads them offline; or "
            "train on local files with --data DIR. Nothing was written")


def open_hf(source: str, split: str = "train"):
    """A streamed `datasets` IterableDataset of `hf:NAME[:CONFIG]`: from the downloaded
    copy under data_root() when there is one, else from the Hub."""
    name, config = parse_hf(source)
    local = hf_local(name)
    if local is None and (reason := hub_unreachable()):
        raise UserError(offline_message([(source, reason)]))
    import datasets  # the user asked for a Hub dataset

    where = str(local) if local else name
    try:
        return datasets.load_dataset(where, config, split=split, streaming=True)
    except RuntimeError as e:  # e.g. a dataset script, which never runs
        msg = " ".join(str(e).split())
        raise UserError(f"data source {source}: the datasets library cannot load it ({type(e).__name__}: "
                        f"{msg[:300]}{'…' if len(msg) > 300 else ''})") from None
    except (ValueError, FileNotFoundError, ConnectionError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = (f"download its files with `{download_command(name, config)}`" if local else
                f"check the name, config and split on the dataset's Hub page ({name})")
        raise UserError(f"{source} (split {split}) cannot be opened from {where}: {first}; {hint}") from None
