"""Countdown rewards: the original's cases, the reference solutions, reward-hack regressions, the registry."""

from __future__ import annotations

import json
import math
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_grpo.countdown.scoring import is_well_formed
from mlx_grpo.countdown.tasks import Task
from mlx_grpo.errors import UserError
from mlx_grpo.rewards import (
    BUILTIN_REWARDS,
    RewardSet,
    equation_partial_reward_func,
    equation_reward_func,
    format_reward_func,
    get_reward,
)

SEED_COMPLETIONS = [
    "<think>I need to use 2, 3, and 4 to make 14. I can multiply 4 by 3, which is 12, and then add 2 to get 14."
    "</think>\n<answer>4 * 3 + 2</answer>",
    "<think>I will try to make 14. 4 times 3 is 12, plus 2 is 14.</think><answer>(4*3)+2</answer>",
    "<think>I need to get 14. What if I use 7 and 2? 7 multiplied by 2 is 14.</think>\n<answer>7 * 2</answer>",
    "<think>I think the answer involves multiplication and addition. Let's try to spell it out.</think>\n"
    "<answer>four times three plus two equals 14</answer>",
]
SEED_FORMAT_REGEX = r"^<think>((?:(?!<\/think>).)*)<\/think>\n<answer>((?:(?!<\/answer>).)*)<\/answer>$"
QWEN3_NO_THINK = "<think>\n\n</think>\n\n"


def _equation(completion: str, nums, target) -> float:
    return equation_reward_func([completion], [target], [nums])[0]


def _format(completion: str, prefix: str = "") -> float:
    return format_reward_func([completion], assistant_prefixes=[prefix])[0]


# ---- the original notebook's cases -----------------------------------------------------------


def test_seed_cases_with_string_inputs():
    assert format_reward_func(completions=SEED_COMPLETIONS) == [1.0, 0.0, 1.0, 1.0]
    equation = equation_reward_func(completions=SEED_COMPLETIONS, targets=["14"] * 4, nums_list=[["2", "3", "4"]] * 4)
    assert equation == [1.0, 1.0, 0.0, 0.0]


def test_seed_cases_with_int_inputs():
    assert equation_reward_func(SEED_COMPLETIONS, [14] * 4, [[2, 3, 4]] * 4) == [1.0, 1.0, 0.0, 0.0]


# ---- reference solutions -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def references(shared_data):
    lines = (shared_data / "countdown_reference_solutions.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 1024
    return rows


def test_every_reference_solution_scores_one_on_both_rewards(references):
    completions = ["<think>" + r["reference_completion"] for r in references]  # the TinyZero prompt ended in <think>
    assert format_reward_func(completions) == [1.0] * len(references)
    targets, nums = [r["target"] for r in references], [r["nums"] for r in references]
    assert equation_reward_func(completions, targets, nums) == [1.0] * len(references)


def test_reference_solutions_score_zero_when_a_number_or_the_target_changes(references):
    completions, targets, nums = [], [], []
    for r in references:
        completion = "<think>" + r["reference_completion"]
        for i in range(len(r["nums"])):  # each number in turn, one at a time
            completions.append(completion)
            targets.append(r["target"])
            nums.append(r["nums"][:i] + [r["nums"][i] + 1] + r["nums"][i + 1 :])
        for delta in (-1, 1):
            completions.append(completion)
            targets.append(r["target"] + delta)
            nums.append(r["nums"])
    assert len(completions) > 5000
    assert equation_reward_func(completions, targets, nums) == [0.0] * len(completions)


# ---- format reward: the assistant turn, thinking modes and prefills ---------------------------


@pytest.mark.parametrize(
    "prefix, completion, expected",
    [
        ("", "<think>\n4*3=12\n</think>\n<answer> 4 * 3 + 2 </answer>", 1.0),  # Qwen3 thinking on
        ("<think>", "\n4*3=12\n</think>\n<answer> 4 * 3 + 2 </answer>", 1.0),  # prefilled <think>
        ("<think>\n", "4*3=12\n</think>\n<answer> 4 * 3 + 2 </answer>", 1.0),
        ("<think>", "<think>\n4*3=12\n</think>\n<answer>1</answer>", 1.0),  # "<think>" inside a thought is allowed
        ("Let me solve this step by step.\n<think>", "x</think>\n<answer>1</answer>", 1.0),  # the prompt's text
        (QWEN3_NO_THINK, "<answer> 4 * 3 + 2 </answer>", 1.0),  # Qwen3 thinking off: only the answer is the model's
        (QWEN3_NO_THINK + "<answer>", " 4 * 3 + 2 </answer>", 1.0),
        (QWEN3_NO_THINK, "<think>\nx\n</think>\n<answer>1</answer>", 0.0),
        (QWEN3_NO_THINK, "\n<answer>1</answer>", 0.0),
        (QWEN3_NO_THINK, "<answer>1</answer>\n", 0.0),
        (QWEN3_NO_THINK, "<answer>1</answer><answer>2</answer>", 0.0),
        ("", "x</think>\n<answer>1</answer>", 0.0),  # no <think> anywhere
        ("", "<think>x</think>\n\n<answer>1</answer>", 1.0),  # Qwen3's template and early-stop text: "\n\n"
        ("<think>\n", "x\n</think>\n\n<answer>1</answer>", 1.0),
        ("", "<think>x</think><answer>1</answer>", 0.0),  # no newline: fails, as in the seed
        ("", "<think>x</think>\n\n\n<answer>1</answer>", 0.0),  # "\n" or "\n\n", nothing else
        ("", "<think>x</think> \n<answer>1</answer>", 0.0),
        ("", "<think>x</think>\n \n<answer>1</answer>", 0.0),
        ("", "<think>x</think>\n<answer>1</answer>\n", 0.0),  # strict end (the original's $ allowed one "\n")
        ("", "<think>x</think>\n<answer>1</answer> ok", 0.0),
        ("", "<think>x</think>\n</think>\n<answer>1</answer>", 0.0),
        ("", "<think>x</think>\n<answer>1</answer></answer>", 0.0),
        ("", "<think>x</think>\n<answer>1", 0.0),
        ("", "", 0.0),
        ("", " <think>x</think>\n<answer>1</answer>", 0.0),
    ],
)
def test_format_reward_on_the_assistant_turn(prefix, completion, expected):
    assert _format(completion, prefix) == expected


QWEN3_STOP_TEXT = (  # Qwen's documented early-stop text (docs/recipe.md), as the thinking budget appends it
    "\n\nConsidering the limited time by the user, I have to give the solution based on the thinking directly now."
    "\n</think>\n\n"
)


def test_a_think_block_the_sampler_closed_is_never_well_formed_but_its_answer_still_counts():
    from mlx_grpo.countdown.scoring import judge_all

    forced = "4*3=12, 12+2 is" + QWEN3_STOP_TEXT + "<answer> 4 * 3 + 2 </answer>"  # the budget cut the thought
    natural = "4*3=12, 12+2=14\n</think>\n\n<answer> 4 * 3 + 2 </answer>"  # the model closed it itself
    tasks, prefixes = [Task(14, (2, 3, 4))] * 3, ["<think>\n"] * 3
    completions = [forced, forced, natural]
    verdicts = judge_all(completions, tasks, prefixes, forced_close=[True, False, False])
    assert [v.forced_close for v in verdicts] == [True, False, False]
    # the same text is well formed when the model wrote the </think>, never when the sampler did
    assert [v.well_formed for v in verdicts] == [False, True, True]
    assert all(v.correct and v.answer == "4 * 3 + 2" for v in verdicts)  # the answer after the stop text is the model's
    totals, per_reward = RewardSet.from_specs(["format", "equation"]).score(
        completions, tasks, prefixes, verdicts=verdicts
    )
    assert per_reward == {"format": [0.0, 1.0, 1.0], "equation": [1.0, 1.0, 1.0]}
    with pytest.raises(ValueError, match="forced flags"):
        judge_all(completions, tasks, prefixes, forced_close=[True])


_FRAGMENTS = st.lists(
    st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "\n", "a", " ", "<", "/", ">"]), max_size=12
)


@settings(max_examples=1000, deadline=None)
@given(_FRAGMENTS)
def test_format_check_equals_the_original_regex_with_a_strict_end_and_qwen3s_separator(parts):
    text = "".join(parts)
    strict = SEED_FORMAT_REGEX.replace(r"\n<answer>", r"\n\n?<answer>")[:-1] + r"\Z"
    assert is_well_formed(text) == bool(re.match(strict, text, flags=re.DOTALL))


def test_the_only_departure_from_the_original_regex_is_a_trailing_newline():
    text = SEED_COMPLETIONS[0] + "\n"
    assert re.match(SEED_FORMAT_REGEX, text, flags=re.DOTALL)
    assert _format(text) == 0.0


# ---- equation reward: hostile answers and reward-hack regressions ------------------------------


@pytest.mark.parametrize(
    "answer, nums, target",
    [
        ("2**10", [2, 10], 1024),  # exponentiation
        ("9**9**9**9", [9, 9, 9, 9], 1),  # would hang an eval-based checker
        ("7 // 2", [7, 2], 3),  # floor division
        ("7 % 4", [7, 4], 3),
        ("43 - 1", [4, 3, 1], 42),  # numbers glued together
        ("4 3 - 1", [4, 3, 1], 42),
        ("05 + 1", [5, 1], 6),  # leading zero (int("05") == 5 passed the original)
        ("-(2 - 5)", [2, 5], 3),  # unary minus: a free sign flip
        ("--3", [3], 3),
        ("+3 * 1", [3, 1], 3),
        ("14 + 1 / 1000000", [14, 1, 1000000], 14),  # the original's 1e-5 tolerance
        ("٤ * ٣ + ٢", [4, 3, 2], 14),  # non-ASCII digits
        ("4 ＊ 3 ＋ 2", [4, 3, 2], 14),  # fullwidth operators
        ("4 × 3 + 2", [4, 3, 2], 14),
        ("4.0 * 3 + 2", [4, 3, 2], 14),
        ("4 * 3 + 2 = 15", [4, 3, 2], 14),  # a false claim
        ("(4 * 3 + 2)" + ")" * 10_000, [4, 3, 2], 14),
        ("(" * 10_000 + "4 * 3 + 2" + ")" * 10_000, [4, 3, 2], 14),  # ten thousand parentheses
        ("9" * 5000, [int("9" * 200)], int("9" * 200)),  # a huge literal (and too long)
        ("1 / (2 - 2)", [1, 2, 2], 0),
        ("", [4, 3, 2], 14),
    ],
)
def test_hostile_answers_score_zero(answer, nums, target):
    start = time.perf_counter()
    assert _equation(f"<think>x</think>\n<answer>{answer}</answer>", nums, target) == 0.0
    assert time.perf_counter() - start < 10.0  # no hang (the real cost is microseconds)


def test_huge_literals_within_bounds_are_exact():
    big = int("9" * 140)
    assert _equation(f"<answer>{big} - {big - 14}</answer>", [big, big - 14], 14) == 1.0
    big = int("9" * 90)  # three of them fit in the 300-character bound
    assert _equation(f"<answer>{big} * {big} / {big}</answer>", [big, big, big], big) == 1.0
    assert _equation(f"<answer>{big} * {big} / {big}</answer>", [big, big, big], big - 1) == 0.0


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>4 * 3 + 2</think>\n<answer>I don't know</answer>", 0.0),  # the equation outside the tag
        ("<think>x</think>\n4 * 3 + 2", 0.0),
        ("<think>x</think>\n<answer>4 * 3 + 2", 0.0),  # never closed
        ("<think>x</think>\n<answer></answer> 4 * 3 + 2", 0.0),
        ("4 * 3 + 2</answer>", 0.0),
        ("<answer>4 * 3 + 2</answer><answer>7 * 2</answer>", 1.0),  # several tags: the first one counts
        ("<answer>7 * 2</answer><answer>4 * 3 + 2</answer>", 0.0),
        ("<think><answer>7 * 2</answer></think>\n<answer>4 * 3 + 2</answer>", 0.0),
        ("<think>x</think>\n<answer>4 * 3 + 2</answer> and more", 1.0),  # text after: only format cares
        ("<think>x</think>\n<answer>\n 4*3+2 \n</answer>", 1.0),
        ("<think>x</think>\n<answer>4 * 3 + 2 = 14</answer>", 1.0),
    ],
)
def test_which_answer_counts(completion, expected):
    assert _equation(completion, [2, 3, 4], 14) == expected


def test_text_after_the_answer_costs_the_format_reward_only():
    completion = "<think>x</think>\n<answer>4 * 3 + 2</answer> and more text"
    assert _format(completion) == 0.0
    assert _equation(completion, [2, 3, 4], 14) == 1.0


def test_oversized_and_non_string_completions_score_zero():
    huge = "<think>" + "x" * 1_000_001 + "</think>\n<answer>4 * 3 + 2</answer>"
    assert _format(huge) == 0.0 and _equation(huge, [2, 3, 4], 14) == 0.0
    assert format_reward_func([None]) == [0.0]
    assert equation_reward_func([None], [14], [[2, 3, 4]]) == [0.0]


def test_bad_task_data_raises_rather_than_scoring_zero():
    with pytest.raises(ValueError):
        equation_reward_func(SEED_COMPLETIONS[:1], ["fourteen"], [[2, 3, 4]])
    with pytest.raises(ValueError, match="targets"):
        equation_reward_func(SEED_COMPLETIONS, [14], [[2, 3, 4]] * 4)


# ---- partial credit ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("4 * 3 + 2", 1.0),
        ("4 * 3 - 2", 0.5 * (1 - 4 / 14)),  # 10: a valid miss
        ("(4 + 3) * 2", 1.0),  # another exact answer
        ("4 / 3 + 2", 0.5 * (10 / 3) / 14),  # 10/3: a fraction is a valid miss too
        ("4 * 3 * 2 * 1", 0.0),  # a number that is not given
        ("4 * 3 + 2 = 10", 0.0),  # a false claim
        ("2 - 4 * 3", 0.0),  # -10: too far, floored at 0
        ("four", 0.0),
    ],
)
def test_partial_credit(answer, expected):
    value = equation_partial_reward_func([f"<answer>{answer}</answer>"], [14], [[2, 3, 4]])[0]
    assert value == pytest.approx(expected)


def test_partial_credit_is_off_by_default():
    assert RewardSet.from_specs(["format", "equation"]).names == ["format", "equation"]
    assert "equation_partial" in BUILTIN_REWARDS


# ---- registry and RewardSet --------------------------------------------------------------------


def test_get_reward_builtins_and_weights():
    assert get_reward("format").func is format_reward_func and get_reward("format").weight == 1.0
    reward = get_reward(" equation = 2.5 ")
    assert (reward.name, reward.func, reward.weight) == ("equation", equation_reward_func, 2.5)
    assert get_reward("format=-0.5").weight == -0.5


@pytest.mark.parametrize(
    "spec, message",
    [
        ("accuracy", "unknown reward 'accuracy'"),
        ("format=abc", "not a number"),
        ("format=nan", "finite"),
        ("format=inf", "finite"),
        ("no_such_module_xyz:f", "could not import"),
        ("json:no_such_function", "no function"),
        ("json:__doc__", "no function"),
        ("missing/rewards.py:f", "not found"),
    ],
)
def test_get_reward_errors(spec, message):
    with pytest.raises(UserError, match=message):
        get_reward(spec)


REWARD_FILE = """
import math
from dataclasses import dataclass

@dataclass
class Seen:
    keys: tuple

SEEN = []

def brevity(completions, **kwargs):
    SEEN.append(Seen(tuple(sorted(kwargs))))
    return [-len(c) / 100 for c in completions]

def wrong_length(completions, **kwargs):
    return [0.0]

def not_finite(completions, **kwargs):
    return [math.nan for c in completions]

def not_numbers(completions, **kwargs):
    return ["high" for c in completions]
"""


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARD_FILE)
    return path


def test_reward_from_a_file_and_from_a_module(reward_file, monkeypatch):
    reward = get_reward(f"{reward_file}:brevity=0.1")
    assert (reward.name, reward.weight) == ("brevity", 0.1)
    assert reward.func(["abcd"]) == [-0.04]
    monkeypatch.syspath_prepend(str(reward_file.parent))
    assert get_reward("my_rewards:brevity").func(["ab"]) == [-0.02]


def test_reward_file_errors(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    with pytest.raises(UserError, match="could not load reward file .*SyntaxError"):
        get_reward(f"{broken}:f")
    failing = tmp_path / "failing.py"
    failing.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(UserError, match="RuntimeError: boom"):
        get_reward(f"{failing}:f")


def test_reward_set_scores_weighted_totals_and_passes_the_trainer_kwargs(reward_file):
    rewards = RewardSet.from_specs(["format", "equation=2", f"{reward_file}:brevity=0.5"])
    assert rewards.names == ["format", "equation", "brevity"]
    assert rewards.weights == [1.0, 2.0, 0.5]
    tasks = [Task(14, (2, 3, 4))] * 4
    totals, per_reward = rewards.score(SEED_COMPLETIONS, tasks, [""] * 4, prompts=["p"] * 4)
    assert per_reward["format"] == [1.0, 0.0, 1.0, 1.0]
    assert per_reward["equation"] == [1.0, 1.0, 0.0, 0.0]
    for i, c in enumerate(SEED_COMPLETIONS):
        assert totals[i] == pytest.approx(per_reward["format"][i] + 2 * per_reward["equation"][i] - 0.5 * len(c) / 100)
    module = rewards.rewards[2].func.__globals__
    assert module["SEEN"][-1].keys == ("assistant_prefixes", "nums_list", "prompts", "targets", "verdicts")


def test_reward_set_uses_the_assistant_prefixes():
    tasks = [Task(14, (2, 3, 4))]
    answer = ["<answer>4 * 3 + 2</answer>"]
    totals, _ = RewardSet.from_specs(["format", "equation"]).score(answer, tasks, [QWEN3_NO_THINK])
    assert totals == [2.0]
    assert RewardSet.from_specs(["format"]).score(answer, tasks)[0] == [0.0]


@pytest.mark.parametrize(
    "name, message", [("wrong_length", "1 values for 4"), ("not_finite", "NaN"), ("not_numbers", "list of numbers")]
)
def test_reward_set_rejects_bad_reward_output(reward_file, name, message):
    rewards = RewardSet.from_specs([f"{reward_file}:{name}"])
    with pytest.raises(UserError, match=message):
        rewards.score(SEED_COMPLETIONS, [Task(14, (2, 3, 4))] * 4)


def test_reward_set_spec_errors():
    with pytest.raises(UserError, match="more than once"):
        RewardSet.from_specs(["format", "format=2"])
    with pytest.raises(UserError, match="no reward"):
        RewardSet.from_specs([])
    assert RewardSet.from_specs("equation").names == ["equation"]
    with pytest.raises(ValueError, match="completions"):
        RewardSet.from_specs(["format"]).score(SEED_COMPLETIONS, [Task(14, (2, 3, 4))])


def test_partial_variant_through_the_registry_is_finite():
    rewards = RewardSet.from_specs(["equation_partial"])
    totals, per_reward = rewards.score(SEED_COMPLETIONS, [Task(14, (2, 3, 4))] * 4)
    assert per_reward["equation_partial"] == [1.0, 1.0, 0.0, 0.0]
    assert all(math.isfinite(t) for t in totals)


def test_builtin_rewards_read_the_verdicts_they_are_given():
    """Scored once: with verdicts passed in, the built-ins judge nothing themselves (these verdicts
    deliberately contradict the text), and custom rewards receive the same verdicts."""
    from fractions import Fraction

    from mlx_grpo.countdown.scoring import Verdict, judge_all

    tasks = [Task(14, (2, 3, 4))] * 2
    completions = ["no tags at all", "<think>x</think>\n<answer>4 * 3 + 2</answer>"]
    judged = judge_all(completions, tasks, ["", ""])
    assert [(v.well_formed, v.correct, v.is_equation) for v in judged] == [(False, False, False), (True, True, True)]
    flipped = [Verdict(True, "13", Fraction(13), False), Verdict(False, None, None, True)]
    totals, per_reward = RewardSet.from_specs(["format", "equation", "equation_partial"]).score(
        completions, tasks, verdicts=flipped
    )
    assert per_reward == {"format": [1.0, 0.0], "equation": [0.0, 1.0], "equation_partial": [0.5 * (1 - 1 / 14), 0.0]}
    assert totals == [pytest.approx(1.5 - 0.5 / 14), 1.0]
