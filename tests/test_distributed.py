"""Data-parallel grow under `mlx.launch` (ring backend, 2 ranks on localhost):
the same weights as one process with the same global batch, resumable on
another number of ranks; every worker loads the fast CPU BLAS itself, with its
share of the cores."""

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import kjv_slice, tiny_run, train_steps, weights

from mlx_grow.backend import find_mkl, find_openblas

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = Path(sys.executable).with_name("mlx.launch")
ATOL = 1e-5


def free_port() -> int:
    """A port p with p and p + 1 free (the ring listens on one port per rank)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p < 65000:
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p + 1))
                return p
            except OSError:
                continue
    raise RuntimeError("no free port pair")


def launch(n: int, *cmd, timeout=120):
    return subprocess.run([str(LAUNCH), "--backend", "ring", "-n", str(n), "-p", str(free_port()),
                           "--", sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ring():
    """Skip (with the reason) when mlx.launch cannot start 2 ranks here."""
    if not LAUNCH.exists():
        pytest.skip(f"{LAUNCH} not found: mlx.launch comes with mlx >= 0.22")
    probe = ("import mlx.core as mx; g = mx.distributed.init(); "
             "print('size', g.size(), mx.distributed.all_sum(mx.array(g.rank() + 1)).item())")
    try:
        p = launch(2, "-c", probe, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.skip("mlx.launch --backend ring did not start 2 ranks within 60 s")
    if p.stdout.count("size 2 3") != 2:
        pytest.skip(f"mlx.launch --backend ring cannot start 2 local ranks here: {p.stderr.strip()[-300:]}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return kjv_slice(tmp_path_factory.mktemp("corpus") / "kjv.txt")


def write_config(path: Path, corpus: Path) -> Path:
    cfg = tiny_run(corpus, "dp", eval_every=3, checkpoint_every=4, keep_checkpoints=5)
    path.write_text(yaml.safe_dump(cfg))
    return path


def one_rank(cfg_path: Path, out: Path, resume=False):
    """The single-process run, in this process, as `mlx-grow grow` would build it."""
    from mlx_grow.config import load_config
    from mlx_grow.training.grow import grow
    from mlx_grow.training.runs import read_run_config

    cfg = read_run_config(out) if resume else load_config(str(cfg_path))
    cfg.train.seed = 0
    return grow(cfg, out, resume=resume, progress=False, echo=lambda *a, **k: None)[0]


def assert_close(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)
    assert worst <= ATOL, f"largest weight difference {worst:.3g} > {ATOL}"
    moved = weights(Path(a).parent / "stage-01")
    assert any(not np.array_equal(moved[k], wa[k]) for k in moved)  # stage 2 trained something


def cut_after(run: Path, step: int):
    """Make `run` look killed after its step-`step` checkpoint (stages end at steps 6 and 12)."""
    shutil.rmtree(run / "final")
    for p in [*run.glob("stage-*"), *run.glob("checkpoints/step-*")]:
        if (int(p.name[6:]) * 6 if p.name.startswith("stage-") else int(p.name[5:])) > step:
            shutil.rmtree(p)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dp")
    cfg = write_config(tmp / "dp.yaml", corpus)
    return cfg, one_rank(cfg, tmp / "ref").parent


# two processes over the ring backend and a reference run (~17 s): in the slow set
@pytest.mark.slow
def test_two_ranks_match_one_and_resume_on_one(ring, reference, tmp_path):
    cfg, ref = reference
    p = launch(2, "-m", "mlx_grow.cli", "grow", "--config", str(cfg), "--out", str(tmp_path / "dp"), "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    assert_close(tmp_path / "dp" / "final", ref / "final")
    assert train_steps(tmp_path / "dp") == list(range(1, 13))  # rank 1 wrote no log lines
    assert p.stderr.count("stage 1/2 done") == 1  # and printed nothing (messages go to stderr)
    assert p.stdout.strip().splitlines()[-1].endswith("final")  # stdout: the final model directory

    # the 2-rank checkpoint at step 4 (stage 1) resumed on 1 rank
    shutil.copytree(tmp_path / "dp", tmp_path / "dp-to-1")
    cut_after(tmp_path / "dp-to-1", 4)
    assert_close(one_rank(cfg, tmp_path / "dp-to-1", resume=True), ref / "final")


@pytest.mark.slow
def test_one_rank_checkpoint_resumes_on_two(ring, reference, tmp_path):
    cfg, ref = reference
    shutil.copytree(ref, tmp_path / "one-to-2")
    cut_after(tmp_path / "one-to-2", 8)  # past the growth event
    p = launch(2, "-m", "mlx_grow.cli", "grow", "--resume", str(tmp_path / "one-to-2"), "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "step-000008" in "".join(p.stderr.split())  # "resuming from …" (a message: stderr)
    assert_close(tmp_path / "one-to-2" / "final", ref / "final")
    assert train_steps(tmp_path / "one-to-2") == list(range(1, 13))


@pytest.mark.skipif(not sys.platform.startswith("linux") or not (find_mkl() or find_openblas()),
                    reason="the fast CPU BLAS applies to Linux with mkl (the [cpu] extra) or OpenBLAS installed")
def test_workers_get_fast_blas_with_their_share_of_cores(ring):
    import os

    probe = ("import mlx_grow; from mlx_grow.backend import loaded, fast_blas_mapped; "
             "print('blas', loaded['library'], fast_blas_mapped(), loaded['threads'])")
    p = launch(2, "-c", probe, timeout=60)  # no environment variable, no preload
    lines = [x.split() for x in p.stdout.splitlines() if x.startswith("blas ")]
    assert len(lines) == 2, p.stdout + p.stderr
    share = max(1, len(os.sched_getaffinity(0)) // 2)  # 2 local ranks split the cores
    for _, lib, mapped, threads in lines:
        assert lib != "None" and mapped != "None" and int(threads) == share, p.stdout


