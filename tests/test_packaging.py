"""What users install: the wheel and the sdist built from this tree, the version,
`python -m mlx_grow`, the citation file. (CI also installs the wheel into a fresh
venv and runs the CLI from outside the tree: .ci/smoke.)"""

import importlib
import os
import pkgutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

import mlx_grow

ROOT = Path(__file__).resolve().parents[1]


def tree_files(folder: str, suffix=None) -> list:
    out = []
    for dp, dns, fs in os.walk(ROOT / folder):
        dns[:] = [d for d in dns if d != "__pycache__" and not d.startswith(".")]
        out += [Path(dp, f).relative_to(ROOT).as_posix() for f in fs if suffix is None or f.endswith(suffix)]
    return out


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The wheel and the sdist, built from this tree as `python -m build` builds them."""
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (whl,), (sdist,) = out.glob("*.whl"), out.glob("*.tar.gz")
    return whl, sdist


def test_pyproject_lists_every_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {Path(p).parent.as_posix().replace("/", ".") for p in tree_files("mlx_grow", "__init__.py")}
    assert found | {"mlx_grow.configs"} == listed


def test_wheel_holds_every_module_config_and_asset(dist):
    names = set(zipfile.ZipFile(dist[0]).namelist())
    want = tree_files("mlx_grow") + [f"mlx_grow/{p}" for p in tree_files("configs")]
    missing = [p for p in want if p not in names]
    assert not missing, missing
    info = next(n for n in names if n.endswith(".dist-info/METADATA"))
    meta = zipfile.ZipFile(dist[0]).read(info).decode()
    assert f"Version: {mlx_grow.__version__}" in meta and "License-Expression: Apache-2.0" in meta
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_sdist_carries_tests_benchmarks_and_docs(dist):
    prefix = dist[1].name[: -len(".tar.gz")]
    names = {n[len(prefix) + 1:] for n in tarfile.open(dist[1]).getnames()}
    want = (tree_files("mlx_grow") + tree_files("configs") + tree_files("tests") + tree_files("benchmarks")
            + tree_files("docs") + ["LICENSE", "CITATION.cff", "CHANGELOG.md", "README.md", "cli.py",
                                    "pyproject.toml", ".ci/run", ".ci/smoke"])
    missing = [p for p in want if p not in names]
    assert not missing, missing


def test_version_and_python_m(tmp_path):
    for cmd in (["-m", "mlx_grow", "--version"], ["-m", "mlx_grow.cli", "--version"]):
        r = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert r.returncode == 0 and r.stdout.strip() == f"mlx-grow {mlx_grow.__version__}", r
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["version"] == mlx_grow.__version__
    assert {r["identifiers"][0]["value"] for r in cff["references"]} == {"arXiv:2507.04886", "arXiv:2507.07129"}


def test_every_package_star_imports():
    """`from pkg import *` works for every package (each `__all__` names what it imports)."""
    for m in pkgutil.walk_packages(mlx_grow.__path__, "mlx_grow."):
        if not m.ispkg or m.name == "mlx_grow.configs":
            continue
        mod = importlib.import_module(m.name)
        missing = [n for n in getattr(mod, "__all__", []) if not hasattr(mod, n)]
        assert not missing, (m.name, missing)
