import json
import os
import random

import pytest

from mlx_grow import tokenizer

EN = (
    "The history of the city begins in the early Middle Ages, when a small settlement grew up "
    "around the river crossing. By the fourteenth century it had become an important market "
    "town, and its population continued to increase throughout the following centuries."
)
RU = (
    "История города начинается в раннем Средневековье, когда у речной переправы возникло "
    "небольшое поселение. К четырнадцатому веку он стал важным торговым городом, и его "
    "население продолжало расти в последующие столетия."
)
ZH = "这座城市的历史始于中世纪早期，当时在河流渡口附近形成了一个小型定居点。"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    # Keep the built tokenizers out of the user's home cache.
    old = os.environ.get("MLX_GROW_CACHE")
    path = tmp_path_factory.mktemp("mlx-grow-cache")
    os.environ["MLX_GROW_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MLX_GROW_CACHE", None)
    else:
        os.environ["MLX_GROW_CACHE"] = old


@pytest.fixture(scope="module")
def tok23(cache_dir):
    return tokenizer.build_bvv241("2-3")


@pytest.fixture(scope="module")
def tokmax(cache_dir):
    return tokenizer.build_bvv241("max")


@pytest.fixture(scope="module", params=["2-3", "max"])
def tok(request, tok23, tokmax):
    return tok23 if request.param == "2-3" else tokmax


def test_vocab_sizes(tok23, tokmax):
    assert tok23.vocab_size == 65536
    assert tokmax.vocab_size == 131072
    assert len(tok23.token_strings()) == 65536
    assert len(tokmax.token_strings()) == 131072


def test_single_characters_are_code_points(tok):
    for ch in ["a", "\n", " ", "я", "中", "Z", "\uf900", "\ufffe"]:
        assert tok.encode(ch) == [ord(ch)], ch
    strings = tok.token_strings()
    assert strings[97] == "a" and strings[10] == "\n" and strings[32] == " "


def test_special_token_ids(tok):
    assert tok.pad_id == 0xE000
    assert tok.bos_id == 0xE001
    assert tok.eos_id == 0xE002
    assert tok.unk_id == 0xE003
    assert tok.inst_ids == (0xE000 + 12, 0xE000 + 13)
    strings = tok.token_strings()
    assert strings[0xE000 + 22] == "[FILE_SEP]"
    assert strings[0xE000 + 23] == f"<special_token_{0xE000 + 23}>"
    assert strings[0xE0FF] == f"<special_token_{0xE0FF}>"


def test_layout(tok23, tokmax):
    s23, smax = tok23.token_strings(), tokmax.token_strings()
    # n-grams fill 0xD800.. first, then 0xE100..; the longest come first.
    assert len(s23[0xD800]) == 3 and len(s23[0xE100]) >= 2
    assert len(smax[0xD800]) == max(len(s) for s in smax[0xD800:0xE000])
    assert s23[0xFFFF] == "<unused_65535>"
    assert smax[0xFFFF] == "<unused_65535>" and smax[0x1FFFF] == "<unused_131071>"
    assert len(smax[0x10000]) >= 2 and len(smax[0x1FFFE]) >= 2  # max: all slots used
    assert len(set(smax)) == len(smax)  # every id has its own string
    _, _, report = tokenizer.bvv241_layout("2-3")
    assert report["placed"] == report["candidates"] and report["dropped"] == 0


def test_spaces_separate_tokens(tok):
    ids = tok.encode(EN + " " + RU + " " + ZH + "  a  b ")
    strings = tok.token_strings()
    for i in ids:
        assert " " not in strings[i] or i == 32
    assert [i for i, s in enumerate(strings) if " " in s] == [32]  # no token holds a space


@pytest.mark.parametrize("text", [EN, RU, ZH, "hello world", "a\tb\n\nc  d ", "x = f(1, 2)  # ok", ""])
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_unknown_character(tok23, tokmax):
    assert tok23.encode("😀") == [tok23.unk_id]
    assert tok23.encode("a😀b") == [97, tok23.unk_id, 98]
    assert tokmax.encode("\ue050") == [tokmax.unk_id]  # private use: not a character id


def test_literal_special_tokens_stay_text(tok):
    text = "a</s>b [INST] hi"
    ids = tok.encode(text)
    assert tok.eos_id not in ids and tok.inst_ids[0] not in ids
    assert tok.decode(ids) == text
    ids = tok.encode(text, allow_special=True)
    assert tok.eos_id in ids and tok.inst_ids[0] in ids
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special=True) == "ab  hi"
    assert tok.encode("</s>", allow_special=True) == [0xE002]
    assert 0xE002 not in tok.encode("</s>")


def test_ngrams_are_used(tok23, tokmax):
    n23, nmax = len(tok23.encode(EN)), len(tokmax.encode(EN))
    assert n23 < len(EN) and nmax < n23
    assert any(i >= 0xD800 and i != 32 for i in tok23.encode("the"))


def test_encode_batch(tok):
    texts = [EN, RU, ZH, "</s>", ""]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(["</s>"], allow_special=True) == [[tok.eos_id]]


def test_cache_and_fingerprint(cache_dir, tok23):
    files = list((cache_dir / "tokenizers").glob("bvv241-2-3-*.json"))
    assert len(files) == 1
    again = tokenizer.build_bvv241("2-3")
    fresh = tokenizer.build_bvv241("2-3", use_cache=False)
    assert again.fingerprint == tok23.fingerprint == fresh.fingerprint
    assert len(tok23.fingerprint) == 64


def test_save_and_load_hf_dir(tmp_path, tok23):
    out = tok23.save(tmp_path / "tok")
    names = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"]
    for name in names:
        assert (out / name).is_file(), name
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<s>" and config["eos_token"] == "</s>"
    assert config["unk_token"] == "<unk>" and config["pad_token"] == "<pad>"
    text = EN + "\n" + RU + " " + ZH

    from tokenizers import Tokenizer as HFTokenizer

    raw = HFTokenizer.from_file(str(out / "tokenizer.json"))
    assert raw.encode(text, add_special_tokens=False).ids == tok23.encode(text)

    loaded = tokenizer.load_tokenizer(out)
    assert loaded.fingerprint == tok23.fingerprint
    assert loaded.encode(text) == tok23.encode(text)
    assert (loaded.bos_id, loaded.eos_id, loaded.unk_id, loaded.pad_id) == (0xE001, 0xE002, 0xE003, 0xE000)
    assert loaded.vocab_size == 65536
    assert tokenizer.load_tokenizer(out / "tokenizer.json").eos_id == 0xE002  # bare file, config next to it

    transformers = pytest.importorskip("transformers")
    for hf in (
        transformers.AutoTokenizer.from_pretrained(str(out)),
        transformers.PreTrainedTokenizerFast.from_pretrained(str(out)),
    ):
        assert hf.encode(text, add_special_tokens=False) == tok23.encode(text)
        assert hf.decode(tok23.encode(text)) == text
        assert hf.eos_token_id == 0xE002 and hf.pad_token_id == 0xE000
        assert len(hf) == 65536


def test_load_tokenizer_specs(tmp_path, tok23):
    assert tokenizer.load_tokenizer("bvv241-2-3").fingerprint == tok23.fingerprint
    assert tokenizer.load_tokenizer("2-3").vocab_size == 65536
    with pytest.raises(FileNotFoundError, match="not found"):
        tokenizer.load_tokenizer(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        tokenizer.load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="variant"):
        tokenizer.build_bvv241("4-5")
    # A bare tokenizer.json: the special tokens are found by name.
    tok23.backend.save(str(tmp_path / "only.json"))
    bare = tokenizer.load_tokenizer(tmp_path / "only.json")
    assert (bare.bos_id, bare.eos_id, bare.unk_id, bare.pad_id) == (0xE001, 0xE002, 0xE003, 0xE000)


def _corpus(path):
    rng = random.Random(0)
    words = (
        "the quick brown fox jumps over a lazy dog while many small birds sing in the old forest "
        "and people walk along the river near the market town every morning"
    ).split()
    ru = "история города начинается когда люди строят дома у реки и рынка".split()
    lines = []
    for _ in range(500):
        n = rng.randint(5, 14)
        lines.append(" ".join(rng.choice(words + ru) for _ in range(n)) + rng.choice([".", ",", "!", "?"]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_train_sentencepiece(tmp_path):
    corpus = _corpus(tmp_path / "corpus.txt")
    tok = tokenizer.train_sentencepiece([corpus], 400, tmp_path / "sp")
    assert tok.vocab_size == 400
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    for text in ["the quick brown fox", " two  spaces\nand a new line\t", "Привет, 世界 😀 </s>", ""]:
        assert tok.decode(tok.encode(text)) == text, text
    assert tok.encode("</s>", allow_special=True) == [2] and 2 not in tok.encode("</s>")
    assert len(tok.encode("the quick brown fox")) < len("the quick brown fox") / 2
    loaded = tokenizer.load_tokenizer(tmp_path / "sp")
    assert loaded.encode("the lazy dog") == tok.encode("the lazy dog") and loaded.eos_id == 2
    with pytest.raises(ValueError, match="vocab_size"):
        tokenizer.train_sentencepiece([corpus], 5000, tmp_path / "too-big")
    with pytest.raises(FileNotFoundError):
        tokenizer.train_sentencepiece([tmp_path / "nope.txt"], 400, tmp_path / "x")


def test_chars_per_token_and_stats(tok23, tokmax):
    """The characters-per-token table in docs/model.md is what these paragraphs measure."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "model.md").read_text(encoding="utf-8")
    for name, t in [("2-3", tok23), ("max", tokmax)]:
        row = re.search(rf"^\| {re.escape(name)} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", doc, re.M)
        assert row, f"docs/model.md has no characters-per-token row for {name}"
        got = [round(tokenizer.chars_per_token(t, x), 2) for x in (EN, RU, ZH)]
        assert got == [float(x) for x in row.groups()], (name, got)
    s = tokenizer.stats(tok23, "a 😀")
    assert s["characters"] == 3 and s["tokens"] == 3 and abs(s["unk_share"] - 1 / 3) < 1e-9
    assert s["chars_per_token"] == 1.0
