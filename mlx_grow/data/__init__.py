"""Training data: where documents come from (`corpora`), the data config
(`config`), token shards on disk (`shards`), preparing them and the
deterministic batch streams (`stream`), train/eval overlap checks
(`contamination`) and task files (`task_file`)."""

from mlx_grow.data.config import DataConfig
from mlx_grow.data.shards import Shard
from mlx_grow.data.stream import Stream, open_stream, prepare

__all__ = ["DataConfig", "Shard", "Stream", "open_stream", "prepare"]
