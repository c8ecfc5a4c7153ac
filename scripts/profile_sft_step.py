"""Where one supervised step of the warm-start recipe spends its time on this machine (a table).

    python scripts/profile_sft_step.py            # the bundled model, an `execute` batch (~1 min)

One batch of the recipe's execute stages (`aha_recipe.recipe_stages`: bs 32, sum tries, results
weighted 5), then each part timed alone at that batch's shape, the median of `--repeats` after one
warm-up: the whole step (AdamW, as `build_tiny_model.supervised_warm_start`), the forward and the
loss, one layer's attention and MLP, and `exp` against an add over one layer's attention scores.
The last row is an exp written in MLX ops (Cody-Waite reduction and a degree-7 polynomial,
compiled), to size what this mlx-cpu wheel's one-float-at-a-time exp costs (scripts/README.md
section 8).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

LOG2E, LN2_HI, LN2_LO = 1.4426950408889634, 0.693359375, -2.12194440e-4
EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def poly_exp(x):
    """exp(x) from adds and multiplies: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by its polynomial, 2^n
    written into the float's exponent bits."""
    import mlx.core as mx

    x = mx.clip(x, -87.0, 88.0)
    n = mx.floor(x * LOG2E + 0.5)
    r = x - n * LN2_HI - n * LN2_LO
    p = EXP_POLY[0]
    for c in EXP_POLY[1:]:
        p = p * r + c
    p = p * r * r + r + 1.0
    return p * mx.view(mx.left_shift(n.astype(mx.int32) + 127, 23), mx.float32)


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` (which evaluates what it computes) after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder [default: the bundled model]")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import aha_recipe
    import bench_threads
    import build_tiny_model
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import mlx_lm
    import numpy as np
    import supervised

    from mlx_grpo.blas import blas_info
    from mlx_grpo.demo import BUNDLED_MODEL, EVAL_SEED, held_out_tasks

    model, tokenizer = mlx_lm.load(args.model or str(BUNDLED_MODEL))
    mix, stage_args, _ = aha_recipe.recipe_stages()["execute"]
    result_weight = float(dict(zip(stage_args[::2], stage_args[1::2]))["--result-weight"])
    exclude = set(held_out_tasks(EVAL_SEED))
    pairs, _ = next(build_tiny_model.training_batches(32, 1000, exclude, mix, False, 0.0))
    stop_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids, mask = build_tiny_model.make_batch(tokenizer, pairs, stop_id, pad_id, result_weight)
    rows, width = ids.shape
    padding = 1 - float(np.array(ids != pad_id).mean())

    optimizer = optim.AdamW(learning_rate=1e-4, weight_decay=0.0)
    step_on = supervised.sft_step(model, optimizer)

    layer = model.model.layers[0]
    hidden = layer.input_layernorm(model.model.embed_tokens(ids[:, :-1]))
    logits = model(ids[:, :-1])
    heads, head_dim = model.args.num_attention_heads, model.args.head_dim
    scores = mx.random.normal((rows, heads, width - 1, width - 1))
    mx.eval(hidden, logits, scores)
    compiled_exp = mx.compile(poly_exp)
    parts = [
        ("training step (forward, backward, AdamW)", lambda: step_on(ids, mask)),
        ("forward and loss", lambda: mx.eval(supervised.completion_loss(model, ids, mask))),
        ("one layer's attention", lambda: mx.eval(layer.self_attn(hidden, "causal"))),
        ("one layer's MLP", lambda: mx.eval(layer.mlp(hidden))),
        ("the loss's cross-entropy", lambda: mx.eval(nn.losses.cross_entropy(logits, ids[:, 1:]).sum())),
        ("exp over one layer's scores", lambda: mx.eval(mx.exp(scores))),
        ("add over the same", lambda: mx.eval(scores + 1.0)),
        ("exp in MLX ops, compiled", lambda: mx.eval(compiled_exp(scores))),
    ]
    error = np.abs(np.array(compiled_exp(scores)) / np.array(mx.exp(scores)) - 1).max()
    print(
        f"{bench_threads.cpu_model()}, {os.cpu_count()} cores; MLX {mx.__version__} on {mx.default_device()}; {blas_info()}"
    )
    print(f"batch [{rows} x {width}], {padding:.0%} padding; {heads} heads of {head_dim}")
    print(f"exp in MLX ops: max relative error {error:.1e} against mx.exp")
    print("| part | ms |\n|---|---|")
    for name, fn in parts:
        print(f"| {name} | {1000 * timed(fn, args.repeats):.1f} |")


if __name__ == "__main__":
    from mlx_grpo.blas import maybe_reexec_with_openblas

    maybe_reexec_with_openblas()
    main()
