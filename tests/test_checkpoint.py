import ast
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from helpers import tiny_args
from mlx.utils import tree_flatten

from mlx_grow.checkpoint import (
    FORMAT_VERSION,
    META,
    CheckpointError,
    load_model,
    read_meta,
    save_model,
    write_model_dir,
)
from mlx_grow.io import sha256_file
from mlx_grow.model import Model
from mlx_grow.training.init import init_weights
from mlx_grow.substrate.tables import fingerprint


def model(seed=0, **kw):
    m = Model(tiny_args(**kw))
    init_weights(m, seed)
    return m


def test_roundtrip_logits_identical(tmp_path):
    m = model()
    save_model(m, tmp_path / "m")
    m2 = load_model(tmp_path / "m")
    ids = mx.array([[1, 2, 3, 4]])
    assert mx.array_equal(m(ids), m2(ids)).item()
    meta = json.loads((tmp_path / "m" / "mlx_grow.json").read_text())
    assert meta["substrate"]["kind"] == "binary" and "model.safetensors" in meta["files"]


def test_sharded_roundtrip(tmp_path):
    m = model()
    save_model(m, tmp_path / "m", shard_bytes=20_000)
    assert (tmp_path / "m" / "model.safetensors.index.json").exists()
    ids = mx.array([[7, 8]])
    assert mx.array_equal(m(ids), load_model(tmp_path / "m")(ids)).item()


def test_existing_dir_not_overwritten(tmp_path):
    save_model(model(), tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError):
        save_model(model(seed=1), tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before


def test_failed_save_leaves_nothing(tmp_path):
    def boom(tmp):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        save_model(model(), tmp_path / "m", extra_writer=boom)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_weights_detected(tmp_path, damage):
    save_model(model(), tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    data = bytearray(f.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-10] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_model(tmp_path / "m")


def test_mis_shaped_tensor_named(tmp_path):
    save_model(model(), tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["intermediate_size"] = 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="c_fc.weight"):
        load_model(tmp_path / "m", verify=False)


def test_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope")


# --- one model-directory format: one writer, one reader ---

PKG = Path(__file__).resolve().parents[1] / "mlx_grow"


def modules():
    for path in sorted(PKG.rglob("*.py")):
        if "assets" not in path.parts:
            yield path.relative_to(PKG).as_posix(), ast.parse(path.read_text())


def names_in(node) -> set:
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):
            out.add(n.value)
    return out


def test_only_checkpoint_writes_the_manifest():
    """mlx_grow.json is written in one place: a write call (write_text,
    write_bytes, open, json.dump) naming META or the file outside checkpoint.py
    would be a second writer of the format."""
    writes = {"write_text", "write_bytes", "open", "dump"}
    found = []
    for mod, tree in modules():
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            f = call.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if name in writes and names_in(call) & {"META", "mlx_grow.json"}:
                found.append(f"{mod}:{call.lineno}")
    assert found and all(w.startswith("checkpoint.py:") for w in found), found
    assert len(found) == 1, f"mlx_grow.json is written in more than one place: {found}"


def test_model_directory_writers_go_through_checkpoint():
    """The pieces a model directory is made of are used only by its writer:
    checksums of the files, the tensor-file writer, the substrate-table file
    and whole-directory atomic writes (each other user writes something else:
    a Hugging Face export, a standalone substrate file, the shard cache)."""
    allowed = {
        "sha256_file": {"checkpoint.py"},
        "write_weights": {"checkpoint.py", "convert/export.py"},  # export: Hugging Face directories
        "save_table": {"checkpoint.py", "cli/setup.py"},  # cli: `substrate build`'s standalone file
        # data: the shard cache; cli/setup.py and reproduce/vocab.py: tokenizer folders (`tokenizer build` /
        # `train`, the reproduction's own); eval/report.py and reproduce/report.py: report folders (`eval -o`,
        # reproduce's figures)
        "atomic_dir": {"checkpoint.py", "convert/export.py", "data/stream.py", "cli/setup.py", "reproduce/vocab.py",
                       "eval/report.py", "reproduce/report.py"},
    }
    used = {k: set() for k in allowed}
    for mod, tree in modules():
        if mod.startswith("io/") or mod in ("substrate/tables.py", "substrate/__init__.py"):
            continue  # where they are defined and re-exported
        for k in allowed:
            if k in names_in(tree):
                used[k].add(mod)
    bad = {k: sorted(used[k] - allowed[k]) for k in allowed if used[k] - allowed[k]}
    assert not bad, f"model-directory pieces written outside checkpoint.py: {bad}"


def test_writer_manifest_last_with_posix_paths(tmp_path):
    with write_model_dir(tmp_path / "d") as w:
        w.model(model())
        w.json("sub/dir/x.json", {"a": 1})
        with pytest.raises(ValueError, match="written last"):
            w.path(META)
        w.meta["lineage"] = {"run": "r"}
    meta = read_meta(tmp_path / "d")
    assert list(meta) == ["format_version", "substrate", "tokenizer", "lineage", "files"]
    assert meta["format_version"] == FORMAT_VERSION
    on_disk = sorted(p.relative_to(tmp_path / "d").as_posix() for p in (tmp_path / "d").rglob("*") if p.is_file())
    assert sorted(meta["files"]) == [f for f in on_disk if f != META]
    assert "sub/dir/x.json" in meta["files"]


def old_save_model(m, out):
    """A directory exactly as the writer before the single format wrote it."""
    out.mkdir()
    weights = dict(tree_flatten(m.parameters()))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(m.args.to_dict(), indent=2))
    info = {"format_version": 1, "substrate": fingerprint(m.args.substrate, np.array(m.substrate.table)),
            "tokenizer": None}
    info["files"] = {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file()}
    (out / "mlx_grow.json").write_text(json.dumps(info, indent=2))


def test_existing_directories_still_load(tmp_path):
    m = model(seed=3)
    old_save_model(m, tmp_path / "old")
    save_model(m, tmp_path / "new")
    ids = mx.array([[1, 2, 3, 4]])
    assert mx.array_equal(load_model(tmp_path / "old")(ids), m(ids)).item()
    old, new = read_meta(tmp_path / "old"), read_meta(tmp_path / "new")
    assert list(old) == list(new) and old["substrate"] == new["substrate"] and sorted(old["files"]) == sorted(new["files"])
    assert old["files"]["config.json"] == new["files"]["config.json"]


def params(m) -> dict:
    return {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(m.parameters())}


def same_params(a, b) -> bool:
    pa, pb = params(a), params(b)
    return pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from helpers import char_tokenizer

    return char_tokenizer(tmp_path_factory.mktemp("tok"))


def expert(tok, seed):
    return model(seed=seed, vocab_size=tok.vocab_size, substrate={"kind": "binary", "bits": 7})


def test_single_directory_rewrites_byte_identically(tmp_path, tok):
    from mlx_grow import load

    m = expert(tok, 0)
    save_model(m, tmp_path / "a", tok, meta={"lineage": {"run": "r"}})
    back, t = load(tmp_path / "a")
    assert same_params(m, back) and t.fingerprint == tok.fingerprint
    save_model(back, tmp_path / "b", t, meta={"lineage": {"run": "r"}})
    assert read_meta(tmp_path / "a") == read_meta(tmp_path / "b")  # every file's checksum included


def test_bf16_directory_saves_and_loads(tmp_path, tok):
    m = expert(tok, 1)
    m.set_dtype(mx.bfloat16)
    save_model(m, tmp_path / "m", tok)
    back = load_model(tmp_path / "m")
    assert back.lm_head.weight.dtype == mx.bfloat16 and same_params(m, back)
    ids = mx.array([[5, 17, 40]])
    assert mx.array_equal(m(ids), back(ids)).item()


def test_checkpoint_with_extras_roundtrip(tmp_path, tok):
    from mlx_grow.training.lora import add_lora, lora_structure
    from mlx_grow.training.runs import Run, load_checkpoint

    m = expert(tok, 2)
    add_lora(m.layers[:1], 4, 2.0, ["q_proj", "v_proj"], mx.random.key(5))
    for layer in (m.layers[0].self_attn.q_proj, m.layers[0].self_attn.v_proj):
        layer.lora_b = mx.random.normal(layer.lora_b.shape, key=mx.random.key(6))
    opt = {"state.0.m": mx.arange(6, dtype=mx.float32), "state.0.v": mx.ones((2, 3), dtype=mx.bfloat16)}

    class Stepper:
        def state_dict(self):
            return opt

    state = {"stage": 0, "step": 3, "global_step": 3, "lora": lora_structure(m), "lineage": {"run": "r", "step": 3}}
    ckpt = Run(tmp_path / "run").save_checkpoint(m, tok, Stepper(), state, keep=2)
    meta = read_meta(ckpt)
    assert list(meta) == ["format_version", "substrate", "tokenizer", "lineage", "files"]
    assert {"optimizer.safetensors", "trainer.json", "model.safetensors", "config.json"} <= set(meta["files"])
    back, st, o = load_checkpoint(ckpt)
    assert st == state and same_params(m, back)
    assert o.keys() == opt.keys() and all(mx.array_equal(o[k], opt[k]).item() and o[k].dtype == opt[k].dtype for k in o)
    ids = mx.array([[5, 17, 40, 3]])
    assert mx.array_equal(m(ids), back(ids)).item()
    save_model(m, tmp_path / "plain", tok)  # the model part is the same directory as a plain save
    plain = read_meta(tmp_path / "plain")["files"]
    assert {k: meta["files"][k] for k in plain} == plain


def test_merged_directory_rewrites_byte_identically(tmp_path, tok):
    from mlx_grow import load
    from mlx_grow.merge.build import merge
    from mlx_grow.merge.combine import MergedModel, make_combiner
    from mlx_grow.merge.store import read_experts, save_merged

    for i in range(2):
        save_model(expert(tok, 10 + i), tmp_path / f"e{i}", tok, meta={"lineage": {"run": "r", "stage": i}})
    dirs = [tmp_path / "e0", tmp_path / "e1"]
    merge(dirs, tmp_path / "m", combiner="mixture", weights="0.6,0.4", adapter="gate")
    merged, t = load(tmp_path / "m")
    ref = MergedModel([load_model(d) for d in dirs], make_combiner(2, "mixture", "0.6,0.4", adapter="gate"))
    ref.adapter.update(merged.adapter.parameters())
    ids = mx.array([[5, 17, 40, 3, 9]])
    assert mx.array_equal(merged(ids), ref(ids)).item()
    meta = read_meta(tmp_path / "m")
    assert list(meta) == ["format_version", "substrate", "tokenizer", "experts", "combiner", "lineage", "files"]
    assert {"substrate.safetensors", "adapter.safetensors", "experts/0/model.safetensors",
            "experts/1/config.json", "config.json", "tokenizer.json"} <= set(meta["files"])
    _, metas = read_experts(dirs)
    save_merged(merged, tmp_path / "again", t, dirs, metas)
    assert read_meta(tmp_path / "again") == meta


def test_imported_directories_load_identically(tmp_path, tok):
    from mlx_grow import convert, load
    from mlx_grow.merge.build import merge

    m = expert(tok, 20)
    save_model(m, tmp_path / "a", tok, meta={"lineage": {"run": "r"}})
    save_model(expert(tok, 21), tmp_path / "b", tok, meta={"lineage": {"run": "r"}})
    convert.import_checkpoint(tmp_path / "a", tmp_path / "imp", shard_bytes=30_000)
    back, t = load(tmp_path / "imp")
    assert same_params(m, back) and t.fingerprint == tok.fingerprint
    src, imp = read_meta(tmp_path / "a"), read_meta(tmp_path / "imp")
    assert list(imp) == ["format_version", "substrate", "tokenizer", "converted_from", "files"]
    assert (imp["substrate"], imp["tokenizer"]) == (src["substrate"], src["tokenizer"])
    assert "model.safetensors.index.json" in imp["files"] and imp["files"]["config.json"] == src["files"]["config.json"]

    merge([tmp_path / "a", tmp_path / "b"], tmp_path / "m", combiner="weighted", weights="3,1")
    convert.export_model(tmp_path / "m", tmp_path / "hf")
    convert.import_checkpoint(tmp_path / "hf", tmp_path / "impm")
    before, _ = load(tmp_path / "m")
    after, _ = load(tmp_path / "impm")
    ids = mx.array([[5, 17, 40, 3, 9]])
    assert mx.array_equal(before(ids), after(ids)).item()
    mm, mi = read_meta(tmp_path / "m"), read_meta(tmp_path / "impm")
    assert list(mi) == list(mm)[:-1] + ["converted_from", "files"] and mi["combiner"] == mm["combiner"]
    assert sorted(mi["files"]) == sorted(mm["files"])
