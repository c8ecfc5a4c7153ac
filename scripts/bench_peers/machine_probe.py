"""What MLX gets out of this machine: device, BLAS, memory bandwidth and fp32 matmul rate.

These set the decode floor printed by bench.py: a decode step must read every weight once
(bandwidth) and do ~2 FLOPs per weight per row (matmul rate).
options: {"matmul_n": [1024, 2048], "copy_mib": 512}.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from common import load_spec, time_runs, write_result

from mlx_grpo.blas import blas_info


def copy_gb_s(nbytes: int) -> dict[str, float]:
    """Copy bandwidth (bytes read + bytes written per second) of a large fp32 array, two ways.

    `numpy`: a plain memcpy into a preallocated buffer, what the memory system can stream;
    `mlx`: an elementwise MLX op (a new output each time), what MLX's CPU kernels reach.
    """
    src = np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    a = mx.array(src)
    mx.eval(a)
    rates = {
        "numpy": min(time_runs(lambda: np.copyto(dst, src), warmup=1, repeats=5)),
        "mlx": min(time_runs(lambda: mx.eval(a + 1.0), warmup=1, repeats=5)),
    }
    return {name: 2 * nbytes / seconds / 1e9 for name, seconds in rates.items()}


def matmul_gflops(n: int) -> float:
    """Best fp32 rate of an [n, n] @ [n, n] matmul."""
    a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
    mx.eval(a, b)
    seconds = min(time_runs(lambda: mx.eval(a @ b), warmup=1, repeats=3))
    return 2 * n**3 / seconds / 1e9


def main() -> None:
    spec, out = load_spec()
    options = spec["options"]
    write_result(
        out,
        {
            "status": "ok",
            "mlx": mx.__version__,
            "device": str(mx.default_device()),
            "blas": blas_info(),
            "copy_gb_s": copy_gb_s(options["copy_mib"] * 2**20),
            "matmul_gflops": {str(n): matmul_gflops(n) for n in options["matmul_n"]},
        },
    )


if __name__ == "__main__":
    main()
