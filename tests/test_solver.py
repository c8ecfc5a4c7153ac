"""The exact solver against a brute-force search, the reference solutions and the real rows.

Equations are checked by an evaluator written here (Python's `ast` with a whitelist and Fractions),
independent of both the solver and `countdown.expr`.
"""

from __future__ import annotations

import ast
import itertools
import json
import random
import re
import time
from fractions import Fraction
from functools import cache

import pytest

from mlx_grpo.countdown.solver import MAX_NUMS, Solution, reaches, solvable_with_add_sub, solve, worked_solution
from mlx_grpo.rewards import equation_reward_func, format_reward_func


def evaluate(equation: str, *, negatives: bool = False) -> tuple[Fraction, list[int]]:
    """(value, literals) of an equation made of integers, + - * / and parentheses (and, in
    solution steps, negative numbers like "(-4)")."""

    def walk(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Fraction(node.value), [node.value]
        if negatives and isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            value, used = walk(node.operand)
            return -value, used
        assert isinstance(node, ast.BinOp), ast.dump(node)
        (a, la), (b, lb) = walk(node.left), walk(node.right)
        op = {ast.Add: a.__add__, ast.Sub: a.__sub__, ast.Mult: a.__mul__, ast.Div: a.__truediv__}[type(node.op)]
        return op(b), la + lb

    return walk(ast.parse(equation, mode="eval").body)


def brute_force(nums, integer_only=False) -> set[Fraction]:
    """Every value of every expression over all of `nums`: combine any two values, recurse."""

    @cache
    def values(pool: tuple) -> frozenset:
        if len(pool) == 1:
            return frozenset(pool)
        out = set()
        for i, j in itertools.combinations(range(len(pool)), 2):
            rest = tuple(v for k, v in enumerate(pool) if k not in (i, j))
            a, b = pool[i], pool[j]
            results = {a + b, a - b, b - a, a * b} | ({a / b} if b else set()) | ({b / a} if a else set())
            if integer_only:
                results = {r for r in results if r >= 0 and r.denominator == 1}
            for r in results:
                out |= values(tuple(sorted(rest + (r,))))
        return frozenset(out)

    return set(values(tuple(sorted(Fraction(n) for n in nums))))


def check(solution: Solution, nums, target) -> None:
    """The equation uses each number once and equals the target; the steps replay it."""
    value, used = evaluate(solution.equation)
    assert value == target and sorted(used) == sorted(nums), (solution, nums, target)
    assert len(solution.steps) == len(nums) - 1
    for step in solution.steps:
        left, right = step.split(" = ")
        assert evaluate(left, negatives=True)[0] == Fraction(right), step
    if solution.steps:
        assert Fraction(solution.steps[-1].split(" = ")[1]) == target


def step_results(solution: Solution) -> list[Fraction]:
    return [Fraction(step.split(" = ")[1]) for step in solution.steps]


def test_the_first_real_row():
    solution = solve([44, 19, 35], 98)
    assert solution == Solution(equation="(44 + 19) + 35", steps=["44 + 19 = 63", "63 + 35 = 98"])
    assert worked_solution([44, 19, 35], 98) == (
        "<think>\n44 + 19 = 63\n63 + 35 = 98\n</think>\n<answer> (44 + 19) + 35 </answer>"
    )


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_on_random_small_tasks(seed):
    rng = random.Random(seed)
    solved = unsolved = 0
    for _ in range(60):
        nums = [rng.randint(0, 12) for _ in range(rng.randint(1, 4))]
        target = rng.choice([rng.randint(-5, 40), Fraction(rng.randint(1, 9), rng.randint(1, 9))])
        solution = solve(nums, target)
        assert (solution is not None) == (target in brute_force(nums)), (nums, target)
        assert reaches(nums, target) == (target in brute_force(nums, integer_only=True)), (nums, target)
        if solution is None:
            unsolved += 1
            continue
        solved += 1
        check(solution, nums, target)
        if target in brute_force(nums, integer_only=True):  # then no fraction or negative step
            assert all(r >= 0 and r.denominator == 1 for r in step_results(solution)), (solution, nums, target)
    assert solved > 10 and unsolved > 10  # both branches were exercised


def test_add_sub_check_matches_brute_force():
    rng = random.Random(7)
    for _ in range(300):
        nums = [rng.randint(1, 20) for _ in range(rng.randint(1, 4))]
        target = rng.randint(-10, 50)
        expected = target in _add_sub_values(tuple(nums))
        assert solvable_with_add_sub(nums, target) == expected, (nums, target)


@cache
def _add_sub_values(nums: tuple) -> set[int]:
    if len(nums) == 1:
        return {nums[0]}
    out = set()
    for i, j in itertools.combinations(range(len(nums)), 2):
        rest = tuple(v for k, v in enumerate(nums) if k not in (i, j))
        for r in (nums[i] + nums[j], nums[i] - nums[j], nums[j] - nums[i]):
            out |= _add_sub_values(rest + (r,))
    return out


def test_falls_back_to_fractions_only_when_needed():
    solution = solve([1, 5, 5, 5], 24)  # the classic: 5 * (5 - 1/5)
    check(solution, [1, 5, 5, 5], 24)
    assert any(r.denominator != 1 for r in step_results(solution))
    assert "1 / 5 = 1/5" in solution.steps
    negative = solve([1, 2], -1)
    assert negative is not None and negative.equation == "1 - 2"


def test_prefers_fewer_multiplications_and_divisions():
    assert solve([2, 2, 4], 8).equation == "(2 + 2) + 4"
    assert not solvable_with_add_sub([6, 2, 3], 9)
    assert len(re.findall(r"[*/]", solve([6, 2, 3], 9).equation)) == 1  # like "(6 * 2) - 3", not "(6 / 2) * 3"


def test_edge_cases():
    assert solve([7], 7) == Solution("7", []) and solve([7], 8) is None
    assert solve([0, 5], 0).equation in ("0 * 5", "0 / 5")
    assert solve([3, 3], 0).equation == "3 - 3"
    assert solve([4, 4, 4], 1) is None and worked_solution([4, 4, 4], 1) is None
    assert reaches([4, 4, 4], 12) and not reaches([4, 4, 4], 1) and not reaches([1, 2], -1)
    for bad in ([], list(range(1, MAX_NUMS + 2)), [3, -1]):
        with pytest.raises(ValueError):
            solve(bad, 3)


def test_every_reference_task_is_solved_and_scores_on_the_rewards(shared_data):
    rows = [json.loads(line) for line in (shared_data / "countdown_reference_solutions.jsonl").open()]
    completions, plain = [], 0
    for row in rows:
        solution = solve(row["nums"], row["target"])
        assert solution is not None, row
        check(solution, row["nums"], row["target"])
        # like the reference solutions: every step a non-negative integer
        assert all(r >= 0 and r.denominator == 1 for r in step_results(solution)), row
        plain += not re.search(r"[*/]", solution.equation)
        completions.append(worked_solution(row["nums"], row["target"]))
    assert len(rows) == 1024
    # + and - alone whenever they suffice, as the reference solutions mostly do
    assert plain == sum(solvable_with_add_sub(r["nums"], r["target"]) for r in rows)
    assert plain == pytest.approx(sum(not re.search(r"[*/]", r["reference_equation"]) for r in rows), abs=5)
    assert format_reward_func(completions) == [1.0] * len(rows)
    targets, nums_list = [r["target"] for r in rows], [r["nums"] for r in rows]
    assert equation_reward_func(completions, targets, nums_list) == [1.0] * len(rows)


def test_every_real_row_is_solved_quickly(shared_data):
    rows = [json.loads(line) for line in (shared_data / "countdown_real_sample.jsonl").open()]
    start = time.perf_counter()
    solutions = [solve(row["nums"], row["target"]) for row in rows]
    elapsed = time.perf_counter() - start
    for row, solution in zip(rows, solutions):
        check(solution, row["nums"], row["target"])
    assert all(reaches(row["nums"], row["target"]) for row in rows)
    assert elapsed < 60.0, (
        f"{len(rows)} real tasks took {elapsed:.2f} s (about 0.3 s expected; the bound only catches a blow-up)"
    )
