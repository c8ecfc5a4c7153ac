from mlx_grpo.cli import entry

entry()
