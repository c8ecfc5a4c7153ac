"""Held-out evaluation: greedy pass@1 accuracy, format rate, equation rate, completion length,
self-check rate, optional pass@k.

With a thinking budget, both the greedy and the sampled pass run under it, as training's rollout does.
"""

from __future__ import annotations

from collections.abc import Iterable

import mlx.core as mx
from tqdm import tqdm

from mlx_grpo import distributed
from mlx_grpo.budget import ThinkingBudget
from mlx_grpo.countdown.tasks import Task
from mlx_grpo.episodes import run_episodes
from mlx_grpo.sampling import SamplingOptions


def evaluate(
    model,
    tokenizer,
    tasks: list[Task],
    *,
    max_tokens: int,
    batch_size: int = 32,
    pass_k: int = 1,
    temperature: float = 1.0,
    enable_thinking: bool = True,
    prefill: str = "",
    seed: int = 0,
    progress: bool = False,
    samples: list | None = None,
    budget: ThinkingBudget | None = None,
) -> dict:
    """Score `tasks` with greedy decoding (and `pass_k` sampled tries when pass_k > 1).

    Greedy decoding is temperature 0. Results are fractions of tasks. `budget`: the thinking budget (None: off). When `samples`
    is a list, one dict per task (prompt, completion, correct) is appended to it. Under
    `mlx.launch` each rank scores its block of the tasks and the counts are summed over ranks.

    Returns:
        {"accuracy", "format_rate", "equation_rate", "self_check_rate", "completion_length", "forced_frac",
        "num_tasks"} and "pass@k" when asked. `forced_frac`: greedy rows whose think block the budget
        closed. `equation_rate`: answers that are an equation using every number once, whatever its
        value (a bare result, or a number missing or used twice, is not). `self_check_rate`: greedy
        completions that reject a candidate against the target and try another (`countdown.selfcheck`).
    """
    mine = distributed.shard(len(tasks))  # this rank's block: seeds follow the global positions
    before = len(samples) if samples is not None else 0
    totals = count_batches(
        model,
        tokenizer,
        tasks[: mine.stop],
        range(mine.start, mine.stop, batch_size),
        batch_size=batch_size,
        max_tokens=max_tokens,
        pass_k=pass_k,
        temperature=temperature,
        enable_thinking=enable_thinking,
        prefill=prefill,
        seed=seed,
        progress=progress,
        samples=samples,
        budget=budget,
    )
    summed = dict(zip(COUNTS, distributed.all_sum(mx.array([totals[k] for k in COUNTS])).tolist()))
    if samples is not None:  # every rank's, in task order
        samples[before:] = [s for share in distributed.gather(samples[before:]) for s in share]
    return rates(summed, len(tasks), pass_k)


def count_batches(
    model,
    tokenizer,
    tasks: list[Task],
    starts: Iterable[int],
    *,
    batch_size: int,
    max_tokens: int,
    pass_k: int = 1,
    temperature: float = 1.0,
    enable_thinking: bool = True,
    prefill: str = "",
    seed: int = 0,
    progress: bool = False,
    samples: list | None = None,
    budget: ThinkingBudget | None = None,
) -> dict:
    """The raw counts (`COUNTS`) over the batches `tasks[start : start + batch_size]`, one per start,
    as `evaluate` scores them: the same batches and seeds give the same completions in any process,
    so counts from several processes add up to `evaluate`'s (`rates` turns them into its figures)."""
    options = SamplingOptions(max_tokens, 0.0, budget=budget), SamplingOptions(max_tokens, temperature, budget=budget)
    common = dict(enable_thinking=enable_thinking, prefill=prefill)
    totals = dict.fromkeys(COUNTS, 0)
    for start in tqdm(list(starts), desc="eval", unit="batch", disable=not progress, leave=False):
        chunk = tasks[start : start + batch_size]
        counts = _score_chunk(model, tokenizer, chunk, options, pass_k, seed + start, samples, common)
        totals = {k: totals[k] + counts[k] for k in COUNTS}
    return totals


def rates(counts: dict, num_tasks: int, pass_k: int = 1) -> dict:
    """`evaluate`'s figures from summed `COUNTS` over `num_tasks` tasks."""
    n = max(num_tasks, 1)
    result = {
        "accuracy": counts["correct"] / n,
        "format_rate": counts["well_formed"] / n,
        "equation_rate": counts["equations"] / n,
        "self_check_rate": counts["self_checks"] / n,
        "completion_length": counts["length"] / n,
        "forced_frac": counts["forced"] / n,
        "num_tasks": num_tasks,
    }
    if pass_k > 1:
        result[f"pass@{pass_k}"] = counts["solved"] / n
    return result


COUNTS = ("correct", "well_formed", "equations", "self_checks", "length", "forced", "solved")


def evaluate_as_trained(model, tokenizer, tasks: list[Task], config, *, batch_size: int, **options) -> dict:
    """`evaluate` with a TrainConfig's generation settings (completion length, thinking switch,
    prefill, seed, thinking budget), as training's held-out evaluation scores the policy."""
    return evaluate(
        model,
        tokenizer,
        tasks,
        max_tokens=config.max_completion_length,
        batch_size=batch_size,
        enable_thinking=config.enable_thinking,
        prefill=config.prefill,
        seed=config.seed,
        budget=ThinkingBudget.of_config(config, tokenizer),
        **options,
    )


def _score_chunk(model, tokenizer, chunk: list[Task], options, pass_k: int, seed: int, samples, common) -> dict:
    """Counts over one batch of tasks: greedy verdicts, tokens, forced closes, and pass@k hits."""
    greedy_options, pass_options = options
    greedy = run_episodes(model, tokenizer, chunk, group_size=1, sampling=greedy_options, seed=seed, **common)
    if samples is not None:
        samples.extend(
            {
                "target": t.target,
                "nums": list(t.nums),
                "completion": c,
                "correct": v.correct,
                "self_check": v.self_check,
            }
            for t, c, v in zip(chunk, greedy.completions, greedy.verdicts)
        )
    solved = 0
    if pass_k > 1:
        sampled = run_episodes(
            model, tokenizer, chunk, group_size=pass_k, sampling=pass_options, seed=seed + 1, **common
        )
        solved = sum(any(sampled.correct[i * pass_k : (i + 1) * pass_k]) for i in range(len(chunk)))
    verdicts = greedy.verdicts
    return {
        "correct": sum(v.correct for v in verdicts),
        "well_formed": sum(v.well_formed for v in verdicts),
        "equations": sum(v.is_equation for v in verdicts),
        "self_checks": sum(v.self_check for v in verdicts),
        "length": int(greedy.rollout.lengths.sum().item()),
        "forced": sum(greedy.forced),
        "solved": solved,
    }
