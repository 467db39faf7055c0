"""A run is decided once: a fresh `grow` reads its config file once and plans its
stages once; `--resume` reads run.json once (training/plan.py: resolve_run)."""

import builtins
import io
import sys
from pathlib import Path

import pytest
from helpers import two_stage_yaml
from typer.testing import CliRunner

from mlx_grow.cli import app


class Reads:
    """Counts the opens of chosen files (every reader goes through open) and the calls of
    schedule.plan, wherever a module bound it."""

    def __init__(self, mp, names):
        self.names, self.opens, self.plans = set(names), {n: 0 for n in names}, 0
        real_open = builtins.open

        def counted_open(file, *a, **k):
            if isinstance(file, (str, Path)) and Path(file).name in self.names:
                self.opens[Path(file).name] += 1
            return real_open(file, *a, **k)

        mp.setattr(builtins, "open", counted_open)
        mp.setattr(io, "open", counted_open)
        import mlx_grow.training.schedule as schedule

        real_plan = schedule.plan

        def counted_plan(*a, **k):
            self.plans += 1
            return real_plan(*a, **k)

        for mod in [m for name, m in sys.modules.items() if name.startswith("mlx_grow") and m is not None]:
            if getattr(mod, "plan", None) is real_plan:
                mp.setattr(mod, "plan", counted_plan)


@pytest.fixture
def config(tmp_path):
    return two_stage_yaml(tmp_path, "counted", eval_every=0, checkpoint_every=3)


def test_grow_reads_its_config_once_and_plans_once(config, tmp_path, monkeypatch):
    runner = CliRunner()
    out = tmp_path / "run"
    reads = Reads(monkeypatch, ["counted.yaml", "run.json"])
    r = runner.invoke(app, ["grow", "-c", str(config), "-o", str(out), "--lr", "0.002", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert (reads.opens["counted.yaml"], reads.plans) == (1, 1)
    assert reads.opens["run.json"] == 0  # written, never read back

    (out / "final").rename(tmp_path / "was-final")  # a run that has not finished yet
    reads = Reads(monkeypatch, ["counted.yaml", "run.json"])
    r = runner.invoke(app, ["grow", "--resume", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert reads.opens["run.json"] == 1 and reads.opens["counted.yaml"] == 0
    assert reads.plans == 1


def test_grow_leaves_the_callers_config_as_it_was(config, tmp_path):
    from mlx_grow.config import load_config
    from mlx_grow.training.grow import grow
    from mlx_grow.training.plan import resolve_run

    cfg = load_config(str(config))
    before = cfg.to_dict()
    grow(cfg, tmp_path / "run", seed=3, progress=False, echo=lambda *a, **k: None)
    assert cfg.to_dict() == before and cfg.base == 0  # the seed went into the run's own copy
    assert json_of(tmp_path / "run" / "run.json")["config"]["train"]["seed"] == 3
    plan = resolve_run(cfg, tmp_path / "run", resume=True, check=False)
    with pytest.raises(AttributeError):
        plan.cfg = cfg  # a plan is decided once
    grown = resolve_run(cfg, from_dir=tmp_path / "run" / "final", flags={"model": {"num_hidden_layers": 3},
                                                                       "grow": {"stages": [1]}}, check=False)
    assert (grown.base, [s.depth for s in grown.stages], cfg.base, cfg.depth) == (2, [3], 0, 2)


def json_of(path):
    import json

    return json.loads(Path(path).read_text())
