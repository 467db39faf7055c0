"""The memory planner (per rank; checked against measured peaks by
benchmarks/bench_memory.py): predicted peaks, the will-not-fit warning, and
`mlx-grow info`'s prediction."""

import pytest


def test_planner_paper_config_stage_vs_monolithic():
    from mlx_grow.config import load_config
    from mlx_grow.training.memory import plan_config

    cfg = load_config("paper-9l-glyph")
    p = plan_config(cfg, batch=32, seq=1024)
    s1, mono = p["stages"][0], p["monolithic"]
    assert s1["active"] == 104_899_584 and mono["active"] == 180_476_928
    # the chunked loss: never one float32 [B, T, V] tensor (8 GiB here), a few [chunk, V] ones
    assert s1["parts"]["logits"] < 2 * 2**30
    assert 10 * 2**30 < s1["peak"] < 24 * 2**30 < mono["peak"] < 80 * 2**30  # a stage fits a 32 GB Mac
    half = plan_config(cfg, batch=32, seq=1024, ranks=2)["stages"][0]
    assert half["parts"]["activations"] == s1["parts"]["activations"] // 2
    assert half["parts"]["weights"] == s1["parts"]["weights"]
    with pytest.raises(ValueError, match="must divide by ranks"):
        plan_config(cfg, batch=32, ranks=3)


def test_planner_warns_when_a_run_will_not_fit(monkeypatch):
    from mlx_grow.config import load_config
    from mlx_grow.training import memory

    cfg = load_config("paper-9l-glyph")
    monkeypatch.setattr(memory, "machine_memory", lambda: (16 * 2**30, "test"))
    msg = memory.fit_warning(cfg)
    assert "stage 3 is predicted to need" in msg and "16.00 GiB" in msg and "grad_accum" in msg
    monkeypatch.setattr(memory, "machine_memory", lambda: (2**40, "test"))
    assert memory.fit_warning(cfg) is None


def test_info_prints_the_prediction():
    from typer.testing import CliRunner

    from mlx_grow.cli import app

    r = CliRunner().invoke(app, ["info", "paper-9l-glyph", "--batch", "32", "--seq", "1024", "--stage", "1"],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "predicted peak memory" in r.output and "monolithic" in r.output and "GiB" in r.output
    r = CliRunner().invoke(app, ["info", "paper-9l-glyph", "--stage", "4"], env={"COLUMNS": "200"})
    assert r.exit_code == 2 and "stages 1-3" in r.output
