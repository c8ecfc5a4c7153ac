from mlx_grpo.cli import main

main()
