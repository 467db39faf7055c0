"""Plain helpers shared by the tests (fixtures live in conftest.py).

Tests import them with `from helpers import ...`: tests/ has no __init__.py, so
pytest's default (prepend) import mode puts tests/ on sys.path."""


def tiny_args(**kw):
    from mlx_grow.model import ModelArgs

    base = dict(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=64, substrate={"kind": "binary", "bits": 9})
    base.update(kw)
    return ModelArgs.from_dict(base)


def kjv_slice(path, docs: int = 120):
    """Write the first `docs` KJV chapters (real text, small) to `path`."""
    import itertools

    from mlx_grow.data.corpora import BUILTINS

    path.write_text("\n\n".join(itertools.islice(BUILTINS["kjv"].read(), docs)), encoding="utf-8")
    return path


def kjv_docs(n: int, start: int = 0) -> list:
    """KJV chapters start .. start+n of the built-in corpus, as documents."""
    import itertools

    from mlx_grow.data import corpora

    return list(itertools.islice(corpora.documents("builtin:kjv"), start, start + n))


def two_stage_yaml(tmp_path, name: str, **train):
    """A 2-block run config (1 + 1 blocks, 3 steps a stage) over 40 KJV chapters, written
    to tmp_path/NAME.yaml; `train` overrides train keys."""
    import yaml

    corpus = kjv_slice(tmp_path / "kjv.txt", docs=40)
    run = tiny_run(corpus, name, **train)
    run["grow"] = {"stages": [1, 1], "steps_per_stage": 3}
    run["model"]["num_hidden_layers"] = 2
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(run))
    return tmp_path / f"{name}.yaml"


def tiny_run(corpus, name: str, **train) -> dict:
    """A 4-block, 2-stage run config on bvv241-2-3 that trains in seconds."""
    t = {"batch_size": 4, "seq_len": 16, "lr": 3e-3, "warmup_steps": 2, "val_batches": 1, "log_every": 1}
    return {"name": name, "tokenizer": "bvv241-2-3",
            "model": dict(vocab_size=65536, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                          max_position_embeddings=32, substrate={"kind": "binary", "bits": 16}),
            "data": {"sources": [str(corpus)]},
            "grow": {"stages": [2, 2], "steps_per_stage": 6},
            "train": {**t, **train}}


def grow_config(corpus, depth=4, grow=None, train=None, tokenizer="bvv241-2-3", **model):
    """A RunConfig of a d-32 model on bvv241-2-3 over `corpus`, 2 blocks x 6 steps a stage;
    `grow`, `train` and `model` override the defaults key by key."""
    from mlx_grow.config import RunConfig
    from mlx_grow.model import ModelArgs

    m = dict(vocab_size=65536, hidden_size=32, num_hidden_layers=depth, num_attention_heads=2,
             max_position_embeddings=32, substrate={"kind": "binary", "bits": 16})
    m.update(model)
    t = {"batch_size": 4, "seq_len": 16, "lr": 3e-3, "warmup_steps": 2, "eval_every": 0,
         "val_batches": 2, "checkpoint_every": 0, "log_every": 1}
    t.update(train or {})
    return RunConfig(model=ModelArgs.from_dict(m), tokenizer=tokenizer, name="t", data={"sources": [corpus]},
                     grow={"blocks_per_stage": 2, "steps_per_stage": 6, **(grow or {})}, train=t)


def weights(path) -> dict:
    """Every parameter of the model directory at `path`, as numpy arrays by name."""
    import numpy as np
    from mlx.utils import tree_flatten

    from mlx_grow.checkpoint import load_model

    return {k: np.array(v) for k, v in tree_flatten(load_model(path).parameters())}


def train_steps(run) -> list:
    """The global steps of the `train` lines in a run's metrics.jsonl."""
    import json
    from pathlib import Path

    rows = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return [r["global_step"] for r in rows if r["event"] == "train"]


def grown_and_exported(root):
    """A two-stage grow run under `root` (a 1-block stage-01, a 2-block final/) on
    bvv241-2-3, trained a few steps, and final/ exported as Starcoder2 to root/hf.
    Returns (run directory, export directory)."""
    from mlx_grow.convert import export_model
    from mlx_grow.training.grow import grow

    corpus = kjv_slice(root / "kjv.txt", docs=40)
    cfg = grow_config(str(corpus), depth=2, grow={"blocks_per_stage": 1, "steps_per_stage": 3})
    final, _ = grow(cfg, root / "run", progress=False, echo=lambda *a, **k: None)
    export_model(final, root / "hf", to="starcoder2")
    return root / "run", root / "hf"


SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "[INST]", "[/INST]"]


def char_tokenizer(out, chars=None):
    """A tiny character-level HF tokenizer folder with the specials the data module needs."""
    import string

    from tokenizers import AddedToken, Tokenizer, decoders, models

    from mlx_grow.tokenizer import load_tokenizer

    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for c in sorted(set(string.printable if chars is None else chars)):
        vocab.setdefault(c, len(vocab))
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    out.mkdir(parents=True, exist_ok=True)
    tk.save(str(out / "tokenizer.json"))
    return load_tokenizer(out)


def tiny(tok, seed=0, **kw):
    """A 2-block d-32 model over `tok` on an 8-bit id substrate."""
    from mlx_grow.model import Model
    from mlx_grow.training.init import init_weights

    m = Model(tiny_args(vocab_size=tok.vocab_size, substrate={"kind": "binary", "bits": 8}, **kw))
    init_weights(m, seed)
    return m


def evil_pickle(module: str, name: str, *args: str) -> bytes:
    """Protocol 2: push module.name, call it with string args (GLOBAL ... REDUCE)."""
    import struct

    out = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"("
    for a in args:
        raw = a.encode()
        out += b"X" + struct.pack("<I", len(raw)) + raw
    return out + b"tR."


def as_torch_zip(pkl: bytes) -> bytes:
    """`pkl` inside a zip laid out as torch.save writes one."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/version", "3\n")
    return buf.getvalue()
