"""A run's append-only logs, `metrics.jsonl` and `completions.jsonl`: one JSON object per line,
each with an integer `step`.

The trainer appends; the report, the model card and resume read. A run killed mid-write can leave
a torn last line, which every reader skips; resume cuts the logs back to its checkpoint's step.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from mlx_grpo.errors import UserError

METRICS = "metrics.jsonl"
COMPLETIONS = "completions.jsonl"


def append_jsonl(path: str | Path, records: Iterable[dict]) -> None:
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
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(path)
    return kept
