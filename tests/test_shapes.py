"""Random shapes for every reader of our own files and configs (issue 24): wrong
types anywhere in a real file, values of every JSON type, deep nesting, YAML
aliases and duplicate keys, truncation and bytes that are not UTF-8. Each command
that reads the file ends in success or in one `error:` line (exit 1 or 2), never a
traceback; each reader used without the command raises UserError or OSError only.

The world is tests/hostile_world.py's (models, a merge, exports, a finished grow run, a
corpus); each example runs in a fresh copy of the folder it touches."""

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hostile_world import alias_bomb, reproduction  # noqa: E402

# Per reader: under 30 s for the whole file on a 2-core CPU, the same examples every run.
# MLX_GROW_SHAPES=500 searches longer, with fresh examples each time.
EXAMPLES = int(os.environ.get("MLX_GROW_SHAPES", 6))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize="MLX_GROW_SHAPES" not in os.environ,
                    database=None, suppress_health_check=list(HealthCheck))

# Keys our files use: random objects built from them reach deeper than random names do.
KEYS = ["files", "substrate", "tokenizer", "lineage", "experts", "dir", "combiner", "config", "from", "depth", "train",
        "grow", "model", "lr", "stages", "settings", "part", "key", "label", "final", "run", "val_loss", "curve",
        "tokens", "weight_map", "model_args", "merge", "dtype", "meta", "name", "source", "text", "question",
        "choices", "answer", "unk_token", "summary", "run", "stage", "hidden_size", "kind", "bits"]
scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(
    st.sampled_from(KEYS) | st.text(max_size=4), c, max_size=3), max_leaves=8)


def paths(doc, prefix=()):
    """Every key path into a parsed document."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:4]):
            yield from paths(v, (*prefix, i))


def replaced(doc, path, value, drop=False):
    if not path:
        return value
    doc = json.loads(json.dumps(doc)) if not isinstance(doc, (dict, list)) else doc
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if drop and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


@st.composite
def hostile_json(draw, valid: bytes, lines: bool = False):
    """Bytes for a JSON file (a .jsonl when `lines`) that held `valid`."""
    how = draw(st.sampled_from(["edit", "edit", "edit", "value", "deep", "bytes", "cut"]))
    if how == "bytes":  # not UTF-8
        at = draw(st.integers(0, len(valid)))
        return valid[:at] + b"\xff\xfe" + valid[at:]
    if how == "cut":
        return valid[: draw(st.integers(0, len(valid)))]
    if how == "deep":
        n = draw(st.sampled_from([65, 500, 100_000]))
        inner = "[" * n + "]" * n
        return (draw(st.sampled_from(["{}", '{"files": {}, "x": {}}', "{}\n{}"])).replace("{}", inner, 1)).encode()
    if how == "value":
        return json.dumps(draw(values)).encode()
    rows = [json.loads(x) for x in valid.decode().splitlines() if x.strip()] if lines else [json.loads(valid)]
    i = draw(st.integers(0, len(rows) - 1))
    path = draw(st.sampled_from(list(paths(rows[i]))))
    rows[i] = replaced(rows[i], path, draw(values), drop=draw(st.booleans()))
    return "\n".join(json.dumps(r) for r in rows).encode() if lines else json.dumps(rows[0]).encode()


@st.composite
def hostile_yaml(draw, valid: str):
    """Text for a YAML config that held `valid`."""
    how = draw(st.sampled_from(["edit", "edit", "value", "bomb", "alias", "duplicate", "deep", "bytes"]))
    doc = yaml.safe_load(valid)
    if how == "bytes":
        return valid.encode()[:10] + b"\xff" + valid.encode()[10:]
    if how == "bomb":
        return alias_bomb(draw(st.sampled_from(["description", "train.lr", "model.hidden_size", "grow.stages"]))).encode()
    sections = sorted(k for k, v in doc.items() if isinstance(v, dict))
    if how == "alias" and len(sections) > 1:  # one section an alias of another (safe_dump writes &id001 / *id001)
        a, b = draw(st.permutations(sections))[:2]
        doc[b] = doc[a]
        return yaml.safe_dump(doc).encode()
    if how == "duplicate":
        return (valid + valid.splitlines()[0] + "\n").encode()
    if how == "deep":
        n = draw(st.sampled_from([65, 2000, 50_000]))
        return f"train: {{lr: {'[' * n}{']' * n}}}\n".encode()
    if how == "value":
        return yaml.safe_dump(draw(values)).encode()
    path = draw(st.sampled_from(list(paths(doc))))
    return yaml.safe_dump(replaced(doc, path, draw(values), drop=draw(st.booleans()))).encode()


@pytest.fixture(scope="module")
def world(tmp_path_factory, world):
    """The hostile world (conftest.py) with a prepared shard folder and two JSONL files."""
    root = tmp_path_factory.mktemp("shapes") / "world"
    shutil.copytree(world, root, symlinks=True)
    from typer.testing import CliRunner

    from mlx_grow.cli import app

    cwd = os.getcwd()
    os.chdir(root)
    try:  # a prepared shard folder, for data info
        r = CliRunner().invoke(app, ["data", "prepare", "corpus.txt", "-t", "tok", "-o", "shards"])
        assert r.exit_code == 0, r.output
        (root / "t.jsonl").write_text("\n".join(json.dumps({"question": f"q{i}", "choices": ["a", "b"], "answer": 0})
                                                for i in range(3)) + "\n")
        (root / "rows.jsonl").write_text("\n".join(json.dumps({"text": f"row {i} text"}) for i in range(3)) + "\n")
    finally:
        os.chdir(cwd)
    return root


def command_ends_cleanly(world, args, file, content: bytes, prepare=None, patch=None):
    """Run `args` in a copy of the world where `file` holds `content`: exit 0, or 1/2 with
    one `error:` line as the last line of stderr; never a traceback."""
    from typer.testing import CliRunner

    from mlx_grow.cli import app

    with tempfile.TemporaryDirectory() as d:
        w = Path(d) / "w"
        shutil.copytree(world, w, symlinks=True)
        if prepare:
            prepare(w)
        (w / file).write_bytes(content)
        cwd = os.getcwd()
        os.chdir(w)
        try:
            with pytest.MonkeyPatch.context() as mp:
                if patch:
                    patch(mp)
                r = CliRunner().invoke(app, args)
        finally:
            os.chdir(cwd)
    shown = f"{file} = {content[:300]!r}\nexit {r.exit_code}\n{r.output[-2000:]}"
    assert r.exception is None or isinstance(r.exception, SystemExit), (repr(r.exception), shown)
    assert r.exit_code in (0, 1, 2), shown
    if r.exit_code:
        assert r.stderr.count("error:") == 1 and r.stderr.rstrip("\n").splitlines()[-1].startswith("error:"), shown


def no_training(mp):  # a reproduction whose records pass goes on to train: stop it there
    from mlx_grow.base import UserError

    def stop(*a, **k):
        raise UserError("stopped before training (test)")

    mp.setattr("mlx_grow.training.grow.grow", stop)


GEN = ["generate", "-m", "a", "-p", "In", "-n", "1"]
R = ["reproduce", "-o", "rep", "--data", "corpus.txt", "--substrate", "16-bit", "--no-progress"]


def drop(*names):
    return lambda w: [(w / n).unlink() for n in names]


# (id, command, file, its kind, prepare(w))
TARGETS = [
    ("model-manifest", GEN, "a/mlx_grow.json", "json", None),
    ("model-config", GEN, "a/config.json", "json", drop("a/mlx_grow.json")),
    ("merge-manifest", ["generate", "-m", "merged", "-p", "In", "-n", "1"], "merged/mlx_grow.json", "json", None),
    ("export-marker", ["convert", "import", "hfm", "-o", "out"], "hfm/mlx_grow_export.json", "json", None),
    ("export-config", ["convert", "import", "hf", "-o", "out"], "hf/config.json", "json", None),
    ("run-json", ["grow", "--resume", "run", "--no-progress"], "run/run.json", "json", None),
    ("metrics", ["plot", "run"], "run/metrics.jsonl", "jsonl", None),
    ("tokenizer-config", ["tokenizer", "encode", "a", "hi"], "a/tokenizer_config.json", "json", None),
    ("task-file", ["eval", "--model", "a", "--task", "t.jsonl", "-o", "rep", "--no-progress"], "t.jsonl", "jsonl",
     None),
    ("data-rows", ["data", "prepare", "rows.jsonl", "-t", "tok", "-o", "sh"], "rows.jsonl", "jsonl", None),
    ("contamination-items", ["data", "info", "corpus.txt", "-t", "tok", "--against", "t.jsonl"], "t.jsonl", "jsonl",
     None),
    ("config", ["info", "run.yaml"], "run.yaml", "yaml", None),
    ("grow-config", ["grow", "-c", "run.yaml", "-o", "new", "--no-progress", "--lr", "0.01"], "run.yaml", "yaml",
     None),
]


def no_run(mp):  # a config that passes every check would train (maybe the 269.7M default): stop at the run
    from mlx_grow.base import UserError

    def stop(self):
        raise UserError("stopped before the run (test)")

    mp.setattr("mlx_grow.training.grow.Grower.run", stop)


@pytest.mark.parametrize("target", TARGETS, ids=[t[0] for t in TARGETS])
def test_every_reader_ends_in_a_value_or_one_line(world, target):
    _, args, file, kind, prepare = target
    valid = (world / file).read_bytes()

    @SETTINGS
    @given(st.data())
    def run(data):
        content = data.draw(hostile_yaml(valid.decode()) if kind == "yaml" else hostile_json(valid, kind == "jsonl"))
        command_ends_cleanly(world, args, file, content, prepare, no_run)

    run()


# trains the reproduction's tokenizer for every example (~9 s): in the slow set
@pytest.mark.slow
def test_reproduction_records_end_in_one_line(world):
    """reproduce.json and a record, as the first thing a reproduction reads (nothing trains)."""
    @SETTINGS
    @given(st.data(), st.sampled_from(["rep/reproduce.json", "rep/records/sub-16bit-s0.json"]))
    def run(data, file):
        with tempfile.TemporaryDirectory() as d:  # a valid reproduction folder, to edit
            w = Path(d)
            reproduction(records={"sub-16bit-s0": {}})(w)  # a valid record of the first run
            valid = (w / file).read_bytes()
        content = data.draw(hostile_json(valid))
        command_ends_cleanly(world, R, file, content, reproduction(records={"sub-16bit-s0": {}}), no_training)

    run()


def test_shard_meta_ends_in_one_line(world):
    shard = next(p for p in (world / "shards").iterdir() if (p / "meta.json").is_file())
    rel = shard.relative_to(world).as_posix()

    @SETTINGS
    @given(st.data())
    def run(data):
        content = data.draw(hostile_json((shard / "meta.json").read_bytes()))
        command_ends_cleanly(world, ["data", "info", rel], f"{rel}/meta.json", content)

    run()


def test_readers_without_a_command(world, tmp_path):
    """The readers a command reaches only through checksummed files: called directly."""
    from mlx_grow.base import UserError
    from mlx_grow.convert.layouts import load_mapping
    from mlx_grow.io.atomic import replaceable
    from mlx_grow.io.tensors import SafetensorsFile
    from mlx_grow.training.runs import read_trainer

    ckpt = world / "run" / "checkpoints" / "step-000004"
    cases = [
        ("trainer.json", (ckpt / "trainer.json").read_bytes(), lambda p: read_trainer(p.parent), "json"),
        ("map.yaml", b"base: starcoder2\ntensors: {norm: model.norm}\nignore: ['x']\n", load_mapping, "yaml"),
        ("marker", json.dumps({"format_version": 1, "files": {"a.txt": "0" * 64}}).encode(),
         lambda p: replaceable(p.parent, marker=p.name), "json"),
        ("weights.safetensors", json.dumps({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode(),
         SafetensorsFile, "header"),
    ]

    @SETTINGS
    @given(st.data(), st.sampled_from(cases))
    def run(data, case):
        name, valid, read, kind = case
        content = data.draw(hostile_yaml(valid.decode()) if kind == "yaml" else hostile_json(valid))
        with tempfile.TemporaryDirectory() as d:
            f = Path(d) / "m" / name
            f.parent.mkdir()
            (f.parent / "a.txt").write_text("x")
            if kind == "header":  # 8-byte length, the JSON header, the data
                content = len(content).to_bytes(8, "little") + content + b"\x00" * 4
            f.write_bytes(content)
            try:
                read(f)
            except (UserError, OSError):
                pass

    run()
