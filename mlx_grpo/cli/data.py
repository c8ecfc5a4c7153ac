"""`mlx-grpo data`: generate, solve and describe Countdown tasks (offline)."""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path

import click

from mlx_grpo.cli import cli
from mlx_grpo.countdown.generator import generate_tasks
from mlx_grpo.countdown.solver import solve, worked_solution
from mlx_grpo.errors import UserError


@cli.group()
def data():
    """Countdown tasks: generate them, solve one, print a dataset's statistics."""


@data.command()
@click.option("--num", "num", type=int, default=1000, show_default=True, help="How many tasks.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same tasks).")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help='JSONL file to write: one {"target", "nums"} object per line.',
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def generate(num: int, seed: int, output: Path, overwrite: bool):
    """Generate solvable tasks with the statistics of Jiayi-Pan/Countdown-Tasks-3to4."""
    if num < 1:
        raise UserError(f"--num must be >= 1, got {num}")
    if output.exists() and not overwrite:
        raise UserError(f"{output} exists; pass --overwrite to replace it")
    with click.progressbar(length=num, label="generating", file=sys.stderr) as bar:
        tasks = generate_tasks(num, seed, progress=bar.update)
    _write_atomic(output, "".join(json.dumps({"target": t.target, "nums": list(t.nums)}) + "\n" for t in tasks))
    click.echo(f"wrote {len(tasks)} tasks to {output} (seed {seed})")


@data.command()
@click.option("--nums", required=True, help="The numbers, comma-separated: 44,19,35.")
@click.option("--target", required=True, metavar="INTEGER", help="The number to reach.")
@click.option("--completion", is_flag=True, help="Print the worked <think>/<answer> completion instead.")
def solve_cmd(nums: str, target: str, completion: bool):
    """Solve one task exactly: the equation and its steps (exit 1 if there is none)."""
    numbers = _parse_ints(nums, "--nums")
    if not re.fullmatch(r"[+-]?\d+", target.strip()):
        raise UserError(f"--target must be an integer, got {target!r}")
    goal = int(target)
    try:
        solution = solve(numbers, goal)
    except ValueError as e:
        raise UserError(f"--nums: {e}") from None
    if solution is None:
        click.echo(f"no solution: {numbers} cannot reach {goal} with + - * / using each number once", err=True)
        sys.exit(1)  # not click's Exit: the entry point runs click with standalone_mode=False
    if completion:
        click.echo(worked_solution(numbers, goal))
        return
    click.echo(f"{solution.equation} = {goal}")
    for step in solution.steps:
        click.echo(f"  {step}")


data.add_command(solve_cmd, name="solve")


@data.command()
@click.argument("source")
@click.option("--num", "num", type=int, default=None, help="Tasks to draw (default: all; 1000 for 'generate').")
@click.option("--seed", type=int, default=0, show_default=True, help="Shuffle or generator seed.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as one JSON object.")
def stats(source: str, num: int | None, seed: int, as_json: bool):
    """Statistics of SOURCE: a .jsonl/.json/.parquet/.csv file, a Hub dataset id, or 'generate'."""
    from mlx_grpo.countdown.data import load_tasks, read_tasks, task_stats  # numpy, and datasets for a Hub id

    if num is None and source != "generate":
        tasks = read_tasks(source)  # every task: the statistics do not depend on the order
    else:
        tasks = load_tasks(source, seed=seed, num_samples=num)
    values = task_stats(tasks)
    if as_json:
        click.echo(json.dumps(values))
        return
    width = max(len(k) for k in values)
    click.echo(f"{'statistic'.ljust(width)}  value")
    for key, value in values.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        click.echo(f"{key.ljust(width)}  {shown}")


def _parse_ints(text: str, flag: str) -> list[int]:
    tokens = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    if not tokens or not all(re.fullmatch(r"[+-]?\d+", t) for t in tokens):
        raise UserError(f"{flag} must be integers separated by commas (like 44,19,35), got {text!r}")
    return [int(t) for t in tokens]


def _write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file, so a failure never leaves half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
