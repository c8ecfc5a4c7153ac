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
A trace that gives up (`give_up=True`) ends on one more wrong candidate and answers it unchecked:
the habit GRPO has to unlearn. With `reversed_digits` the thought is written in the bundled model's
notation (`countdown.notation`: "440 + 910 = 360" for 44 + 19 = 63); the answer never is.

Wrong candidates are random left-deep expressions over all the numbers in a random order, with
non-negative integer intermediates like the solver's, whose value is not the target; or (`near`)
the solution with another last operation (`near_misses`), so that a search retries the last step
only, one line per try ("23 * 32 = 736 / 736 != 55 / 23 + 32 = 55"): a search that a model
whose first steps are right can carry through.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mlx_grpo.countdown import expr, notation
from mlx_grpo.countdown.solver import solve
from mlx_grpo.countdown.tasks import Task

MAX_PRODUCT = 999  # wrong candidates keep their numbers short: no product above this
_TRIES = 20  # draws of a wrong candidate before giving up on one (tiny tasks may have none)
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}


@dataclass(frozen=True)
class Candidate:
    """An expression over all of a task's numbers, as its steps and as its equation."""

    steps: tuple[tuple[int, str, int, int], ...]  # (a, op, b, a op b) in evaluation order
    equation: str  # "(44 + 19) + 35"

    @property
    def value(self) -> int:
        return self.steps[-1][3]


def wrong_candidate(nums, target: int, rng: random.Random) -> Candidate | None:
    """A random left-deep expression over all of `nums` whose value is not `target`, or None when
    `_TRIES` draws found none."""
    for _ in range(_TRIES):
        order = list(nums)
        rng.shuffle(order)
        value, equation, steps = order[0], str(order[0]), []
        for x in order[1:]:
            op = rng.choice([o for o in "+-*/" if _allowed(value, o, x)])
            operand = f"({equation})" if steps else equation
            if op == "-" and value < x:
                a, b, equation = x, value, f"{x} - {operand}"
            else:
                a, b, equation = value, x, f"{operand} {op} {x}"
            value = _APPLY[op](a, b)
            steps.append((a, op, b, value))
        if steps and value != target:
            return Candidate(tuple(steps), equation)
    return None


def solution_candidate(task: Task) -> Candidate | None:
    """The solver's solution when every intermediate is a non-negative integer, else None."""
    solution = solve(task.nums, task.target)
    if solution is None or any("(" in line or "/" in line.rsplit("=", 1)[1] for line in solution.steps):
        return None  # no solution, or one through fractions
    steps = []
    for line in solution.steps:
        left, value = line.split(" = ")
        a, op, b = left.split(" ")
        steps.append((int(a), op, int(b), int(value)))
    if any(n < 0 for step in steps for n in step if isinstance(n, int)):
        return None
    return Candidate(tuple(steps), solution.equation)


def near_misses(solution: Candidate, target: int) -> list[Candidate]:
    """`solution` with its last operation replaced by each other one that misses `target` and keeps
    integer, non-negative intermediates (products up to MAX_PRODUCT): every step but the last is the
    solution's, so trying them one after another is a search that finds the solution whenever the
    steps before the last are right. The operands of a `-` or `/` go larger first."""
    top = expr.parse(solution.equation)  # its operator is the last step's
    *before, (a, op, b, _) = solution.steps
    sides = (top.left, top.right) if expr.evaluate(top.left) == a else (top.right, top.left)  # a's, b's
    found = []
    for other in "+-*/":
        (x, side_x), (y, side_y) = (a, sides[0]), (b, sides[1])
        if other in "-/" and b > a:
            (x, side_x), (y, side_y) = (y, side_y), (x, side_x)
        if other == op or not _allowed(x, other, y):
            continue
        value = _APPLY[other](x, y)
        if value != target:
            equation = f"{_operand(side_x)} {other} {_operand(side_y)}"
            found.append(Candidate((*before, (x, other, y, value)), equation))
    return found


def _operand(side) -> str:
    """A side of the top-level operation as text, in parentheses when it is itself an operation."""
    if isinstance(side, expr.Num):
        return str(side.value)
    return f"({_operand(side.left)} {side.op} {_operand(side.right)})"


def _allowed(value: int, op: str, x: int) -> bool:
    if op == "*":
        return value * x <= MAX_PRODUCT
    if op == "/":
        return x > 1 and value % x == 0
    return True


def search_trace(
    task: Task,
    rng: random.Random,
    misses: int,
    *,
    give_up: bool = False,
    near: bool = False,
    reversed_digits: bool = False,
) -> str | None:
    """`misses` wrong candidates, each followed by `v != target`, then the solver's solution (or,
    with `give_up`, one more wrong candidate, answered unchecked). With `near`, the wrong
    candidates are the solution's `near_misses` in a random order (random ones once they run out).

    Returns None when the task has no integer solution, or (`reversed_digits`) a number of the
    thought does not fit the notation. Fewer misses are written when no new wrong candidate can be drawn.
    """
    solution = solution_candidate(task)
    if solution is None:
        return None
    close = near_misses(solution, task.target) if near else []
    rng.shuffle(close)
    tried = []
    for _ in range(misses + give_up):
        candidate = close.pop() if close else _new_wrong_candidate(task, tried, rng)
        if candidate is not None:
            tried.append(candidate)
    last = tried.pop() if give_up and tried else solution
    return render(task, tried, last, reversed_digits)


def sum_trace(
    task: Task, *, reversed_digits: bool = False, flip_line: bool = False, subtract_last: bool = False
) -> str | None:
    """A systematic first try: add every number (in the task's order); if the sum S misses the target
    T, reject it, compute how far off it is (S - T = D, D / 2 = h) and, when h is one of the numbers,
    subtract it twice from the sum (S - h = O, O - h = T: adding h was the mistake) and answer the
    sum with h's sign flipped; otherwise write the solver's solution.

    Every line of the retry copies its operands from the lines above and the answer is the task's
    numbers in their order with one sign changed, so no step has to pick numbers out by what they
    are not (the version that summed "the other numbers" again was not learnt: scripts/README.md,
    section 7). The try solves every task that is the sum of its numbers with at most one
    subtracted (37% of the demo's held-out tasks: 59% of those with three numbers, 15% with four).
    `flip_line` writes the answer's equation once more as the thought's last line, in the thought's
    notation and with the target as its value ("690 + 010 - 630 = 070"): the flipped sign is then
    chosen beside the restatement, where h is written the same way as the numbers, and the answer
    copies the signs from the line above (scripts/README.md section 7: without it, a quarter of the
    answers after a right retry wrote h twice). `subtract_last` moves h to the end of the answer
    ("44 + 16 + 35 - 19"), the order a model trained on the flipped order wrote in its own
    flip lines (section 7).
    None when the task has no integer solution or (`reversed_digits`) a number does not fit the
    notation.
    """
    solution = solution_candidate(task)
    if solution is None:
        return None
    total = sum(task.nums)
    lines = _sum_steps(task.nums)
    if total == task.target:
        return _completion(task, lines, _left_deep(task.nums[0], lines), reversed_digits)
    lines.append((total, "!=", task.target))
    excess = total - task.target
    half = excess // 2 if excess > 0 and excess % 2 == 0 else None
    if excess > 0:
        lines.append((total, "-", task.target, excess))
        if half is not None:
            lines.append((excess, "/", 2, half))
    if half in task.nums:
        lines += [(total, "-", half, total - half), (total - half, "-", half, task.target)]
        terms = _flipped(task.nums, half, last=subtract_last)
        if flip_line:
            lines.append((terms, "=", task.target))
        return _completion(task, lines, _equation(terms, str), reversed_digits)
    return _completion(task, [*lines, *solution.steps], solution.equation, reversed_digits)


def sum_try_fixes(task: Task) -> bool:
    """Whether `sum_trace`'s retry solves `task`: the sum misses the target by twice one number."""
    total = sum(task.nums)
    return total != task.target and any(total - 2 * n == task.target for n in task.nums)


def _flipped(numbers, subtracted: int, last: bool = False) -> list[tuple[str, int]]:
    """The terms of the sum of `numbers` in their order with one `subtracted` instead of added
    (35 + 44 - 19); a first number to subtract goes last, since the answer has no unary minus, and
    with `last` every one does."""
    order = list(numbers)
    at = order.index(subtracted)
    if at == 0 or last:
        order.append(order.pop(at))
        at = len(order) - 1
    return [("-" if i == at else "+", n) for i, n in enumerate(order)]


def _equation(terms, write) -> str:
    """ "35 + 44 - 19" from the terms [("+", 35), ("+", 44), ("-", 19)], each number by `write`."""
    return " ".join(f"{sign} {write(n)}" for sign, n in terms)[2:]


def _sum_steps(numbers) -> list[tuple[int, str, int, int]]:
    """The steps of adding `numbers` left to right."""
    partial, steps = numbers[0], []
    for x in numbers[1:]:
        steps.append((partial, "+", x, partial + x))
        partial += x
    return steps


def _left_deep(first: int, steps) -> str:
    """The equation of `steps` that each apply an operation to the value before, from `first`:
    "(44 + 19) - 35"."""
    equation = str(first)
    for _, op, b, _ in steps:
        equation = f"({equation}) {op} {b}" if " " in equation else f"{equation} {op} {b}"
    return equation


def _new_wrong_candidate(task: Task, tried: list[Candidate], rng: random.Random) -> Candidate | None:
    """A wrong candidate not in `tried`, or None when `_TRIES` draws found none."""
    for _ in range(_TRIES):
        candidate = wrong_candidate(task.nums, task.target, rng)
        if candidate is None or candidate not in tried:
            return candidate
    return None


def render(task: Task, rejected: list[Candidate], answered: Candidate, reversed_digits: bool) -> str | None:
    """The completion that computes and rejects each of `rejected`, then computes `answered` and
    answers its equation; None when (`reversed_digits`) a number does not fit the notation. The steps
    a candidate shares at its beginning with the one before are not written again ("try another
    last operation" is one line).

    A reversed thought first restates the task's numbers and target in the notation
    (`notation.restatement`), so that each step copies its operands from the line above instead of
    reversing them out of the prompt."""
    lines, written = [], ()  # written: the steps of the candidate before, a common beginning not repeated
    for candidate in (*rejected, answered):
        shared = next((i for i, pair in enumerate(zip(written, candidate.steps)) if pair[0] != pair[1]), len(written))
        lines += candidate.steps[shared:]
        written = candidate.steps
        if candidate is not answered:
            lines.append((candidate.value, "!=", task.target))
    return _completion(task, lines, answered.equation, reversed_digits)


def _completion(task: Task, lines, equation: str, reversed_digits: bool) -> str | None:
    """The completion whose thought is `lines`, steps (a, op, b, v), rejections (v, "!=", T) and
    equations (terms, "=", T), and whose answer is `equation`; None when (`reversed_digits`) a
    number does not fit the notation."""
    numbers = [n for line in lines for n in line if isinstance(n, int)]
    if reversed_digits and not notation.fits(*numbers, *task.nums, task.target):
        return None
    write = notation.write if reversed_digits else str
    text = [notation.HEADER, notation.restatement([*task.nums, task.target])] if reversed_digits else []
    for line in lines:
        if len(line) == 3 and isinstance(line[0], list):
            terms, _, target = line
            text.append(f"{_equation(terms, write)} = {write(target)}")
        elif len(line) == 3:
            value, _, target = line
            text.append(f"{write(value)} != {write(target)}")
        else:
            a, op, b, v = line
            text.append(f"{write(a)} {op} {write(b)} = {write(v)}")
    return "<think>\n" + "\n".join(text) + "\n</think>\n<answer> " + equation + " </answer>"
