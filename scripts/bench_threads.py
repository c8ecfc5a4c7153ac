"""GRPO steps of the bundled model with one and with two OpenBLAS threads, side by side in one run.

    python scripts/bench_threads.py [--steps 4] [--repeats 2]

Runs `mlx-grpo train --model weights/countdown-tiny` (the demo's preset, no in-run evaluation) in a
fresh process per try, alternating OPENBLAS_NUM_THREADS=1 and 2, and prints per setting the mean
sampling and update time of the steps after the first (its allocations warm up), the wall time and
the process's user and system CPU time: what one process alone gains from a second thread, and
what that thread costs the other core (the demo runs a second process there, `mlx_grpo.scorer`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlx_grpo.blas import OPENBLAS_PATH  # noqa: E402
from mlx_grpo.demo import BUNDLED_MODEL  # noqa: E402


def one_try(threads: int, steps: int, out: Path) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "mlx_grpo", "train", "--model", str(BUNDLED_MODEL)]
    command += ["--max-steps", str(steps), "--eval-every", "0", "--output-dir", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [line for line in lines if "time/step" in line][1:]
    return {
        "generate": sum(line["time/generate"] for line in timed) / len(timed),
        "update": sum(line["time/update"] for line in timed) / len(timed),
        "loss": [line["loss"] for line in lines if "loss" in line],
        "wall": wall,
        "user": after.ru_utime - before.ru_utime,
        "sys": after.ru_stime - before.ru_stime,
    }


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is left out of the means)")
    tries: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as scratch:
        one_try(1, 2, Path(scratch) / "warm-up")  # MLX compiles its CPU kernels once per machine (cached)
        for r in range(args.repeats):
            for threads in tries:
                tries[threads].append(one_try(threads, args.steps, Path(scratch) / f"t{threads}_{r}"))
    blas = "OpenBLAS (preloaded by the CLI)" if Path(OPENBLAS_PATH).is_file() else "the mlx wheel's reference BLAS"
    print(f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, {cpu_model()}; {blas}")
    print(f"{args.steps} GRPO steps of the bundled model per try, {args.repeats} tries per setting, alternating")
    print("| BLAS threads | sampling s/step | update s/step | wall s | user s | sys s | same losses as 1 thread |")
    print("|---|---|---|---|---|---|---|")
    for threads, runs in tries.items():
        mean = {k: sum(run[k] for run in runs) / len(runs) for k in ("generate", "update", "wall", "user", "sys")}
        same = all(run["loss"] == tries[1][0]["loss"] for run in runs)
        print(
            f"| {threads} | {mean['generate']:.2f} | {mean['update']:.2f} | {mean['wall']:.1f} | {mean['user']:.1f} "
            f"| {mean['sys']:.1f} | {'yes' if same else 'no'} |"
        )


if __name__ == "__main__":
    main()
