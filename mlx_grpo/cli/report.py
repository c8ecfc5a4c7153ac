"""`mlx-grpo report RUN_DIR`: plots and a self-contained HTML page of a run (during or after it)."""

from __future__ import annotations

from pathlib import Path

import click

from mlx_grpo.cli import cli
from mlx_grpo.report import DEFAULT_PHRASES, build_report
from mlx_grpo.rundir import PLOTS


@cli.command()
@click.argument("run_dir")
@click.option(
    "--output", "-o", default=None, metavar="FILE", help="Where to write the HTML page (default: RUN_DIR/report.html)."
)
@click.option(
    "--phrases",
    default=",".join(DEFAULT_PHRASES),
    show_default=True,
    help="Comma-separated reflection phrases counted in completions (case-insensitive, whole words).",
)
def report(run_dir: str, output: str | None, phrases: str):
    """Write RUN_DIR/plots/*.png and an HTML report of the run (images embedded; opens offline)."""
    path = build_report(run_dir, output, phrases=tuple(p.strip() for p in phrases.split(",")))
    click.echo(f"wrote {path}")
    click.echo(f"plots in {Path(run_dir) / PLOTS}")
