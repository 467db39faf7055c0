from mlx_grow.cli import main

main()
