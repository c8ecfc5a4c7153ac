"""The exact Countdown evaluator: grammar, bounds, exactness, and property tests against independent oracles."""

from __future__ import annotations

import re
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_grpo.countdown.expr import (
    MAX_CHARS,
    MAX_DEPTH,
    BinOp,
    Equation,
    ExprError,
    Num,
    as_int,
    check_equation,
    equation_value,
    evaluate,
    extract_equation,
    literals,
    parse,
    parse_equation,
)


@pytest.mark.parametrize(
    "text, value",
    [
        ("4 * 3 + 2", 14),
        ("2 + 4 * 3", 14),
        ("(2 + 4) * 3", 18),
        ("8 - 3 - 2", 3),  # left-associative
        ("8 / 4 / 2", 1),
        ("8 / (4 / 2)", 4),
        ("1 / 3", Fraction(1, 3)),
        ("0", 0),
        ("\t( 44+19 )\n+35\r\n", 98),
        ("((((7))))", 7),
    ],
)
def test_parse_and_evaluate(text, value):
    assert evaluate(parse(text)) == value


def test_tree_shape_and_literals():
    expr = parse("(1 + 2) / 3")
    assert expr == BinOp("/", BinOp("+", Num(1), Num(2)), Num(3))
    assert literals(expr) == [1, 2, 3]
    assert literals(parse("10 - 4 * 7")) == [10, 4, 7]


def test_parse_equation_with_and_without_claim():
    assert parse_equation("(1 + 2) / 3 = 1") == Equation(parse("(1 + 2) / 3"), 1)
    assert parse_equation("4 * 3 + 2") == Equation(parse("4 * 3 + 2"), None)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "()",
        "(1",
        "1)",
        "1 2",
        "1 +",
        "* 2",
        "2**10",
        "2 ** 10",
        "7 // 2",
        "7 % 2",
        "2^3",  # only + - * /
        "-1 + 2",
        "+1",
        "1 + -2",
        "-(2 - 5)",
        "--3",  # no unary operators
        "05",
        "00",
        "1 + 007",
        "1.5",
        "1.",
        ".5",
        "1e3",
        "1_000",  # plain integer literals only
        "٣ + 1",
        "３ + 1",
        "1 ＋ 2",
        "1 − 2",
        "2 × 3",
        "6 ÷ 2",
        "1\u00a0+ 2",
        "1\u2003+ 2",  # ASCII only
        "abs(1)",
        "x + 1",
        "True",
        "[1]",
        "1,2",
        "\x00",
        "1\x0b+ 2",
        "1 = ",
        "= 1",
        "1 = 1 = 1",
        "1 = (1)",
        "1 = -1",
        "1 = 01",
        "1 = 1 + 0",
        "1 + 2 = 3 + 0",
    ],
)
def test_rejected_inputs(text):
    with pytest.raises(ExprError):
        parse_equation(text)


def test_plain_parse_rejects_equals():
    with pytest.raises(ExprError):
        parse("1 = 1")


def test_length_bound_is_exact():
    ok = "1" + " " * (MAX_CHARS - 1)
    assert evaluate(parse(ok)) == 1
    with pytest.raises(ExprError, match="longer"):
        parse(ok + " ")


def test_depth_bound_is_exact():
    assert evaluate(parse("(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH)) == 1
    with pytest.raises(ExprError, match="nested"):
        parse("(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1))


def test_division_by_zero_is_an_expr_error():
    with pytest.raises(ExprError, match="division by zero"):
        evaluate(parse("1 / (2 - 2)"))
    assert not check_equation("1 / (2 - 2)", [1, 2, 2], 0)


def test_check_equation_uses_each_number_exactly_once():
    assert check_equation("4 * 3 + 2", [2, 3, 4], 14)
    assert check_equation("2 * 2 + 3", [2, 3, 2], 7)  # duplicates are a multiset
    assert not check_equation("4 * 3", [2, 3, 4], 12)  # a number unused
    assert not check_equation("4 * 3 + 2 - 2 + 2", [2, 3, 4], 14)  # a number reused
    assert not check_equation("43 - 29", [4, 3, 29], 14)  # numbers glued together
    assert not check_equation("7 * 2", [2, 3, 4], 14)  # a number that is not given


def test_check_equation_is_exact_not_within_a_tolerance():
    # The original accepted |value - target| < 1e-5: 14 + 1/1000000 "reached" 14.
    assert not check_equation("14 + 1 / 1000000", [14, 1, 1000000], 14)
    assert check_equation("(1 / 3 + 1 / 3 + 1 / 3) * 14", [1, 3, 1, 3, 1, 3, 14], 14)


def test_trailing_claim_must_be_true():
    assert check_equation("(1 + 2) / 3 = 1", [1, 2, 3], 1)  # the prompt's own example
    assert not check_equation("(1 + 2) / 3 = 2", [1, 2, 3], 1)  # a false claim
    assert not check_equation("1 + 2 = 3", [1, 2], 4)  # a true claim, but not the target
    assert equation_value("1 + 2 = 3", [1, 2]) == 3
    assert equation_value("1 + 2 = 4", [1, 2]) is None


def test_targets_and_numbers_may_be_strings_or_int_likes():
    assert check_equation("4 * 3 + 2", ["2", "3", "4"], "14")
    assert check_equation("4 * 3 + 2", np.array([2, 3, 4]), np.int64(14))
    assert not check_equation("4 * 3 + 2", [2, 3, 4], "fourteen")
    assert not check_equation("4 * 3 + 2", [2, 3, "٤"], 14)


@pytest.mark.parametrize("junk", [None, 14, b"4*3+2", ["4*3+2"]])
def test_check_equation_never_raises_on_wrong_types(junk):
    assert check_equation(junk, [2, 3, 4], 14) is False
    assert check_equation("4 * 3 + 2", junk, 14) is False
    assert check_equation("4 * 3 + 2", [2, 3, 4], junk) is (junk == 14)


def test_as_int():
    assert as_int(" 14 ") == 14 and as_int("-3") == -3 and as_int(np.int32(5)) == 5
    for bad in ("1.5", "", "٣", "0x10", 1.5, None):
        with pytest.raises((TypeError, ValueError)):
            as_int(bad)


@pytest.mark.parametrize(
    "completion, equation",
    [
        ("<think>x</think>\n<answer> 4 * 3 + 2 </answer>", "4 * 3 + 2"),
        ("<answer>a</answer><answer>b</answer>", "a"),  # the first block
        ("<answer><answer>1</answer>", "<answer>1"),
        ("<answer></answer>", ""),
        ("<answer>1 + 2", None),  # never closed
        ("1 + 2</answer>", None),
        ("</answer><answer>", None),
        ("4 * 3 + 2", None),
    ],
)
def test_extract_equation(completion, equation):
    assert extract_equation(completion) == equation


# ---- property tests against independent computations ----------------------------------------

_TREES = st.recursive(
    st.integers(0, 10**6).map(Num),
    lambda children: st.builds(BinOp, st.sampled_from("+-*/"), children, children),
    max_leaves=10,
)
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def _render(node, space: str = " ") -> str:
    """Minimal parentheses: a left child needs them for lower precedence, a right one for lower or equal."""
    if isinstance(node, Num):
        return str(node.value)
    left, right = _render(node.left, space), _render(node.right, space)
    if isinstance(node.left, BinOp) and _PREC[node.left.op] < _PREC[node.op]:
        left = f"({left})"
    if isinstance(node.right, BinOp) and _PREC[node.right.op] <= _PREC[node.op]:
        right = f"({right})"
    return f"{left}{space}{node.op}{space}{right}"


def _tree_value(node):
    """The tree's value by direct Fraction arithmetic; None on division by zero."""
    if isinstance(node, Num):
        return Fraction(node.value)
    a, b = _tree_value(node.left), _tree_value(node.right)
    if a is None or b is None or (node.op == "/" and b == 0):
        return None
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[node.op]


def _python_value(text: str):
    """Python's own parser on the same text, literals as Fractions: an oracle for precedence."""
    try:
        return eval("(" + re.sub(r"\d+", r"Fraction(\g<0>)", text) + ")", {"Fraction": Fraction})  # noqa: S307
    except ZeroDivisionError:
        return None


@settings(max_examples=300, deadline=None)
@given(_TREES, st.sampled_from(["", " ", "\t", " \n "]))
def test_parse_inverts_render_and_evaluates_like_the_tree(tree, space):
    text = _render(tree, space)
    if len(text) > MAX_CHARS:
        return
    assert parse(text) == tree
    expected = _tree_value(tree)
    assert expected == _python_value(text)
    if expected is None:
        with pytest.raises(ExprError):
            evaluate(parse(text))
    else:
        assert evaluate(parse(text)) == expected


@settings(max_examples=300, deadline=None)
@given(_TREES, st.randoms(use_true_random=False))
def test_check_equation_accepts_exactly_the_true_equations(tree, rnd):
    text = _render(tree)
    value = _tree_value(tree)
    claimed = f"{text} = {value}"
    if len(claimed) > MAX_CHARS or value is None or value.denominator != 1:
        return
    nums = literals(tree)
    rnd.shuffle(nums)
    assert check_equation(text, nums, int(value))
    assert check_equation(claimed, nums, int(value)) is (value >= 0)  # "= -5": no unary minus
    assert not check_equation(text, nums, int(value) + 1)
    assert not check_equation(text, nums + [1], int(value))
    assert not check_equation(text, nums[1:], int(value))


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789+-*/()= \n.x٣＋")), max_size=40))
def test_parse_raises_only_expr_error(text):
    try:
        value = evaluate(parse_equation(text).expr)
    except ExprError:
        return
    assert isinstance(value, Fraction)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.lists(st.integers(0, 100), max_size=4), st.integers(-5, 200))
def test_check_equation_never_raises(text, nums, target):
    assert check_equation(text, nums, target) in (True, False)
