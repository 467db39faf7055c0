"""The `mlx-grow` command line: a thin Typer layer over the library, one module
per group of commands (`setup`, `train`, `compose`, `evaluation`, `convert`)."""

from mlx_grow.cli import compose, convert, evaluation, setup, train  # noqa: F401  (register the commands)
from mlx_grow.cli.common import app


def main():
    app(prog_name="mlx-grow")


__all__ = ["app", "main"]
