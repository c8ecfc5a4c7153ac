"""The run directory: the names in it, how they are written and read, and its one writer at a time.

    runs/countdown/
        .lock                   held (fcntl.flock) by the one `train` writing here; gone once it ends
        config.json             the resolved TrainConfig
        metrics.jsonl           one JSON object per step (and per evaluation), each with an int `step`
        completions.jsonl       sampled completions, one per line, each with its `step`
        checkpoints/step-NNNNNN/   see checkpoint.py
        adapters.safetensors    the latest checkpoint's adapters (mlx-lm format) ...
        adapter_config.json     ... and their config, published atomically at each save
        summary.json            the last metrics, written when the run ends
        plots/  report.html  tensorboard/

The trainer is the only writer and holds the lock for the whole run (`acquire_lock`), taken before
it reads anything here; the OS drops it when the process dies, so a killed run leaves no stale lock.
Readers (`read_run`: report, push, fuse) take no lock: every file is replaced atomically or
appended to, and a torn last log line, from a run in progress or killed mid-write, is skipped.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from mlx_grpo.errors import UserError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
COMPLETIONS = "completions.jsonl"
SUMMARY = "summary.json"
PLOTS = "plots"
CHECKPOINTS = "checkpoints"
ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
REPORT = "report.html"
TENSORBOARD = "tensorboard"
LOCK = ".lock"
# Any of these means "this folder holds a run" (the lock file does not: a killed run may leave it).
RUN_FILES = (CONFIG, METRICS, CHECKPOINTS, ADAPTER_WEIGHTS)
# What --overwrite removes: everything a run writes, except the lock the new run holds.
_RUN_OUTPUTS = RUN_FILES + (COMPLETIONS, ADAPTER_CONFIG, PLOTS, SUMMARY, TENSORBOARD, REPORT)


# --- writing and reading files -------------------------------------------------------------------


def write_text(path: str | Path, text: str) -> None:
    """Replace `path` with `text` atomically: a reader (or a crash) sees the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data) -> None:
    """`data` as indented JSON, replacing `path` atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def append_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Append one JSON line per record, in one write."""
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))


def read_jsonl(path: str | Path, *, strict: bool = True) -> list[dict]:
    """The records of a log; [] when the file is absent.

    A malformed last line is skipped (a run in progress may be writing it). Any other malformed
    line raises UserError naming the file and line, or is skipped too when `strict` is False.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = [(n, line) for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if line.strip()]
    rows = []
    for i, (n, line) in enumerate(lines):
        try:
            row = json.loads(line)
            ok = isinstance(row, dict) and isinstance(row.get("step"), int)
        except json.JSONDecodeError:
            ok = False
        if ok:
            rows.append(row)
        elif strict and i < len(lines) - 1:
            raise UserError(f"{path}:{n}: not a JSON object with an integer 'step'")
    return rows


def truncate_after(path: str | Path, step: int) -> list[dict]:
    """Keep only the records of steps <= `step` (atomically); return them."""
    path = Path(path)
    kept = [r for r in read_jsonl(path, strict=False) if r["step"] <= step]
    if path.exists():
        write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"cannot read {path}: expected a JSON object")
    return data


# --- reading a run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """A run directory as read, finished or in progress (or any mlx-lm adapter folder).

    The configs are read and checked by `read_run`; the logs on first use, so a push never reads
    completions.jsonl. Log rows are in file order.
    """

    path: Path
    adapter_config: dict | None = None  # adapter_config.json; None when not asked for (see read_run)
    train_config: dict = field(default_factory=dict)  # config.json; {} when the folder has none
    base_model: str = ""  # hub id or local path the adapters belong to; "" when unrecorded

    @cached_property
    def metrics(self) -> list[dict]:
        """metrics.jsonl's rows (strict: only a torn last line is skipped)."""
        return read_jsonl(self.path / METRICS)

    @cached_property
    def completions(self) -> list[dict]:
        """completions.jsonl's rows (strict: only a torn last line is skipped)."""
        return read_jsonl(self.path / COMPLETIONS)


def read_run(run_dir: str | Path, *, model: str | None = None, adapters: bool = True) -> Run:
    """Read a run directory written by `mlx-grpo train`, during the run or after it.

    Args:
        run_dir: the run's folder.
        model: the base model, overriding the one the run recorded.
        adapters: require published adapters and a base model (push, fuse, export); False for a
            run that may not have saved any yet (report), whose adapters are then not read.

    Raises:
        UserError: the folder is missing; unreadable JSON; with `adapters`, no adapters, an adapter
            config that is not mlx-lm's, or no base model recorded.
    """
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise UserError(f"run directory not found: {run_dir}" if not path.exists() else f"not a directory: {run_dir}")
    adapter_config = None
    if adapters:
        for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
            if not (path / name).is_file():
                raise UserError(
                    f"not a run directory: {run_dir} (no {name}; expected the folder `mlx-grpo train` wrote)"
                )
        adapter_config = _read_json(path / ADAPTER_CONFIG)
        if not isinstance(adapter_config.get("lora_parameters"), dict) or "num_layers" not in adapter_config:
            raise UserError(
                f"{path / ADAPTER_CONFIG} is not an mlx-lm adapter config (no lora_parameters / num_layers)"
            )
    train_config = _read_json(path / CONFIG) if (path / CONFIG).is_file() else {}
    base = model or (adapter_config or {}).get("base_model") or train_config.get("model") or ""
    if adapters and not base:
        raise UserError(f"the run in {run_dir} does not record its base model: pass --model")
    return Run(path, adapter_config, train_config, str(base))


# --- one writer: the lock ------------------------------------------------------------------------


class RunLock:
    """An exclusive hold on a run directory, from `acquire_lock` until `release()` (or the `with`
    block's end, or the process's death: the OS drops an flock with its last file descriptor)."""

    def __init__(self, path: Path, fd: int, created: list[Path]):
        self.path = path  # the lock file
        self._fd: int | None = fd
        self._created = created  # folders this lock made, outermost first

    def release(self) -> None:
        """Let go of the run dir (idempotent): the lock file is removed while still held (see
        `acquire_lock`), and so are the folders this lock created if nothing else was written there."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
            for folder in reversed(self._created):
                os.rmdir(folder)
        except OSError:
            pass  # a folder the run wrote into stays
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire_lock(run_dir: str | Path) -> RunLock:
    """Become the one writer of `run_dir`, creating it (and the folders above it) when missing.

    Call it before reading anything in the folder. It never waits: a run dir already held is an
    error at once, and the loser has changed nothing.

    Raises:
        UserError: another process holds the lock (the message names its pid and host); the path
            is a file, or the folder cannot be created or written.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output dir {run_dir} exists and is not a folder")
    _check_writable(run_dir)
    created = _make_folders(run_dir)
    lock = RunLock(run_dir / LOCK, _lock_file(run_dir / LOCK), created)
    try:  # who holds it, for the message another start shows
        lock.path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    except OSError as e:
        lock.release()
        raise UserError(f"cannot write in output dir {run_dir}: {e.strerror or e}") from None
    return lock


def _lock_file(path: Path) -> int:
    """A descriptor of `path` holding its exclusive flock. Read-only, so that the lock never keeps
    the disk from being remounted read-only; the OS drops the flock when the process dies."""
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot write in output dir {path.parent}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UserError(f"cannot lock output dir {path.parent}: {e.strerror or e}") from None
            raise UserError(
                f"output dir {path.parent} is in use: {_holder(path)} is writing to it; "
                "wait for it to end, or choose another --output-dir"
            ) from None
        if _is_same_file(fd, path):
            return fd
        os.close(fd)  # locked a file its holder removed on release: lock the one at the path now


def _make_folders(run_dir: Path) -> list[Path]:
    """mkdir -p, returning the folders this call created, outermost first."""
    missing = [p for p in (run_dir, *run_dir.parents) if not p.exists()][::-1]
    created = []
    for folder in missing:
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # another process made it first
        except OSError as e:
            raise UserError(f"cannot create output dir {run_dir}: {e.strerror or e}") from None
        created.append(folder)
    return created


def _is_same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _holder(path: Path, attempts: int = 50) -> str:
    """Who holds the lock, from the lock file; its holder writes it just after locking, so wait a little."""
    for _ in range(attempts):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            info = json.loads(path.read_text())
            return f"mlx-grpo train (pid {info['pid']} on {info['host']})"
        time.sleep(0.02)
    return "another mlx-grpo train"


# --- checks before a run writes ------------------------------------------------------------------


def prepare_run_dir(run_dir: str | Path, config_dict: dict, *, resume: bool, overwrite: bool) -> Path | None:
    """Check what the output folder holds before anything is written (call it holding the lock).

    Returns the checkpoint to resume from (None for a fresh run).

    Raises:
        UserError: the folder holds a run and neither --resume nor --overwrite was given;
            --resume with nothing to resume; --resume on a run with other settings; a folder
            that holds other files.
    """
    from mlx_grpo.checkpoint import latest_checkpoint  # imported here: checkpoint imports this module

    run_dir = Path(run_dir)
    has_run = run_dir.is_dir() and any((run_dir / f).exists() for f in RUN_FILES)
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if resume:
        checkpoint = latest_checkpoint(run_dir) if has_run else None
        if checkpoint is None:
            raise UserError(f"nothing to resume in {run_dir} (no checkpoint found)")
        _check_same_run(run_dir, config_dict)
        _clear_write_leftovers(run_dir)
        return checkpoint
    if has_run and not overwrite:
        raise UserError(
            f"output dir {run_dir} already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    if run_dir.is_dir() and not has_run and any(p.name != LOCK for p in run_dir.iterdir()):
        raise UserError(f"output dir {run_dir} is not empty and does not hold a run; choose another --output-dir")
    return None


def _clear_write_leftovers(run_dir: Path) -> None:
    """Remove the temporary files of `write_text` calls that a killed run never finished
    (`.NAME.PID.tmp`); the run that holds the lock is the folder's only writer."""
    for stale in run_dir.rglob(".*.tmp"):
        if stale.is_file() and re.fullmatch(r"\..+\.\d+\.tmp", stale.name):
            stale.unlink(missing_ok=True)


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
    """Remove a previous run's files (for --overwrite), after every check has passed; the lock stays."""
    run_dir = Path(run_dir)
    for name in _RUN_OUTPUTS:
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
    "gradient_checkpointing",  # like max_memory's micro-batches: the same gradients within float rounding
    "max_bad_steps",
    "eval_samples",
}


def _check_same_run(run_dir: Path, config_dict: dict) -> None:
    saved_path = run_dir / CONFIG
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
