"""`mlx-grpo train` and `mlx-grpo eval`.

Training flags are generated from `TrainConfig`'s fields (TRL's names where they exist), so a
flag, a config-file key and a field are always the same name. A flag left out is None and does
not override the config file or the defaults.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import sys
import types
import typing
from pathlib import Path

import click

from mlx_grpo.cli import cli
from mlx_grpo.config import TrainConfig, build_config
from mlx_grpo.errors import UserError


def _help(name: str) -> str:
    return next(f.metadata["help"] for f in dataclasses.fields(TrainConfig) if f.name == name)


def _option(f: dataclasses.Field, hint):
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # `X | None`: a flag of type X
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    flag = "--" + f.name.replace("_", "-")
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    help_text = f"{f.metadata['help']} [default: {default}]"
    choices = tuple(str(c) for c in f.metadata["choices"])
    if f.name == "rewards":
        return click.option("--reward", "rewards", multiple=True, default=None, help=help_text)
    if hint is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None, help=help_text)
    if choices:
        return click.option(flag, f.name, type=click.Choice(choices), default=None, help=help_text)
    return click.option(flag, f.name, type={int: int, float: float}.get(hint, str), default=None, help=help_text)


def config_options(func):
    hints = typing.get_type_hints(TrainConfig)  # once: it evaluates every annotation of the class
    for f in reversed(dataclasses.fields(TrainConfig)):
        func = _option(f, hints[f.name])(func)
    return func


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML or TOML file of settings.")
@click.option("--resume", is_flag=True, help="Continue the run in --output-dir from its latest checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace the run that --output-dir holds.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@config_options
def train(config_file, resume, overwrite, quiet, **flags):
    """Train LoRA adapters with GRPO (defaults: Qwen/Qwen3-0.6B on Countdown)."""
    from mlx_grpo import distributed, trainer
    from mlx_grpo.presets import preset_for_model
    from mlx_grpo.progress import format_table

    flags["rewards"] = list(flags["rewards"]) or None
    if flags.get("quantize") is not None:
        flags["quantize"] = int(flags["quantize"])
    model = flags.get("model") or _model_in_file(config_file)
    config = build_config(config_file, flags, base=preset_for_model(model))
    if config.push_to_hub:
        _check_push(config.push_to_hub)
    training = trainer.prepare(config, resume=resume, overwrite=overwrite)  # every check, nothing written
    main_rank = distributed.is_main()  # under mlx.launch, rank 0 alone reports and pushes
    if main_rank:
        click.echo(f"run: {config.output_dir}  model: {config.model}  dataset: {config.dataset}", err=True)
    try:
        summary = trainer.run(training, progress=not quiet)
    except trainer.TrainingInterrupted as e:
        click.echo(str(e), err=True)
        sys.exit(130)
    except OSError as e:
        if e.errno not in _DISK_ERRORS:
            raise
        raise UserError(_disk_error(e, config.output_dir)) from None
    if not main_rank:
        return
    click.echo(format_table(_summary_rows(summary), title="final metrics"))
    if config.push_to_hub:
        from mlx_grpo.hub import push_run

        push_run(config.output_dir, config.push_to_hub)


_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}


def _disk_error(error: OSError, run_dir: str) -> str:
    """A write that failed mid-run (full disk, read-only or lost mount): what failed, and what is safe."""
    from mlx_grpo.checkpoint import latest_checkpoint

    what = f"{error.strerror or error}" + (f" ({error.filename})" if error.filename else "")
    latest = latest_checkpoint(run_dir)
    kept = (
        f"checkpoint {latest.name} is intact; fix the disk and continue with --resume"
        if latest
        else "no checkpoint yet"
    )
    return f"training stopped: cannot write to {run_dir}: {what}; {kept}"


def _check_push(repo_id: str) -> None:
    """--push-to-hub: a valid repo id and a token, checked before hours of training rather than after."""
    from huggingface_hub import get_token

    from mlx_grpo.hub import check_repo_id

    check_repo_id(repo_id)
    try:
        token = get_token()
    except Exception:  # e.g. a failed OIDC exchange; its text may quote the credential
        token = None
    if not token:
        raise UserError("--push-to-hub needs a Hugging Face token: set HF_TOKEN or run `hf auth login` first")


def _model_in_file(config_file):
    if config_file is None:
        return None
    from mlx_grpo.config import read_config_file

    return read_config_file(config_file).get("model")


def _summary_rows(summary: dict) -> dict:
    keys = [
        "step",
        "reward",
        "accuracy",
        "format_rate",
        "completion_length/mean",
        "eval/accuracy",
        "eval/format_rate",
        "eval/equation_rate",
        "eval/completion_length",
        "time/step",
        "tokens_per_s",
        "peak_memory_gb",
    ]
    return {k: summary[k] for k in keys if k in summary}


@cli.command("eval")
@click.option("--model", required=True, help="Hub id or local folder of the base model.")
@click.option("--adapter-path", type=click.Path(), help="Adapter folder (e.g. a run dir) to apply.")
@click.option("--dataset", default="generate", show_default=True, help="Hub id, local file, or 'generate'.")
@click.option("--num-samples", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True, help="Shuffle / generator seed.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--pass-k", type=click.IntRange(min=1), default=1, show_default=True, help="Also report pass@k.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--enable-thinking/--no-enable-thinking", default=True, show_default=True)
@click.option("--prefill", default="", help="Text the assistant turn starts with.")
@click.option("--output", type=click.Path(dir_okay=False), help="Write the results (and samples) as JSON here.")
@click.option("--trust-remote-code", is_flag=True, help=_help("trust_remote_code"))
@click.option("--quiet", is_flag=True)
def eval_command(
    model,
    adapter_path,
    dataset,
    num_samples,
    seed,
    max_tokens,
    batch_size,
    pass_k,
    temperature,
    enable_thinking,
    prefill,
    output,
    trust_remote_code,
    quiet,
):
    """Greedy accuracy (pass@1), format rate and length on Countdown tasks."""
    from mlx_grpo.countdown.data import load_tasks
    from mlx_grpo.evaluate import evaluate
    from mlx_grpo.model import load_model
    from mlx_grpo.progress import format_table

    if output and Path(output).exists():
        raise UserError(f"{output} already exists; choose another --output")
    tasks = load_tasks(dataset, seed=seed, num_samples=num_samples)
    loaded, tokenizer = load_model(model, adapter_path=adapter_path, trust_remote_code=trust_remote_code)
    samples: list = []
    result = evaluate(
        loaded,
        tokenizer,
        tasks,
        max_tokens=max_tokens,
        batch_size=batch_size,
        pass_k=pass_k,
        temperature=temperature,
        enable_thinking=enable_thinking,
        prefill=prefill,
        seed=seed,
        progress=not quiet,
        samples=samples,
    )
    click.echo(format_table(result, title=f"eval: {model}" + (f" + {adapter_path}" if adapter_path else "")))
    if output:
        record = {
            "model": model,
            "adapter_path": adapter_path,
            "dataset": dataset,
            "seed": seed,
            **result,
            "samples": samples,
        }
        Path(output).write_text(json.dumps(record, indent=2) + "\n")
