"""`python cli.py ...` runs the same Typer app as the `mlx-grow` command."""

from mlx_grow.cli import main

if __name__ == "__main__":
    main()
