import os

import pytest

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
