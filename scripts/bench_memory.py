"""Peak memory and time of one GRPO update at the Qwen3-0.6B shape, on a synthetic rollout.

The CPUs this runs on decode the 0.6B shape at ~13-30 tokens/s, so the rollout is not sampled: each
measurement builds a random-weight model of the Qwen3-0.6B widths (fp32, `--layers` blocks, the real
151,936 vocabulary), a Rollout of random tokens of forced length (every row `--completion` tokens
after a `--prompt`-token prompt) and times `update.update` on it, in a fresh process per row of the
table so that each peak is its own. Prints a markdown table (rows, positions, k, checkpointing, peak
MLX GiB above and with the weights, peak RSS GiB, update s, the `memory.update_bytes` estimate) with
the machine, backend and BLAS.

    LD_PRELOAD=.../libopenblas.so.0 python scripts/bench_memory.py --case 16x214:1 --case 16x214:1c
    (ROWSxPOSITIONS:K, a trailing c for gradient checkpointing; POSITIONS = prompt + completion)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

QWEN3_06B = dict(hidden_size=1024, intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8, head_dim=128)
VOCAB = 151_936


def measure(rows: int, positions: int, k: int, checkpoint: bool, layers: int, prompt: int, beta: float) -> dict:
    """One update on a synthetic rollout; run in a process of its own."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np

    from mlx_grpo.config import TrainConfig
    from mlx_grpo.layout import PromptBatch
    from mlx_grpo.memory import update_bytes, weight_bytes
    from mlx_grpo.model import add_lora
    from mlx_grpo.modelgen import init_qwen3, qwen3_config
    from mlx_grpo.rollout import Rollout
    from mlx_grpo.update import make_loss, update

    model = init_qwen3(qwen3_config(**QWEN3_06B, num_hidden_layers=layers, vocab_size=VOCAB))
    add_lora(model, rank=8, scale=20.0)
    completion, group = positions - prompt, (4 if rows % 4 == 0 else 2)
    config = TrainConfig(
        batch_size=rows // group,
        num_generations=group,
        max_completion_length=completion,
        beta=beta,
        grad_accumulation=k,
        gradient_checkpointing=checkpoint,
    )
    rng = np.random.default_rng(0)
    prompts = PromptBatch.build([rng.integers(5, VOCAB, prompt).tolist() for _ in range(rows // group)])
    tokens = mx.array(rng.integers(5, VOCAB, (rows, completion)), dtype=mx.int32)  # [R, T]
    ones = mx.ones((rows, completion))
    rollout = Rollout(
        tokens, ones, -12.0 * ones, mx.full((rows,), completion, mx.int32), mx.zeros((rows,), mx.bool_), prompts, group
    )
    advantages = mx.array(rng.normal(size=rows).astype(np.float32))  # [R]
    optimizer = optim.AdamW(learning_rate=1e-5)
    optimizer.init(model.trainable_parameters())
    loss_and_grad = nn.value_and_grad(model, make_loss(config))
    mx.eval(rollout.tokens, advantages)
    mx.reset_peak_memory()
    start = time.perf_counter()
    update(model, optimizer, loss_and_grad, rollout, advantages, config)
    seconds = time.perf_counter() - start
    from mlx_grpo.memory import peak_memory

    peak = peak_memory()
    weights = weight_bytes(model) / 2**30
    estimate = update_bytes(model, rows // k, positions, checkpoint) / 2**30
    return {"weights_gb": weights, **peak, "update_s": seconds, "estimate_gb": estimate}


def parse_case(text: str) -> tuple[int, int, int, bool]:
    shape, _, k = text.partition(":")
    rows, _, positions = shape.partition("x")
    checkpoint = k.endswith("c")
    return int(rows), int(positions), int(k.rstrip("c") or 1), checkpoint


def machine() -> str:
    import mlx.core as mx

    blas = os.environ.get("LD_PRELOAD", "") or "MLX's bundled BLAS"
    cpu = (
        next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "?")
        if (sys.platform == "linux")
        else platform.processor()
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.machine()} {cpu}, {os.cpu_count()} cores, MLX {mx.__version__} on "
        f"{'Metal' if mx.metal.is_available() else 'CPU'} (float32), BLAS: {blas}; load average {load:.1f} at start"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", default=[], help="ROWSxPOSITIONS:K[c], repeatable")
    parser.add_argument("--layers", type=int, default=28, help="transformer blocks (28 = Qwen3-0.6B)")
    parser.add_argument("--prompt", type=int, default=150, help="prompt tokens of each row")
    parser.add_argument("--beta", type=float, default=0.04, help="KL weight (> 0 adds the reference pass)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per case")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(*parse_case(args.one), args.layers, args.prompt, args.beta)))
        return
    print(f"Machine: {machine()}")
    print(f"Model: Qwen3-0.6B widths, {args.layers} blocks, vocab {VOCAB}, random fp32 weights, LoRA rank 8 on all")
    print(
        f"Rollout: synthetic, {args.prompt}-token prompts, groups of 4, every row forced to full length; beta {args.beta}"
    )
    print()
    print(
        "| rows | positions | k | checkpointing | peak MLX GiB | above weights | peak RSS GiB | estimate GiB | update s | load |"
    )
    print("|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|")
    for case in args.case:
        rows, positions, k, checkpoint = parse_case(case)
        cmd = [sys.executable, __file__, "--one", case, "--layers", str(args.layers), "--prompt", str(args.prompt)]
        cmd += ["--beta", str(args.beta)]
        load = os.getloadavg()[0]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            cells = [
                f"{r['peak_memory_gb']:.2f}",
                f"{r['peak_memory_gb'] - r['weights_gb']:.2f}",
                f"{r['peak_rss_gb']:.2f}",
                f"{r['estimate_gb']:.2f}",
                f"{r['update_s']:.1f}",
            ]
        except subprocess.TimeoutExpired:
            cells = [f"timed out after {args.timeout:.0f} s"] + [""] * 4
        except subprocess.CalledProcessError as e:
            cells = [f"failed: {(e.stderr.strip().splitlines() or ['?'])[-1][:60]}"] + [""] * 4
        print(
            f"| {rows} | {positions} | {k} | {'yes' if checkpoint else 'no'} | "
            + " | ".join(cells)
            + f" | {load:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
