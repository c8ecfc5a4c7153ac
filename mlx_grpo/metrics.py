"""The metrics line of one training step, from its episodes and its update: a pure function.

Per-row figures (reward, accuracy, format, lengths) are means over the step's R completions (every
rank's, under data parallelism); per-token ones (kl, clip fractions, ratio) come from the update,
weighted by tokens.
"""

from __future__ import annotations

import numpy as np

from mlx_grpo.episodes import Episodes
from mlx_grpo.update import UpdateResult


def flat_group_fraction(totals, group_size: int) -> float:
    """Share of groups whose completions all got the same total reward (advantage 0: no signal)."""
    groups = np.asarray(totals, dtype=np.float64).reshape(-1, group_size)  # [B, G]
    return float(np.mean(np.all(groups == groups[:, :1], axis=1)))


def row_values(episodes: Episodes) -> dict[str, list]:
    """The per-row figures a metrics line is made of, as plain lists `[R]` (to gather across ranks)."""
    return {
        "totals": list(episodes.totals),
        "rewards": {k: list(v) for k, v in episodes.rewards.items()},
        "correct": episodes.correct,
        "well_formed": episodes.well_formed,
        "self_check": episodes.self_check,
        "lengths": episodes.rollout.lengths.tolist(),
        "truncated": episodes.rollout.truncated.tolist(),
        "forced": episodes.forced,
        "sampling": dict(episodes.sampling),  # a filtering source's per-step figures (dynamic.py)
    }


def join_rows(parts: list[dict]) -> dict[str, list]:
    """`row_values` of consecutive shares of one batch (rank order), as one batch's."""
    joined = {k: [x for p in parts for x in p[k]] for k in parts[0] if k not in ("rewards", "sampling")}
    joined["rewards"] = {k: [x for p in parts for x in p["rewards"][k]] for k in parts[0]["rewards"]}
    joined["sampling"] = parts[0]["sampling"]  # the whole step's figures, the same on every rank (dynamic.py)
    return joined


def step_metrics(
    step: int, rows: dict, group_size: int, result: UpdateResult, times: dict, *, lr: float, memory: dict
) -> dict:
    """One line of metrics.jsonl.

    Args:
        rows: the whole batch's `row_values` (every rank's).
        times: wall seconds by phase ("generate", "score", "update", "step").
        lr: the learning rate the step used.
        memory: {"peak_memory_gb": MLX's peak, "peak_rss_gb": the process's} (`memory.peak_memory`).
    """
    lengths = np.array(rows["lengths"])  # [R]
    totals = np.array(rows["totals"])  # [R]
    sampling = rows.get("sampling", {})
    generated = sampling.get("generated_tokens", int(lengths.sum()))  # dropped groups' too
    return {
        "step": step,
        "reward": float(totals.mean()),
        "reward_std": float(totals.std()),
        **{f"rewards/{k}": float(np.mean(v)) for k, v in rows["rewards"].items()},
        "accuracy": float(np.mean(rows["correct"])),
        "format_rate": float(np.mean(rows["well_formed"])),
        "self_check_rate": float(np.mean(rows["self_check"])),  # countdown.selfcheck: rejected, then retried
        "completion_length/mean": float(lengths.mean()),
        "completion_length/max": int(lengths.max()),
        "truncated_frac": float(np.mean(rows["truncated"])),
        "forced_frac": float(np.mean(rows["forced"])),  # rows whose think block the budget closed
        "zero_adv_frac": flat_group_fraction(rows["totals"], group_size),
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
        "generated_tokens": generated,
        "tokens_per_s": float(generated / max(times["generate"], 1e-9)),
        **{f"sampling/{k}": v for k, v in sampling.items() if k != "generated_tokens"},
        **memory,
    }
