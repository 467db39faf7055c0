"""SentencePiece training on your own text, saved as a Hugging Face tokenizer
folder that `tokenizers` (and so mlx-grow, transformers and mlx-lm) loads."""

import os
import shutil
import tempfile
from pathlib import Path

from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from mlx_grow.base import UserError, brief
from mlx_grow.tokenizer.core import Tokenizer


def train_sentencepiece(corpus_paths, vocab_size: int, out_dir, model_type: str = "bpe") -> Tokenizer:
    """Train a SentencePiece model on text files and save it as a Hugging Face
    tokenizer folder (special tokens <pad> <s> </s> <unk> = ids 0..3).

    Byte fallback is on, so any text round-trips through encode/decode. With
    model_type="unigram" and a corpus without '<' or '>', a literal "<s>" in
    text can still come out as the control token (use "bpe" to avoid this)."""
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise UserError(f"model_type must be 'bpe' or 'unigram', not {brief(model_type)}")
    paths = [Path(p) for p in ([corpus_paths] if isinstance(corpus_paths, (str, Path)) else corpus_paths)]
    if not paths:
        raise UserError("give at least one corpus text file")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"corpus file {p} does not exist")
    if vocab_size < 300:
        raise UserError(
            f"vocab_size {vocab_size} is too small: it must hold 256 byte tokens, 4 specials and pieces"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "sp")
        try:
            spm.SentencePieceTrainer.train(
                input=[str(p) for p in paths], model_prefix=prefix, vocab_size=vocab_size,
                model_type=model_type, character_coverage=1.0, byte_fallback=True,
                normalization_rule_name="identity", remove_extra_whitespaces=False,
                add_dummy_prefix=True, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
                pad_piece="<pad>", bos_piece="<s>", eos_piece="</s>", unk_piece="<unk>",
                input_sentence_size=2_000_000, shuffle_input_sentence=True,
                num_threads=os.cpu_count() or 1, minloglevel=2,
            )  # fmt: skip
        except RuntimeError as e:
            raise UserError(
                f"SentencePiece training failed ({e}); with a small corpus, lower vocab_size or add text"
            ) from None
        shutil.copy(prefix + ".model", out / "sentencepiece.model")
    sp = spm.SentencePieceProcessor(model_file=str(out / "sentencepiece.model"))
    backend = _sentencepiece_to_hf(sp, model_type)
    tok = Tokenizer(backend, bos="<s>", eos="</s>", unk="<unk>", pad="<pad>", name=str(out))
    tok.save(out)
    return tok


def _sentencepiece_to_hf(sp, model_type: str) -> HFTokenizer:
    """Rebuild a SentencePiece model as a `tokenizers` model (Llama-style)."""
    n = sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(n)]
    normal = [not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i)) for i in range(n)]
    if model_type == "bpe":
        vocab = {p: i for i, p in enumerate(pieces)}
        merges = []
        # SP BPE pieces are in merge order; every split into two normal pieces is a merge.
        for i in sorted((i for i in range(n) if normal[i]), key=lambda i: -sp.get_score(i)):
            p = pieces[i]
            local = [(p[:k], p[k:]) for k in range(1, len(p))]
            local = [(a, b) for a, b in local if all(h in vocab and normal[vocab[h]] for h in (a, b))]
            merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
        model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    else:
        low = -1e6  # control and byte pieces never match text (bytes come from fallback)
        scores = [sp.get_score(i) if normal[i] else low for i in range(n)]
        model = models.Unigram(list(zip(pieces, scores)), unk_id=sp.unk_id(), byte_fallback=True)
    backend = HFTokenizer(model)
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")  # like SP's words
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.add_special_tokens([AddedToken(pieces[i], special=True, normalized=False) for i in range(4)])
    return backend

