"""`import mlx_grow.evaluate` registers the lm-evaluation-harness model `mlx-grow`
(when lm-eval is installed), as documented; the scorer and the runner live in
`mlx_grow.eval`."""

from mlx_grow.eval.harness import LM_EVAL, MLXGrowLM  # noqa: F401
from mlx_grow.eval.runner import run_eval as evaluate  # noqa: F401
from mlx_grow.eval.scorer import Scorer  # noqa: F401
