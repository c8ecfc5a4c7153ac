"""Exact Countdown solver: combine the numbers pairwise with + - * / until one value is left.

Every expression that uses each number once is a binary tree whose two branches split the numbers
into two groups. The solver therefore lists, for each group of numbers (a bit mask), every value
the group can reach with its cheapest expression, from the values of the group's two-way splits.
For the whole set it inverts the last operation instead (for each value x of one side, which value
must the other side reach?), which saves the largest enumeration.

Two passes, the first one preferred:
1. integers: every intermediate result a non-negative integer (exact divisions, `a - b` with
   a >= b), like the reference solutions ("76 - 47 = 29") and the dataset's own generator;
2. exact fractions (`fractions.Fraction`), negatives allowed, only if the first pass finds nothing.

Among the expressions reaching a value, the one with the fewest `*` and `/` wins (ties: the first
found, a left-deep tree over the numbers in their given order). The equation wraps every compound
operand in parentheses, as the reference solutions do: "((76 - 47) + 55) - 60".

Speed (one busy core): ~7,000 real 3-4 number tasks per second; a 4-number task with no integer
solution ~5 ms; an unsolvable 6-number task several seconds.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from fractions import Fraction
from functools import cache

MAX_NUMS = 6  # the number of reachable values grows about 40-fold per extra number

# An expression node: (value, cost, op, left, right); a leaf is (value, 0, None, None, None);
# cost = the number of * and / in the expression.
Node = tuple


@dataclass(frozen=True)
class Solution:
    """One way to reach the target.

    Attributes:
        equation: the whole expression, e.g. "(44 + 19) + 35".
        steps: one line per operation, in evaluation order, e.g. ["44 + 19 = 63", "63 + 35 = 98"];
            a fraction is written like "7/2", and in parentheses when it is an operand: "2 / (7/2) = 4/7".
    """

    equation: str
    steps: list[str]


def solve(nums, target) -> Solution | None:
    """Find an equation that uses every number in `nums` exactly once and equals `target`.

    Args:
        nums: the available integers, 1 to MAX_NUMS of them, each >= 0.
        target: the integer (or Fraction) to reach.

    Returns:
        A Solution, or None when no expression with + - * / reaches the target. Solutions whose
        intermediate results are all non-negative integers are preferred.

    Example:
        >>> solve([44, 19, 35], 98).equation
        '(44 + 19) + 35'
    """
    nums = _check_nums(nums)
    target = Fraction(target)
    if len(nums) == 1:
        return Solution(equation=str(nums[0]), steps=[]) if nums[0] == target else None
    node = None
    if target.denominator == 1 and target >= 0:
        node = _best_last_step(nums, int(target), integer_only=True)
    if node is None:
        node = _best_last_step(nums, target, integer_only=False)
    return None if node is None else Solution(equation=_render(node, top=True), steps=_steps(node))


def worked_solution(nums, target) -> str | None:
    """The full assistant completion for warm-start data, or None when the task has no solution.

    Example:
        >>> print(worked_solution([44, 19, 35], 98))
        <think>
        44 + 19 = 63
        63 + 35 = 98
        </think>
        <answer> (44 + 19) + 35 </answer>
    """
    solution = solve(nums, target)
    if solution is None:
        return None
    return "<think>\n" + "\n".join(solution.steps) + "\n</think>\n<answer> " + solution.equation + " </answer>"


def reaches(nums, target: int) -> bool:
    """Whether `target` is reachable from all of `nums` with non-negative integer intermediates.

    The same answer as the solver's first pass, faster (sets of values, no expressions): the
    generator calls it for every candidate task.
    """
    nums = _check_nums(nums)
    sets = {1 << i: {x} for i, x in enumerate(nums)}  # group mask -> its values
    for mask, splits in _groups(len(nums)):
        sets[mask] = _int_values(sets, splits)
    return target in sets[(1 << len(nums)) - 1]


def solvable_with_add_sub(nums, target) -> bool:
    """Whether + and - alone (any parentheses) reach `target` from all of `nums`.

    Such an expression equals a signed sum of the numbers with at least one plus sign, and every
    such signed sum is reachable (start with a positive number), so the check is over sign patterns.
    """
    nums = _check_nums(nums)
    for signs in itertools.product((1, -1), repeat=len(nums)):
        if 1 in signs and sum(s * n for s, n in zip(signs, nums)) == target:
            return True
    return False


def _check_nums(nums) -> tuple[int, ...]:
    nums = tuple(int(n) for n in nums)
    if not 1 <= len(nums) <= MAX_NUMS:
        raise ValueError(f"the solver takes 1 to {MAX_NUMS} numbers, got {len(nums)}")
    if any(n < 0 for n in nums):
        raise ValueError(f"numbers must be non-negative, got {list(nums)}")
    return nums


@cache
def _groups(n: int) -> list[tuple[int, list[tuple[int, int]]]]:
    """Every group of >= 2 of `n` numbers as a bit mask, smaller groups first (the whole set last),
    each with its unordered splits into two groups (left, right), each split once.

    The left group holds the group's first number, largest left groups first, so that left-deep
    trees ("(44 + 19) + 35") are found before right-deep ones.
    """
    groups = []
    for mask in sorted(range(1, 1 << n), key=lambda m: bin(m).count("1")):
        low = mask & -mask
        subs = [sub for sub in range(1, mask) if sub & mask == sub and sub & low]
        if subs:
            subs.sort(key=lambda sub: (-bin(sub).count("1"), sub))
            groups.append((mask, [(sub, mask ^ sub) for sub in subs]))
    return groups


def _best_last_step(nums: tuple[int, ...], target, integer_only: bool) -> Node | None:
    """The cheapest expression over all of `nums` (two or more) equal to `target`, or None."""
    groups = _groups(len(nums))
    tables = _value_tables(nums, groups[:-1], integer_only)
    best = None
    for left, right in groups[-1][1]:
        right_values = tables[right]
        for x, a in tables[left].items():
            for y, op, x_first in _partners(x, target, integer_only, right_values):
                b = right_values.get(y)
                if b is not None:
                    cost = a[1] + b[1] + (op in "*/")
                    if best is None or cost < best[1]:
                        best = (target, cost, op, a, b) if x_first else (target, cost, op, b, a)
    return best


def _value_tables(nums: tuple[int, ...], groups, integer_only: bool) -> dict[int, dict]:
    """For each single number and each of `groups`: every reachable value -> its cheapest node."""
    leaf = int if integer_only else Fraction  # ints are faster
    tables = {1 << i: {leaf(x): (leaf(x), 0, None, None, None)} for i, x in enumerate(nums)}
    for mask, splits in groups:
        out: dict = {}
        for left, right in splits:
            _combine(out, tables[left], tables[right], integer_only)
        tables[mask] = out
    return tables


def _combine(out: dict, left: dict, right: dict, integer_only: bool) -> None:
    """Add to `out` every value of `a op b` (both operand orders) for a in `left`, b in `right`."""

    def put(value, op, a, b):
        cost = a[1] + b[1] + (op in "*/")
        old = out.get(value)
        if old is None or cost < old[1]:
            out[value] = (value, cost, op, a, b)

    for x, a in left.items():
        for y, b in right.items():
            put(x + y, "+", a, b)
            put(x * y, "*", a, b)
            if integer_only:
                if x >= y:
                    put(x - y, "-", a, b)
                else:
                    put(y - x, "-", b, a)
                if y and x % y == 0:
                    put(x // y, "/", a, b)
                if x and y % x == 0:
                    put(y // x, "/", b, a)
            else:
                put(x - y, "-", a, b)
                put(y - x, "-", b, a)
                if y:
                    put(x / y, "/", a, b)
                if x:
                    put(y / x, "/", b, a)


def _int_values(sets: dict[int, set[int]], splits: list[tuple[int, int]]) -> set[int]:
    """The keys that `_combine` gives in the integer pass, without building expressions."""
    out = set()
    for left, right in splits:
        right_values = sets[right]
        for x in sets[left]:
            for y in right_values:
                out.add(x + y)
                out.add(x * y)
                out.add(x - y if x >= y else y - x)
                if y and x % y == 0:
                    out.add(x // y)
                if x and y % x == 0:
                    out.add(y // x)
    return out


def _partners(x, target, integer_only: bool, values) -> list[tuple]:
    """Each (y, op, x_first) such that `x op y` (x_first) or `y op x` equals `target` in the pass.

    In the integer pass x, y and target are non-negative ints. When x == 0 == target, every y in
    `values` works (0 * y); otherwise the caller looks each y up in `values`.
    """
    found = [(target - x, "+", True), (x - target, "-", True), (x + target, "-", False)]
    if integer_only:
        if x:
            found.append((target * x, "/", False))
            if target % x == 0:
                found.append((target // x, "*", True))
            if target and x % target == 0:
                found.append((x // target, "/", True))
        found = [c for c in found if c[0] >= 0]
    elif x:
        found += [(target / x, "*", True), (target * x, "/", False)]
        if target:
            found.append((x / target, "/", True))
    if x == 0 == target:
        found += [(y, "*", True) for y in values]
    return found


def _render(node: Node, top: bool = False) -> str:
    value, _, op, left, right = node
    if op is None:
        return str(value)
    text = f"{_render(left)} {op} {_render(right)}"
    return text if top else f"({text})"


def _steps(node: Node) -> list[str]:
    value, _, op, left, right = node
    if op is None:
        return []
    return _steps(left) + _steps(right) + [f"{_operand(left[0])} {op} {_operand(right[0])} = {value}"]


def _operand(value) -> str:
    """A step's operand; negatives and fractions in parentheses: "2 / (7/2)", "3 - (-4)"."""
    return str(value) if value >= 0 and value == int(value) else f"({value})"
