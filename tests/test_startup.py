"""`mlx-grpo` starts light and stops cleanly: help imports nothing heavy, Ctrl-C at any moment of
start-up (or later) exits 130 with one line and no traceback. Real processes, real SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlx_grpo.blas import GUARD_VAR, openblas_reexec_env

HEAVY = ("mlx", "mlx_lm", "numpy", "matplotlib", "datasets", "transformers", "pyarrow", "tqdm", "huggingface_hub")
CONSOLE_SCRIPT = Path(sys.executable).parent / "mlx-grpo"


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["fuse", "--help"], ["demo", "--help"]])
def test_help_imports_nothing_heavy(argv):
    probe = (
        "import json, sys\nfrom mlx_grpo.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # the process is gone (or this is no Linux)
        return b""


def _wait_until_started(proc: subprocess.Popen, reexec: bool) -> None:
    """Until the process runs mlx-grpo's own code: when it re-executes itself with OpenBLAS, until the
    new image's environment shows the guard (Ctrl-C is held from there); else past Python's own start."""
    if not reexec:
        time.sleep(0.3)
        return
    deadline = time.monotonic() + 30
    while f"{GUARD_VAR}=1".encode() not in _environ(proc.pid) and proc.poll() is None:
        assert time.monotonic() < deadline, "the process never re-executed itself"
        time.sleep(0.002)


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.02, 0.1, 0.3, 0.5, 0.8, 1.2, 2.0, 4.0])
def test_ctrl_c_during_start_up_exits_130_without_a_traceback(tiny_model_path, tmp_path, delay):
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", GUARD_VAR)}  # the real start-up
    reexec = openblas_reexec_env(env) is not None
    argv = [str(CONSOLE_SCRIPT), "train", "--model", str(tiny_model_path), "--dataset", "generate", "--quiet"]
    argv += ["--num-samples", "40", "--batch-size", "2", "--num-generations", "2", "--max-completion-length", "8"]
    argv += ["--max-steps", "200", "--eval-every", "0", "--output-dir", str(tmp_path / "run")]
    # A caught signal is reset to its default across exec, an ignored one stays ignored: a test run
    # from a background job (which ignores SIGINT) must still start mlx-grpo as a terminal would.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    finally:
        signal.signal(signal.SIGINT, previous)
    _wait_until_started(proc, reexec)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last == "aborted" or "checkpoint saved. Resume with" in last, err  # before or after training began
