"""`mlx-grpo push` (a run to the Hugging Face Hub) and `mlx-grpo fuse` (a run to a local MLX model)."""

from __future__ import annotations

from pathlib import Path

import click

from mlx_grpo.cli import cli
from mlx_grpo.hub import FORMATS, export_run, push_run

_quantize = click.option(
    "--quantize",
    type=click.Choice(["4", "8"]),
    default=None,
    help="Quantize the fused weights to 4 or 8 bits (group size 64).",
)
_model = click.option("--model", default=None, help="Base model (hub id or path); default: the one the run recorded.")
_trust = click.option("--trust-remote-code", is_flag=True, help="Let the base model's own code run when loading it.")
_base_id = click.option(
    "--base-model-id",
    metavar="USER/NAME",
    help="Hub id of the base, when the run trained a local copy of it (the card and PEFT config name it).",
)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--repo-id", required=True, help="Hub repo to create or update, USER/NAME.")
@click.option("--private", is_flag=True, help="Create the repo as private (an existing repo keeps its visibility).")
@click.option("--fuse", is_flag=True, help="Upload base + adapters merged into one MLX model instead of adapters.")
@_quantize
@click.option("--dequantize", is_flag=True, help="With --fuse on a quantized base: save full-precision weights.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="mlx",
    show_default=True,
    help="Adapter layout: mlx (mlx-lm) or peft (transformers + peft).",
)
@_model
@_base_id
@_trust
@click.option("--dry-run", is_flag=True, help="Stage the folder, print its path and files, upload nothing.")
def push(run_dir, repo_id, private, fuse, quantize, dequantize, fmt, model, base_model_id, trust_remote_code, dry_run):
    """Upload the run in RUN_DIR to the Hugging Face Hub (token: HF_TOKEN or `hf auth login`)."""
    result = push_run(
        run_dir,
        repo_id,
        private=private,
        fuse=fuse,
        quantize=_bits(quantize),
        fmt=fmt,
        dry_run=dry_run,
        model=model,
        dequantize=dequantize,
        trust_remote_code=trust_remote_code,
        base_model_id=base_model_id,
    )
    if result.uploaded:
        click.echo(f"uploaded {len(result.files)} files to {result.url}")
        return
    click.echo(f"dry run: nothing uploaded to {repo_id}; the staged folder is {result.folder}")
    _echo_files(result.folder, result.files)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="Folder for the fused model.")
@_quantize
@click.option("--dequantize", is_flag=True, help="Save full-precision weights even if the base is quantized.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --output folder.")
@_model
@_base_id
@_trust
def fuse(run_dir, output, quantize, dequantize, overwrite, model, base_model_id, trust_remote_code):
    """Merge the run's adapters into its base model and save a complete MLX model folder."""
    files = export_run(
        run_dir,
        output,
        overwrite=overwrite,
        model=model,
        fuse=True,
        quantize=_bits(quantize),
        dequantize=dequantize,
        trust_remote_code=trust_remote_code,
        base_model_id=base_model_id,
    )
    click.echo(f"fused model written to {output}")
    _echo_files(Path(output), files)


def _bits(quantize):
    return None if quantize is None else int(quantize)


def _echo_files(folder: Path, files: list[str]) -> None:
    for name in files:
        click.echo(f"  {name}  ({(folder / name).stat().st_size:,} bytes)")
