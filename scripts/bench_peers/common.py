"""What every benchmark runner shares. Standard library only: runners run in the peers' own venvs.

A runner is started by `scripts/bench.py` as `python RUNNER.py SPEC.json OUT.json`, one process per
contender. SPEC (written by bench.py) holds the model folder, the chat prompts and the workload:

    {"model": "/cache/tiny", "messages": [[{"role": "system", ...}, {"role": "user", ...}], ...],  # B
     "group_size": 4, "max_tokens": 64, "temperature": 1.0, "seed": 0, "warmup": 1, "repeats": 5,
     "beta": 0.04, "lora_rank": 8, "learning_rate": 1e-5, "options": {...runner-specific...}}

The runner writes one JSON object to OUT: `{"status": "ok", ...}` with its measurements, or
`{"status": "not available", "note": why}`. A crash leaves no OUT; bench.py reports the log's tail.
Peak RSS is measured by bench.py (os.wait4), so runners do not report it.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path


def load_spec() -> tuple[dict, Path]:
    """(spec, path to write the result to) from the command line."""
    spec_path, out_path = sys.argv[1:3]
    return json.loads(Path(spec_path).read_text()), Path(out_path)


def write_result(out: Path, result: dict) -> None:
    out.write_text(json.dumps(result, indent=2) + "\n")


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call (fn must block until its work is done)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_runs(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Seconds of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return [timed(fn) for _ in range(repeats)]


def measure_rollout(
    run: Callable[[int], object],
    rows: int,
    max_tokens: int,
    *,
    warmup: int,
    repeats: int,
    warmup_tokens: int | None = None,
    **extra,
) -> dict:
    """Rollout throughput from runs to `max_tokens` (full) and to 1 token (prefill + first sample).

    `run(n)` generates n tokens for every row and blocks until done. Full and 1-token runs are
    interleaved so that a change in the machine's load hits both alike. decode tok/s =
    rows * (max_tokens - 1) / (median full - median one): the same split for every contender.
    """
    for _ in range(warmup):
        run(warmup_tokens or max_tokens)
        run(1)
    full, one = [], []
    for _ in range(repeats):
        full.append(timed(lambda: run(max_tokens)))
        one.append(timed(lambda: run(1)))
    wall, prefill = statistics.median(full), statistics.median(one)
    decode = rows * (max_tokens - 1) / (wall - prefill) if wall > prefill else None
    return {
        "status": "ok",
        "wall_s": wall,
        "times_s": full,
        "prefill_s": prefill,
        "tok_s": rows * max_tokens / wall,
        "decode_tok_s": decode,
        "rows": rows,
        **extra,
    }


def step_result(step_times: list[float], **splits: list[float]) -> dict:
    """Median step time and median of each named part (generate/score/update), plus the raw lists."""
    result = {"status": "ok", "step_s": statistics.median(step_times), "times_s": step_times}
    for name, values in splits.items():
        if values:
            result[f"{name}_s"] = statistics.median(values)
    return result


def toy_reward(completions: list[str], **_) -> list[float]:
    """A trivial reward that differs between rows (fraction of distinct characters).

    Used by every contender's GRPO step: it costs nothing and gives non-zero advantages, so no
    framework can skip the update as a no-op.
    """
    return [len(set(text)) / max(len(text), 1) for text in completions]
