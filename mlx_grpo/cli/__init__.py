"""The `mlx-grpo` command line: one click group; each sub-module adds its own commands.

The process starts in mlx_grpo.launch; each command imports what is heavy (mlx, matplotlib,
datasets) in its own body, so that `mlx-grpo --help` starts at once. Every UserError (and any OSError about a path the user named) becomes one line on stderr and exit
code 2; a traceback is reserved for bugs.
"""

from __future__ import annotations

import sys

import click

from mlx_grpo import __version__
from mlx_grpo.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mlx-grpo")
def cli():
    """GRPO fine-tuning of small language models with LoRA on MLX (Countdown by default)."""


def _register() -> None:
    # Imported here so that each module can import `cli` above without a cycle.
    from mlx_grpo.cli import (  # noqa: F401
        data,
        demo,  # noqa: F401
        hub,
        report,
        train,
    )


# `mlx-grpo` with no command: click shows the help text through an exception (click >= 8.2).
_HELP_ERRORS = tuple(getattr(click.exceptions, n) for n in ("NoArgsIsHelpError",) if hasattr(click.exceptions, n))


def _one_line(error: click.ClickException) -> str:
    """Click's message (a bad flag value, an unknown option...) folded to one line, with the help hint."""
    message = " ".join(error.format_message().split())
    ctx = getattr(error, "ctx", None)
    return f"{message} (see '{ctx.command_path} --help')" if ctx is not None else message


def main(argv=None) -> None:
    try:
        _register()
        code = cli.main(args=argv, prog_name="mlx-grpo", standalone_mode=False)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):  # Ctrl-C before training starts: nothing written
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        if isinstance(e, _HELP_ERRORS):
            e.show()  # `mlx-grpo` alone: the help text, as click prints it
        else:
            click.echo(f"error: {_one_line(e)}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    # Without standalone mode click returns ctx.exit(N)'s code instead of exiting with it.
    if isinstance(code, int):
        sys.exit(code)
