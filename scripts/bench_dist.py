"""Data-parallel throughput: completions per second of `mlx-grpo train` with 1 and 2 ranks.

    python scripts/bench_dist.py [--steps 8] [--warmup 2] [--json out.json]

The same global batch (B prompts x G completions, the bundled weights/countdown-tiny model) is
trained with one process, then with two ranks on this machine's ring, started by `mlx.launch
--backend ring` and then by `scripts/ranks.py` (no forwarding loop of its own; scripts/README.md
section 8), each process limited to one BLAS/OpenMP thread. Per step the trainer logs `time/step`
(the slowest rank's); completions/s is B·G over its median after the warm-up steps, and the
scaling efficiency is the 2-rank rate over twice the 1-rank rate. The CPU seconds of each whole run
(all ranks) are printed too: on a loaded machine they say what the work cost where wall time cannot. Both ranks share one machine's
cores and memory bandwidth here, so this is a same-machine figure, not a two-Mac one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORKLOAD = {"batch_size": 8, "num_generations": 4, "max_completion_length": 48}
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def train_command(out: Path, steps: int) -> list[str]:
    args = [str(BIN / "mlx-grpo"), "train", "--quiet", "--model", str(REPO / "weights" / "countdown-tiny")]
    for name, value in WORKLOAD.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args + ["--max-steps", str(steps), "--eval-every", "0", "--save-every", str(steps), "--output-dir", str(out)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(world: int, steps: int, warmup: int, folder: Path, launcher: str = "") -> dict:
    """Train `steps` steps with `world` ranks started by `launcher` ("mlx.launch" or "ranks.py");
    completions/s over the steps after the warm-up."""
    out = folder / f"ranks-{world}-{launcher}"
    command = train_command(out, steps)
    if launcher == "mlx.launch":
        launch = [str(BIN / "mlx.launch"), "-n", str(world), "--backend", "ring", "-p", str(free_port()), "--"]
        command = launch + command
    elif launcher == "ranks.py":
        command = [sys.executable, str(REPO / "scripts" / "ranks.py"), "-n", str(world), *command]
    env = {**os.environ, **ONE_THREAD}
    cpu_before = _children_cpu()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    cpu = _children_cpu() - cpu_before
    if done.returncode != 0 or "exited with code" in done.stderr:
        sys.exit(f"{world}-rank run failed:\n{done.stderr[-2000:]}")
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step_seconds = [m["time/step"] for m in lines if m["step"] > warmup]
    median = statistics.median(step_seconds)
    completions = WORKLOAD["batch_size"] * WORKLOAD["num_generations"]
    return {
        "ranks": world,
        "launcher": launcher or "none",
        "step_s_median": median,
        "completions_per_s": completions / median,
        "cpu_s_whole_run": round(cpu, 1),  # every rank, start-up included: what the work costs, load aside
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out (compiles, caches)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-dist-"))
    try:
        load_before = os.getloadavg()[0]
        runs = ((1, ""), (2, "mlx.launch"), (2, "ranks.py"))
        results = [measure(world, args.steps, args.warmup, folder, launcher) for world, launcher in runs]
        load_after = os.getloadavg()[0]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    one = results[0]
    report = {
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores",
        "load_average": [round(load_before, 2), round(load_after, 2)],
        "workload": {**WORKLOAD, "steps": args.steps, "warmup": args.warmup, "threads_per_rank": 1},
        "results": results,
        "scaling_efficiency": {
            r["launcher"]: r["completions_per_s"] / (2 * one["completions_per_s"]) for r in results[1:]
        },
    }
    for r in results:
        print(
            f"{r['ranks']} rank(s), {r['launcher']}: {r['completions_per_s']:.1f} completions/s "
            f"(median step {r['step_s_median']:.3f} s; {r['cpu_s_whole_run']} CPU s for the whole run)"
        )
    for launcher, efficiency in report["scaling_efficiency"].items():
        print(f"scaling efficiency, {launcher}: {efficiency:.0%} (same machine; load {report['load_average']})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
