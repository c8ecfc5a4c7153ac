"""Rollout speed: `mlx_grpo.rollout.generate` vs mlx-lm's `batch_generate` on the same rows.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \
        python scripts/bench_rollout.py MODEL_DIR [--prompts 4 --group 4 --max-tokens 64 --repeats 5]

Every row is forced to full length (no stop tokens), sampling at temperature 1. Contenders run
interleaved, after one warm-up each, and the medians are reported: wall tokens/s including the prompt
prefill, and decode tokens/s (ours: from the difference with a 1-token run; mlx-lm: its own stats).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import mlx.core as mx
import mlx_lm
from mlx_lm.sample_utils import make_sampler

from mlx_grpo import rollout
from mlx_grpo.sampling import SamplingOptions

_TEXT = (
    "Given the numbers [44, 19, 35] and the target number 98, please provide a solution to reach the "
    "target number using the four basic arithmetic operations: addition, subtraction, multiplication, "
    "and division (+, -, *, /). You can use each number only once."
)


class _NoStopTokenizer:
    """What `batch_generate` reads from a tokenizer, with no stop tokens, so rows run to full length."""

    eos_token_ids: list[int] = []

    def decode(self, ids):
        return ""


def _prompts(tokenizer, n: int) -> list[list[int]]:
    """n chat prompts of slightly different lengths."""
    texts = [_TEXT + " Try" * i for i in range(n)]
    return [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True) for t in texts]


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare_rollout(
    model_path: str,
    *,
    prompts: int = 4,
    group: int = 4,
    max_tokens: int = 64,
    repeats: int = 5,
    uncompiled: bool = True,
) -> dict:
    """Median wall and decode tokens/s of our rollout (compiled and not) and of mlx-lm's batch_generate."""
    model, tokenizer = mlx_lm.load(model_path)
    prompt_ids = _prompts(tokenizer, prompts)
    rows = [ids for ids in prompt_ids for _ in range(group)]
    R = len(rows)
    sampler = make_sampler(temp=1.0)

    def ours(n=max_tokens):
        out = rollout.generate(model, prompt_ids, group_size=group, sampling=SamplingOptions(n), eos_ids=[], seed=0)
        assert out.tokens.shape == (R, n)

    def mlx_lm_batch():
        out = mlx_lm.batch_generate(model, _NoStopTokenizer(), rows, max_tokens=max_tokens, sampler=sampler)
        stats.append(out.stats.generation_tps)

    def ours_uncompiled():
        mx.disable_compile()
        try:
            ours()
        finally:
            mx.enable_compile()

    contenders = {"ours": ours, "ours_uncompiled": ours_uncompiled, "mlx_lm_batch_generate": mlx_lm_batch}
    if not uncompiled:
        del contenders["ours_uncompiled"]
    times = {name: [] for name in contenders}
    prefill_times, stats = [], []
    for fn in contenders.values():
        fn()
    ours(1)
    for _ in range(repeats):
        for name, fn in contenders.items():
            times[name].append(_time(fn))
        prefill_times.append(_time(lambda: ours(1)))
    tokens = R * max_tokens
    result = {
        "model": model_path,
        "rows": R,
        "max_tokens": max_tokens,
        "prompt_lengths": [len(ids) for ids in prompt_ids],
        "device": str(mx.default_device()),
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
        "repeats": repeats,
    }
    for name, ts in times.items():
        result[f"{name}/wall_s"] = statistics.median(ts)
        result[f"{name}/tok_s"] = tokens / statistics.median(ts)
    decode_s = statistics.median(t - p for t, p in zip(times["ours"], prefill_times))
    result["ours/decode_tok_s"] = R * (max_tokens - 1) / decode_s
    result["mlx_lm_batch_generate/decode_tok_s"] = statistics.median(stats)
    result["speedup_wall"] = result["ours/tok_s"] / result["mlx_lm_batch_generate/tok_s"]
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-uncompiled", action="store_true", help="skip our loop with mx.compile disabled")
    args = parser.parse_args()
    result = compare_rollout(
        args.model,
        prompts=args.prompts,
        group=args.group,
        max_tokens=args.max_tokens,
        repeats=args.repeats,
        uncompiled=not args.no_uncompiled,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
