"""Evaluation: task files and built-in tasks (`tasks`), batched scoring with
context reuse (`scorer`), the runner (`runner`), reports and plots (`report`),
and the lm-evaluation-harness adapter (`harness`, imported only on request)."""
