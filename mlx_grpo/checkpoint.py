"""Checkpoints and the run directory: atomic writes, resume, and never clobbering a user's run.

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
from mlx_grpo.model import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter_weights, save_adapters

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
_OPTIMIZER = "optimizer.safetensors"
_STATE = "state.json"
# What a run directory holds; any of these means "this folder is a run".
RUN_FILES = ("config.json", "metrics.jsonl", CHECKPOINTS, ADAPTER_WEIGHTS)


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
        mx.save_safetensors(str(tmp / _OPTIMIZER), dict(tree_flatten(optimizer.state)))
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


def prepare_run_dir(run_dir: str | Path, config_dict: dict, *, resume: bool, overwrite: bool) -> Path | None:
    """Check what the output folder holds before anything is written.

    Returns the checkpoint to resume from (None for a fresh run).

    Raises:
        UserError: the folder holds a run and neither --resume nor --overwrite was given;
            --resume with nothing to resume; --resume on a run with other settings; a folder
            that cannot be created or written (under a file, on a read-only disk).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output dir {run_dir} exists and is not a folder")
    has_run = run_dir.is_dir() and any((run_dir / f).exists() for f in RUN_FILES)
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if resume:
        checkpoint = latest_checkpoint(run_dir) if has_run else None
        if checkpoint is None:
            raise UserError(f"nothing to resume in {run_dir} (no checkpoint found)")
        _check_same_run(run_dir, config_dict)
        _check_writable(run_dir)
        return checkpoint
    if has_run and not overwrite:
        raise UserError(
            f"output dir {run_dir} already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    if run_dir.is_dir() and not has_run and any(run_dir.iterdir()):
        raise UserError(f"output dir {run_dir} is not empty and does not hold a run; choose another --output-dir")
    _check_writable(run_dir)
    return None


def _check_writable(run_dir: Path) -> None:
    """The run dir, or the nearest folder above it that exists, must be a folder we may write in."""
    folder = run_dir.absolute()
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"cannot create output dir {run_dir}: {folder} is not a folder")
    if not os.access(folder, os.W_OK):
        raise UserError(f"output dir {run_dir}: {folder} is not writable")


def clear_run_dir(run_dir: str | Path) -> None:
    """Remove a previous run's files (for --overwrite), after every check has passed."""
    run_dir = Path(run_dir)
    for name in RUN_FILES + (
        "completions.jsonl",
        ADAPTER_CONFIG,
        "plots",
        "summary.json",
        "tensorboard",
        "report.html",
    ):
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


# Settings that may change on resume without changing what the run computes so far.
_RESUMABLE_CHANGES = {
    "max_steps",
    "output_dir",
    "eval_every",
    "save_every",
    "log_completions_every",
    "report_to",
    "push_to_hub",
    "max_memory",
    "max_bad_steps",
    "eval_samples",
}


def _check_same_run(run_dir: Path, config_dict: dict) -> None:
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        return
    try:
        saved = json.loads(saved_path.read_text())
    except ValueError:
        raise UserError(f"{saved_path} is not valid JSON; cannot check that --resume continues the same run") from None
    changed = sorted(k for k, v in config_dict.items() if k not in _RESUMABLE_CHANGES and saved.get(k, v) != v)
    if changed:
        raise UserError(
            f"output dir {run_dir} holds a different run (changed: {', '.join(changed)}); use another --output-dir"
        )
