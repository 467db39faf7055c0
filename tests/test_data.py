"""Data: built-in corpora, shards, batches, mixtures, validation split, errors, CLI."""

import itertools
import json
import logging
import re

import numpy as np
import pytest

from mlx_grow.data import builtin_corpora, corpora
from mlx_grow.data import stream as data
from mlx_grow.data.contamination import contamination
from mlx_grow.data.stream import DataConfig, Shard, open_stream, prepare


@pytest.fixture(scope="module")
def tok():
    from mlx_grow.tokenizer import load_tokenizer

    return load_tokenizer("bvv241-2-3")


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.getbasetemp() / "mlx-grow-cache"
    monkeypatch.setenv("MLX_GROW_CACHE", str(root))
    return root


def jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def kjv_docs(n, start=0):
    return list(itertools.islice(corpora.documents("builtin:kjv"), start, start + n))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """40 KJV chapters plus documents with special-token strings written as text."""
    d = tmp_path_factory.mktemp("small")
    odd = ["An HTML <s>tag</s> and a literal </s> and [INST] stay text.", "Ends with </s>"]
    return jsonl(d / "small.jsonl", kjv_docs(40) + odd), kjv_docs(40) + odd


def doc_texts(tok, shard, split):
    toks, starts = shard.tokens(split), shard.doc_starts(split)
    ends = list(starts[1:]) + [len(toks)]
    return [toks[a:b] for a, b in zip(starts, ends)]


# --- built-in corpora ---


def test_builtin_corpora_ship_two_domains():
    kjv, shk = list(corpora.documents("builtin:kjv")), list(corpora.documents("builtin:shakespeare"))
    assert len(kjv) == 1189 and kjv[0].startswith("Genesis 1\n\nIn the beginning God created")
    assert len(shk) > 900 and any("HAMLET" in d for d in shk)
    assert sum(map(len, kjv)) > 4_000_000 and sum(map(len, shk)) > 5_000_000
    assert not any("gutenberg" in d.lower() for d in shk)
    size = sum(builtin_corpora._asset(n).stat().st_size for n in ("kjv.jsonl.gz", "shakespeare.jsonl.gz"))
    assert size < 4_000_000
    assert (builtin_corpora._asset("SOURCES.md")).exists()


def test_optional_corpus_names_its_package(monkeypatch):
    monkeypatch.setattr(builtin_corpora, "FORTUNE_DIRS", ("/nonexistent",))
    with pytest.raises(ValueError, match="apt-get install fortunes-ru"):
        next(corpora.documents("builtin:fortunes-ru"))
    with pytest.raises(ValueError, match="unknown built-in corpus 'nope'"):
        next(corpora.documents("builtin:nope"))


def test_fortunes_reader_strips_colour_codes(tmp_path, monkeypatch):
    (tmp_path / "ru").mkdir()
    (tmp_path / "ru" / "a").write_text("Первая мысль.\n%\n\x1b[32mВторая\x1b[m мысль.\n%\n", encoding="utf-8")
    (tmp_path / "ru" / "a.dat").write_bytes(b"\x00\x01")
    monkeypatch.setattr(builtin_corpora, "FORTUNE_DIRS", (str(tmp_path),))
    assert list(corpora.documents("builtin:fortunes-ru")) == ["Первая мысль.", "Вторая мысль."]


# --- shards ---


def test_shards_round_trip_and_keep_special_strings_as_text(tok, small):
    path, texts = small
    (shard,) = prepare([str(path)], tok, progress=False)
    assert shard.meta["dtype"] == "uint16" and shard.tokens().dtype == np.uint16
    sep = tok.backend.token_to_id("</s>")
    got = doc_texts(tok, shard, "train") + doc_texts(tok, shard, "val")
    assert len(got) == len(texts) == shard.meta["documents"]["train"] + shard.meta["documents"]["val"]
    for ids in got:  # every document ends with the one separator id, and only there
        assert ids[-1] == sep and sep not in ids[:-1]
    decoded = sorted(tok.decode(ids[:-1]) for ids in got)
    assert decoded == sorted(texts)
    odd = [ids for ids in got if tok.decode(ids[:-1]).startswith("An HTML")][0]
    for special in ("<s>", "[INST]"):
        assert tok.backend.token_to_id(special) not in odd


def test_cache_is_reused_and_keyed_by_content(tok, small, tmp_path):
    path, texts = small
    (a,) = prepare([str(path)], tok, progress=False)
    mtime = (a.path / "train.bin").stat().st_mtime_ns
    (b,) = prepare([str(path)], tok, progress=False)
    assert b.path == a.path and (b.path / "train.bin").stat().st_mtime_ns == mtime
    other = jsonl(tmp_path / "small.jsonl", texts[:-1] + ["changed"])
    (c,) = prepare([str(other)], tok, progress=False)
    assert c.path != a.path
    (d,) = prepare([str(path)], tok, progress=False, separator="<s>")
    assert d.path != a.path and d.meta["separator_id"] == tok.backend.token_to_id("<s>")


def test_validation_split_is_whole_documents_never_in_training(tok, small):
    path, texts = small
    (shard,) = prepare([str(path)], tok, progress=False, val_fraction=0.1)
    train = {tok.decode(d) for d in doc_texts(tok, shard, "train")}
    val = {tok.decode(d) for d in doc_texts(tok, shard, "val")}
    assert len(val) == round(0.1 * len(texts)) and not train & val
    (again,) = prepare([str(path)], tok, progress=False, val_fraction=0.1)
    assert {tok.decode(d) for d in doc_texts(tok, again, "val")} == val


def test_text_files_folders_and_long_documents(tok, tmp_path):
    (tmp_path / "corpus").mkdir()
    book = "\n\n".join(kjv_docs(30))  # ~100k chars: cut into sections at blank lines
    (tmp_path / "corpus" / "book.txt").write_text(book, encoding="utf-8")
    (tmp_path / "corpus" / "more.jsonl").write_text(json.dumps({"body": "Short one."}) + "\n")
    docs = list(corpora.documents(str(tmp_path / "corpus"), field="body"))
    assert len(docs) == 3 and "".join(docs[:2]) == book and max(map(len, docs)) <= corpora.SECTION_CHARS
    with pytest.raises(ValueError, match="no text field 'text'.*body"):
        list(corpora.documents(str(tmp_path / "corpus")))


def test_parquet_and_datasets_dir(tok, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["first doc", "second doc"]}), tmp_path / "x.parquet")
    assert list(corpora.documents(str(tmp_path / "x.parquet"), field="content")) == ["first doc", "second doc"]
    from datasets import Dataset

    Dataset.from_list([{"text": "alpha"}, {"text": "beta"}]).save_to_disk(str(tmp_path / "ds"))
    assert list(corpora.documents(str(tmp_path / "ds"))) == ["alpha", "beta"]


# --- bad input ---


def test_non_utf8_file_is_named_with_offset_and_can_be_skipped(tok, tmp_path, caplog):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "good.txt").write_text("Good text here. " * 50, encoding="utf-8")
    (tmp_path / "c" / "bad.txt").write_bytes("héllo ".encode() + b"\xff rest")
    with pytest.raises(ValueError, match=r"bad\.txt is not UTF-8 text: invalid byte at offset 7.*--skip-bad"):
        prepare([str(tmp_path / "c")], tok, progress=False)
    with caplog.at_level(logging.WARNING, logger="mlx_grow.data"):
        (shard,) = prepare([str(tmp_path / "c")], tok, progress=False, skip_bad_files=True, val_fraction=0)
    assert "skipping" in caplog.text and "bad.txt" in caplog.text
    assert shard.meta["documents"]["train"] == 1
    assert not list(tmp_path.rglob(".*tmp-*"))


def test_failed_preparation_leaves_no_shard(tok, tmp_path, monkeypatch):
    src = jsonl(tmp_path / "f.jsonl", kjv_docs(5, start=100))
    out = tmp_path / "out"
    monkeypatch.setattr(data, "BLOCK_CHARS", 1000)  # several encode calls; the second one fails
    calls = []
    real = tok.encode_batch

    def flaky(texts, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return real(texts, **kw)

    monkeypatch.setattr(tok, "encode_batch", flaky)
    with pytest.raises(RuntimeError):
        prepare([str(src)], tok, out_dir=out, progress=False)
    assert not [p for p in out.iterdir() if p.is_dir()]
    monkeypatch.setattr(tok, "encode_batch", real)
    (shard,) = prepare([str(src)], tok, out_dir=out, progress=False)
    assert shard.meta["documents"]["train"] + shard.meta["documents"]["val"] == 5


def test_empty_short_and_unk_corpora(tok, tmp_path, caplog):
    (tmp_path / "empty.txt").write_text("  \n\n ")
    with pytest.raises(ValueError, match="has no text"):
        prepare([str(tmp_path / "empty.txt")], tok, progress=False)
    short = jsonl(tmp_path / "short.jsonl", ["one short document", "and another"])
    cfg = DataConfig.from_dict({"sources": [str(short)], "val_fraction": 0})
    with pytest.raises(ValueError, match=r"fewer than one context of seq_len \+ 1 = 129"):
        open_stream(cfg, tok, 128, 4, seed=0, progress=False)
    with pytest.raises(ValueError, match="one document, and a validation split needs two"):
        prepare([str(jsonl(tmp_path / "one.jsonl", ["a single document"]))], tok, progress=False)
    emoji = jsonl(tmp_path / "emoji.jsonl", ["😀🎉🚀 " * 20, "🙂🙃 " * 20])
    with caplog.at_level(logging.WARNING, logger="mlx_grow.data"):
        prepare([str(emoji)], tok, progress=False)
    assert "are <unk>" in caplog.text and "emoji.jsonl" in caplog.text


def test_config_is_strict(tok):
    with pytest.raises(ValueError, match="unknown key.*sourcez"):
        DataConfig.from_dict({"sourcez": []})
    with pytest.raises(ValueError, match=r"colour.*sources\[0\]"):
        DataConfig.from_dict({"sources": [{"source": "builtin:kjv", "colour": 1}]})
    with pytest.raises(ValueError, match="instruction_files is empty"):
        DataConfig.from_dict({"instruction_ratio": 0.1})
    cfg = DataConfig.from_dict({"sources": ["builtin:kjv"], "stages": [["builtin:kjv"], ["builtin:shakespeare"]]})
    assert [s.source for s in cfg.mixture(0)] == ["builtin:kjv"]
    assert [s.source for s in cfg.mixture(5)] == ["builtin:shakespeare"]
    assert [s.source for s in DataConfig().mixture(0)] == ["builtin:default"]


# --- batches ---


@pytest.fixture(scope="module")
def stream_cfg(small):
    return DataConfig.from_dict({"sources": [str(small[0])], "val_fraction": 0.1})


def test_batches_are_deterministic_and_resumable(tok, stream_cfg):
    s = open_stream(stream_cfg, tok, 64, 8, seed=1, progress=False)
    b = s.batch(7)
    assert b.shape == (8, 65) and b.dtype == np.int32
    assert np.array_equal(b, open_stream(stream_cfg, tok, 64, 8, seed=1, progress=False).batch(7))
    assert not np.array_equal(b, open_stream(stream_cfg, tok, 64, 8, seed=2, progress=False).batch(7))
    assert not np.array_equal(b, s.batch(8))
    halves = [s.batch(7, rank=r, world=2) for r in range(2)]
    assert np.array_equal(np.concatenate(halves), b)
    with pytest.raises(ValueError, match="split evenly"):
        s.batch(0, rank=0, world=3)


def test_one_epoch_visits_every_window_once(tok, stream_cfg):
    s = open_stream(stream_cfg, tok, 64, 8, seed=3, progress=False)
    train = s.shards[0].tokens("train")
    n = (len(train) - 64) // 64  # windows of 65 tokens at a stride of 64
    windows = {train[k * 64 : k * 64 + 65].tobytes(): k for k in range(n)}
    rows = np.concatenate([s.batch(i) for i in range(n // 8)]).astype(np.uint16)
    seen = [windows[r.tobytes()] for r in rows]  # KeyError if a row is not a window
    assert len(set(seen)) == len(seen) == n - n % 8
    assert seen != sorted(seen)  # shuffled


def test_validation_batches_come_from_held_out_documents(tok, stream_cfg):
    s = open_stream(stream_cfg, tok, 64, 8, seed=1, progress=False)
    v = s.val_batches(3)
    assert len(v) == 3 and v[0].shape == (8, 65)
    assert all(np.array_equal(a, b) for a, b in zip(v, open_stream(stream_cfg, tok, 64, 8, seed=9,
                                                                     progress=False).val_batches(3)))
    train, val = s.shards[0].tokens("train").tobytes(), s.shards[0].tokens("val").tobytes()
    for row in v[0]:
        seg = row[:40].astype(np.uint16).tobytes()
        assert seg in val and seg not in train


def test_mixture_ratios_hold(tok, tmp_path):
    en = jsonl(tmp_path / "en.jsonl", kjv_docs(10))
    ru = jsonl(tmp_path / "ru.jsonl", ["Москва " + "и снова текст по-русски, " * 40 + str(i) for i in range(20)])
    cfg = DataConfig.from_dict({"sources": [str(en), {"source": str(ru), "weight": 3}], "val_fraction": 0})
    s = open_stream(cfg, tok, 32, 64, seed=0, progress=False)
    rows = np.concatenate([s.batch(i) for i in range(40)])
    share = np.mean([bool(re.search("[а-яА-Я]", tok.decode(r))) for r in rows])
    sigma = (0.75 * 0.25 / len(rows)) ** 0.5
    assert abs(share - 0.75) < 4 * sigma


def test_instruction_share_uses_control_tokens(tok, tmp_path, small):
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": f"What is {i} plus [INST] one?", "answer": f"It is {i + 1}."})
                          + "\n" for i in range(200)))
    (inst,) = [data.prepare_source(str(qa), tok, instruction=True, progress=False)]
    first = inst.tokens("train")[: inst.doc_starts("train")[1]]
    a, b = tok.backend.token_to_id("[INST]"), tok.backend.token_to_id("[/INST]")
    assert first[0] == a and list(first).count(a) == 1 and list(first).count(b) == 1  # "[INST]" in text stays text
    assert re.fullmatch(r"\[INST\] What is (\d+) plus \[INST\] one\? \[/INST\] It is \d+\.</s>", tok.decode(first))
    cfg = DataConfig.from_dict({"sources": [str(small[0])], "instruction_files": [str(qa)],
                                "instruction_ratio": 0.5, "val_fraction": 0.05})
    s = open_stream(cfg, tok, 32, 32, seed=0, progress=False)
    rows = np.concatenate([s.batch(i) for i in range(10)])
    share = np.mean([(r == b).any() or (r == a).any() for r in rows])
    assert 0.3 < share < 0.7


def test_default_stream_uses_builtin_corpus(tok):
    s = open_stream(DataConfig(), tok, 128, 4, seed=0, progress=False)
    assert [sh.meta["source"] for sh in s.shards] == ["builtin:default"]
    assert tok.decode(s.batch(0)[0]).strip()


# --- contamination and CLI ---


def test_contamination_finds_planted_item_only(tok, small, tmp_path):
    path, texts = small
    planted = " ".join(texts[3].split()[20:40])
    task = tmp_path / "task.jsonl"
    task.write_text(json.dumps({"question": planted, "choices": ["a", "b"], "answer": 0}) + "\n"
                    + json.dumps({"question": "Which quantum chromodynamics lattice gauge result holds for "
                                  "heavy quark potentials at finite temperature?", "choices": ["x"], "answer": "A"})
                    + "\n")
    (shard,) = prepare([str(path)], tok, progress=False, val_fraction=0)
    rep = contamination([shard.path], task, n=13, tokenizer=tok)
    assert rep["items"] == 2 and rep["contaminated"] == 1
    assert rep["per_item"][0]["question"] and not rep["per_item"][1]["question"]
    assert rep["per_item"][0]["answer"] is None  # a one-word answer is not checked


def test_cli_prepare_and_info(tok, small, tmp_path):
    from typer.testing import CliRunner

    from mlx_grow.cli import app

    runner = CliRunner()
    out = tmp_path / "shards"
    r = runner.invoke(app, ["data", "prepare", str(small[0]), "--out", str(out), "--val-fraction", "0.05"])
    assert r.exit_code == 0, r.output
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    assert Shard(folder).meta["documents"]["val"] == 2
    sh = Shard(folder)
    words = tok.decode(sh.tokens()[sh.doc_starts()[0] : sh.doc_starts()[1]]).split()
    task = tmp_path / "t.json"
    task.write_text(json.dumps([{"question": " ".join(words[30:50]), "choices": ["yes", "no"], "answer": 0}]))
    r = runner.invoke(app, ["data", "info", str(folder), "--against", str(task)])
    assert r.exit_code == 0, r.output
    assert "documents" in r.output and "1 of 1 items" in r.output
    r = runner.invoke(app, ["data", "info", str(tmp_path / "missing.txt")])
    assert r.exit_code == 2 and "not found" in r.output


def test_mlx_lm_folder_trains_on_train_validates_on_valid_never_reads_test(tok, tmp_path, monkeypatch):
    """An mlx-lm data folder (train/valid/test.jsonl): train.jsonl is the training split,
    valid.jsonl the validation split, test.jsonl is never opened; prepare, data info and
    a grow run say so."""
    from typer.testing import CliRunner

    from mlx_grow.cli import app

    d = tmp_path / "lm"
    d.mkdir()
    train, valid, test = kjv_docs(30), kjv_docs(4, start=30), ["TEST ONLY " + t for t in kjv_docs(3, start=40)]
    jsonl(d / "train.jsonl", train), jsonl(d / "valid.jsonl", valid), jsonl(d / "test.jsonl", test)
    opened = []
    real = corpora.file_documents
    monkeypatch.setattr(corpora, "file_documents", lambda p, *a, **k: (opened.append(p.name), real(p, *a, **k))[1])
    (shard,) = prepare([str(d)], tok, progress=False, val_fraction=0.25)
    assert "test.jsonl" not in opened
    assert [tok.decode(x[:-1]) for x in doc_texts(tok, shard, "val")] == valid  # less the separator
    assert [tok.decode(x[:-1]) for x in doc_texts(tok, shard, "train")] == train
    note = data.split_note(shard.meta)
    assert "train.jsonl" in note and "validates on valid.jsonl" in note and "test.jsonl is never read" in note

    r = CliRunner().invoke(app, ["data", "info", str(d)])
    assert r.exit_code == 0 and "test.jsonl is never read" in r.output, r.output
    # a folder without valid.jsonl holds out val_fraction of train.jsonl, and says so
    (d / "valid.jsonl").unlink()
    (shard,) = prepare([str(d)], tok, progress=False, val_fraction=0.1)
    assert shard.meta["documents"]["val"] == 3 and "holds out 10% of train.jsonl" in data.split_note(shard.meta)
    assert "test.jsonl" not in opened


def test_grow_on_an_mlx_lm_folder_says_how_it_is_split(tmp_path):
    from helpers import grow_config

    from mlx_grow.training.grow import grow

    d = tmp_path / "lm"
    d.mkdir()
    jsonl(d / "train.jsonl", kjv_docs(20)), jsonl(d / "valid.jsonl", kjv_docs(3, start=20))
    (d / "test.jsonl").write_text("not json at all\n")  # would fail if anything read it
    said = []
    grow(grow_config(str(d), depth=2, grow={"steps_per_stage": 1}), tmp_path / "run", progress=False,
         echo=lambda m, *a, **k: said.append(str(m)))
    assert any("mlx-lm data folder" in m and "test.jsonl is never read" in m for m in said), said


def test_one_reader_of_json_rows(tmp_path):
    """io.read.json_rows reads data rows, task files and text files alike: a .json list, or a
    .jsonl(.gz) line by line; every problem is one line naming the file (and the line)."""
    import gzip

    from mlx_grow.io.read import json_rows

    rows = [{"text": "a"}, {"text": "b\u2028c"}]  # U+2028 inside a string is not a line break
    (tmp_path / "r.json").write_text(json.dumps(rows))
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n")
    with gzip.open(tmp_path / "r.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("r.json", "r.jsonl", "r.jsonl.gz"):
        assert list(json_rows(tmp_path / name)) == rows, name
    (tmp_path / "d.json").write_text('{"text": "a"}')
    with pytest.raises(ValueError, match=r"d\.json must hold a JSON list of rows .*got an object"):
        list(json_rows(tmp_path / "d.json"))
    (tmp_path / "b.jsonl").write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"b\.jsonl line 2 is not valid JSON"):
        list(json_rows(tmp_path / "b.jsonl"))
    (tmp_path / "u.jsonl").write_bytes(b'{"text": "a"}\n{"text": "\xff"}\n')
    with pytest.raises(ValueError, match=r"cannot read data file .*u\.jsonl: it is not UTF-8 text \(invalid byte "
                                         r"0xff at offset 24\)"):
        list(json_rows(tmp_path / "u.jsonl", "data file"))
