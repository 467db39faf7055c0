"""Tokenizers: the Tokenizer type and its folders (`core`), loading one by name
or path (`load`), the bvv241 family built from the shipped n-gram files
(`bvv241`), and SentencePiece training on your own text (`sentencepiece`)."""

from mlx_grow.base import check_unicode
from mlx_grow.tokenizer.bvv241 import (
    BUILD_VERSION,
    SPECIAL_BASE,
    SPECIAL_END,
    SPECIAL_TOKENS,
    VARIANTS,
    build_bvv241,
    bvv241_layout,
)
from mlx_grow.tokenizer.core import (
    MARKER,
    TOKENIZER_FILES,
    ForeignTokenizer,
    Tokenizer,
    as_tokenizer,
    chars_per_token,
    check_vocab,
    copy_tokenizer,
    library_write,
    split_affixes,
    stats,
    write_marker,
)
from mlx_grow.tokenizer.load import load_tokenizer
from mlx_grow.tokenizer.sentencepiece import train_sentencepiece

__all__ = [
    "BUILD_VERSION", "MARKER", "SPECIAL_BASE", "SPECIAL_END", "SPECIAL_TOKENS", "TOKENIZER_FILES", "VARIANTS",
    "ForeignTokenizer", "Tokenizer", "as_tokenizer", "build_bvv241", "bvv241_layout", "chars_per_token",
    "check_unicode", "check_vocab", "copy_tokenizer", "library_write", "load_tokenizer",
    "split_affixes", "stats", "train_sentencepiece", "write_marker",
]
