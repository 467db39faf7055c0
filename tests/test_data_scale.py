"""Sources at scale: nested parquet / jsonl.gz / arrow shard folders, row templates,
streamed Hub datasets (a stand-in for the Hub) with a config, a split and a token
budget, the offline message, and `data prepare` in parallel pieces that resume
after a kill."""

import gzip
import json
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import kjv_docs

from mlx_grow.base import UserError
from mlx_grow.data import corpora, encode, hf_sources
from mlx_grow.data import stream as data
from mlx_grow.data.stream import SourceSpec, prepare


@pytest.fixture(scope="module")
def tok():
    from mlx_grow.tokenizer import load_tokenizer

    return load_tokenizer("bvv241-2-3")


pytestmark = pytest.mark.usefixtures("fresh_cache")  # conftest.py



def shard_files(shard) -> dict:
    return {f: (shard.path / f).read_bytes() for f in ("train.bin", "val.bin", "train.idx.npy", "val.idx.npy")}


# --- local shard folders ---


def fineweb_like(root, docs):
    """The FineWeb-Edu layout: data/<dump>/NNN_NNNNN.parquet and sample/10BT/*.parquet, several
    row groups per file, with an extra column; plus jsonl.gz and arrow shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    a, b, c, d = docs[:10], docs[10:20], docs[20:25], docs[25:30]
    for sub, part in (("data/CC-MAIN-2024-10", a), ("sample/10BT", b)):
        (root / sub).mkdir(parents=True)
        pq.write_table(pa.table({"id": [f"x{i}" for i in range(len(part))], "text": part}),
                       root / sub / "000_00000.parquet", row_group_size=3)
    with gzip.open(root / "sample" / "10BT" / "001_00000.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t, "score": 3}) + "\n" for t in c)
    (root / "arrow").mkdir()
    table = pa.table({"text": d})
    with pa.ipc.new_stream(root / "arrow" / "data-00000-of-00002.arrow", table.schema) as w:  # as datasets writes
        w.write_table(table.slice(0, 3))
    with pa.ipc.new_file(root / "arrow" / "data-00001-of-00002.arrow", table.schema) as w:  # the file format
        w.write_table(table.slice(3))


def test_nested_parquet_jsonl_gz_and_arrow_shards_are_read_directly_by_row_group(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    docs = kjv_docs(30)
    fineweb_like(tmp_path / "fw", docs)
    files = [p.relative_to(tmp_path / "fw").as_posix() for p in corpora.folder_files(tmp_path / "fw")]
    assert files == ["arrow/data-00000-of-00002.arrow", "arrow/data-00001-of-00002.arrow",
                     "data/CC-MAIN-2024-10/000_00000.parquet", "sample/10BT/000_00000.parquet",
                     "sample/10BT/001_00000.jsonl.gz"]
    # a parquet file is never read whole: its row groups stream through iter_batches
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: pytest.fail("read a whole parquet table"))
    groups = []
    real = pq.ParquetFile.iter_batches
    monkeypatch.setattr(pq.ParquetFile, "iter_batches",
                        lambda self, **kw: (groups.append(kw.get("columns")), real(self, **kw))[1])
    got = list(corpora.documents(str(tmp_path / "fw")))
    assert got == docs[25:30] + docs[:10] + docs[10:20] + docs[20:25]
    assert groups == [["text"], ["text"]]  # only the text column is read
    # the folder prepares like any other source
    (shard,) = prepare([str(tmp_path / "fw")], "bvv241-2-3", progress=False)
    assert sum(shard.meta["documents"].values()) == 30


def test_templates_build_a_row_from_several_fields(tmp_path):
    rows = [{"question": "Who?", "answers": {"text": ["Moses", "Moses"], "answer_start": [1, 2]},
             "choices": {"label": ["A", "B"], "text": ["yes", "no"]}, "answerKey": "B", "ok": True,
             "aliases": ["a", "b"], "none": None}]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = "Q: {question}\n{choices}\nA: {answerKey} {answers[text][0]} ({aliases}) {ok}{none}"
    assert list(corpora.documents(str(path), template=t)) == ["Q: Who?\nA. yes\nB. no\nA: B Moses (a; b) yes"]
    assert corpora.template_fields(t) == ["question", "choices", "answerKey", "answers", "aliases", "ok", "none"]
    with pytest.raises(UserError, match=r"names 'missing', which the row does not have \(it has: question, "):
        list(corpora.documents(str(path), template="{missing}"))
    for bad, words in (({"source": "x", "template": "no fields"}, "names no row field"),
                       ({"source": "x", "template": "{q}", "field": "text"}, "field .* or template .*, not both"),
                       ({"source": "x", "template": "{}"}, "must name a row field"),
                       ({"source": "x", "tokens": 0}, "positive whole number"),
                       ({"source": "x", "tokens": 1.5}, "positive whole number"),
                       ({"source": "x", "split": ""}, "split must be"),
                       ({"source": "hf:", "weight": 1}, "write hf:NAME"),
                       ({"source": "x", "fields": "a"}, "unknown key.*fields.*valid: source, weight, field, "
                                                        "template, split, tokens")):
        with pytest.raises(UserError, match=words):
            SourceSpec.parse(bad, "data.sources[0]")
    assert SourceSpec.parse({"source": "x", "tokens": 2e9}, "s").tokens == 2_000_000_000
    (tmp_path / "t.txt").write_text("plain text")
    with pytest.raises(UserError, match="text file, and a template reads rows"):
        list(corpora.documents(str(tmp_path / "t.txt"), template="{text}"))
    # the mixture key of a plain source is what it was (checkpoints store read positions under it)
    assert data.DataConfig.from_dict({"sources": ["builtin:kjv"]}).mixture_key() == '[["builtin:kjv", 1.0, null]]'
    assert "tokens" in data.DataConfig.from_dict({"sources": [{"source": "a", "tokens": 5}]}).mixture_key()


# --- Hub datasets, streamed (a stand-in for the Hub) ---


class FakeHub:
    """datasets.load_dataset for streamed Hub datasets: records the calls and how many rows
    were read, and serves a datasets.IterableDataset built from a generator."""

    def __init__(self, rows):
        self.rows, self.calls, self.read = rows, [], 0

    def __call__(self, path, name=None, split=None, streaming=False, **kw):
        import datasets

        self.calls.append((path, name, split, streaming))

        def gen():
            for r in self.rows:
                self.read += 1
                yield r

        return datasets.IterableDataset.from_generator(gen)


@pytest.fixture
def hub(monkeypatch):
    import datasets

    rows = [{"question": f"Question {i}: " + t[:200], "answer": {"value": f"answer {i}"}, "id": i}
            for i, t in enumerate(kjv_docs(400))]
    fake = FakeHub(rows)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.setattr(hf_sources, "hub_unreachable", lambda: None)  # as online; the Hub's answer is simulated
    return fake


def test_hf_source_streams_with_config_split_template_and_stops_at_its_token_budget(tok, hub, monkeypatch):
    monkeypatch.setattr(data, "BLOCK_CHARS", 5000)  # small pieces, so the budget stops reading early
    monkeypatch.setattr(corpora, "BATCH_ROWS", 16)  # rows read ahead from the stream
    spec = {"source": "hf:org/qa-set:rc.nocontext", "split": "validation", "tokens": 6000,
            "template": "Q: {question}\nA: {answer[value]}"}
    (shard,) = prepare([spec], tok, progress=False, val_fraction=0.1)
    assert hub.calls == [("org/qa-set", "rc.nocontext", "validation", True)]
    assert hub.read < len(hub.rows)  # reading stopped once the budget was reached
    m = shard.meta
    tokens = sum(m["tokens"].values())
    docs = [tok.decode(d[:-1]) for d in doc_texts(shard, "train") + doc_texts(shard, "val")]
    assert tokens >= 6000 and all(d.startswith("Q: Question ") and "\nA: answer " in d for d in docs)
    last = max(int(d.split(":")[1].split()[1]) for d in docs)  # "Q: Question N: ..."
    assert sum(m["documents"].values()) == last + 1  # the documents up to the one that reached the budget
    assert tokens - len(tok.encode(hub.rows[last]["question"])) < 6000 + 20
    assert m["streamed"] and m["token_budget"] == 6000 and m["split"] == "validation"
    # cached: a second prepare reads nothing
    before = hub.read
    (again,) = prepare([spec], tok, progress=False, val_fraction=0.1)
    assert again.path == shard.path and hub.read == before
    # a plain field; a missing one is named with the row's fields
    with pytest.raises(UserError, match="has no column 'text' .*question, answer, id.*field"):
        prepare(["hf:org/qa-set"], tok, progress=False)


def doc_texts(shard, split):
    toks, starts = shard.tokens(split), shard.doc_starts(split)
    ends = list(starts[1:]) + [len(toks)]
    return [toks[a:b] for a, b in zip(starts, ends)]


def test_offline_hf_source_says_what_to_download_in_one_line(tok, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MLX_GROW_DATA", str(tmp_path / "hubdata"))
    with pytest.raises(UserError) as e:
        prepare(["hf:HuggingFaceFW/fineweb-edu:sample-10BT"], tok, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE is set" in msg and "--data DIR" in msg
    assert (f"hf download HuggingFaceFW/fineweb-edu --repo-type dataset --include README.md --include "
            f"'sample/10BT/*' --local-dir {tmp_path / 'hubdata' / 'HuggingFaceFW' / 'fineweb-edu'}") in msg
    assert not (tmp_path / "cache").exists()  # nothing was written


def test_a_downloaded_copy_of_a_hub_dataset_is_read_offline(tok, monkeypatch, tmp_path):
    """The folder `hf download --local-dir` writes (README.md with its configs, and the files)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MLX_GROW_DATA", str(tmp_path / "hubdata"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    root = tmp_path / "hubdata" / "HuggingFaceFW" / "fineweb-edu"
    (root / "sample" / "10BT").mkdir(parents=True)
    (root / "README.md").write_text(textwrap.dedent("""\
        ---
        configs:
        - config_name: sample-10BT
          data_files:
          - split: train
            path: sample/10BT/*
        ---
        """))
    pq.write_table(pa.table({"text": kjv_docs(12), "url": ["u"] * 12}), root / "sample" / "10BT" / "000_00000.parquet")
    (shard,) = prepare(["hf:HuggingFaceFW/fineweb-edu:sample-10BT"], tok, progress=False, val_fraction=0.1)
    assert sum(shard.meta["documents"].values()) == 12 and shard.meta["documents"]["val"] == 1


# --- parallel, resumable preparation ---


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in kjv_docs(120, start=200)))
    return path


def test_parallel_preparation_writes_the_same_shard_as_sequential(tok, corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "BLOCK_CHARS", 20_000)
    monkeypatch.setattr(encode, "PARALLEL_MIN_CHARS", 0)
    calls = []
    real = encode._pool
    monkeypatch.setattr(encode, "_pool", lambda *a: (calls.append(a[0]), real(*a))[1])
    (one,) = prepare([str(corpus)], tok, out_dir=tmp_path / "seq", progress=False, workers=1, val_fraction=0.05)
    assert calls == []
    (two,) = prepare([str(corpus)], tok, out_dir=tmp_path / "par", progress=False, workers=2, val_fraction=0.05)
    assert calls == [2]  # two worker processes did the work
    assert one.path.name == two.path.name and one.meta == two.meta
    assert shard_files(one) == shard_files(two)
    # whole documents by hash: the validation documents are the smallest hashes
    docs = kjv_docs(120, start=200)
    by_hash = sorted(docs, key=lambda d: encode.hashes([d])[0])[: one.meta["documents"]["val"]]
    assert sorted(tok.decode(d[:-1]) for d in doc_texts(two, "val")) == sorted(by_hash)
    assert not list((tmp_path / "par").glob(".*.parts"))  # the work folder is gone


def test_a_killed_preparation_resumes_from_its_finished_parts(tok, corpus, tmp_path, monkeypatch):
    script = textwrap.dedent(f"""
        from mlx_grow.data import stream
        stream.BLOCK_CHARS = 20_000
        stream.prepare([{str(corpus)!r}], "bvv241-2-3", out_dir={str(tmp_path / "out")!r}, progress=False,
                       workers=1)
    """)
    env = {**os.environ, "MLX_GROW_FAULT": "kill@piece:3"}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr
    (work,) = (tmp_path / "out").glob(".*.parts")
    assert sorted(p.name for p in work.glob("part-*.docs.npy")) == [f"part-{k:06d}.docs.npy" for k in range(3)]
    assert not [p for p in (tmp_path / "out").iterdir() if p.is_dir() and not p.name.startswith(".")]

    monkeypatch.setattr(data, "BLOCK_CHARS", 20_000)
    encoded = []
    real = encode.encode_piece
    monkeypatch.setattr(encode, "encode_piece", lambda docs, *a: (encoded.append(len(docs)), real(docs, *a))[1])
    said = []
    (resumed,) = prepare([str(corpus)], tok, out_dir=tmp_path / "out", progress=False, workers=1, echo=said.append)
    pieces = sum(1 for _ in encode.pieces(kjv_docs(120, start=200), 20_000))
    assert len(encoded) == pieces - 3 and any("3 finished part(s) reused" in s for s in said)
    assert not work.exists()
    monkeypatch.setattr(encode, "encode_piece", real)
    (fresh,) = prepare([str(corpus)], tok, out_dir=tmp_path / "fresh", progress=False, workers=1)
    assert shard_files(resumed) == shard_files(fresh) and resumed.meta == fresh.meta


def test_data_prepare_cli_takes_workers_template_split_and_budget(tmp_path):
    from typer.testing import CliRunner

    from mlx_grow.cli import app

    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"q": f"Question {i}?", "a": t[:300]}) + "\n" for i, t in enumerate(kjv_docs(50))))
    r = CliRunner().invoke(app, ["data", "prepare", str(qa), "--template", "{q}\n{a}", "--tokens", "2000",
                                 "--workers", "1", "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    (meta,) = [json.loads(p.read_text()) for p in (tmp_path / "s").glob("*/meta.json")]
    assert meta["template"] == "{q}\n{a}" and meta["token_budget"] == 2000
    assert 2000 <= sum(meta["tokens"].values()) < 2300 and sum(meta["documents"].values()) < 50
    r = CliRunner().invoke(app, ["data", "prepare", str(qa), "--workers", "0"])
    assert r.exit_code == 2 and "--workers must be at least 1" in r.output
    r = CliRunner().invoke(app, ["data", "prepare", str(qa), "--field", "q", "--template", "{a}"])
    assert r.exit_code == 2 and "not both" in r.output


def test_progress_shows_tokens_documents_per_second_and_time_left_on_stderr(tmp_path, corpus):
    r = subprocess.run([sys.executable, "-m", "mlx_grow.cli", "data", "prepare", str(corpus), "--out",
                        str(tmp_path / "s")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    import re

    assert re.search(r"tokenizing .* 100% [\d.]+M tokens, [\d,]+ docs/s, [\d.]+M chars/s \d+:\d\d:\d\d", r.stderr), \
        r.stderr  # tokens so far, documents/s, characters/s, time left
    assert "tokenizing" not in r.stdout


def test_grow_trains_on_a_streamed_hub_source(hub, tmp_path):
    from helpers import grow_config

    from mlx_grow.training.grow import grow

    cfg = grow_config({"source": "hf:org/qa-set", "template": "{question} {answer[value]}", "tokens": 20_000},
                      depth=2, grow={"steps_per_stage": 2})
    final, summary = grow(cfg, tmp_path / "run", progress=False, echo=lambda *a, **k: None)
    assert (final / "config.json").is_file() and len(summary) == 1
    assert hub.calls == [("org/qa-set", None, "train", True)]
    (meta,) = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "shards").glob("*/meta.json")]
    assert meta["streamed"] and meta["source"] == "hf:org/qa-set" and sum(meta["tokens"].values()) >= 20_000
