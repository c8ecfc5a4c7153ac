"""Checkpoints: the folders under `RUN_DIR/checkpoints/`, saved atomically, listed, loaded, published.

A checkpoint is a folder `checkpoints/step-NNNNNN/` holding the adapters (mlx-lm format), the
optimizer state and `state.json` (step, data position, seed). The trainer re-seeds every random
draw from (seed, step) at the start of each step, so seed and step are the whole RNG state. It is written in
full to a hidden temp folder next to it and then renamed, so a folder with that name is always
complete: a crash (SIGKILL, full disk) can leave only a temp folder, which resume ignores and the
next save clears.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from mlx_grpo.errors import UserError
from mlx_grpo.model import load_adapter_weights, save_adapters, save_safetensors
from mlx_grpo.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CHECKPOINTS

_STEP_DIR = re.compile(r"^step-(\d{6,})$")
_OPTIMIZER = "optimizer.safetensors"
_STATE = "state.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(folder)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(run_dir, step: int, model, adapter_config: dict, optimizer, state: dict, keep: int = 3) -> Path:
    """Write checkpoint `step` atomically, publish its adapters at the top of the run dir, and
    delete all but the newest `keep` checkpoints.

    Raises:
        UserError: when the disk is full or the folder unwritable; the previous checkpoints and
            the published adapters are left as they were.
    """
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        save_adapters(model, tmp, adapter_config)
        save_safetensors(tmp / _OPTIMIZER, dict(tree_flatten(optimizer.state)))
        (tmp / _STATE).write_text(json.dumps({"step": step, **state}, indent=2) + "\n")
        _fsync_tree(tmp)
        if final.exists():  # saving a step again: replace it, old copy last
            _discard(final)
        os.rename(tmp, final)
        _fsync_dir(root)
        publish_adapters(final, run_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(run_dir)
        kept = f"; the previous checkpoint {previous.name} is intact" if previous else ""
        raise UserError(f"cannot write checkpoint to {root}: {e.strerror or e}{kept}") from None
    for old in list_checkpoints(run_dir)[:-keep]:
        with contextlib.suppress(OSError):  # a checkpoint too many is no reason to stop the run
            _discard(old)
    return final


def _discard(checkpoint: Path) -> None:
    """Delete a checkpoint folder, first renamed to a temp name: a crash half-way through the
    deletion must not leave a partial folder under a checkpoint's name (the next save clears it)."""
    doomed = checkpoint.with_name(f".tmp-old-{checkpoint.name}-{os.getpid()}")
    os.rename(checkpoint, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def publish_adapters(checkpoint: Path, run_dir: Path) -> None:
    """Copy a checkpoint's adapters to the top of the run dir, each file replaced atomically."""
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        tmp = run_dir / f".{name}.tmp"
        shutil.copyfile(checkpoint / name, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, run_dir / name)
    _fsync_dir(run_dir)


def load_checkpoint(checkpoint: Path, model, optimizer) -> dict:
    """Restore adapters and optimizer state in place; return `state.json`'s dict."""
    try:
        state = json.loads((checkpoint / _STATE).read_text())
        load_adapter_weights(model, checkpoint)
        optimizer.state = tree_unflatten(list(mx.load(str(checkpoint / _OPTIMIZER)).items()))
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"checkpoint {checkpoint} is unreadable: {e}") from None
    mx.eval(model.parameters(), optimizer.state)
    return state
