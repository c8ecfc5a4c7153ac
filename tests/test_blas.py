"""The OpenBLAS re-exec: when it applies, that it happens once, the opt-out, and unchanged results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_grpo import blas

fast_path_possible = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and Path(blas.OPENBLAS_PATH).is_file() and blas.mlx_defaults_to_cpu()),
    reason="needs Linux, the mlx-cpu wheel and Debian's OpenBLAS",
)

# Re-execs (when it applies), then reports what this process ended up with and a small matmul.
_PROBE = """
import json, os
from mlx_grpo.blas import maybe_reexec_with_openblas, blas_info
maybe_reexec_with_openblas()
import mlx.core as mx
a = mx.random.normal((48, 96), key=mx.random.key(1))
b = mx.random.normal((96, 40), key=mx.random.key(2))
print(json.dumps({"preload": os.environ.get("LD_PRELOAD", ""), "guard": os.environ.get("MLX_GRPO_OPENBLAS_REEXEC"),
                  "blas": blas_info(), "matmul": (a @ b).tolist()}))
"""


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", blas.GUARD_VAR, blas.OPT_OUT_VAR)}
    return {**env, **extra}


def _probe(**extra) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=_clean_env(**extra), capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "extra",
    [
        {blas.OPT_OUT_VAR: "1"},
        {blas.GUARD_VAR: "1"},
        {"LD_PRELOAD": "/somewhere/libopenblas.so.0"},
    ],
)
def test_no_reexec_when_opted_out_guarded_or_already_preloaded(extra):
    assert blas.openblas_reexec_env(_clean_env(**extra)) is None


def test_no_reexec_without_the_library(tmp_path):
    assert blas.openblas_reexec_env(_clean_env(), library=str(tmp_path / "missing.so")) is None


@fast_path_possible
def test_reexec_env_prepends_openblas_and_sets_guard():
    env = blas.openblas_reexec_env(_clean_env(LD_PRELOAD="/other/libfoo.so"))
    assert env["LD_PRELOAD"] == f"{blas.OPENBLAS_PATH} /other/libfoo.so"
    assert env[blas.GUARD_VAR] == "1"
    assert blas.openblas_reexec_env(env) is None  # the re-executed process does not go again


@fast_path_possible
@pytest.mark.slow  # a real subprocess
def test_reexec_loads_openblas_and_opt_out_keeps_reference_blas_with_same_results():
    fast = _probe()
    assert fast["guard"] == "1"
    assert fast["preload"] == blas.OPENBLAS_PATH
    assert fast["blas"].startswith("OpenBLAS")

    reference = _probe(**{blas.OPT_OUT_VAR: "1"})
    assert reference["guard"] is None and reference["preload"] == ""
    assert reference["blas"] == "reference BLAS (mlx wheel)"

    # Never change results, only speed: equal up to fp32 summation order.
    import numpy as np

    np.testing.assert_allclose(np.array(fast["matmul"]), np.array(reference["matmul"]), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_blas_info_reports_this_process():
    preloaded = "libopenblas" in os.environ.get("LD_PRELOAD", "")
    assert blas.blas_info().startswith("OpenBLAS") == preloaded


# Asks for one thread and reports OpenBLAS's thread count before and after.
_THREADS_PROBE = """
import ctypes, json
from mlx_grpo.blas import use_one_thread
import mlx.core as mx
lib = ctypes.CDLL(None)
before = lib.openblas_get_num_threads()
changed = use_one_thread()
print(json.dumps({"before": before, "changed": changed, "after": lib.openblas_get_num_threads()}))
"""


def _threads_probe(**extra) -> dict:
    env = {k: v for k, v in _clean_env().items() if k != "OPENBLAS_NUM_THREADS"}
    env.update(LD_PRELOAD=blas.OPENBLAS_PATH, **extra)
    out = subprocess.run([sys.executable, "-c", _THREADS_PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@fast_path_possible
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS starts one thread per core")
def test_one_thread_unless_the_user_chose():
    default = _threads_probe()
    assert default["before"] >= 2 and default["changed"] and default["after"] == 1
    chosen = _threads_probe(OPENBLAS_NUM_THREADS="2")
    assert not chosen["changed"] and chosen["before"] == chosen["after"] == 2


def test_one_thread_leaves_a_user_choice_alone():
    assert not blas.use_one_thread(environ={"OPENBLAS_NUM_THREADS": "2"})
