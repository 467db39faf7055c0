import os

import pytest

import mlx_grow  # noqa: F401  first: it loads the fast CPU BLAS before any test module imports mlx.core


# Tests write caches (tokenizers, shards) into a per-session temp dir, never $HOME.
@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    if "MLX_GROW_CACHE" not in os.environ:
        os.environ["MLX_GROW_CACHE"] = str(tmp_path_factory.mktemp("mlx-grow-cache"))
    yield


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The hostile-input world (tests/hostile_world.py), built once a session; tests copy it
    before they change anything."""
    from hostile_world import build_world

    root = tmp_path_factory.mktemp("hostile") / "world"
    root.mkdir()
    build_world(root)
    return root


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """A test's own empty cache folder, and no local data folder."""
    monkeypatch.setenv("MLX_GROW_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLX_GROW_DATA", raising=False)
    return tmp_path / "cache"


# `--file-times`: each test file's total time (setup + call + teardown), slowest first;
# CI prints it so that growth of the suite shows (docs/testing.md keeps a measured table).
_FILE_TIMES: dict = {}


def pytest_addoption(parser):
    parser.addoption("--file-times", action="store_true", help="print each test file's total time")


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    _FILE_TIMES[path] = _FILE_TIMES.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter, config):
    if not config.getoption("--file-times") or not _FILE_TIMES:
        return
    terminalreporter.section("time per test file")
    for path, t in sorted(_FILE_TIMES.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{t:8.1f} s  {path}")
    terminalreporter.write_line(f"{sum(_FILE_TIMES.values()):8.1f} s  in all")
