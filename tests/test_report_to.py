"""`grow --report-to tensorboard|wandb`: the metrics go to the writers users read,
through stand-ins for the packages (never required); a missing package or an
unknown name is refused before the run writes anything."""

import json
import sys
import types

import pytest
from helpers import two_stage_yaml
from typer.testing import CliRunner

from mlx_grow.cli import app
from mlx_grow.training import callbacks


class Writer:
    made = []

    def __init__(self, logdir):
        self.logdir, self.scalars, self.closed = logdir, [], False
        Writer.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        self.closed = True


class Wandb(types.ModuleType):
    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logs, self.finished = [], [], 0

    def init(self, **kw):
        self.inits.append(kw)

    def log(self, values, step=None):
        self.logs.append((values, step))

    def finish(self):
        self.finished += 1


@pytest.fixture
def config(tmp_path):
    return two_stage_yaml(tmp_path, "reported", eval_every=2, checkpoint_every=0, log_every=1)


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_and_wandb_get_what_metrics_jsonl_gets(config, tmp_path, monkeypatch):
    Writer.made.clear()
    monkeypatch.setattr(callbacks, "summary_writer_class", lambda: Writer)
    wandb = Wandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["grow", "-c", str(config), "-o", str(out), "--no-progress",
                                 "--report-to", "tensorboard", "--report-to", "wandb"])
    assert r.exit_code == 0, r.output
    rows = metrics(out)
    train = [(m["global_step"], m["loss"]) for m in rows if m.get("event") == "train"]
    val = [(m["global_step"], m["val_loss"]) for m in rows if m.get("event") == "eval"]
    assert len(train) == 6 and len(val) >= 2

    (w,) = Writer.made
    assert w.logdir == str(out / "tensorboard") and w.closed
    assert [(s, v) for tag, v, s in w.scalars if tag == "train/loss"] == train
    assert [(s, v) for tag, v, s in w.scalars if tag == "val/loss"] == val
    assert {tag for tag, _, _ in w.scalars} >= {"train/lr", "train/grad_norm"}

    assert len(wandb.inits) == 1 and wandb.inits[0]["config"]["grow"]["stages"] == [1, 1]
    assert [(s, v["train/loss"]) for v, s in wandb.logs if "train/loss" in v] == train
    assert [(s, v["val/loss"]) for v, s in wandb.logs if "val/loss" in v] == val
    assert wandb.finished == 1


@pytest.mark.parametrize("name, expect", [("wandb", "needs the wandb package: pip install wandb"),
                                          ("mlflow", "--report-to takes tensorboard or wandb")])
def test_missing_package_or_unknown_name_writes_nothing(config, tmp_path, monkeypatch, name, expect):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["grow", "-c", str(config), "-o", str(out), "--no-progress", "--report-to", name])
    assert r.exit_code != 0 and expect in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not out.exists()
