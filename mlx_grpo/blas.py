"""The OpenBLAS fast path for MLX on a Linux CPU.

The Linux `mlx-cpu` wheel links a bundled reference BLAS, which is ~35x slower than OpenBLAS for
fp32 matmul. Preloading the system's OpenBLAS (`LD_PRELOAD`) makes MLX's BLAS calls resolve to it:
only speed changes, never results beyond fp32 rounding. The preload must be in place before the
process starts, so the CLI re-executes itself once with it; `MLX_GRPO_NO_OPENBLAS=1` opts out.

Two processes that share two cores (the demo's training and its scoring process) each take one
thread (`use_one_thread`): a second OpenBLAS thread spin-waits for work between the small matmuls of
the bundled model, at ~4x the system time, on the core the other process computes on.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

OPENBLAS_PATH = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"  # Debian libopenblas0-pthread
OPT_OUT_VAR = "MLX_GRPO_NO_OPENBLAS"
GUARD_VAR = "MLX_GRPO_OPENBLAS_REEXEC"  # set in the re-executed process: never re-execute twice
_CUDA_DISTRIBUTIONS = ("mlx-cuda", "mlx-cuda-12", "mlx-cuda-13")


def _installed(distribution: str) -> bool:
    from importlib import metadata  # ~30 ms: only the first process decides, the re-executed one need not

    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def mlx_defaults_to_cpu() -> bool:
    """True when the installed MLX build computes on the CPU by default (the Linux `mlx-cpu` wheel).

    Read from the installed distributions, so that deciding costs no `import mlx.core`.
    """
    return _installed("mlx-cpu") and not any(_installed(name) for name in _CUDA_DISTRIBUTIONS)


def openblas_reexec_env(environ: dict | None = None, library: str = OPENBLAS_PATH) -> dict | None:
    """The environment to re-execute with, or None when the fast path does not apply.

    It applies on Linux, with MLX on the CPU, when `library` exists, is not already preloaded, the
    user has not set `MLX_GRPO_NO_OPENBLAS=1`, and this process is not itself the re-executed one.
    """
    environ = dict(os.environ if environ is None else environ)
    preload = environ.get("LD_PRELOAD", "")
    if (
        not sys.platform.startswith("linux")
        or environ.get(OPT_OUT_VAR) == "1"
        or environ.get(GUARD_VAR)
        or "libopenblas" in preload
        or not Path(library).is_file()
        or not mlx_defaults_to_cpu()
    ):
        return None
    environ["LD_PRELOAD"] = f"{library} {preload}".strip()
    environ[GUARD_VAR] = "1"
    return environ


def maybe_reexec_with_openblas(argv: Sequence[str] | None = None) -> None:
    """Re-execute this interpreter once with OpenBLAS preloaded, when that applies; else return.

    Call it first thing in a program's entry point, before any work is done. A Ctrl-C during the
    re-exec is held (SIGINT blocked; the mask and a pending signal survive exec) and raised as
    KeyboardInterrupt when the new process calls this again, rather than killing the new
    interpreter before it can handle it.

    Args:
        argv: the full interpreter command line to run again; default `sys.orig_argv`, which
            covers `mlx-grpo ...`, `python -m mlx_grpo ...` and `python script.py ...` alike.
    """
    if os.environ.get(GUARD_VAR):  # the re-executed process: take the Ctrl-C held across exec, if any
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        return
    env = openblas_reexec_env()
    if env is None:
        return
    argv = list(sys.orig_argv if argv is None else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], env)
    finally:  # exec failed (it does not return otherwise)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def blas_info() -> str:
    """Which BLAS MLX's matmuls run on in this process, in words."""
    if sys.platform == "darwin":
        return "Accelerate"
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    for line in maps.splitlines():
        if "libopenblas" in line:
            return f"OpenBLAS ({line.split()[-1]})"
    return "reference BLAS (mlx wheel)"


def use_one_thread(environ: dict | None = None) -> bool:
    """One OpenBLAS thread in this process from now on, unless `OPENBLAS_NUM_THREADS` is set.
    Returns whether it did (False too where OpenBLAS is not loaded: the mlx wheel's BLAS, Accelerate)."""
    if "OPENBLAS_NUM_THREADS" in (os.environ if environ is None else environ):
        return False
    try:
        set_threads = ctypes.CDLL(None).openblas_set_num_threads
    except (OSError, AttributeError):
        return False
    set_threads(1)
    return True
