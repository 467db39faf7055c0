"""Training data: built-in corpora (`corpora`), token shards and deterministic
batch streams (`stream`), train/eval overlap checks (`contamination`)."""

from mlx_grow.data.stream import DataConfig, Shard, Stream, open_stream, prepare

__all__ = ["DataConfig", "Shard", "Stream", "open_stream", "prepare"]
