import os

import pytest

import mlx_grow  # noqa: F401  first: it loads the fast CPU BLAS before any test module imports mlx.core


# Tests write caches (tokenizers, shards) into a per-session temp dir, never $HOME.
@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    if "MLX_GROW_CACHE" not in os.environ:
        os.environ["MLX_GROW_CACHE"] = str(tmp_path_factory.mktemp("mlx-grow-cache"))
    yield


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


def tiny_run(corpus, name: str, **train) -> dict:
    """A 4-block, 2-stage run config on bvv241-2-3 that trains in seconds."""
    t = {"batch_size": 4, "seq_len": 16, "lr": 3e-3, "warmup_steps": 2, "val_batches": 1, "log_every": 1}
    return {"name": name, "tokenizer": "bvv241-2-3",
            "model": dict(vocab_size=65536, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                          max_position_embeddings=32, substrate={"kind": "binary", "bits": 16}),
            "data": {"sources": [str(corpus)]},
            "grow": {"stages": [2, 2], "steps_per_stage": 6},
            "train": {**t, **train}}
