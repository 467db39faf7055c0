"""The fast CPU BLAS: `import mlx_grow` loads it in-process before mlx.core
(no environment variable, no preload), importing mlx.core first warns once,
and local ranks split the cores."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mlx_grow.backend import blas_threads, find_mkl, find_openblas, local_ranks

linux_with_fast_blas = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not (find_mkl() or find_openblas()),
    reason="the fast CPU BLAS applies to Linux with mkl (the [cpu] extra) or OpenBLAS installed")


def py(code: str, **env):
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("MLX_GROW_BLAS", "MLX_RANK", "MKL_", "OMP_", "OPENBLAS_"))}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                          timeout=120)


PROBE = ("import mlx_grow, mlx.core as mx; from mlx_grow.backend import loaded, fast_blas_mapped; "
         "a = mx.random.normal((64, 64)); mx.eval(a @ a); print(loaded['library'], fast_blas_mapped())")


@linux_with_fast_blas
def test_import_mlx_grow_loads_the_fast_blas():
    p = py(PROBE)
    assert p.returncode == 0, p.stderr
    lib, mapped = p.stdout.split()
    assert lib in ("mkl", "openblas") and mapped in ("libmkl_rt", "libopenblas")
    assert "Warning" not in p.stderr


@linux_with_fast_blas
def test_mlx_core_first_warns_once_with_what_to_do():
    p = py("import warnings; warnings.simplefilter('always'); import mlx.core, mlx_grow; "
           "from mlx_grow.backend import load_fast_blas, loaded; load_fast_blas(); print(loaded['library'])")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["None"]
    assert p.stderr.count("imported before mlx_grow") == 1
    assert "Import mlx_grow before mlx.core" in p.stderr


def test_off_keeps_the_bundled_blas():
    p = py(PROBE, MLX_GROW_BLAS="off")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["None", "None"]


def test_matmul_is_right_with_the_loaded_blas():
    import mlx.core as mx

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((200, 300), np.float32), rng.standard_normal((300, 100), np.float32)
    assert np.allclose(np.array(mx.array(a) @ mx.array(b)), a @ b, atol=1e-3)
    assert np.allclose(np.array(mx.array(a).T @ mx.array(a)), a.T @ a, atol=1e-3)


def test_local_ranks_share_the_cores(tmp_path):
    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps([["127.0.0.1:5000"], ["127.0.0.1:5001"], ["10.0.0.2:5002"]]))
    env = {"MLX_HOSTFILE": str(hosts)}
    assert local_ranks({**env, "MLX_RANK": "0"}) == 2
    assert local_ranks({**env, "MLX_RANK": "2"}) == 1
    assert local_ranks({}) == 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert blas_threads({**env, "MLX_RANK": "1"}) == max(1, cores // 2)
    assert blas_threads({"MLX_GROW_BLAS_THREADS": "3"}) == 3
    assert blas_threads({"MKL_NUM_THREADS": "1"}) is None  # the user's own setting stands
