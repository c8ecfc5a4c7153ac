"""The Countdown task: tasks, prompts, exact expression checking, a solver and data loading (no MLX here)."""
