"""The passes guard: planned tokens drawn from each source against the tokens it holds,
over stages, monolithic segments, LoRA phases and instruction files; grow refuses more
than data.max_passes (--allow-repeat N); grow --dry-run writes nothing; the paper
configs name Hub data, pass the guard, and offline say what to download."""

import json
import re

import pytest
from helpers import kjv_docs
from typer.testing import CliRunner

from mlx_grow.base import UserError
from mlx_grow.cli import app
from mlx_grow.config import RunConfig, load_config, packaged_configs
from mlx_grow.data import corpora
from mlx_grow.data.stream import prepare
from mlx_grow.training import passes

runner = CliRunner()
PAPER = sorted(n for n in packaged_configs() if n != "tiny")


pytestmark = pytest.mark.usefixtures("fresh_cache")  # conftest.py



def jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


def config(data, grow, **train) -> RunConfig:
    return RunConfig.from_dict({
        "name": "t", "tokenizer": "bvv241-2-3",
        "model": dict(vocab_size=65536, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      max_position_embeddings=32, substrate={"kind": "binary", "bits": 16}),
        "data": data, "grow": grow,
        "train": {"batch_size": 4, "seq_len": 16, "lr": 3e-3, "warmup_steps": 1, "eval_every": 0, "val_batches": 1,
                  "checkpoint_every": 0, "log_every": 1, **train}}, where="test")


def test_guard_counts_draws_over_stage_mixtures_monolithic_segments_lora_phases_and_instruction_files(tmp_path):
    a, b = jsonl(tmp_path / "a.jsonl", kjv_docs(20)), jsonl(tmp_path / "b.jsonl", kjv_docs(40, start=20))
    held = {s.meta["source"]: s.meta["tokens"]["train"] for s in prepare([a, b], "bvv241-2-3", progress=False)}
    mix = {"stages": [[{"source": a, "weight": 1}, {"source": b, "weight": 3}], [a]]}
    lora = {"rank": 2, "targets": ["q_proj"], "final_phase_steps": 5}
    rows = passes.table(config(mix, {"stages": [1, 1], "steps_per_stage": [10, 20], "lora": lora}))
    # 64 tokens a step: stage 1 draws 640 (a 1/4, b 3/4), stage 2 1,280 of a, the final LoRA phase 320 of a
    assert [(r.label, r.drawn, r.held, r.how) for r in rows] == [(a, 160 + 1280 + 320, held[a], "prepared"),
                                                                   (b, 480, held[b], "prepared")]
    assert rows[0].passes == pytest.approx(1760 / held[a])
    mono = passes.table(config(mix, {"stages": [1, 1], "steps_per_stage": [10, 20], "monolithic": True}))
    assert [r.drawn for r in mono] == [160 + 1280, 480]  # its segments walk the same mixtures
    # instruction files share instruction_ratio of every step by their size, as the stream draws them
    qa = [tmp_path / "q1.jsonl", tmp_path / "q2.jsonl"]
    for n, f in zip((30, 90), qa):
        rows = [{"question": f"q{i}?", "answer": t[:100]} for i, t in enumerate(kjv_docs(n))]
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows = passes.table(config({"sources": [a], "instruction_files": [str(f) for f in qa], "instruction_ratio": 0.25},
                               {"stages": [2], "steps_per_stage": 100}))
    assert rows[0].drawn == pytest.approx(0.75 * 6400)
    inst = rows[1:]
    assert sum(r.drawn for r in inst) == pytest.approx(0.25 * 6400)
    assert inst[0].passes == pytest.approx(inst[1].passes) and inst[1].held > 2.5 * inst[0].held
    assert all("(instruction file)" in r.label and r.how == "counted" for r in inst)


def test_a_local_source_is_estimated_a_streamed_one_holds_its_budget_or_is_unbounded(tmp_path):
    big = jsonl(tmp_path / "big.jsonl", kjv_docs(600))  # more than the sample: estimated
    rows = passes.table(config({"sources": [big, {"source": "hf:org/a", "tokens": 1000}, "hf:org/b"]},
                               {"stages": [2], "steps_per_stage": 10}))
    est, budget, unbounded = rows
    assert est.how == "estimate" and budget.how == "budget" and unbounded.how == "unbounded"
    (shard,) = prepare([big], "bvv241-2-3", progress=False)
    assert est.held == pytest.approx(shard.meta["tokens"]["train"], rel=0.1)
    assert budget.held == 990 and unbounded.held is None and unbounded.passes == 0  # val_fraction 0.01
    assert "unbounded" in unbounded.line() and "(an estimate)" in est.line()


# prepares the built-in corpus (~12 s): in the slow set
@pytest.mark.slow
def test_grow_refuses_more_passes_than_allowed_naming_the_source_and_both_ways_out(tmp_path):
    from mlx_grow.training.grow import grow

    small = jsonl(tmp_path / "small.jsonl", [t[:600] for t in kjv_docs(4, start=300)])
    cfg = config({"sources": [small]}, {"stages": [1, 1], "steps_per_stage": 40})
    (shard,) = prepare([small], "bvv241-2-3", progress=False)
    p = 80 * 64 / shard.meta["tokens"]["train"]
    assert p > 4
    with pytest.raises(UserError) as e:
        grow(cfg, tmp_path / "run", progress=False, echo=lambda *a: None)
    n = -(-p // 1)
    msg = str(e.value)
    assert msg.startswith(f"{small} would be read {passes.fmt(p)} times (5.1K planned tokens drawn from the ")
    assert f"--allow-repeat {n:.0f} (data.max_passes: {n:.0f})" in msg and "more data" in msg
    assert "\n" not in msg and not (tmp_path / "run").exists()
    # both ways out: the flag, or the config key
    import yaml

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.to_dict()))
    r = runner.invoke(app, ["grow", "-c", str(cfg_file), "-o", str(tmp_path / "run"), "--allow-repeat", f"{n:.0f}",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["grow", "-c", str(cfg_file), "-o", str(tmp_path / "run2"), "--allow-repeat", "4",
                            "--no-progress"])
    assert r.exit_code == 2 and "would be read" in r.output and not (tmp_path / "run2").exists()
    ok = config({"sources": [small], "max_passes": n}, {"stages": [1, 1], "steps_per_stage": 40})
    passes.check(ok, passes.table(ok))


def test_the_tiny_default_run_passes_the_guard():
    cfg = load_config("tiny")
    (row,) = passes.table(cfg)
    assert row.label == "builtin:default" and row.drawn == 307_200 and row.passes < 0.1
    passes.check(cfg, [row])


def snapshot(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("name", ["tiny", "paper-16l-16bit"])
def test_grow_dry_run_prints_the_plan_and_writes_nothing(tmp_path, monkeypatch, name):
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir(), home.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    before = snapshot(tmp_path)
    r = runner.invoke(app, ["grow", "-c", name, "--dry-run"])
    assert r.exit_code == 0, r.output
    assert snapshot(tmp_path) == before  # no run folder, no shard or tokenizer cache, nothing in HOME
    out = " ".join(r.output.split())
    for words in ("dry run, nothing is written", "stage 1: +3 blocks", "planned tokens:", "training FLOPs:",
                  "predicted peak memory:", "time: no measured tokens/s", "passes over a source"):
        assert words in out, words
    if name == "tiny":
        assert re.search(r"data: builtin:default: draws 307.2K of the 5\.\dM training tokens it holds \(an "
                         r"estimate\) = 0.06 passes", out)
    else:
        assert "hf:HuggingFaceFW/fineweb-edu:sample-100BT: draws 46.5B of the 49.5B training tokens it holds" in out


def test_dry_run_turns_the_plan_into_hours_with_a_run_measured_speed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"event": "train", "global_step": i, "stage": 1, "step": i, "loss": 5.0, "tokens": 64 * i,
             "flops": 1e9 * i, "tok_s": s} for i, s in enumerate((80, 100, 120), 1)]  # as a run logs them
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = runner.invoke(app, ["grow", "--dry-run", "-o", str(run)])
    assert r.exit_code == 0 and f"time: about 0.9 h at the 100 tokens/s measured in {run}" in " ".join(r.output.split())


def test_every_paper_config_names_hub_data_and_passes_the_guard():
    for name in PAPER:
        cfg = load_config(name)
        specs = [s for k in range(max(len(cfg.data.stages), 1)) for s in cfg.data.mixture(k)]
        assert specs and all(s.source.startswith("hf:") for s in specs), name
        rows = passes.table(cfg)
        passes.check(cfg, rows)
        budgeted = [r for r in rows if r.how == "budget"]
        assert budgeted and all(0.5 < r.passes < 1 for r in budgeted), (name, [r.line() for r in rows])
        assert all(r.how == "unbounded" for r in rows if r.how != "budget")  # the small QA sets: read whole
        assert "Data:" in cfg.description and "ours" in cfg.description.split("Data:")[1]
    assert load_config("tiny").data.sources == ["builtin:default"]


def test_paper_configs_offline_say_what_to_download_before_anything_is_written(tmp_path, monkeypatch):
    from mlx_grow.training.grow import check_reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["grow", "-c", "paper-16l-16bit", "-o", str(tmp_path / "run")])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    root = tmp_path / "cache" / "datasets"
    for words in ("hf:HuggingFaceFW/fineweb-edu:sample-100BT, hf:HuggingFaceTB/cosmopedia:web_samples_v1, "
                  "hf:HuggingFaceTB/cosmopedia:web_samples_v2 cannot be streamed: HF_HUB_OFFLINE is set",
                  f"`hf download HuggingFaceFW/fineweb-edu --repo-type dataset --include README.md --include "
                  f"'sample/100BT/*' --local-dir {root / 'HuggingFaceFW' / 'fineweb-edu'}`",
                  "--include 'data/web_samples_v1/*' --include 'data/web_samples_v2/*'",
                  "or train on local files with --data DIR. Nothing was written"):
        assert words in " ".join(r.output.split()), words
    assert snapshot(tmp_path) == []
    for name in PAPER:  # every paper config names each of its Hub datasets
        with pytest.raises(UserError) as e:
            check_reachable(load_config(name))
        cfg = load_config(name)
        for s in {s.source for k in range(max(len(cfg.data.stages), 1)) for s in cfg.data.mixture(k)}:
            assert s in str(e.value) and corpora.parse_hf(s)[0] in str(e.value)


def test_data_flag_replaces_the_stage_mixtures_and_is_checked(tmp_path):
    r = runner.invoke(app, ["grow", "-c", "paper-16l-16bit", "--data", "builtin:default", "--dry-run"])
    out = " ".join(r.output.split())
    assert r.exit_code == 0 and "--data replaces the per-stage mixtures (data.stages) of paper-16l-16bit" in out
    assert re.search(r"grow would refuse: builtin:default would be read 1[23],[0-9]{3} times", out), out


# trains the reproduction's tokenizer (~10 s): in the slow set
@pytest.mark.slow
def test_reproduce_names_the_paper_corpora_and_refuses_the_builtin_corpus_at_small_scale(tmp_path):
    for scale in ("small", "paper"):
        r = runner.invoke(app, ["reproduce", "--scale", scale, "--dry-run", "-o", str(tmp_path / scale)])
        out = " ".join(r.output.split())
        assert r.exit_code == 0 and "data: hf:HuggingFaceFW/fineweb-edu:sample-10BT: draws" in out, out
        assert "hf:wikimedia/wikipedia:20231101.ru" in out and "refused" not in out
    r = runner.invoke(app, ["reproduce", "--scale", "small", "--data", "builtin:default", "--dry-run"])
    assert r.exit_code == 0 and re.search(r"refused \(a run would stop here\): run layer-s0: builtin:default would be "
                                          r"read [\d.]+ times", " ".join(r.output.split())), r.output
    r = runner.invoke(app, ["reproduce", "--scale", "small", "--data", "builtin:default", "-o", str(tmp_path / "r")])
    assert r.exit_code == 2 and re.search(r"--allow-repeat \d\d", r.output) and not (tmp_path / "r").exists()
    r = runner.invoke(app, ["reproduce", "--dry-run"])
    assert r.exit_code == 0 and "data: builtin:default: draws" in r.output and "refused" not in r.output
