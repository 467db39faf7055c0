"""The command line's shapes (README.md and the guides in docs/), run in-process."""

import json

from typer.testing import CliRunner

from mlx_grow.cli import app

runner = CliRunner()


def ok(*args):
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


def test_info_paper_config_shows_both_stage_counts():
    out = ok("info", "paper-9l-glyph")
    assert "247,585,792" in out and "104,899,584" in out and "105.0M" in out and "180,476,928" in out


def test_info_unknown_config_is_one_clear_error():
    r = runner.invoke(app, ["info", "no-such-config"])
    assert r.exit_code == 2 and "not found" in r.output


def test_substrate_build_and_show(tmp_path):
    out = tmp_path / "s.safetensors"
    ok("substrate", "build", "tiny", "-o", out)
    shown = json.loads(ok("substrate", "show", out))
    assert shown["fingerprint"]["shape"] == [65536, 16] and shown["recipe"]["kind"] == "binary"


def test_substrate_build_missing_font_is_clear(tmp_path):
    cfg = tmp_path / "g.yaml"
    cfg.write_text("model: {vocab_size: 65536, hidden_size: 64, num_attention_heads: 4, "
                   "substrate: {kind: glyph, font: /nonexistent/font.otf}}\n")
    r = runner.invoke(app, ["substrate", "build", str(cfg), "-o", str(tmp_path / "g.safetensors")])
    assert r.exit_code == 2 and "--font" in r.output and "fonts-unifont" in r.output
    assert not (tmp_path / "g.safetensors").exists()


def test_tokenizer_build_encode_stats(tmp_path):
    ok("tokenizer", "build", "2-3", "-o", tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").exists()
    ids = ok("tokenizer", "encode", tmp_path / "tok", "a b").split()
    assert ids == ["97", "32", "98"]
    text = tmp_path / "t.txt"
    text.write_text("In the beginning God created the heaven and the earth.\n" * 20)
    assert "chars_per_token" in ok("tokenizer", "stats", "bvv241-2-3", text)


def test_tokenizer_train(tmp_path):
    corpus = tmp_path / "c.txt"
    from mlx_grow.data.corpora import BUILTINS

    corpus.write_text("\n".join(d for _, d in zip(range(40), BUILTINS["kjv"].read())))
    ok("tokenizer", "train", corpus, "--vocab-size", 600, "-o", tmp_path / "sp")
    assert json.loads((tmp_path / "sp" / "tokenizer.json").read_text())["model"]["type"] in ("BPE", "Unigram")


def test_grow_cli_prints_final_dir_last_and_plots(tmp_path):
    from mlx_grow.data.corpora import BUILTINS

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(d for _, d in zip(range(60), BUILTINS["shakespeare"].read())))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "tokenizer: bvv241-2-3\n"
        "model: {vocab_size: 65536, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2,"
        " max_position_embeddings: 32, substrate: {kind: binary, bits: 16}}\n"
        "grow: {blocks_per_stage: 1, steps_per_stage: 3}\n"
        "train: {batch_size: 2, seq_len: 16, eval_every: 0, val_batches: 1}\n")
    out = ok("grow", "--config", cfg, "--data", corpus, "-o", tmp_path / "run")
    assert out.strip().splitlines()[-1] == str(tmp_path / "run" / "final")
    assert "step 1/6" in out  # not a terminal: plain progress lines
    (tmp_path / "run" / "loss.png").unlink()
    assert ok("plot", tmp_path / "run").strip().endswith("loss.png")
    r = runner.invoke(app, ["grow", "--config", str(cfg), "--depth", "5", "--stages", "2,2",
                            "-o", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "add up to 4 blocks but the depth is 5" in r.output
    assert not (tmp_path / "bad").exists()
    out = ok("grow", "--config", cfg, "--data", corpus, "-o", tmp_path / "phased", "--lora-phase", "1:2")
    run = json.loads((tmp_path / "phased" / "run.json").read_text())
    assert run["config"]["grow"]["lora"]["phases"] == [{"after_stage": 1, "steps": 2}]
    assert "LoRA phase after stage 1" in out and (tmp_path / "phased" / "stage-03" / "config.json").is_file()
    r = runner.invoke(app, ["grow", "--config", str(cfg), "--lora-phase", "0:5", "-o", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "--lora-phase takes STAGE:STEPS" in r.output and not (tmp_path / "bad").exists()
