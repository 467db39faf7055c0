"""`mlx-grow reproduce`: the papers' claims re-run at small scale, with a report."""

from mlx_grow.reproduce.run import reproduce
from mlx_grow.reproduce.scales import SCALES, estimate, experiments

__all__ = ["SCALES", "estimate", "experiments", "reproduce"]
