"""Does a self-check pay for this model? Sampled completions on held-out tasks, accuracy by kind.

    python scripts/selfcheck_pays.py MODEL_DIR --temperatures 1.0,0.6 --tasks 128

GRPO raises the share of completions that self-check (`countdown.selfcheck`: a candidate rejected
against the target, then another tried) only if they earn more reward than the others in the same
group. For `--tasks` of the demo's held-out tasks, `--samples` completions each at every
temperature (the training cap of `--max-tokens`), one JSON line per temperature: accuracy, the
share and accuracy of the completions that self-check and of the rest, the share that run out of
tokens before an answer (the format reward pays them nothing), the share of step lines whose
arithmetic is right, and pass@samples (tasks with a right completion among their samples). A
first line, greedy: accuracy, and the share of tasks whose first candidate (the first n - 1 step
lines, all right) ends on two operands that some operation takes to the target: what retrying
only the last operation (`traces.near_misses`) could reach at most.

The same lines for the completions whose thought begins with the sum of the task's numbers in
their order (`traces.sum_trace`): their share and accuracy against the rest, and the paired gap
(the mean over tasks sampled both ways of the sum tries' accuracy minus the others'). The model
chooses to begin with the sum before it has seen a candidate fail, so this gap, unlike the
self-check one, compares the two behaviours on the same tasks: it is what GRPO's group advantage
rewards. On the tasks the try can fix (the sum minus twice one of the numbers is the target), the
share of sum tries that get each stage right: the sum, the excess S - T, its half h (a number of
the task), the retry (S - h, then that minus h), the answer; and of the tries that reach the answer
with a right retry, the share whose answer misses by its numbers (`answer_miss`: the subtracted
number written twice, say) and by its signs or order alone.
"""

from __future__ import annotations

import argparse
import json

import mlx_lm

from mlx_grpo.countdown import selfcheck
from mlx_grpo.countdown.solver import reaches
from mlx_grpo.countdown.traces import sum_try_fixes
from mlx_grpo.demo import EVAL_SEED, MAX_TOKENS, held_out_tasks
from mlx_grpo.episodes import run_episodes
from mlx_grpo.sampling import SamplingOptions

PROMPTS_PER_BATCH = 16
SUM_STAGES = ("sum", "excess", "half", "retry", "answer")


def begins_with_sum(steps, nums) -> bool:
    """Whether the first len(nums) - 1 step lines add the task's numbers in their order."""
    first = steps[: len(nums) - 1]
    return (
        len(first) == len(nums) - 1
        and all(step.op == "+" for step in first)
        and [first[0].left, *(step.right for step in first)] == list(nums)
    )


def sum_try_stage(steps, nums, target: int, correct: bool) -> int:
    """How many of SUM_STAGES a sum try on a fixable task got right, in order."""
    k, total = len(nums) - 1, sum(nums)
    if not all(step.correct for step in steps[:k]):
        return 0
    excess = total - target
    half = excess // 2
    expected = [
        selfcheck.Step(total, "-", target, excess),
        selfcheck.Step(excess, "/", 2, half),
        selfcheck.Step(total, "-", half, total - half),
        selfcheck.Step(total - half, "-", half, target),
    ]
    rest = list(steps[k : k + len(expected)])
    for stage, lines in enumerate((1, 2, 4), start=1):  # the excess, its half, the retry's two lines
        if rest[:lines] != expected[:lines]:
            return stage
    return 4 + correct


def answer_miss(verdict) -> str:
    """Why a sum try's answer missed after a right retry: "numbers" when the answer is not an equation
    over the task's numbers (the subtracted number written twice, say), "signs" when it is."""
    return "signs" if verdict.is_equation else "numbers"


def last_step_ceiling(model, tokenizer, tasks, max_tokens: int) -> dict:
    """Greedy accuracy, and the share whose first candidate's last operands reach the target."""
    from mlx_grpo.evaluate import evaluate

    samples = []
    accuracy = evaluate(model, tokenizer, tasks, max_tokens=max_tokens, batch_size=64, samples=samples)["accuracy"]
    reachable = 0
    for sample in samples:
        first = selfcheck.steps(sample["completion"])[: len(sample["nums"]) - 1]
        if len(first) == len(sample["nums"]) - 1 and all(step.correct for step in first):
            reachable += reaches((first[-1].left, first[-1].right), sample["target"])
    return {"greedy accuracy": accuracy, "last step reaches the target": reachable / len(tasks)}


def measure(
    model, tokenizer, tasks, *, temperature: float, top_p: float, samples: int, max_tokens: int, seed: int = 0
) -> dict:
    counts = {"check": [0, 0], "direct": [0, 0]}  # kind -> [completions, correct]
    by_start = {True: [0, 0], False: [0, 0]}  # begins with the sum -> [completions, correct]
    gaps, stages = [], [0] * (len(SUM_STAGES) + 1)  # paired gaps; sum tries on fixable tasks by stage
    misses = {"numbers": 0, "signs": 0}  # wrong answers after a right retry, by answer_miss
    unanswered, lines, right_lines, solved = 0, 0, 0, 0
    for start in range(0, len(tasks), PROMPTS_PER_BATCH):
        episodes = run_episodes(
            model,
            tokenizer,
            tasks[start : start + PROMPTS_PER_BATCH],
            group_size=samples,
            sampling=SamplingOptions(max_tokens, temperature, top_p=top_p),
            seed=seed + start,
        )
        for i, task in enumerate(tasks[start : start + PROMPTS_PER_BATCH]):
            group = {True: [], False: []}
            fixable = sum_try_fixes(task)
            for j in range(i * samples, (i + 1) * samples):
                completion, verdict = episodes.completions[j], episodes.verdicts[j]
                kind = counts["check" if verdict.self_check else "direct"]
                kind[0], kind[1] = kind[0] + 1, kind[1] + verdict.correct
                unanswered += "</answer>" not in completion
                steps = selfcheck.steps(completion)
                lines, right_lines = lines + len(steps), right_lines + sum(s.correct for s in steps)
                summed = begins_with_sum(steps, task.nums)
                group[summed].append(verdict.correct)
                if summed and fixable:
                    stage = sum_try_stage(steps, task.nums, task.target, verdict.correct)
                    stages[stage] += 1
                    if stage == len(SUM_STAGES) - 1:
                        misses[answer_miss(verdict)] += 1
            solved += any(group[True] + group[False])
            if group[True] and group[False]:
                gaps.append(sum(group[True]) / len(group[True]) - sum(group[False]) / len(group[False]))
            for summed, results in group.items():
                by_start[summed][0] += len(results)
                by_start[summed][1] += sum(results)
    n = sum(total for total, _ in counts.values())
    return {
        "temperature": temperature,
        "top_p": top_p,
        "completions": n,
        "accuracy": sum(right for _, right in counts.values()) / n,
        f"pass@{samples}": solved / len(tasks),
        "self-check share": counts["check"][0] / n,
        "self-check accuracy": counts["check"][1] / max(counts["check"][0], 1),
        "other accuracy": counts["direct"][1] / max(counts["direct"][0], 1),
        "sum-first share": by_start[True][0] / n,
        "sum-first accuracy": by_start[True][1] / max(by_start[True][0], 1),
        "not-sum accuracy": by_start[False][1] / max(by_start[False][0], 1),
        "paired gap": sum(gaps) / max(len(gaps), 1),
        "paired tasks": len(gaps),
        "fixable sum tries": sum(stages),
        **{f"stage {name} right": sum(stages[k + 1 :]) / max(sum(stages), 1) for k, name in enumerate(SUM_STAGES)},
        **{f"answer misses: {kind}": count / max(sum(stages[-2:]), 1) for kind, count in misses.items()},
        "no answer": unanswered / n,
        "step lines right": right_lines / max(lines, 1),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--temperatures", default="1.0")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
    parser.add_argument("--tasks", type=int, default=128)
    parser.add_argument("--samples", type=int, default=8, help="completions per task")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    args = parser.parse_args(argv)
    model, tokenizer = mlx_lm.load(args.model)
    tasks = held_out_tasks(EVAL_SEED)[: args.tasks]
    print(json.dumps({k: round(v, 4) for k, v in last_step_ceiling(model, tokenizer, tasks, args.max_tokens).items()}))
    for temperature in (float(t) for t in args.temperatures.split(",")):
        line = measure(
            model,
            tokenizer,
            tasks,
            temperature=temperature,
            top_p=args.top_p,
            samples=args.samples,
            max_tokens=args.max_tokens,
        )
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in line.items()}), flush=True)


if __name__ == "__main__":
    from mlx_grpo.blas import maybe_reexec_with_openblas

    maybe_reexec_with_openblas()  # as the CLI does: OpenBLAS on a Linux CPU, the speed the figures were measured at
    main()
