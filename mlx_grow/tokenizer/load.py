"""Loading a tokenizer: a bvv241 name (built, or read from the cache), a Hugging
Face tokenizer folder, or a tokenizer.json file."""

from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from mlx_grow.base import UserError, brief
from mlx_grow.io.read import read_json
from mlx_grow.tokenizer.bvv241 import VARIANTS, build_bvv241
from mlx_grow.tokenizer.core import Tokenizer

_COMMON = {  # guesses for a bare tokenizer.json without a config
    "bos": ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"),
    "eos": ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "<|im_end|>"),
    "unk": ("<unk>", "<|unk|>"),
    "pad": ("<pad>", "<|pad|>", "[PAD]"),
}


def _token_content(tok):
    return tok.get("content") if isinstance(tok, dict) else tok


def load_tokenizer(spec, save_cache: bool = True) -> Tokenizer:
    """Load "bvv241-2-3" / "bvv241-max" (or "2-3" / "max"), a Hugging Face
    tokenizer folder, or a tokenizer.json file. save_cache=False writes nothing
    (a bvv241 tokenizer not in the cache is built in memory only)."""
    if isinstance(spec, Tokenizer):
        return spec
    s = str(spec)
    if s in VARIANTS or (s.startswith("bvv241-") and s[len("bvv241-"):] in VARIANTS):
        return build_bvv241(s, save=save_cache)
    path = Path(s).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"tokenizer {brief(s)} not found: give 'bvv241-2-3', 'bvv241-max', "
            "a Hugging Face tokenizer folder or a tokenizer.json file"
        )
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"{path} has no tokenizer.json: only 'fast' Hugging Face tokenizers are supported "
            "(save one with transformers' tokenizer.save_pretrained)"
        )
    try:
        backend = HFTokenizer.from_file(str(file))
    except Exception as e:
        raise UserError(f"{file} is not a tokenizers JSON file ({e})") from None
    config = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = file.parent / name
        if f.is_file():
            config.update(read_json(f, dict))
    known = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
    roles = {}
    for role, guesses in _COMMON.items():
        key = f"{role}_token"
        if key in config:  # the config wins, even when it says null
            roles[role] = _token_content(config[key])
            if not isinstance(roles[role], (str, type(None))):
                raise UserError(f"{file.parent}: {key} must be a token string, got {brief(roles[role])}")
        else:
            roles[role] = next((g for g in guesses if g in known), None)
    if roles["unk"] is None:
        roles["unk"] = getattr(backend.model, "unk_token", None)
    return Tokenizer(backend, **roles, name=str(path))

