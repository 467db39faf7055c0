"""Growing an existing model further: `grow --from MODEL` (training/source.py)."""

import json
import shutil

import numpy as np
import pytest
from helpers import grow_config, kjv_slice, weights
from typer.testing import CliRunner

from mlx_grow.base import UserError
from mlx_grow.checkpoint import load_model, read_meta
from mlx_grow.config import RunConfig
from mlx_grow.training.grow import grow
from mlx_grow.training.schedule import plan


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return str(kjv_slice(tmp_path_factory.mktemp("corpus") / "kjv.txt"))


def config(corpus, depth=4, grow=None, train=None, tokenizer="bvv241-2-3", **model):
    return grow_config(corpus, depth, {"blocks_per_stage": 1, "steps_per_stage": 3, **(grow or {})},
                       {"warmup_steps": 1, "val_batches": 1, **(train or {})}, tokenizer, **model)


def run(cfg, out, **kw):
    return grow(cfg, out, progress=False, echo=lambda *a, **k: None, **kw)


@pytest.fixture(scope="module")
def source(corpus, tmp_path_factory):
    """A finished 2-block model: the thing grown further."""
    out = tmp_path_factory.mktemp("src") / "run"
    final, _ = run(config(corpus, depth=2, grow={"blocks_per_stage": 2, "steps_per_stage": 4}), out)
    return final


@pytest.fixture(scope="module")
def grown(corpus, source, tmp_path_factory):
    """The source grown to 4 blocks in two stages of one block."""
    out = tmp_path_factory.mktemp("grown") / "run"
    final, summary = run(config(corpus), out, from_dir=source)
    return out, final, summary


def test_plan_with_a_base_grows_on_top():
    def cfg(depth, **grow):
        return RunConfig(model={"num_hidden_layers": depth, "hidden_size": 32, "num_attention_heads": 2},
                         grow={"steps_per_stage": 2, **grow})

    assert [(s.new, s.depth, s.first_trainable) for s in plan(cfg(16, blocks_per_stage=3), base=9)] == [
        (3, 12, 9), (3, 15, 12), (1, 16, 15)]
    phased = cfg(4, blocks_per_stage=1, lora={"rank": 2, "phases": [{"after_stage": 1, "steps": 1}],
                                              "final_phase_steps": 1})
    assert [(s.kind, s.depth, s.lora_rank) for s in plan(phased, base=2)] == [
        ("grow", 3, 0), ("lora", 3, 2), ("grow", 4, 0), ("lora", 4, 2)]
    lora = cfg(4, blocks_per_stage=1, lora={"rank": 2, "from_depth": 3})  # adapters on the frozen source blocks
    assert [s.lora_rank for s in plan(lora, base=2)] == [2, 2]
    explicit = RunConfig(model={"num_hidden_layers": 16, "hidden_size": 32, "num_attention_heads": 2},
                         grow={"stages": [3, 4], "steps_per_stage": 2}, base=9)
    assert [s.depth for s in plan(explicit)] == [12, 16]
    with pytest.raises(UserError, match=r"add up to 7 new blocks, but growing the 9-block model \(--from\) to "
                                        r"depth 13 adds 4"):
        explicit = explicit.with_flags(model={"num_hidden_layers": 13})
    with pytest.raises(UserError, match="is not above the 4 blocks"):
        RunConfig(model={"num_hidden_layers": 4, "hidden_size": 32, "num_attention_heads": 2}, base=4)
    with pytest.raises(UserError, match="monolithic"):
        RunConfig(model={"num_hidden_layers": 6, "hidden_size": 32, "num_attention_heads": 2},
                  grow={"monolithic": True, "blocks_per_stage": 3}, base=3)


def test_grow_from_keeps_the_source_frozen_and_records_it(source, grown):
    out, final, summary = grown
    src, end = weights(source), weights(final)
    assert len(load_model(final).layers) == 4
    for k, v in src.items():
        if k.startswith(("layers.0.", "layers.1.", "substrate.")):
            assert np.array_equal(v, end[k]), f"{k} moved, but the source's blocks are frozen"
        else:  # the head and final norm go on training
            assert not np.array_equal(v, end[k]), k
    assert [(s["depth"], s["kind"]) for s in summary] == [(3, "grow"), (4, "grow")]
    record = json.loads((out / "run.json").read_text())["from"]
    assert record["path"] == str(source.resolve()) and record["depth"] == 2
    assert record["substrate"] == read_meta(source)["substrate"]
    assert record["weights_sha256"] == read_meta(source)["files"]["model.safetensors"]
    assert record["lineage"]["run"] == str(source.parent)  # the source's own lineage comes along
    for d in (final, out / "stage-01", out / "stage-02"):
        assert read_meta(d)["lineage"]["from"] == record
    grows = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["event"] == "grow"]
    assert [(r["stage"], r["depth"]) for r in grows] == [(1, 3), (2, 4)]


def read_batches(cfg, out, **kw):
    """(every training batch a run read, in order; the lines it said)."""
    from mlx_grow.training import loop as G  # the loop reads each batch through split_xy

    seen, said, original = [], [], G.split_xy
    G.split_xy = lambda b: (seen.append(np.array(b)), original(b))[1]
    try:
        grow(cfg, out, progress=False, echo=lambda *a, **k: said.append(" ".join(map(str, a))), **kw)
    finally:
        G.split_xy = original
    return seen, said


def test_grow_from_reads_on_where_the_source_stopped(corpus, source, tmp_path):
    from mlx_grow.data.stream import open_stream
    from mlx_grow.tokenizer import load_tokenizer

    key = config(corpus).data.mixture_key()
    assert read_meta(source)["lineage"]["reads"] == {key: 4}  # the source's run read 4 batches
    seen, said = read_batches(config(corpus, depth=3), tmp_path / "r", from_dir=source)
    stream = open_stream(config(corpus).data, load_tokenizer("bvv241-2-3"), 16, 4, 0, progress=False)
    assert len(seen) == 3 and all(np.array_equal(b, stream.batch(4 + k)) for k, b in enumerate(seen))
    assert not np.array_equal(seen[0], stream.batch(0))
    assert any("its run read 4 batches" in s and "goes on from batch 4" in s for s in said), said
    assert read_meta(tmp_path / "r" / "final")["lineage"]["reads"] == {key: 7}  # and a --from of it reads on


def test_grow_from_restarts_at_batch_0_with_a_warning_when_the_stream_differs(corpus, source, tmp_path):
    from mlx_grow.data.stream import open_stream
    from mlx_grow.tokenizer import load_tokenizer

    other = str(kjv_slice(tmp_path / "other.txt", docs=60))
    tok = load_tokenizer("bvv241-2-3")
    cases = (("mixture", config(corpus, depth=3), {"sources": [other]}, "read another data mixture"),
             ("seed", config(corpus, depth=3, train={"seed": 5}), None, "seed 0 (this run: 5)"))
    for name, cfg, data, why in cases:
        if data:
            cfg = cfg.with_flags(data=data)
        seen, said = read_batches(cfg, tmp_path / name, from_dir=source)
        stream = open_stream(cfg.data, tok, 16, 4, cfg.train.seed, progress=False)
        assert all(np.array_equal(b, stream.batch(k)) for k, b in enumerate(seen)), name
        warning = [s for s in said if s.startswith("warning:")]
        assert len(warning) == 1 and why in warning[0] and "from batch 0" in warning[0], said


def test_grow_from_an_older_model_rebuilds_or_warns(corpus, source, tmp_path):
    from mlx_grow.training.source import recorded_reads

    lineage = read_meta(source)["lineage"]
    older = {k: v for k, v in lineage.items() if k not in ("reads", "stream")}  # written before they were kept
    assert recorded_reads(older) == {"reads": lineage["reads"], "stream": lineage["stream"]}  # from run.json
    assert recorded_reads({**older, "run": str(tmp_path / "gone")}) == {}
    assert recorded_reads({**older, "run": "moved"}, source) == recorded_reads(older)  # the run folder above it
    assert recorded_reads(None) == {}
    copy = tmp_path / "imported"  # a model with no lineage: batch 0, with a warning
    shutil.copytree(source, copy)
    meta = json.loads((copy / "mlx_grow.json").read_text())
    meta.pop("lineage")
    (copy / "mlx_grow.json").write_text(json.dumps(meta))
    seen, said = read_batches(config(corpus, depth=3), tmp_path / "r", from_dir=copy)
    assert [s for s in said if s.startswith("warning:")][0].startswith(f"warning: --from {copy.resolve()} records "
                                                                        "no data position")


def test_from_stages_follow_the_later_stage_rules():
    def cfg(**grow):
        return RunConfig(model={"num_hidden_layers": 4, "hidden_size": 32, "num_attention_heads": 2},
                         grow={"blocks_per_stage": 1, "steps_per_stage": [9, 2, 3], "train_head": False,
                               "plateau": {"stages": [1]}, **grow},
                         data={"stages": [["a.txt"], ["b.txt"]]})

    def rules(c, base):
        return [(s.steps, s.train_head, c.grow.plateau.applies(s.rule), c.data.mixture_key(s.rule))
                for s in plan(c, base=base)]

    fresh = rules(cfg(), 0)  # stage 1: 9 steps, the head trains, the plateau rule, a.txt; later: 2, 3, 3
    key = cfg().data.mixture_key
    assert fresh == [(9, True, True, key(0)), (2, False, False, key(1)), (3, False, False, key(1)),
                     (3, False, False, key(1))]
    assert rules(cfg(), 1) == fresh[1:]  # --from a 1-block model: its stages are stages 2, 3, 4
    assert rules(cfg(from_as_first_stage=True), 1) == fresh[:3]  # asked: stage-1 rules first
    final = cfg(lora={"rank": 2, "final_phase_steps": 1})  # the final phase too
    assert [(s.kind, s.train_head) for s in plan(final, base=3)] == [("grow", False), ("lora", False)]


def test_from_runs_started_before_the_rule_resume_with_stage_1_rules(tmp_path):
    from mlx_grow.cli import app
    from mlx_grow.training.runs import config_from_record

    record = config(str(tmp_path / "c.txt")).to_dict()
    del record["grow"]["from_as_first_stage"]  # a run.json written before the key
    assert config_from_record(record, "run.json", base=2).grow.from_as_first_stage is True  # as it started
    assert config_from_record(record, "run.json").grow.from_as_first_stage is False  # no --from: no matter
    r = CliRunner().invoke(app, ["grow", "--from-as-first-stage", "-o", str(tmp_path / "out")])
    assert r.exit_code == 2 and "--from-as-first-stage goes with --from MODEL" in r.output
    assert not (tmp_path / "out").exists()


def test_grow_from_trains_no_head_when_later_stages_do_not(corpus, source, tmp_path):
    cfg = config(corpus, depth=3, grow={"train_head": False})
    final, summary = run(cfg, tmp_path / "r", from_dir=source)
    src, end = weights(source), weights(final)
    for k in ("lm_head.weight", "norm.weight"):
        assert np.array_equal(src[k], end[k]), k  # as v1's layer 2: only the new block trains
    assert not np.array_equal(src["lm_head.weight"], weights(run(
        config(corpus, depth=3, grow={"train_head": False, "from_as_first_stage": True}), tmp_path / "first",
        from_dir=source)[0])["lm_head.weight"])  # asked for stage-1 rules: the head trains


def test_grow_from_refuses_another_architecture_substrate_or_tokenizer(corpus, source, tmp_path):
    out = tmp_path / "out"
    table = tmp_path / "table.npy"  # binary codes in another order
    np.save(table, np.ascontiguousarray(weights(source)["substrate.table"][::-1]))
    with pytest.raises(UserError, match=r"substrate binary\(bits=16, order=msb\) \[65536, 16\] \(sha256 .* but "
                                        r"the config builds random\(bits=17, seed=0\)"):
        run(config(corpus, substrate={"kind": "random", "bits": 17}), out, from_dir=source)
    with pytest.raises(UserError, match=r"substrate binary\(bits=16, order=msb\) \[65536, 16\] \(sha256 (\w+)…\) "
                                        r"but the config builds binary\(bits=16, order=msb\) \[65536, 16\] "
                                        r"\(sha256 (?!\1)\w+…\)"):  # the same recipe, another table
        run(config(corpus, substrate={"kind": "binary", "bits": 16, "path": str(table)}), out, from_dir=source)
    with pytest.raises(UserError, match="hidden_size is 32 in .* but 64 in the config"):
        run(config(corpus, hidden_size=64), out, from_dir=source)
    tok = tmp_path / "tok"  # the same vocabulary, encoded otherwise
    from mlx_grow.tokenizer import load_tokenizer

    load_tokenizer("bvv241-2-3").save(tok)
    spec = json.loads((tok / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "Lowercase"}
    (tok / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match=f"has tokenizer .* but the config's tokenizer {tok} is"):
        run(config(corpus, tokenizer=str(tok)), out, from_dir=source)
    with pytest.raises(UserError, match="has 2 blocks, and the depth 2 .* is not above it"):
        run(config(corpus, depth=2), out, from_dir=source)
    assert not out.exists()  # nothing written by any refusal


# three runs (~8 s): in the slow set
@pytest.mark.slow
def test_grow_from_resumes_before_and_after_a_checkpoint(corpus, source, grown, tmp_path):
    class Stop(Exception):
        pass

    def kill_at(n):
        def hook(step, model):
            if step == n:
                raise Stop
        return hook

    want = weights(grown[1])
    for name, train, at in (("early", {}, 1), ("late", {"checkpoint_every": 2}, 4)):
        out = tmp_path / name
        with pytest.raises(Stop):
            run(config(corpus, train=train), out, from_dir=source, on_step=kill_at(at))
        assert bool(list((out / "checkpoints").glob("step-*")) if (out / "checkpoints").exists() else []) == \
            (name == "late")
        with pytest.raises(UserError, match="resume without --from"):
            run(config(corpus, train=train), out, resume=True, from_dir=source)
        from mlx_grow.training.runs import read_run_config

        final, _ = run(read_run_config(out), out, resume=True)
        got = weights(final)
        assert got.keys() == want.keys() and all(np.array_equal(want[k], got[k]) for k in want), name
        assert read_meta(final)["lineage"]["from"]["path"] == str(source.resolve())


def test_resume_refuses_a_source_that_changed(corpus, source, tmp_path):
    from mlx_grow.checkpoint import save_model
    from mlx_grow.tokenizer import load_tokenizer

    copy = tmp_path / "src"
    shutil.copytree(source, copy)

    class Stop(Exception):
        pass

    def stop(step, model):
        raise Stop

    with pytest.raises(Stop):
        run(config(corpus, depth=3), tmp_path / "r", from_dir=copy, on_step=stop)
    m = load_model(copy)
    m.lm_head.weight = m.lm_head.weight * 2
    save_model(m, copy, load_tokenizer(copy), overwrite=True)
    with pytest.raises(UserError, match="changed since the run started"):
        run(config(corpus, depth=3), tmp_path / "r", resume=True)


def test_cli_grow_from(corpus, source, tmp_path):
    from mlx_grow.cli import app

    runner = CliRunner()
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config(corpus, depth=2, grow={"blocks_per_stage": 2}).to_dict()))
    r = runner.invoke(app, ["grow", "--config", str(cfg), "--from", str(source), "--depth", "4",
                            "--blocks-per-stage", "2", "-o", str(tmp_path / "run"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1] == str(tmp_path / "run" / "final")
    assert len(load_model(tmp_path / "run" / "final").layers) == 4
    assert json.loads((tmp_path / "run" / "run.json").read_text())["from"]["depth"] == 2
    r = runner.invoke(app, ["grow", "--resume", str(tmp_path / "run"), "--from", str(source)])
    assert r.exit_code == 2 and "--from" in r.output
    r = runner.invoke(app, ["grow", "--resume", str(tmp_path / "run")])  # finished: says so, changes nothing
    assert r.exit_code == 0 and r.output.strip().splitlines()[-1] == str(tmp_path / "run" / "final")
    for extra, msg in ((["--depth", "2"], "not above"), (["--depth", "4", "--monolithic"], "monolithic"),
                       (["--depth", "5", "--stages", "2,2"], "list only the new blocks")):
        r = runner.invoke(app, ["grow", "--config", str(cfg), "--from", str(source), *extra,
                                "-o", str(tmp_path / "bad")])
        assert r.exit_code == 2 and msg in r.output, r.output
    assert not (tmp_path / "bad").exists()
