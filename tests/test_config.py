"""The typed run config: every section parsed and validated once, errors that
name the key, flag precedence (flag > YAML > default), and one stage plan."""

import json

import pytest
from typer.testing import CliRunner

from mlx_grow.base import UserError
from mlx_grow.cli import app
from mlx_grow.config import (
    GrowConfig,
    LoRAConfig,
    RunConfig,
    TrainConfig,
    load_config,
    packaged_configs,
)
from mlx_grow.data.stream import DataConfig
from mlx_grow.model import ModelArgs
from mlx_grow.training.lora import lora_param_count
from mlx_grow.training.params import stage_active
from mlx_grow.training.schedule import Stage, plan

runner = CliRunner()


@pytest.mark.parametrize("name", sorted(packaged_configs()))
def test_every_packaged_config_parses_every_section(name):
    cfg = load_config(name)
    assert isinstance(cfg.model, ModelArgs) and isinstance(cfg.data, DataConfig)
    assert isinstance(cfg.grow, GrowConfig) and isinstance(cfg.train, TrainConfig)
    assert cfg.grow.lora is None or isinstance(cfg.grow.lora, LoRAConfig)
    stages = plan(cfg)
    assert stages and all(isinstance(s, Stage) and s.steps >= 1 for s in stages)
    assert stages[-1].depth == cfg.depth == cfg.model.num_hidden_layers
    # what run.json stores parses back to the same config
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.to_dict() == cfg.to_dict()


def test_every_packaged_config_plans_the_tokens_its_description_states():
    """`mlx-grow info` prints the planned total; each description states the figure it must be."""
    import re

    from mlx_grow.training.info import describe

    names = sorted(packaged_configs())
    assert {"paper-16l-16bit", "es-16l-16bit", "d4096-1layer", "tiny"} <= set(names)
    unit = {"K": 1e3, "M": 1e6, "B": 1e9}
    for name in names:
        stated = re.findall(r"Planned: (\d+(?:\.\d+)?)([KMB]) tokens", " ".join(load_config(name).description.split()))
        assert len(stated) == 1, f"{name}: its description must state 'Planned: <N>[KMB] tokens' once"
        figure, u = stated[0]
        line = next(n for n in describe(name)["notes"] if n.startswith("planned tokens: "))
        total = int(line.split()[2].replace(",", ""))
        decimals = len(figure.partition(".")[2])
        assert round(total / unit[u], decimals) == float(figure), f"{name}: plans {total:,}, states {figure}{u}"
    # the papers' own figures
    assert round(sum(s.steps for s in plan(load_config("paper-16l-16bit"))) * 32 * 1024 / 1e9, 1) == 68.9
    assert [s.steps for s in plan(load_config("es-16l-16bit"))] == [-(-9_000_000_000 // (32 * 1024))]


def test_monolithic_scalar_token_budget_needs_named_stages():
    grow = {"monolithic": True, "tokens_per_stage": 4096}
    model = {"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 4}
    with pytest.raises(UserError, match="ambiguous.*grow.stages"):
        RunConfig.from_dict({"model": model, "grow": {**grow, "blocks_per_stage": 2}})
    train = {"batch_size": 4, "seq_len": 64}
    one = plan(RunConfig.from_dict({"model": model, "grow": {**grow, "stages": [4]}, "train": train}))
    assert [(s.steps, s.segments) for s in one] == [(16, [16])]  # one segment of 4,096 tokens
    twin = plan(RunConfig.from_dict({"model": model, "grow": {**grow, "stages": [2, 2]}, "train": train}))
    assert [(s.steps, s.segments) for s in twin] == [(32, [16, 16])]  # the grown twin's two stages
    cfg = load_config("paper-9l-16bit")  # a grown paper config takes --monolithic as it is
    cfg = cfg.with_flags(grow={"monolithic": True})
    assert [s.segments for s in plan(cfg)] == [[91553] * 3]


def test_descriptions_state_the_unstated_choices():
    from mlx_grow.training.params import human

    for name in sorted(packaged_configs()):
        cfg = load_config(name)
        said = " ".join(cfg.description.split())
        if "weight decay" in said:  # its scope: every trained weight
            assert "on every trained weight, norms" in said and "biases" in said, name
        if cfg.model.substrate.kind == "trainable":  # its init, and that it decays too
            assert "ours starts at N(0, 0.02), where PyTorch's nn.Embedding starts at N(0, 1)" in said, name
            assert "the trainable embedding included" in said, name
    cfg = load_config("paper-16l-16bit")  # the final LoRA phase trains the head: its share, from the plan
    last = plan(cfg)[-1]
    assert last.kind == "lora" and last.train_head
    head, active = stage_active(cfg.model, 0, True), stage_active(cfg.model, 0, True, last.lora_params)
    assert f"head and final norm train too (ours: {human(head)} of its {human(active)} active parameters)" in \
        " ".join(cfg.description.split()) and (human(head), human(active)) == ("67.1M", "71.3M")


def test_monolithic_keeps_the_final_lora_phase_as_a_last_segment():
    from mlx_grow.training.info import stage_notes
    from mlx_grow.training.params import totals

    cfg = load_config("paper-16l-16bit")
    grown = plan(cfg)
    cfg = cfg.with_flags(grow={"monolithic": True})
    (mono,) = plan(cfg)
    assert mono.segments == [s.steps for s in grown] and grown[-1].kind == "lora"  # 5 stages + the final phase
    assert mono.steps * 32 * 1024 == sum(s.steps for s in grown) * 32 * 1024 == 68_900_028_416
    notes = stage_notes(cfg, totals(cfg.model))
    assert "planned tokens: 68,900,028,416 (68.9B)" in notes and notes[0].endswith("68.9B tokens")


def test_blocks_per_stage_with_listed_stages_is_refused_naming_both(tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["grow", "-c", "paper-9l-16bit", "--blocks-per-stage", "1", "-o", str(out)])
    assert r.exit_code == 2 and out.exists() is False, r.output
    said = " ".join(r.output.split())
    assert "--blocks-per-stage 1 and grow.stages of paper-9l-16bit [3, 3, 3] both set the blocks" in said
    assert "--stages 1,1,1,1,1,1,1,1,1" in said
    r = runner.invoke(app, ["grow", "--stages", "4,5", "--blocks-per-stage", "2", "-o", str(out)])
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and "--blocks-per-stage 2 and --stages [4, 5]" in said and "--stages 2,2,2,2,1" in said
    assert not out.exists()


def test_one_layer_series_configs_follow_the_cards_and_v1():
    for name, lora_from in (("d4096-1layer", 5), ("d4096-1layer-v1", 3)):
        cfg = load_config(name)
        stages = plan(cfg)
        assert [s.train_head for s in stages] == [True] + [False] * 5  # only the newest layer after stage 1
        assert [s.depth for s in stages if s.lora_rank] == list(range(lora_from, 7))
        assert [cfg.grow.plateau.applies(s.index) for s in stages] == [True] + [False] * 5


@pytest.mark.parametrize("section, key, value, words", [
    ("train", "dtype", "float64", "train.dtype must be one of float32, bfloat16, float16"),
    ("train", "batch_size", 0, "train.batch_size must be a positive integer, got 0"),
    ("train", "lr", -1e-3, "train.lr must be a number > 0"),
    ("train", "seq_len", "long", "train.seq_len must be a positive integer"),
    ("train", "grad_checkpoint", "yes", "train.grad_checkpoint must be true or false"),
    ("train", "schedule", "cosine", "train.schedule must be one of per_stage, global, constant"),
    ("train", "decay_fraction", 1.0, "train.decay_fraction must be a number >= 0 and < 1"),
    ("grow", "from_as_first_stage", "yes", "grow.from_as_first_stage must be true or false"),
    ("grow", "stages", [0, 2], "grow.stages[0] must be a positive integer"),
    ("grow", "steps_per_stage", 0, "grow.steps_per_stage must be a positive integer"),
    ("grow", "block_init", "ones", "grow.block_init must be one of random, zero-out, copy-top"),
    ("grow", "plateau", {"patience": 0}, "grow.plateau.patience must be a positive integer"),
    ("grow", "lora", {"targets": ["q"]}, "unknown LoRA target(s) ['q'] in grow.lora.targets"),
    ("grow", "warp", 1, "unknown key(s) warp in grow"),
    ("model", "num_hidden_layers", 0, "model.num_hidden_layers must be a positive integer"),
])
def test_bad_values_fail_at_parse_time_naming_the_key(tmp_path, section, key, value, words):
    d = {"model": {"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 3}, section: {key: value}}
    if section == "model":
        d["model"][key] = value
    with pytest.raises(UserError) as e:
        RunConfig.from_dict(d, where="my.yaml")
    assert str(e.value).startswith("my.yaml: ") and words in str(e.value)


def test_stages_must_reach_the_depth_and_seq_fit_the_context():
    with pytest.raises(UserError, match="add up to 4 blocks but the depth is 5"):
        RunConfig.from_dict({"model": {"num_hidden_layers": 5}, "grow": {"stages": [2, 2]}})
    with pytest.raises(UserError, match="train.seq_len 256 exceeds the model context"):
        RunConfig.from_dict({"model": {"max_position_embeddings": 128}, "train": {"seq_len": 256}})


def test_depth_lives_in_one_place():
    cfg = RunConfig.from_dict({"model": {"hidden_size": 32, "num_attention_heads": 2}, "grow": {"depth": 6}})
    assert cfg.depth == cfg.model.num_hidden_layers == 6 and "depth" not in cfg.to_dict()["grow"]
    with pytest.raises(UserError, match="disagree"):
        RunConfig.from_dict({"model": {"num_hidden_layers": 4}, "grow": {"depth": 6}})


def test_flags_override_only_what_was_given():
    from mlx_grow.training.runs import config_diff

    cfg = load_config("tiny")
    assert cfg.train.lr == 2e-3 and cfg.train.seed == 0
    before = cfg.to_dict()
    new = cfg.with_flags(train={"lr": 1e-3, "seed": None, "batch_size": None}, model={"num_hidden_layers": 6})
    assert config_diff(before, new.to_dict()) == ["model.num_hidden_layers", "train.lr"]
    assert new.train.lr == 1e-3 and new.train.batch_size == 8 and new.depth == 6
    assert [s.depth for s in plan(new)] == [3, 6]
    assert cfg.to_dict() == before  # a new config: the one given never changes
    with pytest.raises(UserError, match="train.batch_size must be a positive integer"):
        new.with_flags(train={"batch_size": 0})
    assert new.train.batch_size == 8
    same = new.with_flags(train={"lr": None})  # nothing given: an equal copy, not the same object
    assert same is not new and same.to_dict() == new.to_dict() and same.train is not new.train


def test_plan_holds_lora_phases_and_token_budgets():
    cfg = RunConfig.from_dict({
        "model": {"hidden_size": 64, "num_attention_heads": 2, "num_hidden_layers": 4},
        "grow": {"blocks_per_stage": 2, "tokens_per_stage": 4096,
                 "lora": {"rank": 4, "from_depth": 4, "final_phase_tokens": 2048}},
        "train": {"batch_size": 4, "seq_len": 64}})
    stages = plan(cfg)
    assert [(s.new, s.depth, s.steps, s.lora_phase) for s in stages] == [(2, 2, 16, False), (2, 4, 16, False),
                                                                          (0, 4, 8, True)]
    assert [s.lora_rank for s in stages] == [0, 4, 4]
    assert stages[1].lora_params == 2 * 4 * (64 + 64) * 2  # 2 frozen blocks x q,v x rank 4
    assert stages[2].first_trainable == 4 and stages[2].label == "LoRA phase"


def test_plan_interleaves_lora_phases_under_the_budget():
    cfg = RunConfig.from_dict({
        "model": {"hidden_size": 64, "num_attention_heads": 2, "num_hidden_layers": 6, "vocab_size": 256},
        "grow": {"blocks_per_stage": 2, "steps_per_stage": 10,
                 "lora": {"rank": 64, "budget": 40_000,
                          "phases": [{"after_stage": 1, "tokens": 1024}, {"after_stage": 2, "steps": 5}]}},
        "train": {"batch_size": 4, "seq_len": 64}})
    stages = plan(cfg)
    assert [(s.kind, s.depth, s.steps, s.grown) for s in stages] == [
        ("grow", 2, 10, 0), ("lora", 2, 4, 0), ("grow", 4, 10, 1), ("lora", 4, 5, 1), ("grow", 6, 10, 2)]
    assert [s.index for s in stages] == [0, 1, 2, 3, 4]
    assert stages[1].label == "LoRA phase after stage 1" and stages[1].first_trainable == 2
    for st in (stages[1], stages[3]):  # the rank is the largest whose adapters fit the budget next to the head
        head = stage_active(cfg.model, 0, True)
        assert 0 < st.lora_rank < 64 and head + st.lora_params <= 40_000
        bigger = lora_param_count(cfg.model, st.depth, st.lora_rank + 1, ["q_proj", "v_proj"])
        assert head + bigger > 40_000


def yaml_config(tmp_path, corpus, **train):
    t = {"batch_size": 2, "seq_len": 16, "eval_every": 0, "val_batches": 1, **train}
    f = tmp_path / "c.yaml"
    f.write_text(json.dumps({
        "name": "c", "tokenizer": "bvv241-2-3",
        "model": {"vocab_size": 65536, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "max_position_embeddings": 32, "substrate": {"kind": "binary", "bits": 16}},
        "data": {"sources": [str(corpus)]},
        "grow": {"blocks_per_stage": 1, "steps_per_stage": 2}, "train": t}))
    return f


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from helpers import kjv_slice

    return kjv_slice(tmp_path_factory.mktemp("corpus") / "kjv.txt", docs=40)


def test_yaml_seed_is_honoured_and_flag_wins(tmp_path, corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = yaml_config(tmp_path, corpus, seed=5)
    r = runner.invoke(app, ["grow", "-c", str(cfg), "--no-progress"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "c-grow-s5"
    rec = json.loads((run / "run.json").read_text())["config"]
    assert rec["seed"] == 5 and rec["train"]["seed"] == 5
    r = runner.invoke(app, ["grow", "-c", str(cfg), "--seed", "7", "-o", str(tmp_path / "s7"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "s7" / "run.json").read_text())["config"]["train"]["seed"] == 7


def test_resume_refuses_flags_that_change_the_run_and_names_them(tmp_path, corpus):
    cfg = yaml_config(tmp_path, corpus)
    out = tmp_path / "run"
    assert runner.invoke(app, ["grow", "-c", str(cfg), "-o", str(out), "--no-progress"]).exit_code == 0
    before = (out / "run.json").read_bytes()
    r = runner.invoke(app, ["grow", "--resume", str(out), "--lr", "0.5", "--depth", "4", "--no-progress"])
    assert r.exit_code == 2
    assert "train.lr" in r.output and "model.num_hidden_layers" in r.output
    assert (out / "run.json").read_bytes() == before


def test_programming_errors_keep_their_traceback(monkeypatch):
    import mlx_grow.training.info as info

    def broken(target):
        raise KeyError("a bug")

    monkeypatch.setattr(info, "describe", broken)
    r = runner.invoke(app, ["info", "tiny"])
    assert isinstance(r.exception, KeyError)  # not turned into a one-word "error"
    monkeypatch.setattr(info, "describe", lambda t: (_ for _ in ()).throw(UserError("say [this] clearly")))
    r = runner.invoke(app, ["info", "tiny"])
    assert r.exit_code == 2 and "say [this] clearly" in r.output


def test_numbers_in_words_have_one_home():
    """base.human (counts) and base.size (bytes) serve info, the planner, the passes
    check and the reproduction report alike."""
    from mlx_grow.base import human, size
    from mlx_grow.reproduce.report import si
    from mlx_grow.training import params

    assert params.human is human
    assert [human(n) for n in (999, 1_500, 269_699_072, 68_900_000_000, 3.2e12)] == \
        ["999", "1.5K", "269.7M", "68.9B", "3.2T"]
    assert [si(x) for x in (None, float("nan"), 512, 2.5e9, 1.234e15)] == ["–", "–", "512", "2.50G", "1.23P"]
    assert [size(n) for n in (512, 3 << 20, 16 << 30, 250 << 40)] == ["0 KiB", "3 MiB", "16.00 GiB", "250.00 TiB"]


def test_the_glyph_table_draws_the_runs_tokenizer(tmp_path, monkeypatch):
    """The config's top-level tokenizer is the one source of the glyph table's strings, for grow
    and `substrate build` alike: model.substrate.tokenizer may only repeat it."""
    import numpy as np
    import yaml

    from mlx_grow.substrate import tables

    model = {"vocab_size": 65536, "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
             "substrate": {"kind": "glyph", "tokenizer": "bvv241-max"}}
    with pytest.raises(UserError, match="model.substrate.tokenizer 'bvv241-max' is not the run's tokenizer "
                                        "'bvv241-2-3'.*drop model.substrate.tokenizer"):
        RunConfig.from_dict({"tokenizer": "bvv241-2-3", "model": model})
    for same in ("bvv241-2-3", None):
        RunConfig.from_dict({"tokenizer": "bvv241-2-3", "model": {**model, "substrate": {"kind": "glyph",
                                                                                         "tokenizer": same}}})
    drawn = []

    def fake_table(args, vocab_size, d_model, token_strings=None):
        drawn.append(token_strings)
        return np.zeros((vocab_size, d_model), np.float32)

    monkeypatch.setattr(tables, "build_table", fake_table)
    cfg = tmp_path / "g.yaml"
    cfg.write_text(yaml.safe_dump({"tokenizer": "bvv241-2-3", "model": {**model, "substrate": {"kind": "glyph"}}}))
    r = CliRunner().invoke(app, ["substrate", "build", str(cfg), "-o", str(tmp_path / "g.safetensors")])
    assert r.exit_code == 0, r.output
    assert len(drawn[0]) == 65536 and drawn[0][97] == "a"  # bvv241-2-3's strings, as grow draws them
