"""`mlx-grpo demo`: the offline before/after demo on the bundled tiny model (see mlx_grpo.demo)."""

from __future__ import annotations

import click

from mlx_grpo.cli import cli
from mlx_grpo.demo import BUNDLED_MODEL, EVAL_TASKS, REAL_ROWS, REAL_TASKS, DemoOptions


@cli.command()
@click.option("--output-dir", default="runs/demo", show_default=True, help="Run folder to write.")
@click.option("--overwrite", is_flag=True, help="Replace the run that --output-dir holds.")
@click.option("--seed", type=int, default=0, show_default=True, help="Training seed (tasks, sampling, LoRA init).")
@click.option("--max-steps", type=click.IntRange(min=1), help="GRPO steps [default: the model's preset].")
@click.option(
    "--eval-tasks",
    type=click.IntRange(min=1),
    default=EVAL_TASKS,
    show_default=True,
    help="Held-out generated tasks scored before and after.",
)
@click.option(
    "--real-tasks",
    type=click.IntRange(min=0),
    default=REAL_TASKS,
    show_default=True,
    help="Real rows scored before and after (0: none).",
)
@click.option(
    "--real-rows",
    type=click.Path(dir_okay=False),
    default=str(REAL_ROWS),
    show_default=True,
    help="JSONL of real Countdown rows; skipped when missing.",
)
@click.option(
    "--model",
    type=click.Path(file_okay=False),
    default=str(BUNDLED_MODEL),
    show_default=True,
    help="Model folder (its mlx_grpo.yaml preset sets the training).",
)
@click.option("--quick", is_flag=True, help="A smoke run: 2 steps, 16 tasks per evaluation.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(output_dir, overwrite, seed, max_steps, eval_tasks, real_tasks, real_rows, model, quick, quiet):
    """Score the bundled tiny model, train it with GRPO (LoRA) for a few minutes, score it again."""
    from mlx_grpo.demo import format_results, run_demo

    options = DemoOptions(
        model=model,
        output_dir=output_dir,
        seed=seed,
        max_steps=max_steps,
        eval_tasks=eval_tasks,
        real_tasks=real_tasks,
        real_rows=real_rows,
        overwrite=overwrite,
        quick=quick,
        progress=not quiet,
    )
    result = run_demo(options, echo=lambda line: click.echo(line, err=True))
    click.echo(format_results(result))
