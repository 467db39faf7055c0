"""The small world the hostile-input tests start from (tests/test_hostile.py, whose
every case runs in a fresh copy of it, and tests/test_shapes.py), and the
reproduction folders they edit. conftest.py builds the world once a session."""

import json
import os
from pathlib import Path

import yaml
from helpers import char_tokenizer, kjv_slice, tiny_args


def build_world(root: Path):
    """Models a, b (one tokenizer), c (another tokenizer), long (a 4096-token context),
    merged (a + b), hf (a exported), hfm (merged exported), a finished grow run, a corpus."""
    import string

    from mlx_grow.checkpoint import save_model
    from mlx_grow.config import load_config
    from mlx_grow.convert.export import export_model
    from mlx_grow.merge.build import merge
    from mlx_grow.model import Model
    from mlx_grow.training.grow import grow
    from mlx_grow.training.init import init_weights

    tok = char_tokenizer(root / "tok")
    tok2 = char_tokenizer(root / "tok2", chars=string.ascii_letters + " .")

    def model(name, t, seed, **kw):
        m = Model(tiny_args(vocab_size=t.vocab_size, substrate={"kind": "binary", "bits": 8}, **kw))
        init_weights(m, seed)
        return save_model(m, root / name, t, meta={"lineage": {"run": f"runs/{name}", "stage": 1}})

    model("a", tok, 0)
    model("b", tok, 1)
    model("c", tok2, 2)
    model("long", tok, 3, max_position_embeddings=4096)
    merge([root / "a", root / "b"], root / "merged", echo=lambda *a, **k: None)
    export_model(root / "a", root / "hf")
    export_model(root / "merged", root / "hfm")
    kjv_slice(root / "corpus.txt", 30)
    (root / "run.yaml").write_text(yaml.safe_dump({
        "tokenizer": "tok",
        "model": {"vocab_size": tok.vocab_size, "hidden_size": 32, "num_hidden_layers": 2,
                  "num_attention_heads": 2, "max_position_embeddings": 32,
                  "substrate": {"kind": "binary", "bits": 8}},
        "data": {"sources": ["corpus.txt"]},
        "grow": {"stages": [1, 1], "steps_per_stage": 2},
        "train": {"batch_size": 2, "seq_len": 16, "eval_every": 0, "val_batches": 1, "checkpoint_every": 2,
                  "warmup_steps": 1, "log_every": 1}}))
    cwd = os.getcwd()
    os.chdir(root)  # the run records relative paths, so every copy of the world resumes it
    try:
        grow(load_config("run.yaml"), "run", progress=False, echo=lambda *a, **k: None)
    finally:
        os.chdir(cwd)


def alias_bomb(where: str) -> str:
    """9 levels of 9 aliases (9**9 leaves once expanded) as the value of `where` (a.b)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    section, _, key = where.rpartition(".")
    lines += [f"{section}: {{{key}: *a8}}" if section else f"{key}: *a8"]
    return "\n".join(lines) + "\n"


R = ["reproduce", "-o", "rep", "--data", "corpus.txt", "--allow-repeat", "20", "--substrate", "16-bit", "--no-progress"]


def reproduction(substrates=("16-bit",), records=None):
    """rep/: a reproduction started by R with `substrates` (its reproduce.json), and
    `records` {key: text | record-dict edits} in rep/records (text as it is; a dict:
    a valid record of that job, updated with it)."""
    def setup(w):
        from mlx_grow.reproduce.run import glyph_available
        from mlx_grow.reproduce.scales import EVAL_TASKS, EXPERT_DATA, experiments, get_scale, substrate_labels

        s, subs = get_scale("tiny"), substrate_labels(list(substrates))
        glyph = glyph_available(None)
        (w / "rep" / "records").mkdir(parents=True)
        (w / "rep" / "reproduce.json").write_text(json.dumps({"settings": {
            "scale": s.to_dict(), "data": ["corpus.txt"], "experts": list(EXPERT_DATA), "tasks": list(EVAL_TASKS),
            "glyph": glyph, "substrates": subs}}))
        jobs = {j[1]: j for j in experiments(s, ["corpus.txt"], EXPERT_DATA, glyph, None, subs)}
        for key, rec in (records or {}).items():
            text = rec if isinstance(rec, str) else json.dumps({**fake_record(jobs[key]), **rec})
            (w / "rep" / "records" / f"{key}.json").write_text(text)
    return setup


def fake_record(job) -> dict:
    """A record as train_run writes it, for `job`, with made-up numbers."""
    part, key, label, seed, cfg = job
    curve = {"tokens": [10, 20], "flops": [1e6, 2e6], "val_loss": [9.0, 8.0 - 0.1 * seed],
             "grows": [{"tokens": 10, "flops": 1e6, "depth": 6}], "peak_mem_mb": 10.0}
    stages = [{"stage": 1, "kind": "grow", "val_loss": 8.5, "tokens": 10, "depth": 3},
              {"stage": 2, "kind": "grow", "val_loss": 8.0 - 0.1 * seed, "tokens": 20, "depth": 6}]
    return {"part": part, "key": key, "label": label, "seed": seed, "final": f"runs/{key}/final",
            "run": f"runs/{key}", "val_loss": 8.0 - 0.1 * seed - 0.01 * len(key), "tokens": 20, "flops": 2e6,
            "wall_s": 1.0, "tok_s": 20.0, "active_params": 1000, "stages": stages, "curve": curve,
            "depth": cfg.depth, "substrate": cfg.model.substrate.kind}


def finished_reproduction(substrates):
    """rep/: every run of R (with `substrates`) recorded, the merge and the benchmarks too:
    the command only writes results.json and the report."""
    def setup(w):
        from mlx_grow.reproduce.run import glyph_available
        from mlx_grow.reproduce.scales import EXPERT_DATA, experiments, get_scale, substrate_labels

        jobs = experiments(get_scale("tiny"), ["corpus.txt"], EXPERT_DATA, glyph_available(None), None,
                           substrate_labels(list(substrates)))
        reproduction(substrates, {j[1]: {} for j in jobs})(w)
        # the made-up experts are not clear of their unigram tables, so part 4 merges nothing; part 5 does
        # not run at tiny scale: the command only trains the tokenizer, fits the baselines and writes the report
    return setup
