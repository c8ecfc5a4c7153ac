"""mlx-lm's own generation on the benchmark's rows: `batch_generate`, or a sequential generate loop.

options: {"mode": "batch" | "sequential", "warmup_tokens": n}. Every row runs to max_tokens (the
stop tokens are cleared), sampling at the spec's temperature, the B prompts each repeated G times.
The sequential loop calls `stream_generate`, the loop inside `mlx_lm.generate`, to count tokens.
"""

from __future__ import annotations

from importlib.metadata import version

import mlx.core as mx
from common import load_spec, measure_rollout, write_result
from mlx_lm import batch_generate, load, stream_generate
from mlx_lm.sample_utils import make_sampler


def main() -> None:
    spec, out = load_spec()
    mode = spec["options"]["mode"]
    model, tokenizer = load(spec["model"])
    tokenizer.eos_token_ids = []  # no stop token: every row generates exactly max_tokens
    prompts = [tokenizer.apply_chat_template(m, add_generation_prompt=True) for m in spec["messages"]]
    rows = [p for p in prompts for _ in range(spec["group_size"])]
    sampler = make_sampler(temp=spec["temperature"])
    generated: dict[int, int] = {}  # max_tokens -> tokens generated over all rows (last run)

    def batch(max_tokens: int) -> None:
        response = batch_generate(model, tokenizer, rows, max_tokens=max_tokens, sampler=sampler, return_token_ids=True)
        generated[max_tokens] = sum(len(ids) for ids in response.token_ids)

    def sequential(max_tokens: int) -> None:
        count = 0
        for row in rows:
            *_, last = stream_generate(model, tokenizer, row, max_tokens=max_tokens, sampler=sampler)
            count += last.generation_tokens
        generated[max_tokens] = count

    run = {"batch": batch, "sequential": sequential}[mode]
    mx.random.seed(spec["seed"])
    T = spec["max_tokens"]
    result = measure_rollout(
        run,
        len(rows),
        T,
        warmup=spec["warmup"],
        repeats=spec["repeats"],
        warmup_tokens=spec["options"].get("warmup_tokens"),
    )
    write_result(
        out,
        {
            **result,
            "generated_tokens": generated[T],
            "prompt_tokens": sum(len(r) for r in rows),
            "peak_mx_gib": mx.get_peak_memory() / 2**30,
            "version": version("mlx-lm"),
        },
    )


if __name__ == "__main__":
    main()
