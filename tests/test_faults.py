"""Fault injection: kill -9 at chosen points and resume, damaged checkpoints,
a full disk, a NaN loss, and hostile strings through tokenizer, data and generate.

Kills use the test-only hook in mlx_grow/io/faults.py (MLX_GROW_FAULT) on a real
`python -m mlx_grow.cli grow` process. The schedule is 2 stages x 6 steps with a
checkpoint every 2 steps, so the growth event comes at step 6."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import kjv_slice, tiny_run, train_steps, weights

from mlx_grow.checkpoint import CheckpointError, load_model, read_meta, verify_files

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cfg_path(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    corpus = kjv_slice(tmp / "kjv.txt")
    cfg = tiny_run(corpus, "faults", eval_every=0, checkpoint_every=2, keep_checkpoints=10)
    path = tmp / "faults.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def reference(cfg_path, tmp_path_factory):
    """The uninterrupted run (in this process, built as the CLI builds it)."""
    from mlx_grow.config import load_config
    from mlx_grow.training.grow import grow

    cfg = load_config(str(cfg_path))
    cfg.train.seed = 0
    out = tmp_path_factory.mktemp("ref") / "run"
    grow(cfg, out, progress=False, echo=lambda *a, **k: None)
    return out


def cli(*args, fault=None):
    env = {k: v for k, v in os.environ.items() if k != "MLX_GROW_FAULT"}
    env["COLUMNS"] = "1000"  # rich wraps long paths at 80 columns otherwise
    if fault:
        env["MLX_GROW_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "mlx_grow.cli", "grow", *map(str, args), "--no-progress"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def resume_here(run) -> str:
    """Resume `run` in this process (what `--resume` does); returns what it printed."""
    from mlx_grow.training.grow import grow
    from mlx_grow.training.runs import read_run_config

    said = []
    grow(read_run_config(run), run, resume=True, progress=False, echo=lambda *a, **k: said.extend(a))
    return "\n".join(map(str, said))


def assert_same_final(run, reference):
    a, b = weights(run / "final"), weights(reference / "final")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k} differs from the uninterrupted run"


def assert_sound(run) -> list:
    """Every checkpoint dir is complete and matches its manifest; returns their steps."""
    steps = []
    for ckpt in sorted((run / "checkpoints").glob("step-*")):
        meta = read_meta(ckpt)
        assert {"model.safetensors", "optimizer.safetensors", "trainer.json"} <= set(meta["files"]), ckpt
        verify_files(ckpt, meta)
        steps.append(int(ckpt.name[5:]))
    return steps


def temps(run) -> list:
    return [p for base in (run, run / "checkpoints") if base.exists() for p in base.iterdir()
            if ".tmp-" in p.name or ".old-" in p.name]


# --- kill -9, resume ---


# a kill mid-stage in the default set; the other two places (~6 s each) in the slow set
@pytest.mark.parametrize("fault, kept", [
    ("kill@step:7", [2, 4, 6]),  # mid-stage, after the growth event
    pytest.param("kill@checkpoint:8", [2, 4, 6], marks=pytest.mark.slow),  # halfway through writing step-000008
    pytest.param("kill@grow:2", [2, 4, 6], marks=pytest.mark.slow),  # blocks added, stage 2 not started
])
def test_kill_then_resume_equals_uninterrupted(fault, kept, cfg_path, reference, tmp_path):
    run = tmp_path / "run"
    p = cli("--config", cfg_path, "--out", run, fault=fault)
    assert p.returncode == -9, p.stderr[-2000:]
    assert not (run / "final").exists()
    assert assert_sound(run) == kept  # no checkpoint is half-written
    if "checkpoint" in fault:
        assert temps(run), "the killed writer should have left its temp dir behind"
    if "checkpoint" in fault:  # through the CLI
        p = cli("--resume", run)
        assert p.returncode == 0, p.stderr[-2000:]
        said = p.stderr  # messages go to stderr; stdout holds only the final directory
        assert p.stdout.strip() == str(run / "final")
    else:
        said = resume_here(run)
    assert f"resuming from {run / 'checkpoints'}/step-{kept[-1]:06d}" in said
    assert not temps(run)  # the killed writer's temp dir was cleaned up
    assert assert_sound(run) == [2, 4, 6, 8, 10, 12]
    assert train_steps(run) == list(range(1, 13))
    assert_same_final(run, reference)


def test_disk_full_keeps_previous_checkpoint(cfg_path, reference, tmp_path):
    run = tmp_path / "run"
    p = cli("--config", cfg_path, "--out", run, fault="enospc@checkpoint:8")
    assert p.returncode == 1
    said = " ".join(p.stderr.split())  # progress messages, then one error message, no traceback
    assert "Traceback" not in said and said.count("error:") == 1
    assert p.stderr.strip().splitlines()[-1].startswith("error:")
    said = said[said.index("error:"):]
    assert "cannot write the step-000008 checkpoint (No space left" in said
    assert "the last good checkpoint is" in said and "step-000006" in said
    assert assert_sound(run) == [2, 4, 6] and not temps(run)
    resume_here(run)  # space freed: nothing was lost
    assert_same_final(run, reference)


def test_nan_loss_stops_at_last_good_checkpoint(cfg_path, reference, tmp_path, monkeypatch):
    # in this process: a TrainingDiverged error that names the last good checkpoint
    from mlx_grow.config import load_config
    from mlx_grow.training.grow import TrainingDiverged, grow

    monkeypatch.setenv("MLX_GROW_FAULT", "nan@step:5")
    with pytest.raises(TrainingDiverged, match="step-000004"):
        grow(load_config(str(cfg_path)), tmp_path / "here", progress=False, echo=lambda *a, **k: None)
    assert sorted(c.name for c in (tmp_path / "here" / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    monkeypatch.delenv("MLX_GROW_FAULT")

    # through the CLI: one clear message, no traceback, and the run resumes to the same weights
    run = tmp_path / "run"
    p = cli("--config", cfg_path, "--out", run, fault="nan@step:5")
    assert p.returncode == 1
    assert "loss is nan" in p.stderr and "step-000004" in p.stderr and "--resume" in p.stderr
    assert "Traceback" not in p.stderr
    assert assert_sound(run) == [2, 4] and not (run / "final").exists()
    assert sorted(c.name for c in (run / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    resume_here(run)
    assert_same_final(run, reference)


# --- damaged checkpoints ---


def damaged_copy(reference, tmp_path, step: int, name: str, how: str) -> Path:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(reference / "checkpoints" / f"step-{step:06d}", ckpt)
    f = ckpt / name
    data = bytearray(f.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    else:  # flip one bit in the tensor data
        data[len(data) * 3 // 4] ^= 0x10
    f.write_bytes(bytes(data))
    return ckpt


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors"])
@pytest.mark.parametrize("how", ["truncate", "bitflip"])
def test_damaged_file_is_detected(reference, tmp_path, name, how):
    ckpt = damaged_copy(reference, tmp_path, 12, name, how)
    with pytest.raises(CheckpointError, match=f"{name} does not match its checksum.*truncated or corrupt"):
        verify_files(ckpt, read_meta(ckpt))
    if name == "model.safetensors":
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_model(ckpt)
        if how == "truncate":  # even without the manifest, a cut file does not load
            with pytest.raises(CheckpointError, match="cannot read"):
                load_model(ckpt, verify=False)


def test_resume_skips_a_damaged_newest_checkpoint(reference, tmp_path, capsys):
    from mlx_grow.training.grow import grow
    from mlx_grow.training.runs import read_run_config

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "stage-02")
    shutil.rmtree(run / "checkpoints" / "step-000012")
    f = run / "checkpoints" / "step-000010" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    grow(read_run_config(run), run, resume=True, progress=False, echo=lambda *a, **k: None)
    assert "skipping damaged checkpoint" in capsys.readouterr().err  # a message, so on stderr
    assert_same_final(run, reference)


# --- hostile strings ---

HOSTILE = {
    "astral": "\U0001F600 emoji, \U00010348 gothic, \U0001D11E clef, \U000E0001 tag",
    "control": "\x00nul \x01\x02\x1b[31mred\x1b[0m \x7f\x0b\x0c\r\n\u2028\u2029 \ufeffbom",
    "combining": "e\u0301\u0301\u0301 z\u0336a\u0336 \u200d\u200c",
    "rtl": "\u202eevil\u202c \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
    "line_1mb": "a" * 500_000 + " " + "\u00e9" * 250_000,
    "empty": "",
    "spaces": " \t \n ",
}
SURROGATES = {"lone_high": "a\ud800b", "lone_low": "\udfff", "reversed_pair": "\udc00\ud800"}


def random_strings(n=200, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        cps = rng.integers(0, 0x110000, rng.integers(0, 64))
        out.append("".join(chr(c) for c in cps if not 0xD800 <= c <= 0xDFFF))
    return out


@pytest.fixture(scope="module")
def tok():
    from mlx_grow.tokenizer import load_tokenizer

    return load_tokenizer("bvv241-2-3")


@pytest.mark.parametrize("key", list(HOSTILE))
def test_tokenizer_survives_hostile_text(tok, key):
    text = HOSTILE[key]
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert isinstance(tok.decode(ids), str)
    assert tok.encode_batch([text, "ok"])[0] == ids


def test_tokenizer_survives_random_text(tok):
    texts = random_strings()
    batch = tok.encode_batch(texts)
    for text, ids in zip(texts, batch):
        assert tok.encode(text) == ids and all(0 <= i < tok.vocab_size for i in ids)
        tok.decode(ids)


@pytest.mark.parametrize("key", list(SURROGATES))
def test_tokenizer_rejects_lone_surrogates_clearly(tok, key):
    with pytest.raises(ValueError, match="surrogate"):
        tok.encode(SURROGATES[key])


def test_prepare_survives_hostile_files(tmp_path):
    from mlx_grow.data.stream import prepare

    docs = tmp_path / "docs"
    docs.mkdir()
    for key, text in HOSTILE.items():
        (docs / f"{key}.txt").write_text(text, encoding="utf-8")
    for i, text in enumerate(random_strings(20)):
        (docs / f"random-{i}.txt").write_text(text + "\nx", encoding="utf-8", errors="strict")
    [shard] = prepare([str(docs)], "bvv241-2-3", out_dir=tmp_path / "cache", progress=False)
    assert shard.meta["tokens"]["train"] > 400_000 and shard.meta["documents"]["val"] >= 1

    (docs / "bad.txt").write_bytes(b"ok \xed\xa0\x80 lone surrogate in UTF-8 bytes")
    with pytest.raises(ValueError, match="bad.txt is not UTF-8"):
        prepare([str(docs)], "bvv241-2-3", out_dir=tmp_path / "cache", progress=False)
    prepare([str(docs)], "bvv241-2-3", out_dir=tmp_path / "cache", progress=False, skip_bad_files=True)

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="has no text"):
        prepare([str(empty)], "bvv241-2-3", out_dir=tmp_path / "cache", progress=False)


def test_prepare_names_the_file_of_a_lone_surrogate(tmp_path):
    from mlx_grow.data.stream import prepare

    f = tmp_path / "rows.jsonl"
    f.write_text(json.dumps({"text": "a\ud800b"}) + "\n" + json.dumps({"text": "fine"}) + "\n")
    with pytest.raises(ValueError, match="rows.jsonl"):
        prepare([str(f)], "bvv241-2-3", out_dir=tmp_path / "cache", progress=False)


@pytest.fixture(scope="module")
def tiny_model(tok):
    from mlx_grow.model import ModelArgs
    from mlx_grow.training.grow import build_model

    args = ModelArgs(vocab_size=65536, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     max_position_embeddings=64, substrate={"kind": "binary", "bits": 16})
    return build_model(args, tok, 1, seed=0)


# the 1 MB prompt is 500k tokens of prefill (~45 s on 2 cores): in the slow set
@pytest.mark.parametrize("key", [pytest.param(k, marks=pytest.mark.slow) if k == "line_1mb" else k
                                 for k in HOSTILE])
def test_generate_survives_hostile_prompts(tok, tiny_model, key):
    try:
        from mlx_grow.generate import generate
    except ImportError:
        pytest.skip("mlx_grow.generate is not in this tree yet")
    prompt = HOSTILE[key]
    if not prompt.strip():
        with pytest.raises(ValueError, match="empty"):
            generate(tiny_model, tok, prompt, max_tokens=4)
    else:
        assert isinstance(generate(tiny_model, tok, prompt, max_tokens=4), str)


@pytest.mark.parametrize("key", list(SURROGATES))
def test_generate_rejects_lone_surrogates_clearly(tok, tiny_model, key):
    try:
        from mlx_grow.generate import generate
    except ImportError:
        pytest.skip("mlx_grow.generate is not in this tree yet")
    with pytest.raises(ValueError, match="surrogate"):
        generate(tiny_model, tok, SURROGATES[key], max_tokens=2)
