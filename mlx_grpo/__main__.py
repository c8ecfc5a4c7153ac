from mlx_grpo.launch import entry

if __name__ == "__main__":  # not in a spawned worker process, which imports this module too
    entry()
