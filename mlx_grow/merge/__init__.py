"""Merging experts that share one substrate: combiners and the merged model
(`combine`), merged directories and weight averaging (`store`), post-merge
tuning and comparison (`tune`)."""

from mlx_grow.merge.build import average, merge
from mlx_grow.merge.combine import Combiner, MergedModel, make_combiner
from mlx_grow.merge.store import load_merged, save_merged
from mlx_grow.merge.tune import compare, tune_merged

__all__ = ["Combiner", "MergedModel", "make_combiner", "average", "load_merged", "merge", "save_merged",
           "compare", "tune_merged"]
