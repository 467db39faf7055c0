"""`mlx-grow reproduce`: a smoke run at micro shapes produces every table, plot and
verdict from real runs, with its own tokenizer trained on the training split only,
the count baselines beside every table and equal tokens across the variants of each
part; it resumes without retraining, runs parts alone, refuses foreign folders, and
prints the estimate of the big scales without running them."""

import json
import re
from dataclasses import replace

import pytest
from helpers import kjv_slice
from typer.testing import CliRunner

from mlx_grow.base import UserError
from mlx_grow.cli import app
from mlx_grow.reproduce import SCALES, reproduce
from mlx_grow.reproduce.scales import GROWN_VARIANTS, LAYER_VARIANTS, SUBSTRATES, UNION, experiments

MICRO = replace(SCALES["tiny"], name="micro", hidden=64, heads=2, seq=16, batch=2, vocab=512, warmup=2, sub_depth=1,
                sub_steps=4, stage_steps=2, layer_depth=3, layer_steps=3, phase_steps=1, lora_rank=2, expert_depth=1,
                expert_steps=4, tune_steps=2, seeds=2, eval_every=2, val_batches=2, eval_limit=3, benchmarks=True)
SUBS = ["16-bit", "trainable"]


def corpora(d):
    from mlx_grow.data.corpora import BUILTINS

    corpus = kjv_slice(d / "kjv.txt", docs=40)
    other = d / "plays.txt"
    other.write_text("\n\n".join(x for _, x in zip(range(40), BUILTINS["shakespeare"].read())))
    task = d / "choice.jsonl"
    task.write_text("\n".join(json.dumps({"question": f"{a} plus {a}?", "choices": [str(2 * a), str(a), "x"],
                                          "answer": 0}) for a in range(1, 6)))
    return corpus, other, task


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    d = tmp_path_factory.mktemp("repro")
    corpus, other, task = corpora(d)
    lines = []
    # the glyph substrate (rendering every piece) has its own tests, and 64-bit / float run in the slow test
    res = reproduce(MICRO, d / "out", data=[str(corpus)], experts=[str(corpus), str(other)], tasks=[str(task)],
                    progress=False, echo=lines.append, substrates=SUBS)
    return d, res, lines


# the micro reproduction (~16 s for the fixture its tests share): in the slow set
@pytest.mark.slow
def test_every_part_is_measured_from_real_runs(smoke):
    d, res, lines = smoke
    runs = res["runs"]
    parts = {p: [r for r in runs if r["part"] == p] for p in (1, 2, 3, 4)}
    assert [r["label"] for r in parts[1]] == ["16-bit id", "trainable embeddings"] * MICRO.seeds
    assert len(parts[2]) == 3 * MICRO.seeds and {r["label"] for r in parts[2]} == set(GROWN_VARIANTS)
    assert [r["label"] for r in parts[3]] == list(LAYER_VARIANTS) * MICRO.seeds
    assert {r["seed"] for r in runs} == set(range(MICRO.seeds))
    for r in runs:  # each row comes from a finished run directory with its metrics
        assert (d / "out" / "runs" / r["key"] / "final" / "mlx_grow.json").is_file()
        assert r["val_loss"] > 0 and r["tokens"] > 0 and r["flops"] > 0 and r["wall_s"] > 0 and r["load"]
        assert len(r["curve"]["val_loss"]) >= 1
    # equal tokens across the variants of every part; the union control reads both experts' tokens
    for p in (1, 2, 3):
        assert len({r["tokens"] for r in parts[p]}) == 1, p
    experts = [r for r in parts[4] if r["label"] != UNION]
    assert len({r["tokens"] for r in experts}) == 1
    assert all(r["tokens"] == 2 * experts[0]["tokens"] for r in parts[4] if r["label"] == UNION)
    grown = [r for r in parts[2] if r["label"] == GROWN_VARIANTS[0]]
    assert [g["depth"] for g in grown[0]["curve"]["grows"]] == [6, 9]
    mono = [r for r in parts[2] if r["label"] == GROWN_VARIANTS[1]][0]
    assert grown[0]["active_params"] < mono["active_params"]
    # the interleaved LoRA phases ran between the one-layer stages, inside the same budget
    phases = next(r for r in parts[3] if r["label"] == LAYER_VARIANTS[2])["stages"]
    assert [s["kind"] for s in phases] == ["grow", "lora", "grow", "lora", "grow"]
    control = next(r for r in parts[3] if r["label"] == LAYER_VARIANTS[4])
    assert control["depth"] == 1 and len(control["stages"]) == 1
    assert all(r["bits_per_byte"] > 0 for r in parts[1])
    # the baselines: per part and seed, on the runs' batches
    for p in ("1", "2", "3"):
        for seed in ("0", "1"):
            b = res["baselines"][p][seed]["data"]
            assert b["unigram"] > 0 and b["bigram"] > 0 and b["train_tokens"] > 0 and b["val_tokens"] == 2 * 2 * 16
    # part 4 merges only when the experts are clear of their unigram tables: at micro scale they are not
    assert res["composition_skipped"] and "not 0.10 below its domain's unigram table" in res["composition_skipped"]
    # the tokenizer: trained into OUT on the training split, recorded with its fingerprint
    tok = json.loads((d / "out" / "reproduce.json").read_text())["tokenizer"]
    assert tok["vocab_size"] == MICRO.vocab and tok == {**res["tokenizer"], "path": "tokenizer"}
    assert (d / "out" / "tokenizer" / "tokenizer.json").is_file()


@pytest.mark.slow
def test_report_has_every_table_plot_baseline_and_verdict(smoke):
    d, res, _ = smoke
    md = (d / "out" / "reproduction.md").read_text()
    for name in ("substrates", "grown_vs_monolithic", "one_layer", "depth"):
        png = d / "out" / "reproduction" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"(reproduction/{name}.png)" in md
    saved = json.loads((d / "out" / "reproduction" / "results.json").read_text())
    assert [r["val_loss"] for r in saved["runs"]] == [r["val_loss"] for r in res["runs"]]
    for v in [*GROWN_VARIANTS, *LAYER_VARIANTS, "16-bit id", "trainable embeddings"]:
        assert f"| {v} | " in md, v
    # a unigram and a bigram row in every table of parts 1-3; part 4 (not merged) beside each expert
    assert md.count("| *unigram table") == 3 and md.count("| *bigram table") == 3
    assert "| its domain's unigram table | bigram table |" in md
    assert md.count("How the verdicts are reached") == 1 and md.count("Student-t") == 1
    verdicts = re.findall(r"verdict: \*\*([a-z ]+)\*\*", md)
    assert len(verdicts) >= 8 and set(verdicts) <= {"supports", "contradicts", "inconclusive",
                                                    "not testable at this scale"}
    # micro models learn little: the grown-vs-monolithic claim is not testable, and says why
    assert re.search(r"rivals the monolithic one.*verdict: \*\*not testable at this scale\*\*.*unigram table", md)
    assert "| the papers report |" in md and "Economics:" in md and "What depends on the tokenizer" in md
    assert md.count("**Level:**") == 3  # parts 1-3 say where their arms end against the baselines
    assert res["machine"]["cpus"] and "Machine:" in md


# runs the micro reproduction again and in other folders (~7 s): in the slow set
@pytest.mark.slow
def test_rerun_reuses_finished_runs_and_refuses_other_folders(smoke, tmp_path):
    d, res, _ = smoke
    lines = []
    again = reproduce(MICRO, d / "out", data=[str(d / "kjv.txt")], experts=[str(d / "kjv.txt"), str(d / "plays.txt")],
                      tasks=[str(d / "choice.jsonl")], progress=False, echo=lines.append, substrates=SUBS,
                      parts=["grown"])
    assert [r["val_loss"] for r in again["runs"]] == [r["val_loss"] for r in res["runs"] if r["part"] == 2]
    assert not any("validation loss" in x or "tokenizer:" in x for x in lines)  # nothing retrained or rebuilt
    md = (d / "out" / "reproduction.md").read_text()
    assert "## 2. Grown" in md and "## 1. Substrates" not in md  # the report covers the parts asked for
    with pytest.raises(UserError, match="other settings"):
        reproduce(replace(MICRO, seeds=1), d / "out", data=[str(d / "kjv.txt")], progress=False, echo=print)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="not a reproduction folder"):
        reproduce(MICRO, tmp_path / "mine", progress=False, echo=print)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_the_tokenizer_never_sees_a_validation_document(tmp_path):
    """The documents the data preparation holds out are exactly the ones left out of the
    tokenizer's training text, and a document one corpus holds out is left out even
    where another corpus (here: a superset) would train on it."""
    import itertools

    from mlx_grow.data.corpora import BUILTINS
    from mlx_grow.data.stream import open_stream
    from mlx_grow.reproduce import vocab
    from mlx_grow.tokenizer import load_tokenizer

    docs = list(itertools.islice(BUILTINS["kjv"].read(), 400))
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    small.write_text("\n".join(json.dumps({"text": d}) for d in docs[:300]))
    big.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    info = vocab.training_text([str(small)], 0.01, tmp_path / "t.txt")
    text = (tmp_path / "t.txt").read_text()
    assert info["sources"][str(small)]["held_out"] == 3 and info["documents"] == 297
    stream = open_stream({"sources": [str(small)]}, load_tokenizer("bvv241-2-3"), 64, 2, 0, progress=False)
    val = load_tokenizer("bvv241-2-3").decode([int(x) for x in stream.shards[0].tokens("val")])
    held = [d for d in docs[:300] if d[:300] in val]
    assert len(held) == 3 and not any(d in text for d in held)
    assert sum(d in text for d in docs[:300]) == 297
    both = vocab.training_text([str(big), str(small)], 0.01, tmp_path / "u.txt")
    text = (tmp_path / "u.txt").read_text()
    assert not any(d in text for d in held)  # held out by small.jsonl, so out of big.jsonl's text too
    assert both["documents"] == 400 - both["held_out"] and both["held_out"] >= 4


def test_equal_tokens_are_asserted():
    from mlx_grow.reproduce.scales import check_equal_tokens, run_config

    s = SCALES["tiny"]
    jobs = experiments(s, tokenizer="bvv241-2-3")  # every part at tiny: equal by construction
    assert {j[0] for j in jobs} == {1, 2, 3, 4}
    bad = [(2, "grown-s0", GROWN_VARIANTS[0], 0, run_config(s, "g", 9, {"stages": [3, 3, 3], "steps_per_stage": 5},
                                                             tokenizer="bvv241-2-3")),
           (2, "mono-s0", GROWN_VARIANTS[1], 0, run_config(s, "m", 9, {"stages": [3, 3, 3], "steps_per_stage": 6,
                                                                        "monolithic": True}, tokenizer="bvv241-2-3"))]
    with pytest.raises(AssertionError, match="unequal tokens"):
        check_equal_tokens(bad)


def test_the_tiny_shape_has_the_papers_economics():
    from mlx_grow.reproduce.scales import head_share

    h = head_share(SCALES["tiny"])
    assert SCALES["tiny"].vocab == 64 * SCALES["tiny"].hidden
    assert 0.35 < h["head_share"] < 0.39 and 0.55 < h["active_ratio"] < 0.62 and h["flop_ratio"] < 0.8


def test_parts_by_name():
    from mlx_grow.reproduce.scales import get_parts

    assert get_parts(None) == [1, 2, 3, 4, 5] and get_parts(["grown,one-layer"]) == [2, 3]
    assert get_parts(["all"]) == [1, 2, 3, 4, 5]
    with pytest.raises(UserError, match="unknown part 'growth'"):
        get_parts(["growth"])


def test_big_scales_print_their_cost_first(tmp_path):
    r = CliRunner().invoke(app, ["reproduce", "--scale", "paper", "--dry-run", "-o", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert re.search(r"tokens, [\d.]+[PE]FLOPs of training, predicted peak memory [\d.]+ GiB", out)
    assert re.search(r"about [\d.]+ (days|years) on", out) and "H100" in out and not (tmp_path / "p").exists()
    r = CliRunner().invoke(app, ["reproduce", "--scale", "small", "--parts", "grown", "--dry-run"])
    assert r.exit_code == 0 and "(grown): 6 training runs" in " ".join(r.output.split()), r.output
    r = CliRunner().invoke(app, ["reproduce", "--scale", "huge"])
    assert r.exit_code == 2 and "unknown scale 'huge'" in r.output
    r = CliRunner().invoke(app, ["reproduce", "--dry-run", "--substrate", "bogus"])
    assert r.exit_code == 2 and "unknown substrate 'bogus'" in r.output


def fake_results(labels) -> dict:
    """Results as reproduce builds them, with part 1 holding only `labels` (the other parts left out)."""
    curve = {"tokens": [10, 20], "flops": [1e6, 2e6], "val_loss": [9.0, 8.0], "grows": [], "peak_mem_mb": 1.0}
    runs = [{"part": 1, "key": f"sub-{i}-s{seed}", "label": label, "seed": seed, "val_loss": 5.0 - i / 10 - seed / 100,
             "bits_per_byte": 2.0, "active_params": 1000, "wall_s": 1.0, "tokens": 20, "depth": 3, "curve": curve,
             "load": [[1, 2, 3], [1, 2, 3]]}
            for seed in (0, 1) for i, label in enumerate(labels)]
    base = {"1": {str(seed): {"data": {"unigram": 6.0, "bigram": 5.5, "train_tokens": 40, "val_tokens": 8,
                                       "wall_s": 0.1}} for seed in (0, 1)}}
    return {"scale": SCALES["tiny"].to_dict(), "parts": [1], "estimate": {"runs": len(runs), "tokens": 1, "flops": 1.0},
            "machine": {"platform": "p", "cpus": 2, "mlx": "0", "device": "cpu", "blas": "b", "python": "3"},
            "runs": runs, "baselines": base, "composition": [], "depth": {}, "wall_s": 1.0, "work_s": 1.0,
            "command": "c", "finished": "now"}


def test_report_judges_part_1_from_whatever_ran(tmp_path, monkeypatch):
    """Every subset of part 1's substrates (reproduce --substrate) gives a report, its verdicts
    only on the substrates that ran."""
    import itertools

    from mlx_grow.reproduce import report as R

    monkeypatch.setattr(R, "plot_curves", lambda *a, **k: None)  # the wording is under test, not the plots
    for n in range(len(SUBSTRATES) + 1):
        for labels in itertools.combinations(SUBSTRATES, n):
            md = R.write_report(fake_results(labels), tmp_path / f"r{len(list(tmp_path.iterdir()))}.md")
            text = md.read_text()
            frozen = [x for x in labels if x != "trainable embeddings"]
            assert text.count("verdict: **") == len(frozen)
            if frozen and "trainable embeddings" not in labels:
                assert "no reference arm: the trainable table did not run" in text
            if "glyph" in labels:
                assert "glyph † (PCA truncated to 128 of 1,024 components)" in text


def test_report_rule_own_report_only(tmp_path, monkeypatch):
    """The report and its figures folder: written when new, rewritten by the same reproduction,
    refused when a user (or another reproduction) owns them; never written into."""
    from mlx_grow.reproduce import report as R
    from mlx_grow.reproduce.records import check_report

    monkeypatch.setattr(R, "plot_curves", lambda *a, **k: None)
    out, md = tmp_path / "out", tmp_path / "notes.md"
    check_report(md, out)  # nothing there yet
    R.write_report(fake_results(["16-bit id"]), md, str(out.resolve()))
    assert md.read_text().startswith("<!-- written by mlx-grow reproduce for")
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["mlx_grow_report.json", "results.json"]
    check_report(md, out)  # its own report: may be rewritten
    with pytest.raises(UserError, match="is not this reproduction's report"):
        check_report(md, tmp_path / "other")  # another reproduction's
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match=r"notes, the folder the report's figures go in"):
        check_report(md, out)
    (tmp_path / "notes" / "mine.txt").unlink()
    md.write_text("# my notes\n")
    with pytest.raises(UserError, match=r"--report .*notes\.md exists and is not this reproduction's report"):
        check_report(md, out)
    with pytest.raises(UserError, match="is a folder"):
        check_report(tmp_path, out)


def test_records_keep_paths_inside_the_reproduction(tmp_path):
    from mlx_grow.reproduce.records import read_record

    job = (1, "sub-16bit-s0", "16-bit id", 0, None)
    rec = {"part": 1, "key": "sub-16bit-s0", "label": "16-bit id", "seed": 0, "final": "runs/sub-16bit-s0/final",
           "run": "runs/sub-16bit-s0", "val_loss": 8.0, "tokens": 20, "flops": 1.0, "wall_s": 1.0, "tok_s": 20.0,
           "active_params": 10, "stages": [{"val_loss": 8.0}], "depth": 3, "substrate": "binary",
           "curve": {"tokens": [1], "flops": [1.0], "val_loss": [8.0], "grows": [], "peak_mem_mb": 1.0}}
    (tmp_path / "records").mkdir()
    f = tmp_path / "records" / "sub-16bit-s0.json"
    f.write_text(json.dumps(rec))
    assert read_record(tmp_path, job)["final"] == str(tmp_path / "runs" / "sub-16bit-s0" / "final")
    f.write_text(json.dumps({**rec, "final": str(tmp_path / "runs" / "sub-16bit-s0" / "final")}))  # older records
    assert read_record(tmp_path, job)["final"] == str(tmp_path / "runs" / "sub-16bit-s0" / "final")
    for bad in ({"final": "../elsewhere/final"}, {"run": "/etc"}, {"final": "runs/other/final"}):
        f.write_text(json.dumps({**rec, **bad}))
        with pytest.raises(UserError, match="is damaged: its `(final|run)`"):
            read_record(tmp_path, job)
    for text in ("{", "[]", json.dumps({**rec, "val_loss": "low"}), json.dumps({**rec, "key": "grown-s0"})):
        f.write_text(text)
        with pytest.raises(UserError, match=r"sub-16bit-s0\.json is damaged"):
            read_record(tmp_path, job)


@pytest.mark.slow
def test_composition_and_every_substrate_at_micro_scale(tmp_path):
    """The merges, their controls and every substrate (glyph rendering the trained pieces)
    from real runs: experts trained long enough on small corpora to clear their unigram tables."""
    corpus, other, task = corpora(tmp_path)
    s = replace(MICRO, expert_steps=150, tune_steps=3, seeds=2, hidden=64, seq=32, batch=4)
    res = reproduce(s, tmp_path / "out", data=[str(corpus)], experts=[str(corpus), str(other)], tasks=[str(task)],
                    progress=False, echo=print, parts=["composition", "substrates"])
    assert not res["composition_skipped"], res["composition_skipped"]
    rows = res["composition"][0]["rows"]
    assert {"expert 1", "expert 2", "mean-logits", "mixture", UNION, "mean-logits + tune (all)",
            "expert 1 + tune (all)", "expert 2 + tune (all)"} <= set(rows)
    md = (tmp_path / "out" / "reproduction.md").read_text()
    assert "(reproduction/composition.png)" in md and md.count("| *unigram table") == 2
    assert {r["label"] for r in res["runs"] if r["part"] == 1} == set(SUBSTRATES)


def test_level_line_places_the_arms_between_the_baselines():
    from mlx_grow.reproduce.report import _level

    base = {"2": {"0": {"data": {"unigram": 6.0, "bigram": 5.0}}, "1": {"data": {"unigram": 6.2, "bigram": 5.2}}}}
    arm = lambda *xs: [{"val_loss": x} for x in xs]  # noqa: E731
    none = _level({"a": arm(5.5, 5.7), "b": arm(5.9, 5.9)}, base, 2)[1]
    assert "0.20 to 0.50 nats below the unigram table (6.100" in none and "none ends below" in none
    some = _level({"a": arm(4.9, 5.0), "b": arm(5.9, 5.9)}, base, 2)[1]
    assert "a ends below the interpolated bigram table (5.100), the others do not" in some
    every = _level({"a": arm(4.9, 5.0), "b": arm(4.0, 4.2)}, base, 2)[1]
    assert "every arm ends below the interpolated bigram table" in every
    assert _level({"a": arm(5.0)}, {}, 2) == []  # no baselines: no line
