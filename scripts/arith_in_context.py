"""Does a model compute a step line in the notation alone, and where a trace puts it?

    python scripts/arith_in_context.py MODEL_DIR          # two exact-match rates, one line each

For the first step of the solver's solution of 300 held-out generated tasks (generator seed
3,000,000, as `arith_format.py`'s test lines), greedy exact match of the result under teacher
forcing (`arith_format.exact_match`), written in `countdown.notation`:

- alone: the line by itself ("670 - 820 = " -> "840"), as stage 0 of the recipe trains it;
- in a trace: after the prompt, `<think>`, the notation's header and the restatement line, where
  a warm-start trace writes it.

A recipe whose stage 0 skill does not survive into the traces shows a high first rate and a low
second one (scripts/README.md, section 7).
"""

from __future__ import annotations

import argparse
import json

import arith_format
import mlx_lm

from mlx_grpo.countdown import notation
from mlx_grpo.countdown.generator import generate_tasks
from mlx_grpo.countdown.prompts import build_prompt
from mlx_grpo.countdown.traces import solution_candidate


def exact_rates(model, tokenizer, num_tasks: int = 300) -> dict[str, float]:
    """Exact-match rate of the first solution step's result, alone and in a trace (module docstring)."""
    lines = {"alone": [], "in a trace": []}
    for task in generate_tasks(num_tasks, 3_000_000):
        candidate = solution_candidate(task)
        numbers = [n for a, _, b, v in (candidate.steps if candidate else []) for n in (a, b, v)]
        if candidate is None or not notation.fits(*numbers, *task.nums, task.target):
            continue
        a, op, b, v = candidate.steps[0]
        left, result = f"{notation.write(a)} {op} {notation.write(b)} = ", notation.write(v)
        restated = notation.restatement([*task.nums, task.target])
        context = f"{build_prompt(tokenizer, task).text}<think>\n{notation.HEADER}\n{restated}\n"
        lines["alone"].append((left, result))
        lines["in a trace"].append((context + left, result))
    rates = {}
    for where, rows in lines.items():
        ids, mask = arith_format.encode(tokenizer, rows)
        rates[where] = arith_format.exact_match(model, ids, mask, ["any"] * len(rows))["exact"]
    return rates


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    args = parser.parse_args(argv)
    model, tokenizer = mlx_lm.load(args.model)
    for where, exact in exact_rates(model, tokenizer).items():
        print(json.dumps({"where": where, "exact": round(exact, 3)}))


if __name__ == "__main__":
    from mlx_grpo.blas import maybe_reexec_with_openblas

    maybe_reexec_with_openblas()  # as the CLI does: OpenBLAS on a Linux CPU, the speed the figures were measured at
    main()
