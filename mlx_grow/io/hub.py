"""Hub ids (`org/name`, as mlx-lm takes them): where a model is read, an existing
local path wins; a missing path shaped `org/name` is a Hub repository, fetched by
huggingface_hub into its usual cache (HF_HUB_CACHE / HF_HOME) and read from that
cache offline. Any other missing path stays a missing local path (the caller says
so), never a network call."""

import re
from pathlib import Path

from mlx_grow.base import UserError

# What a model needs: configs, safetensors weights and tokenizer files; never code.
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model"]
# PyTorch checkpoints, fetched for import only when the repository has no safetensors.
TORCH_FILES = ["*.bin", "*.pt", "*.pth"]
NOT_WEIGHTS = ["optimizer.pt", "scheduler.pt", "training_args.bin", "rng_state*"]

_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
REPO_ID = re.compile(rf"{_PART}/{_PART}")
FILE_SUFFIXES = {".json", ".jsonl", ".safetensors", ".bin", ".pt", ".pth", ".npy", ".npz", ".txt", ".yaml",
                 ".yml", ".gguf", ".ckpt", ".model", ".gz", ".parquet", ".arrow", ".md"}


def is_hub_id(spec) -> bool:
    """Shaped like a Hub repository id: `org/name`, two parts of letters, digits, `-`,
    `_` and `.`, not ending in a file suffix. Says nothing of whether it exists."""
    s = str(spec)
    return (REPO_ID.fullmatch(s) is not None and "--" not in s and ".." not in s
            and Path(s).suffix.lower() not in FILE_SUFFIXES)


def resolve(spec, revision=None, checkpoint: bool = False, strict: bool = True) -> Path:
    """The local path behind `spec`: an existing path as it is; a Hub id's snapshot
    folder in the cache (downloaded when online); any other missing path as it is,
    for the caller's "does not exist". `checkpoint`: for convert import / inspect,
    which also read PyTorch .bin / .pt weights when the repository has no safetensors.
    A `revision` with a local path is an error, or ignored when not `strict` (one
    --revision for several models, some local)."""
    s = str(spec)
    path = Path(s).expanduser()
    if path.exists() or not is_hub_id(s):
        if revision is not None and strict:
            where = "is a local path" if path.exists() else "is not a Hub id (org/name) and does not exist"
            raise UserError(f"--revision {revision} applies to a Hub id, but {s} {where}")
        return path
    snap = download(s, revision, MODEL_FILES)
    if checkpoint and not any(snap.glob("*.safetensors")) and not (snap / "experts").is_dir():
        snap = download(s, revision, TORCH_FILES)
    return snap


def download(repo_id: str, revision, patterns) -> Path:
    """huggingface_hub's snapshot of `repo_id` (files matching `patterns`) in its cache:
    fetched when online, the cached copy offline or when the Hub cannot be reached."""
    try:
        import huggingface_hub
        from huggingface_hub import constants, errors
    except ImportError:
        raise UserError(f"{repo_id} is not a local path and huggingface_hub is not installed to fetch it "
                        "from the Hub: pip install huggingface_hub") from None
    at = f" at revision {revision}" if revision else ""
    tried = f"{repo_id} is not a local path, so it was looked up as a Hub repository{at}"
    cache = constants.HF_HUB_CACHE
    offline = constants.HF_HUB_OFFLINE

    def get(local: bool) -> Path:
        return Path(huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                                      ignore_patterns=NOT_WEIGHTS, local_files_only=local))

    def not_cached(why) -> UserError:
        if offline:
            return UserError(f"{tried}: offline (HF_HUB_OFFLINE is set) and it is not in the Hugging Face cache "
                             f"{cache}: unset HF_HUB_OFFLINE to download it once, or give a local folder")
        return UserError(f"{tried}: the Hub could not be reached ({why}) and it is not in the Hugging Face cache "
                         f"{cache}: check the connection (or a proxy), or give a local folder")

    try:
        return get(offline)
    except errors.GatedRepoError:  # before RepositoryNotFoundError, its base class
        raise UserError(f"{tried}: it is a gated repository: accept its licence on its Hub page, then log in "
                        "with `hf auth login` (or set HF_TOKEN) as that account") from None
    except errors.RepositoryNotFoundError:
        raise UserError(f"{tried}: no such repository on the Hub (or it is private): check the id, or for a "
                        "private repository log in with `hf auth login` (or set HF_TOKEN)") from None
    except errors.RevisionNotFoundError:
        raise UserError(f"{tried}: the repository has no revision {revision!r}: give a branch, tag or commit "
                        "of it, or leave out --revision for main") from None
    except errors.LocalEntryNotFoundError as e:  # also an incomplete cached snapshot
        if type(e).__name__ == "IncompleteSnapshotError":
            raise UserError(f"{tried}: its copy in the Hugging Face cache {cache} is incomplete and the Hub "
                            "cannot be reached: download it again online") from None
        raise not_cached(type(e.__cause__ or e).__name__) from None
    except errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403, 404):
            raise UserError(f"{tried}: the Hub refused it ({status}): check the id, or log in with `hf auth "
                            "login` (or set HF_TOKEN) if it is private") from None
        error = e
    except OSError as e:  # a connection problem the library let through
        error = e
    try:  # the Hub failed in some other way: the cache may still hold it
        return get(True)
    except errors.LocalEntryNotFoundError:
        raise not_cached(type(error).__name__) from None
