"""mlx-grpo: GRPO fine-tuning of small language models with LoRA on MLX."""

__version__ = "0.1.0"
