"""`--report-to` backends: send each step's metrics, under their metrics.jsonl names, to a tracker.

    tracker = make_tracker(config.report_to, run_dir, config)  # None -> a tracker that does nothing
    tracker.log({"reward": 0.4, "accuracy": 0.25}, step=1)
    tracker.close()

TensorBoard (via tensorboardX) writes event files to RUN_DIR/tensorboard; wandb logs to the project
named by $WANDB_PROJECT (default "mlx-grpo"). Each is an optional extra: a missing package is a
UserError with the pip command that installs it.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from pathlib import Path

from mlx_grpo.errors import UserError
from mlx_grpo.rundir import TENSORBOARD

KINDS = ("tensorboard", "wandb")


class Tracker:
    """Does nothing: the tracker for runs without `--report-to`. Backends override both methods."""

    def log(self, metrics: dict, step: int) -> None:
        """Record one step's metrics (non-numeric values and the `step` key itself are left out)."""

    def close(self) -> None:
        """Flush and release the backend."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TensorBoardTracker(Tracker):
    def __init__(self, tensorboardX, run_dir: Path, config: dict):
        self.writer = tensorboardX.SummaryWriter(logdir=str(run_dir / TENSORBOARD))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)

    def log(self, metrics: dict, step: int) -> None:
        for name, value in scalars(metrics).items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(self, wandb, run_dir: Path, config: dict):
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "mlx-grpo"), name=run_dir.name, dir=str(run_dir), config=config
        )

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(scalars(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


_BACKENDS = {"tensorboard": (TensorBoardTracker, "tensorboardX"), "wandb": (WandbTracker, "wandb")}


def scalars(metrics: dict) -> dict[str, float]:
    """The finite numbers of a metrics row, bools as 0/1, without `step`.

    Example: {"step": 3, "reward": 0.5, "skipped": False, "kl": nan} -> {"reward": 0.5, "skipped": 0.0}
    """
    out = {}
    for name, value in metrics.items():
        if name != "step" and isinstance(value, (int, float)) and math.isfinite(value):
            out[name] = float(value)
    return out


def make_tracker(kind: str | None, run_dir: str | Path, config) -> Tracker:
    """The tracker for `--report-to KIND` (None: a no-op Tracker).

    Args:
        kind: None, "tensorboard" or "wandb".
        run_dir: the run directory (TensorBoard writes RUN_DIR/tensorboard; wandb keeps its files there).
        config: the TrainConfig (or a plain dict) recorded with the run.

    Raises:
        UserError: unknown kind, or the backend's package is not installed (one line with the pip command).
    """
    if kind is None:
        return Tracker()
    if kind not in _BACKENDS:
        raise UserError(f"--report-to must be one of {', '.join(KINDS)} (got {kind!r})")
    backend, package = _BACKENDS[kind]
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise UserError(f"--report-to {kind} needs {package}: pip install 'mlx-grpo[{kind}]'") from None
    return backend(module, run_dir, config)
