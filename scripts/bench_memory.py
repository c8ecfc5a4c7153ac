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

`--plan ROWSxPOSITIONS@BUDGET` (BUDGET as `--max-memory` takes it: auto, 5GB, ...) measures a whole
step as `mlx-grpo train` runs it under that budget: `memory.plan_memory` chooses checkpointing, the
micro-batches and the rows per sampling call; then one sampling call is decoded (random weights, no
stop token: a prompt of POSITIONS - `--decode` tokens and `--decode` sampled tokens, so its keys/values
buffer is as long as the step's longest row) and the update runs on `--micro-batches` of the step's
micro-batches (each is evaluated before the next, so they share one peak; the step's update time is
extrapolated from them, and said so).

    python scripts/bench_memory.py --plan 16x214@5GB --beta 0.04 --plan 32x1326@auto --beta 0
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


def _model(layers: int):
    from mlx_grpo.model import add_lora
    from mlx_grpo.modelgen import init_qwen3, qwen3_config

    model = init_qwen3(qwen3_config(**QWEN3_06B, num_hidden_layers=layers, vocab_size=VOCAB))
    add_lora(model, rank=8, scale=20.0)
    return model


def _timed_update(model, config, rows: int, completion: int, prompt: int) -> dict:
    """Peak and time of one `update.update` on `rows` synthetic rows of `prompt` + `completion` tokens."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np

    from mlx_grpo.layout import PromptBatch
    from mlx_grpo.memory import peak_memory
    from mlx_grpo.rollout import Rollout
    from mlx_grpo.update import make_loss, update

    group = min(config.num_generations, rows)  # a measured share of the micro-batches may be part of a group
    rng = np.random.default_rng(0)
    prompts = PromptBatch.build([rng.integers(5, VOCAB, prompt).tolist() for _ in range(rows // group)])
    tokens = mx.array(rng.integers(5, VOCAB, (rows, completion)), dtype=mx.int32)  # [R, T]
    ones = mx.ones((rows, completion))
    forced = mx.zeros((rows, completion), mx.bool_)
    lengths, truncated = mx.full((rows,), completion, mx.int32), mx.zeros((rows,), mx.bool_)
    rollout = Rollout(tokens, ones, -12.0 * ones, lengths, truncated, prompts, group, forced)
    advantages = mx.array(rng.normal(size=rows).astype(np.float32))  # [R]
    optimizer = optim.AdamW(learning_rate=1e-5)
    optimizer.init(model.trainable_parameters())
    loss_and_grad = nn.value_and_grad(model, make_loss(config))
    mx.eval(rollout.tokens, advantages)
    mx.reset_peak_memory()
    start = time.perf_counter()
    update(model, optimizer, loss_and_grad, rollout, advantages, config)
    return {"update_s": time.perf_counter() - start, **peak_memory()}


def measure(rows: int, positions: int, k: int, checkpoint: bool, layers: int, prompt: int, beta: float) -> dict:
    """One update on a synthetic rollout; run in a process of its own."""
    from mlx_grpo.config import TrainConfig
    from mlx_grpo.memory import update_bytes, weight_bytes

    model = _model(layers)
    completion, group = positions - prompt, (4 if rows % 4 == 0 else 2)
    config = TrainConfig(
        batch_size=rows // group,
        num_generations=group,
        max_completion_length=completion,
        beta=beta,
        grad_accumulation=k,
        gradient_checkpointing=checkpoint,
        max_memory="none",
    )
    result = _timed_update(model, config, rows, completion, prompt)
    estimate = update_bytes(model, rows // k, positions, checkpoint) / 2**30
    return {"weights_gb": weight_bytes(model) / 2**30, **result, "estimate_gb": estimate}


def measure_plan(rows: int, positions: int, budget: str, layers: int, prompt: int, beta: float, args) -> dict:
    """A step as `mlx-grpo train` runs it under `budget`: one sampling call, then `args.micro_batches`
    of the update's micro-batches; run in a process of its own."""
    import mlx.core as mx

    from mlx_grpo.config import TrainConfig
    from mlx_grpo.memory import (
        budget_bytes,
        peak_memory,
        plan_memory,
        rollout_bytes,
        update_bytes,
        weight_bytes,
    )
    from mlx_grpo.rollout import generate
    from mlx_grpo.sampling import SamplingOptions

    model = _model(layers)
    group, completion = args.group, positions - prompt
    config = TrainConfig(
        batch_size=rows // group,
        num_generations=group,
        max_completion_length=completion,
        max_thinking_tokens=0,
        beta=beta,
        max_memory=budget,
    )
    plan = plan_memory(model, config, positions)
    config, k = config.replace(gradient_checkpointing=plan.checkpoint), plan.micro_batches
    call_rows = min(rows, (plan.groups_per_call or rows // group) * group)
    ids = [5 + i % 1000 for i in range(positions - args.decode)]
    mx.reset_peak_memory()
    start = time.perf_counter()
    generate(model, [ids], group_size=call_rows, sampling=SamplingOptions(max_tokens=args.decode), eos_ids=[], seed=0)
    decode = {"decode_s": time.perf_counter() - start, "decode_peak_gb": peak_memory()["peak_memory_gb"]}
    measured = min(k, args.micro_batches)
    update = _timed_update(model, config.replace(grad_accumulation=measured), rows // k * measured, completion, prompt)
    return {
        "weights_gb": weight_bytes(model) / 2**30,
        "budget_gb": budget_bytes(model, budget) / 2**30,
        "checkpoint": plan.checkpoint,
        "k": k,
        "call_rows": call_rows,
        "kv_gb": rollout_bytes(model, call_rows, positions) / 2**30,
        **decode,
        **update,
        "measured_micro_batches": measured,
        "step_update_s": update["update_s"] * k / measured,
        "estimate_gb": update_bytes(model, rows // k, positions, plan.checkpoint) / 2**30,
    }


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


def _run_one(flag: str, spec: str, args) -> dict:
    """Run one measurement in a fresh process (each peak its own); its JSON result or {"error": ...}."""
    cmd = [sys.executable, __file__, flag, spec, "--layers", str(args.layers), "--prompt", str(args.prompt)]
    cmd += ["--beta", str(args.beta), "--group", str(args.group), "--decode", str(args.decode)]
    cmd += ["--micro-batches", str(args.micro_batches)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout:.0f} s"}
    except subprocess.CalledProcessError as e:
        return {"error": f"failed: {(e.stderr.strip().splitlines() or ['?'])[-1][:80]}"}


def parse_plan(text: str) -> tuple[int, int, str]:
    shape, _, budget = text.partition("@")
    rows, _, positions = shape.partition("x")
    return int(rows), int(positions), budget or "auto"


def _update_table(args) -> None:
    print(
        "| rows | positions | k | checkpointing | peak MLX GiB | above weights | peak RSS GiB | estimate GiB | update s | load |"
    )
    print("|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|")
    for case in args.case:
        rows, positions, k, checkpoint = parse_case(case)
        load = os.getloadavg()[0]
        r = _run_one("--one", case, args)
        if "error" in r:
            cells = [r["error"]] + [""] * 4
        else:
            above = r["peak_memory_gb"] - r["weights_gb"]
            cells = [f"{r['peak_memory_gb']:.2f}", f"{above:.2f}", f"{r['peak_rss_gb']:.2f}"]
            cells += [f"{r['estimate_gb']:.2f}", f"{r['update_s']:.1f}"]
        row = [str(rows), str(positions), str(k), "yes" if checkpoint else "no", *cells, f"{load:.1f}"]
        print("| " + " | ".join(row) + " |", flush=True)


def _plan_table(args) -> None:
    print(
        "| rows x positions | budget GiB | plan: checkpointing, k, rows per call | decode: rows, peak GiB (KV GiB), s "
        "| update: micro-batches run, peak GiB, RSS GiB, s | step's update s | estimate GiB | load |"
    )
    print("|---|---:|---|---|---|---:|---:|---:|")
    for spec in args.plan:
        rows, positions, budget = parse_plan(spec)
        load = os.getloadavg()[0]
        r = _run_one("--one-plan", spec, args)
        if "error" in r:
            print(f"| {rows} x {positions} | {budget} | {r['error']} | | | | | {load:.1f} |", flush=True)
            continue
        cells = [
            f"{rows} x {positions}",
            f"{r['budget_gb']:.2f} ({budget})",
            f"{'yes' if r['checkpoint'] else 'no'}, {r['k']}, {r['call_rows']}",
            f"{r['call_rows']}, {r['decode_peak_gb']:.2f} ({r['kv_gb']:.2f}), {r['decode_s']:.1f}",
            f"{r['measured_micro_batches']} of {r['k']}, {r['peak_memory_gb']:.2f}, {r['peak_rss_gb']:.2f}, "
            f"{r['update_s']:.1f}",
            f"{r['step_update_s']:.0f}" + (" (extrapolated)" if r["measured_micro_batches"] < r["k"] else ""),
            f"{r['estimate_gb'] + r['weights_gb']:.2f}",
            f"{load:.1f}",
        ]
        print("| " + " | ".join(cells) + " |", flush=True)


def fits_table(group: int, rows: int, prompt: int) -> None:
    """What the plan does for `rows` rows under 8/16/32 GB, from `mlx_grpo.memory`'s estimate (its per-
    position costs are the measured ones above) at the Qwen3-0.6B shape in fp32 and bf16 (shapes only)."""
    import mlx.core as mx
    from mlx_lm.models import qwen3

    from mlx_grpo.config import TrainConfig
    from mlx_grpo.errors import UserError
    from mlx_grpo.memory import plan_memory, weight_bytes
    from mlx_grpo.modelgen import qwen3_config

    lengths = (512, 1176, 2048)
    print("| budget | dtype (weights) | " + " | ".join(f"{n} tokens ({n + prompt} positions)" for n in lengths) + " |")
    print("|---|---|" + "---|" * len(lengths))
    for dtype, name in ((mx.float32, "fp32"), (mx.bfloat16, "bf16")):
        model = qwen3.Model(
            qwen3.ModelArgs.from_dict(qwen3_config(**QWEN3_06B, num_hidden_layers=28, vocab_size=VOCAB))
        )
        model.set_dtype(dtype)  # lazy parameters: nothing is allocated
        for gb in (8, 16, 32):
            cells = []
            for n in lengths:
                config = TrainConfig(batch_size=rows // group, num_generations=group, max_completion_length=n)
                config = config.replace(max_memory=f"{gb}GB")
                try:
                    plan = plan_memory(model, config, n + prompt)
                    k = plan.micro_batches
                    call = min(rows, plan.groups_per_call * group)
                    cells.append(
                        f"{call} rows per call, {rows // k} per micro-batch{', ckpt' if plan.checkpoint else ''}"
                    )
                except UserError:
                    cells.append("does not fit")
            print(f"| {gb} GB | {name} ({weight_bytes(model) / 2**30:.2f} GiB) | " + " | ".join(cells) + " |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", default=[], help="ROWSxPOSITIONS:K[c], repeatable")
    parser.add_argument("--plan", action="append", default=[], help="ROWSxPOSITIONS@BUDGET, repeatable")
    parser.add_argument("--layers", type=int, default=28, help="transformer blocks (28 = Qwen3-0.6B)")
    parser.add_argument("--prompt", type=int, default=150, help="prompt tokens of each row")
    parser.add_argument("--beta", type=float, default=0.04, help="KL weight (> 0 adds the reference pass)")
    parser.add_argument("--group", type=int, default=8, help="--plan: completions per prompt")
    parser.add_argument("--decode", type=int, default=32, help="--plan: tokens sampled in the measured call")
    parser.add_argument("--micro-batches", type=int, default=2, help="--plan: micro-batches of the update run")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    parser.add_argument("--fits", action="store_true", help="print what the plan does under 8/16/32 GB (estimate)")
    parser.add_argument("--rows", type=int, default=32, help="--fits: rows per step")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--one-plan", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(*parse_case(args.one), args.layers, args.prompt, args.beta)))
        return
    if args.one_plan:
        print(json.dumps(measure_plan(*parse_plan(args.one_plan), args.layers, args.prompt, args.beta, args)))
        return
    if args.fits:
        fits_table(args.group, args.rows, args.prompt)
        return
    print(f"Machine: {machine()}")
    print(f"Model: Qwen3-0.6B widths, {args.layers} blocks, vocab {VOCAB}, random fp32 weights, LoRA rank 8 on all")
    print(f"Rollout: synthetic, {args.prompt}-token prompts, every row forced to full length; beta {args.beta}")
    print()
    if args.case:
        _update_table(args)
    if args.plan:
        print(f"\nPlans: groups of {args.group}; the decode samples {args.decode} tokens after a long prompt\n")
        _plan_table(args)


if __name__ == "__main__":
    main()
