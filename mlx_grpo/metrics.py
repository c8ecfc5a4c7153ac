"""The metrics line of one training step, from its episodes and its update: a pure function.

Per-row figures (reward, accuracy, format, lengths) are means over the step's R completions;
per-token ones (kl, clip fractions, ratio) come from the update, weighted by tokens.
"""

from __future__ import annotations

import numpy as np

from mlx_grpo.episodes import Episodes
from mlx_grpo.update import UpdateResult


def flat_group_fraction(totals, group_size: int) -> float:
    """Share of groups whose completions all got the same total reward (advantage 0: no signal)."""
    groups = np.asarray(totals, dtype=np.float64).reshape(-1, group_size)  # [B, G]
    return float(np.mean(np.all(groups == groups[:, :1], axis=1)))


def step_metrics(step: int, episodes: Episodes, result: UpdateResult, times: dict, *, lr: float, memory: dict) -> dict:
    """One line of metrics.jsonl.

    Args:
        times: wall seconds by phase ("generate", "score", "update", "step").
        lr: the learning rate the step used.
        memory: {"peak_memory_gb": MLX's peak, "peak_rss_gb": the process's} (`memory.peak_memory`).
    """
    lengths = np.array(episodes.rollout.lengths.tolist())  # [R]
    totals = np.array(episodes.totals)  # [R]
    return {
        "step": step,
        "reward": float(totals.mean()),
        "reward_std": float(totals.std()),
        **{f"rewards/{k}": float(np.mean(v)) for k, v in episodes.rewards.items()},
        "accuracy": float(np.mean(episodes.correct)),
        "format_rate": float(np.mean(episodes.well_formed)),
        "completion_length/mean": float(lengths.mean()),
        "completion_length/max": int(lengths.max()),
        "truncated_frac": float(np.mean(episodes.rollout.truncated.tolist())),
        "zero_adv_frac": flat_group_fraction(episodes.totals, episodes.group_size),
        "loss": result.loss,
        "kl": result.kl,
        "clip_frac/low": result.clip_frac_low,
        "clip_frac/high": result.clip_frac_high,
        "ratio/mean": result.ratio,
        "grad_norm": result.grad_norm,
        "micro_batches": result.micro_batches,
        "lr": lr,
        "skipped": result.skipped,
        **{f"time/{k}": round(v, 4) for k, v in times.items()},
        "tokens_per_s": float(lengths.sum() / max(times["generate"], 1e-9)),
        **memory,
    }
