"""The self-check definition on hand-written completions, and the search traces that show it."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from mlx_grpo.countdown import notation, selfcheck
from mlx_grpo.countdown.expr import equation_value
from mlx_grpo.countdown.generator import generate_tasks
from mlx_grpo.countdown.scoring import judge
from mlx_grpo.countdown.selfcheck import _OPS
from mlx_grpo.countdown.solver import worked_solution
from mlx_grpo.countdown.tasks import Task
from mlx_grpo.countdown.traces import (
    near_misses,
    search_trace,
    solution_candidate,
    sum_trace,
    sum_try_fixes,
    wrong_candidate,
)


def turn(*lines: str, answer: str = "(44 + 19) + 35") -> str:
    return "<think>\n" + "\n".join(lines) + f"\n</think>\n<answer> {answer} </answer>"


RETRY = turn("44 - 19 = 25", "25 + 35 = 60", "60 != 98", "44 + 19 = 63", "63 + 35 = 98")


@pytest.mark.parametrize(
    "completion, count",
    [
        (RETRY, 1),
        (turn("44 * 19 = 836", "836 != 98", "44 - 19 = 25", "25 != 98", "44 + 19 = 63", "63 + 35 = 98"), 2),
        # the other spellings of "not equal", extra spaces, a parenthesised operand
        (turn("44 - 19 = 25", "25 + 35 = 60", "60 ≠ 98", "44 + 19 = 63"), 1),
        (turn("44 - 19 = 25", "25 + 35 = 60", "60 is not 98, try again", "44 + 19 = 63"), 1),
        (turn("  44 -19 =25", "(25) + 35 = 60", " 60  !=  98", "44 + 19 = 63"), 1),
        # a truncated completion (no </think>) is read to its end
        ("<think>\n44 - 19 = 25\n25 + 35 = 60\n60 != 98\n44 + 19 = 63\n63 +", 1),
        # wrong arithmetic still counts: the definition reads what the model wrote
        (turn("44 - 19 = 26", "26 + 35 = 60", "60 != 98", "44 + 19 = 63"), 1),
    ],
)
def test_rejected_candidate_then_another_counts(completion, count):
    assert selfcheck.self_checks(completion, 98) == count
    assert selfcheck.is_self_check(completion, 98)


@pytest.mark.parametrize(
    "completion",
    [
        turn("44 + 19 = 63", "63 + 35 = 98"),  # a direct answer
        turn("44 + 19 = 63", "63 + 35 = 98", "98 = 98"),  # a confirmed candidate is not a rejection
        turn("44 - 19 = 25", "25 + 35 = 60", "60 != 98"),  # rejected, then gave up: no retry
        turn("44 - 19 = 25", "25 + 35 = 60", "60 != 97", "44 + 19 = 63"),  # compared with another number
        turn("44 - 19 = 25", "25 + 35 = 60", "25 != 98", "44 + 19 = 63"),  # not the candidate's value
        turn("60 != 98", "44 + 19 = 63", "63 + 35 = 98"),  # a rejection before any candidate
        turn("44 + 19 = 98", "98 != 98", "44 + 19 = 63"),  # a false rejection (the value is the target)
        turn("44 - 19 = 25", "25 + 35 = 60", "x 60 != 98", "44 + 19 = 63"),  # not at the start of a line
        # after </think> nothing counts
        "<think>\n44 - 19 = 25\n25 + 35 = 60\n</think>\n60 != 98\n44 + 19 = 63\n<answer> 1 </answer>",
        "",
    ],
)
def test_what_does_not_count(completion):
    assert selfcheck.self_checks(completion, 98) == 0
    assert not selfcheck.is_self_check(completion, 98)


def test_a_second_rejection_of_one_candidate_counts_once():
    assert selfcheck.self_checks(turn("44 - 19 = 25", "25 != 98", "25 != 98", "44 + 19 = 63"), 98) == 1


def test_steps_and_their_arithmetic():
    found = selfcheck.steps(turn("44 - 19 = 26", "26 + 35 = 61", "61 != 98", "8 / 0 = 0", "9 / 2 = 4", "63 * 2 = 126"))
    assert [(s.left, s.op, s.right, s.result) for s in found][0] == (44, "-", 19, 26)
    assert [s.correct for s in found] == [False, True, False, False, True]


def test_search_traces_are_what_the_definition_counts():
    rng = random.Random(0)
    for task in generate_tasks(200, 5):
        misses = rng.randint(0, 3)
        text = search_trace(task, rng, misses)
        assert selfcheck.self_checks(text, task.target) == misses  # every generated task has wrong candidates
        assert all(step.correct for step in selfcheck.steps(text))
        verdict = judge(text, task.target, task.nums)
        assert verdict.correct and verdict.well_formed
        assert verdict.self_check == (misses > 0)  # judged once, with the rest of the verdict
    assert search_trace(Task(98, (44, 19, 35)), rng, 0) == worked_solution([44, 19, 35], 98)


def test_wrong_candidates_use_every_number_miss_the_target_and_their_equation_is_their_value():
    rng = random.Random(1)
    for task in generate_tasks(200, 6):
        candidate = wrong_candidate(task.nums, task.target, rng)
        assert len(candidate.steps) == len(task.nums) - 1 and candidate.value != task.target
        assert equation_value(candidate.equation, task.nums) == candidate.value  # every number once
        assert all(_OPS[op](a, b) == v for a, op, b, v in candidate.steps)
    assert wrong_candidate((5,), 5, rng) is None  # one number: its only value is the target


def test_near_misses_change_only_the_last_operation_and_miss_the_target():
    seen_ops = set()
    for task in generate_tasks(300, 11):
        solution = solution_candidate(task)
        if solution is None:
            continue
        *before, (a, op, b, _) = solution.steps
        for miss in near_misses(solution, task.target):
            *same, (x, other, y, value) = miss.steps
            assert same == before and {x, y} == {a, b} and other != op and _OPS[other](x, y) == value
            assert value != task.target and equation_value(miss.equation, task.nums) == value  # every number once
            seen_ops.add(other)
    assert seen_ops == set("+-*/")


def test_a_near_miss_search_tries_other_last_operations_one_line_each():
    rng = random.Random(3)
    for task in generate_tasks(200, 12):
        solution = solution_candidate(task)
        if solution is None or len(near_misses(solution, task.target)) < 2:
            continue
        text = search_trace(task, rng, 2, near=True)
        thought = selfcheck.thought(text)
        assert selfcheck.self_checks(text, task.target) == 2 and judge(text, task.target, task.nums).correct
        # the solution's first steps once, then one last step per candidate
        assert len(selfcheck.steps(text)) == len(solution.steps) + 2 and thought.count(" != ") == 2


def test_a_sum_trace_adds_every_number_then_subtracts_the_half_of_the_excess_twice():
    text = sum_trace(Task(28, (35, 44, 19)))
    assert selfcheck.thought(text).split("\n")[1:] == [
        "35 + 44 = 79",
        "79 + 19 = 98",
        "98 != 28",
        "98 - 28 = 70",
        "70 / 2 = 35",
        "98 - 35 = 63",
        "63 - 35 = 28",
        "",
    ]
    assert text.endswith("<answer> 44 + 19 - 35 </answer>")  # a first number to subtract goes last
    assert sum_trace(Task(76, (35, 44, 19, 16))).endswith("<answer> 35 + 44 - 19 + 16 </answer>")
    assert sum_trace(Task(98, (44, 19, 35))) == worked_solution([44, 19, 35], 98)  # the sum is the answer
    fixed = 0
    for task in generate_tasks(500, 13):
        text = sum_trace(task, reversed_digits=True)
        if text is None:
            continue
        verdict = judge(text, task.target, task.nums)
        assert verdict.correct and all(step.correct for step in selfcheck.steps(text))
        assert verdict.self_check == (sum(task.nums) != task.target)
        # every way of flipping exactly one number's sign, written out
        flips = [[-x if i == j else x for i, x in enumerate(task.nums)] for j in range(len(task.nums))]
        by_one = sum(task.nums) != task.target and any(sum(signed) == task.target for signed in flips)
        assert sum_try_fixes(task) == by_one
        if by_one:  # the sum, the excess, its half, then the sum minus the half twice
            fixed += 1
            assert len(selfcheck.steps(text)) == len(task.nums) + 3
    assert fixed > 50


def test_a_flip_line_writes_the_answers_equation_in_the_thoughts_notation_and_changes_nothing_else():
    task = Task(75, (48, 90, 33))  # 171 - 2 x 48: the first number is the one to subtract
    plain, flipped = sum_trace(task, reversed_digits=True), sum_trace(task, reversed_digits=True, flip_line=True)
    assert selfcheck.thought(flipped).split("\n")[-2] == "090 + 330 - 840 = 570"  # 90 + 33 - 48 = 75
    assert flipped.replace("090 + 330 - 840 = 570\n", "") == plain
    assert selfcheck.steps(flipped) == selfcheck.steps(plain)  # not a step line: the stages read the same
    assert sum_trace(Task(28, (35, 44, 19)), flip_line=True).split("\n")[-3] == "44 + 19 - 35 = 28"
    for task in generate_tasks(300, 5):
        text = sum_trace(task, reversed_digits=True, flip_line=True)
        if text is None or not sum_try_fixes(task):
            assert text == sum_trace(task, reversed_digits=True)  # only a fixed try has the line
            continue
        line = notation.readable(text).split("</think>")[0].strip().split("\n")[-1]
        equation, value = line.split(" = ")
        assert int(value) == task.target and f"<answer> {equation} </answer>" in text
        assert judge(text, task.target, task.nums).correct


def test_subtract_last_moves_the_subtracted_number_to_the_end_of_the_line_and_the_answer():
    text = sum_trace(Task(76, (35, 44, 19, 16)), reversed_digits=True, flip_line=True, subtract_last=True)
    assert "530 + 440 + 610 - 910 = 670\n</think>" in text and text.endswith("<answer> 35 + 44 + 16 - 19 </answer>")
    assert judge(text, 76, (35, 44, 19, 16)).correct


def test_a_trace_that_gives_up_answers_its_last_wrong_candidate_unchecked():
    rng = random.Random(2)
    for task in generate_tasks(100, 7):
        misses = rng.randint(0, 2)
        text = search_trace(task, rng, misses, give_up=True)
        verdict = judge(text, task.target, task.nums)
        assert verdict.well_formed and verdict.is_equation and not verdict.correct
        assert selfcheck.self_checks(text, task.target) == misses  # the last candidate is not rejected
        assert all(step.correct for step in selfcheck.steps(text))


def test_reversed_digits_are_read_backwards_by_the_definition():
    text = turn(
        "digits reversed", "440 - 910 = 520", "520 + 530 = 060", "060 != 890", "440 + 910 = 360", "360 + 530 = 890"
    )
    assert selfcheck.self_checks(text, 98) == 1
    assert [(s.left, s.op, s.right, s.result) for s in selfcheck.steps(text)][0] == (44, "-", 19, 25)
    assert all(s.correct for s in selfcheck.steps(text))
    # the same lines without the header are read the usual way: wrong steps, and no rejection of 98
    plain = text.replace("digits reversed\n", "")
    assert selfcheck.self_checks(plain, 98) == 0 and not all(s.correct for s in selfcheck.steps(plain))
    assert notation.readable(text).startswith("<think>\ndigits reversed\n44 - 19 = 25\n25 + 35 = 60\n60 != 98")
    assert notation.readable(text).endswith("</think>\n<answer> (44 + 19) + 35 </answer>")


def test_reversed_search_traces_read_as_the_plain_ones():
    for seed in range(3):
        for task in generate_tasks(100, 8 + seed):
            plain = search_trace(task, random.Random(seed), 2)
            reversed_text = search_trace(task, random.Random(seed), 2, reversed_digits=True)
            if reversed_text is None:  # a number above 999
                assert any(n > 999 for s in selfcheck.steps(plain) for n in (s.left, s.right, s.result))
                continue
            given = " ".join(map(str, [*task.nums, task.target]))
            restated = f"<think>\ndigits reversed\n{given} -> {given}\n"  # the restatement, read the usual way
            assert notation.readable(reversed_text) == plain.replace("<think>\n", restated)
            assert notation.restatement([*task.nums, task.target]) in reversed_text
            assert selfcheck.self_checks(reversed_text, task.target) == 2
            assert judge(reversed_text, task.target, task.nums).correct


@pytest.mark.parametrize("n, written", [(0, "000"), (7, "700"), (44, "440"), (630, "036"), (999, "999")])
def test_notation_round_trip(n, written):
    assert notation.write(n) == written and notation.read(written) == n


def test_notation_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="1000 does not fit"):
        notation.write(1000)


def test_step_metrics_report_the_self_check_rate():
    from mlx_grpo.metrics import step_metrics
    from mlx_grpo.update import UpdateResult

    rows = {
        "totals": [1.0, 0.0, 1.0, 1.0],
        "rewards": {"equation": [1.0, 0.0, 1.0, 1.0]},
        "correct": [True, False, True, True],
        "well_formed": [True] * 4,
        "self_check": [True, False, False, False],
        "lengths": [40, 30, 20, 10],
        "truncated": [False] * 4,
        "forced": [False] * 4,
    }
    result = UpdateResult(
        loss=0.0, grad_norm=0.0, kl=0.0, clip_frac_low=0.0, clip_frac_high=0.0, ratio=1.0, skipped=False
    )
    times = {"generate": 1.0, "score": 0.0, "update": 0.0, "step": 1.0}
    assert step_metrics(1, rows, 2, result, times, lr=1e-4, memory={})["self_check_rate"] == 0.25


def test_sum_try_stages_count_how_far_a_sum_try_got_right():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from selfcheck_pays import SUM_STAGES, begins_with_sum, sum_try_stage

    task = Task(28, (35, 44, 19))
    steps = selfcheck.steps(sum_trace(task, reversed_digits=True))
    assert begins_with_sum(steps, task.nums) and not begins_with_sum(steps, (44, 35, 19))
    assert sum_try_stage(steps, task.nums, task.target, correct=True) == len(SUM_STAGES)
    assert sum_try_stage(steps, task.nums, task.target, correct=False) == len(SUM_STAGES) - 1
    for k, expected in ((0, 0), (1, 0), (2, 1), (3, 2), (4, 3), (5, 3)):  # the first wrong line ends the count
        wrong = [selfcheck.Step(s.left, s.op, s.right, s.result + (i == k)) for i, s in enumerate(steps)]
        assert sum_try_stage(wrong, task.nums, task.target, correct=False) == expected, k
    assert sum_try_stage(steps[:3], task.nums, task.target, correct=False) == 2  # stopped after the excess


def test_answer_miss_tells_a_repeated_number_from_a_wrong_sign():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from selfcheck_pays import answer_miss

    def miss(completion):
        return answer_miss(judge(completion, 64, (94, 49, 79)))

    assert miss("<think>\n</think>\n<answer> 94 - 79 + 79 </answer>") == "numbers"
    assert miss("<think>\n</think>\n<answer> 94 - 49 + 79 </answer>") == "signs"
    assert miss("<think>\n</think>\n<answer> 49 + 79 - 94 </answer>") == "signs"
    assert miss("<think>\n</think>\n<answer> 94 + 49 </answer>") == "numbers"
    assert miss("<think>\n</think>\n") == "numbers"  # no answer at all
