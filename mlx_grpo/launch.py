"""The `mlx-grpo` process from its first line: the OpenBLAS re-exec, then the CLI; Ctrl-C exits 130.

Python raises KeyboardInterrupt wherever Ctrl-C lands, start-up included (importing click, mlx and
transformers takes a second or more on a slow machine), and an uncaught one prints a traceback. This
module imports nothing itself, so from the interpreter's own start on everything runs inside `entry`'s
try; across the re-exec the interrupt is held back until the new process is inside it too (mlx_grpo.blas).
"""

from __future__ import annotations

import signal
import sys


def entry() -> None:
    """The console script and `python -m mlx_grpo`: OpenBLAS first (Linux CPU only), then the commands."""
    try:
        from mlx_grpo.blas import maybe_reexec_with_openblas

        maybe_reexec_with_openblas()
        from mlx_grpo.cli import main

        main()
    except (KeyboardInterrupt, Exception) as error:  # not SystemExit: main's own exits pass
        if not _from_ctrl_c(error):
            raise
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while exiting changes nothing
        sys.stderr.write("aborted\n")
        sys.exit(130)
    finally:
        # The command is over; a Ctrl-C now could only interrupt the interpreter's own teardown.
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _from_ctrl_c(error: BaseException | None) -> bool:
    """A KeyboardInterrupt, or an error raised while one was handled: an extension module whose
    initialisation Ctrl-C cut short (mlx.core) reports it as an ImportError from the interrupt."""
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return True
        error = error.__cause__ or error.__context__
    return False
