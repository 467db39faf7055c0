"""`mlx-grow reproduce`: a smoke run at tiny shapes produces every table row and plot
from real runs, resumes without retraining, refuses foreign folders, and prints the
estimate of the big scales without running them."""

import json
import re
from dataclasses import replace

import pytest
from helpers import kjv_slice
from typer.testing import CliRunner

from mlx_grow.base import UserError
from mlx_grow.cli import app
from mlx_grow.reproduce import SCALES, reproduce
from mlx_grow.reproduce.scales import GROWN_VARIANTS, LAYER_VARIANTS, SUBSTRATES

MICRO = replace(SCALES["tiny"], name="micro", hidden=64, heads=2, seq=16, batch=2, sub_depth=1, sub_steps=4,
                stage_steps=2, layer_depth=3, layer_steps=3, phase_steps=2, lora_rank=2, expert_depth=1,
                expert_steps=4, tune_steps=2, seeds=2, eval_every=2, val_batches=1, eval_limit=3)
SUBS = ["16-bit", "64-bit", "float", "trainable"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    d = tmp_path_factory.mktemp("repro")
    corpus = kjv_slice(d / "kjv.txt", docs=40)
    from mlx_grow.data.corpora import BUILTINS

    other = d / "plays.txt"
    other.write_text("\n\n".join(x for _, x in zip(range(40), BUILTINS["shakespeare"].read())))
    task = d / "choice.jsonl"
    task.write_text("\n".join(json.dumps({"question": f"{a} plus {a}?", "choices": [str(2 * a), str(a), "x"],
                                          "answer": 0}) for a in range(1, 6)))
    lines = []
    # the glyph substrate (40 s to render 65,536 glyphs) has its own tests; the others run here
    res = reproduce(MICRO, d / "out", data=[str(corpus)], experts=[str(corpus), str(other)], tasks=[str(task)],
                    progress=False, echo=lines.append, substrates=SUBS)
    return d, res, lines


def test_every_part_is_measured_from_real_runs(smoke):
    d, res, lines = smoke
    runs = res["runs"]
    parts = {p: [r for r in runs if r["part"] == p] for p in (1, 2, 3, 4)}
    assert [r["label"] for r in parts[1]] == [x for x in SUBSTRATES if x != "glyph"]
    assert len(parts[2]) == 3 * MICRO.seeds and {r["label"] for r in parts[2]} == set(GROWN_VARIANTS)
    assert [r["label"] for r in parts[3]] == list(LAYER_VARIANTS)
    for r in runs:  # each row comes from a finished run directory with its metrics
        assert (d / "out" / "runs" / r["key"] / "final" / "mlx_grow.json").is_file()
        assert r["val_loss"] > 0 and r["tokens"] > 0 and r["flops"] > 0 and r["wall_s"] > 0
        assert len(r["curve"]["val_loss"]) >= 1
    # same tokens for the three part-2 variants; growth events only in the grown one
    assert len({r["tokens"] for r in parts[2]}) == 1
    grown = [r for r in parts[2] if r["label"] == GROWN_VARIANTS[0]]
    assert [g["depth"] for g in grown[0]["curve"]["grows"]] == [6, 9]
    mono = [r for r in parts[2] if r["label"] == GROWN_VARIANTS[1]][0]
    assert grown[0]["active_params"] < mono["active_params"]
    # the interleaved LoRA phases ran between the one-layer stages
    phases = parts[3][2]["stages"]
    assert [s["kind"] for s in phases] == ["grow", "lora", "grow", "lora", "grow"]
    assert all(r["bits_per_byte"] > 0 for r in parts[1])
    comp = res["composition"]["rows"]
    assert {"expert 1", "expert 2", "mean-logits", "mixture", "mean-logits + tune (all)"} <= set(comp)
    assert all(set(v) == {str(d / "kjv.txt"), str(d / "plays.txt"), "union"} for v in comp.values())
    by_depth = res["depth"]["by_depth"]
    assert sorted(by_depth, key=int) == ["3", "6", "9"] and all(v["choice"]["n"] == 3 for v in by_depth.values())


def test_report_has_every_table_row_and_plot(smoke):
    d, res, _ = smoke
    md = (d / "out" / "reproduction.md").read_text()
    for name in ("substrates", "grown_vs_monolithic", "one_layer", "composition", "depth"):
        png = d / "out" / "reproduction" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"(reproduction/{name}.png)" in md
    saved = json.loads((d / "out" / "reproduction" / "results.json").read_text())
    assert [r["val_loss"] for r in saved["runs"]] == [r["val_loss"] for r in res["runs"]]
    for r in res["runs"]:
        if r["part"] in (1, 3):
            assert re.search(rf"\| {re.escape(r['label'])} \| {r['val_loss']:.4f} \|", md), r["label"]
    for v in GROWN_VARIANTS:
        assert f"| {v} | " in md
    for k, v in res["composition"]["rows"].items():
        assert f"| {k} | " in md and f"{v['union']:.4f}" in md
    assert md.count("| the papers report |") == 1 and md.count("\n| ") >= 20
    assert res["machine"]["cpus"] and "Machine:" in md


def test_rerun_reuses_finished_runs_and_refuses_other_folders(smoke, tmp_path):
    d, res, _ = smoke
    lines = []
    again = reproduce(MICRO, d / "out", data=[r for r in json.loads((d / "out" / "reproduce.json").read_text())
                                              ["settings"]["data"]],
                      experts=[str(d / "kjv.txt"), str(d / "plays.txt")], tasks=[str(d / "choice.jsonl")],
                      progress=False, echo=lines.append, substrates=SUBS)
    assert [r["val_loss"] for r in again["runs"]] == [r["val_loss"] for r in res["runs"]]
    assert not any("validation loss" in x for x in lines)  # nothing retrained
    with pytest.raises(UserError, match="other settings"):
        reproduce(replace(MICRO, seeds=1), d / "out", data=[str(d / "kjv.txt")], progress=False, echo=print)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="not a reproduction folder"):
        reproduce(MICRO, tmp_path / "mine", progress=False, echo=print)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_big_scales_print_their_cost_first(tmp_path):
    r = CliRunner().invoke(app, ["reproduce", "--scale", "paper", "--dry-run", "-o", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    assert re.search(r"tokens, [\d.]+[PE]FLOPs of training, predicted peak memory [\d.]+ GiB", r.output)
    assert "H100" in r.output and not (tmp_path / "p").exists()
    r = CliRunner().invoke(app, ["reproduce", "--scale", "huge"])
    assert r.exit_code == 2 and "unknown scale 'huge'" in r.output
    r = CliRunner().invoke(app, ["reproduce", "--dry-run", "--substrate", "bogus"])
    assert r.exit_code == 2 and "unknown substrate 'bogus'" in r.output


def fake_results(labels) -> dict:
    """Results as reproduce builds them, with part 1 holding only `labels` (the other parts left out)."""
    from mlx_grow.reproduce import SCALES

    curve = {"tokens": [10, 20], "flops": [1e6, 2e6], "val_loss": [9.0, 8.0], "grows": [], "peak_mem_mb": 1.0}
    runs = [{"part": 1, "key": f"sub-{i}", "label": label, "val_loss": 8.0 - i / 10, "bits_per_byte": 2.0,
             "active_params": 1000, "wall_s": 1.0, "tokens": 20, "depth": 3, "curve": curve}
            for i, label in enumerate(labels)]
    return {"scale": SCALES["tiny"].to_dict(), "estimate": {"runs": len(runs), "tokens": 1, "flops": 1.0},
            "machine": {"platform": "p", "cpus": 2, "mlx": "0", "device": "cpu", "blas": "b", "python": "3"},
            "runs": runs, "composition": None, "depth": {}, "wall_s": 1.0, "work_s": 1.0, "command": "c",
            "finished": "now"}


def test_report_words_part_1_from_whatever_ran(tmp_path, monkeypatch):
    """Every subset of part 1's substrates (reproduce --substrate) gives a report, its claim
    worded only from the substrates that ran (a KeyError / ValueError before issue 24)."""
    import itertools

    from mlx_grow.reproduce import report as R

    monkeypatch.setattr(R, "plot_curves", lambda *a, **k: None)  # the wording is under test, not the plots
    for n in range(len(SUBSTRATES) + 1):
        for labels in itertools.combinations(SUBSTRATES, n):
            md = R.write_report(fake_results(labels), tmp_path / f"r{len(list(tmp_path.iterdir()))}.md")
            text = md.read_text()
            assert ("16-bit id model's perplexity is" in text) == ({"16-bit id", "trainable embeddings"} <= set(labels))
            if labels == ("trainable embeddings",):
                assert "only the trainable table ran" in text
            elif labels and "trainable embeddings" not in labels:
                assert "the trainable table did not run" in text


def test_report_rule_own_report_only(tmp_path, monkeypatch):
    """The report and its figures folder: written when new, rewritten by the same reproduction,
    refused when a user (or another reproduction) owns them; never written into."""
    from mlx_grow.reproduce import report as R
    from mlx_grow.reproduce.run import check_report

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
    from mlx_grow.reproduce.run import read_record

    job = (1, "sub-16bit", "16-bit id", 0, None)
    rec = {"part": 1, "key": "sub-16bit", "label": "16-bit id", "seed": 0, "final": "runs/sub-16bit/final",
           "run": "runs/sub-16bit", "val_loss": 8.0, "tokens": 20, "flops": 1.0, "wall_s": 1.0, "tok_s": 20.0,
           "active_params": 10, "stages": [{"val_loss": 8.0}], "depth": 3, "substrate": "binary",
           "curve": {"tokens": [1], "flops": [1.0], "val_loss": [8.0], "grows": [], "peak_mem_mb": 1.0}}
    (tmp_path / "records").mkdir()
    f = tmp_path / "records" / "sub-16bit.json"
    f.write_text(json.dumps(rec))
    assert read_record(tmp_path, job)["final"] == str(tmp_path / "runs" / "sub-16bit" / "final")
    f.write_text(json.dumps({**rec, "final": str(tmp_path / "runs" / "sub-16bit" / "final")}))  # older records
    assert read_record(tmp_path, job)["final"] == str(tmp_path / "runs" / "sub-16bit" / "final")
    for bad in ({"final": "../elsewhere/final"}, {"run": "/etc"}, {"final": "runs/other/final"}):
        f.write_text(json.dumps({**rec, **bad}))
        with pytest.raises(UserError, match="is damaged: its `(final|run)`"):
            read_record(tmp_path, job)
    for text in ("{", "[]", json.dumps({**rec, "val_loss": "low"}), json.dumps({**rec, "key": "grown-s0"})):
        f.write_text(text)
        with pytest.raises(UserError, match=r"sub-16bit\.json is damaged"):
            read_record(tmp_path, job)
