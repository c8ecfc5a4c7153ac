from mlx_grpo.launch import entry

entry()
