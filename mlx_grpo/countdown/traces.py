"""Warm-start completions that search: wrong candidates, each computed and rejected, then the solution.

    >>> print(search_trace(Task(98, (44, 19, 35)), random.Random(1), misses=1))
    <think>
    35 - 19 = 16
    16 + 44 = 60
    60 != 98
    44 + 19 = 63
    63 + 35 = 98
    </think>
    <answer> (44 + 19) + 35 </answer>

A search trace lays out every candidate the way the solver's worked solution lays out its steps
(one operation per line, `a op b = v`), then rejects it on a line of its own (`v != T`, T the
target), then tries the next; the last candidate is the solver's solution and the answer is its
equation. `countdown.selfcheck` counts exactly this shape, so the warm start's rate of it is known.

Wrong candidates are random left-deep expressions over all the numbers in a random order, with
non-negative integer intermediates like the solver's, whose value is not the target.
"""

from __future__ import annotations

import random

from mlx_grpo.countdown.solver import solve
from mlx_grpo.countdown.tasks import Task

MAX_PRODUCT = 999  # wrong candidates keep their numbers short: no product above this
_TRIES = 20  # draws of a wrong candidate before giving up on one (tiny tasks may have none)


def wrong_candidate(nums, target: int, rng: random.Random) -> list[str] | None:
    """The step lines of a random expression over all of `nums` whose value is not `target`,
    or None when `_TRIES` draws found none."""
    for _ in range(_TRIES):
        order = list(nums)
        rng.shuffle(order)
        value, lines = order[0], []
        for x in order[1:]:
            op = rng.choice([o for o in "+-*/" if _allowed(value, o, x)])
            a, b = (value, x) if op != "-" or value >= x else (x, value)
            value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]
            lines.append(f"{a} {op} {b} = {value}")
        if value != target:
            return lines
    return None


def _allowed(value: int, op: str, x: int) -> bool:
    if op == "*":
        return value * x <= MAX_PRODUCT
    if op == "/":
        return x > 1 and value % x == 0
    return True


def search_trace(task: Task, rng: random.Random, misses: int) -> str | None:
    """`misses` wrong candidates, each followed by `v != target`, then the solver's solution.

    Returns None when the task has no solution. Fewer misses are written when no wrong candidate
    can be drawn.
    """
    solution = solve(task.nums, task.target)
    if solution is None:
        return None
    lines = []
    for _ in range(misses):
        candidate = wrong_candidate(task.nums, task.target, rng)
        if candidate is None:
            break
        value = candidate[-1].rsplit(" ", 1)[1]
        lines += candidate + [f"{value} != {task.target}"]
    lines += solution.steps
    return "<think>\n" + "\n".join(lines) + "\n</think>\n<answer> " + solution.equation + " </answer>"
