"""Live progress of a run (a tqdm bar with reward, accuracy, length, tokens/s, peak memory) and summary tables."""

from __future__ import annotations

from tqdm import tqdm


class StepProgress:
    def __init__(self, total: int, *, initial: int = 0, enabled: bool = True):
        self.bar = tqdm(
            total=total, initial=initial, desc="train", unit="step", disable=not enabled, dynamic_ncols=True
        )

    def update(self, metrics: dict) -> None:
        post = {
            "reward": f"{metrics['reward']:.3f}",
            "acc": f"{metrics['accuracy']:.2f}",
            "len": f"{metrics['completion_length/mean']:.0f}",
            "tok/s": f"{metrics['tokens_per_s']:.0f}",
        }
        if "peak_memory_gb" in metrics:  # MLX's peak; the process's RSS peak (weights mapped in, Python...)
            post["mem"] = f"{metrics['peak_memory_gb']:.1f}G/rss {metrics['peak_rss_gb']:.1f}G"
        if "eval/accuracy" in metrics:
            post["eval"] = f"{metrics['eval/accuracy']:.3f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def format_table(rows: dict, title: str = "") -> str:
    """A two-column plain-text table of name -> value (floats to 4 significant digits)."""
    shown = {k: (f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in rows.items()}
    width = max((len(k) for k in shown), default=0)
    lines = [title] if title else []
    lines += [f"  {k.ljust(width)}  {v}" for k, v in shown.items()]
    return "\n".join(lines)
