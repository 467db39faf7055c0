"""`python -m mlx_grow ...` is the `mlx-grow` command line."""

from mlx_grow.cli import main

main()
