"""PNG figures of a run's per-step metrics, one function per figure, all the same size.

Every function takes the rows of `metrics.jsonl` (dicts with a `step` key, in file order) and a
path, draws with matplotlib's Agg canvas (no pyplot, no global backend switch, no display needed)
and writes a WIDTH x HEIGHT PNG there. A metric that was never logged still gives a figure, one
that says so, so that a report always has the same set of files.

    plot_reward_accuracy(rows, "RUN/plots/reward_accuracy.png")  # the summary figure of a run
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

DPI = 100
WIDTH, HEIGHT = 900, 500  # pixels of every PNG written here
SMOOTH_FROM = 20  # series with at least this many points also get a running mean


class Series(NamedTuple):
    """One metric over steps: `steps[i]` is the step of `values[i]`; steps ascend, no repeats."""

    steps: list[int]
    values: list[float]


def series(rows: list[dict], key: str) -> Series:
    """The finite numeric values of `key` per step; a later row for the same step wins (a resumed run).

    Example: rows `[{"step": 1, "kl": 0.1}, {"step": 2}, {"step": 1, "kl": 0.3}]` give
    `Series(steps=[1], values=[0.3])`.
    """
    by_step: dict[int, float] = {}
    for row in rows:
        value = row.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        by_step[int(row["step"])] = float(value)
    steps = sorted(by_step)
    return Series(steps, [by_step[s] for s in steps])


def reward_keys(rows: list[dict]) -> list[str]:
    """The per-function reward keys (`rewards/<name>`) present in any row, in first-seen order."""
    return list(dict.fromkeys(k for row in rows for k in row if k.startswith("rewards/")))


def plot_reward(rows: list[dict], path: str | Path) -> Path:
    """Mean total reward per step, and the mean of each reward function."""
    lines = [("reward (total)", series(rows, "reward"))]
    lines += [(k.split("/", 1)[1], series(rows, k)) for k in reward_keys(rows)]
    return _draw(path, "Reward", "mean reward", lines)


def plot_accuracy(rows: list[dict], path: str | Path) -> Path:
    """Accuracy on each training batch (line) and on the held-out split (points)."""
    lines = [("train batch", series(rows, "accuracy"))]
    return _draw(
        path, "Accuracy", "fraction correct", lines, points=[("held-out", series(rows, "eval/accuracy"))], rate=True
    )


def plot_format_rate(rows: list[dict], path: str | Path) -> Path:
    """Fraction of completions whose format reward is 1, on training batches and held out."""
    lines = [("train batch", series(rows, "format_rate"))]
    return _draw(
        path,
        "Format rate",
        "fraction well formatted",
        lines,
        points=[("held-out", series(rows, "eval/format_rate"))],
        rate=True,
    )


def plot_completion_length(rows: list[dict], path: str | Path) -> Path:
    """Mean and longest completion per step, in tokens."""
    lines = [("mean", series(rows, "completion_length/mean")), ("max", series(rows, "completion_length/max"))]
    return _draw(path, "Completion length", "tokens", lines)


def plot_truncated(rows: list[dict], path: str | Path) -> Path:
    """Fraction of completions cut off at max_completion_length."""
    return _draw(path, "Truncated completions", "fraction", [("truncated", series(rows, "truncated_frac"))], rate=True)


def plot_kl(rows: list[dict], path: str | Path) -> Path:
    """KL divergence of the policy from the reference (0 or absent when beta is 0)."""
    return _draw(path, "KL to the reference policy", "KL", [("kl", series(rows, "kl"))])


def plot_clip_frac(rows: list[dict], path: str | Path) -> Path:
    """Fraction of tokens whose probability ratio was clipped below 1-ε and above 1+ε_high."""
    lines = [
        ("low (ratio < 1-ε)", series(rows, "clip_frac/low")),
        ("high (ratio > 1+ε)", series(rows, "clip_frac/high")),
    ]
    return _draw(path, "Clipped tokens", "fraction", lines)


def plot_zero_adv(rows: list[dict], path: str | Path) -> Path:
    """Fraction of groups whose completions all scored the same (no learning signal)."""
    return _draw(
        path, "Groups with zero advantage", "fraction", [("zero advantage", series(rows, "zero_adv_frac"))], rate=True
    )


def plot_reflection(rates: dict[str, Series], path: str | Path) -> Path:
    """Rate of reflection phrases in logged completions per step.

    Args:
        rates: label -> Series of fractions in [0, 1]; the first entry is drawn bold (any phrase).
    """
    return _draw(
        path, 'Reflection phrases ("aha") in completions', "fraction of completions", list(rates.items()), rate=True
    )


def plot_reward_accuracy(rows: list[dict], path: str | Path) -> Path:
    """The summary figure of a run: mean reward and batch accuracy per step, held-out accuracy points."""
    lines = [("reward (total)", series(rows, "reward")), ("accuracy (train batch)", series(rows, "accuracy"))]
    return _draw(
        path, "Reward and accuracy", "value", lines, points=[("accuracy (held-out)", series(rows, "eval/accuracy"))]
    )


def plot_aha(rows: list[dict], path: str | Path) -> Path:
    """The "aha" page in one figure: accuracy, mean completion length and self-check rate per step,
    three panels over one step axis (training batches as lines, held-out evaluations as points)."""
    # (title, y label, training key, held-out key, on a 0-1 axis); self-checks are rare at first,
    # so their axis follows the data to show a doubling.
    panels = [
        ("Accuracy", "correct", "accuracy", "eval/accuracy", True),
        ("Mean completion length", "tokens", "completion_length/mean", "eval/completion_length", False),
        ("Self-checks (a candidate rejected, then another)", "share", "self_check_rate", "eval/self_check_rate", False),
    ]
    fig = _figure()
    for ax, (title, ylabel, key, eval_key, rate) in zip(fig.subplots(3, 1, sharex=True), panels):
        lines, points = [("train batch", series(rows, key))], [("held-out", series(rows, eval_key))]
        _draw_axis(ax, title, ylabel, lines, points=points, rate=rate, fontsize=11)
    return _save(fig, path)


def _figure():
    # Imported on first use: matplotlib takes ~0.5 s to import, which every CLI command would pay.
    from matplotlib.figure import Figure

    return Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI, layout="constrained")


def _save(fig, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(str(path))
    return path


def _draw(
    path: str | Path,
    title: str,
    ylabel: str,
    lines: list[tuple[str, Series]],
    *,
    points: list[tuple[str, Series]] = (),
    rate: bool = False,
) -> Path:
    """Draw line series (the first one bold) and point series on one axis; write the PNG."""
    fig = _figure()
    _draw_axis(fig.subplots(), title, ylabel, lines, points=points, rate=rate)
    return _save(fig, path)


def _draw_axis(ax, title: str, ylabel: str, lines, *, points=(), rate: bool = False, fontsize: int = 14) -> None:
    """Line series (the first one bold) and point series on the axis `ax`."""
    drawn = 0
    for i, (label, s) in enumerate(lines):
        if s.steps:
            _line(ax, label, s, color=f"C{i}", width=2.4 if i == 0 else 1.4, zorder=2.5 if i == 0 else 2)
            drawn += 1
    for j, (label, s) in enumerate(points):
        if s.steps:
            ax.plot(s.steps, s.values, "o", color=f"C{len(lines) + j}", markersize=7, label=label, zorder=3)
            drawn += 1
    ax.set_title(title, fontsize=fontsize)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if rate:
        ax.set_ylim(-0.03, 1.03)
    if drawn:
        ax.legend(loc="best", fontsize=9)
    else:
        ax.text(
            0.5,
            0.5,
            "not logged in this run (yet)",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=13,
            color="0.4",
        )


def _line(ax, label: str, s: Series, *, color: str, width: float, zorder: float) -> None:
    """A series as a line; long noisy ones as faint raw values under a running mean."""
    if len(s.values) < SMOOTH_FROM:
        ax.plot(s.steps, s.values, color=color, linewidth=width, marker=".", label=label, zorder=zorder)
        return
    window = max(5, len(s.values) // 20)
    ax.plot(s.steps, s.values, color=color, linewidth=0.8, alpha=0.3, zorder=zorder)
    ax.plot(
        s.steps,
        _running_mean(s.values, window),
        color=color,
        linewidth=width,
        zorder=zorder,
        label=f"{label} (mean of {window})",
    )


def _running_mean(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values (shorter at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out
