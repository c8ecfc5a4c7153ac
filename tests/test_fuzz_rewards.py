"""Hostile model output: a seeded random and grammar-based fuzz of the parser and both rewards.

Over 100,000 inputs (short soups of hostile characters, mutated Countdown expressions, tag
soups, and every few hundred inputs a long one: 10,000 parentheses, 100 KB thoughts, 100,000-digit
numbers, thousands of tags, completions over the 1 MB cap). Each must return without an exception
other than ExprError from the parser, within a per-input time bound, and memory must stay bounded.
Run with `pytest -s` to see the count and the worst time per input.
"""

from __future__ import annotations

import gc
import random
import time
import tracemalloc
from fractions import Fraction

from mlx_grpo.countdown.expr import ExprError, check_equation, parse_equation
from mlx_grpo.rewards import equation_reward_func, format_reward_func

NUM_INPUTS = 100_000
LONG_EVERY = 400  # one long input in this many
TIME_BOUND_S = 0.5  # per input, all four checks: 10,000x the typical tens of microseconds, so only a
# super-linear blow-up fails it, not a busy shared machine
MEMORY_BOUND_MB = 32  # peak traced allocation while scoring the long inputs

_HOSTILE = list("0123456789+-*/()= \n\t.^%,xe_") + [
    "**",
    "//",
    "٣",
    "३",
    "３",
    "𝟛",
    "²",
    "＋",
    "−",
    "×",
    "÷",
    "／",
    "（",
    "\x00",
    "\x0b",
    "\x1b",
    "\r",
    "\u00a0",
    "\u2003",
    "\u200b",
    "\ufeff",
    "<answer>",
    "</answer>",
    "<think>",
    "</think>",
    "<",
    ">",
]
_PREFIXES = ["", "<think>", "<think>\n", "<think>\n\n</think>\n\n", "Let me solve this step by step.\n<think>"]
_OPS = "+-*/"


def _tree(rng: random.Random, leaves: int):
    """A random expression over `leaves` numbers: (text, numbers, exact value or None on x/0)."""
    if leaves == 1:
        n = rng.choice([rng.randint(1, 99), rng.randint(0, 9), rng.randint(100, 10**6)])
        return str(n), [n], Fraction(n)
    k = rng.randint(1, leaves - 1)
    (lt, ln, lv), (rt, rn, rv), op = _tree(rng, k), _tree(rng, leaves - k), rng.choice(_OPS)
    if lv is None or rv is None or (op == "/" and rv == 0):
        value = None
    else:
        value = lv + rv if op == "+" else lv - rv if op == "-" else lv * rv if op == "*" else lv / rv
    sp = rng.choice(["", " ", "  ", "\n"])
    return f"({lt}{sp}{op}{sp}{rt})", ln + rn, value


def _mutate(rng: random.Random, text: str) -> str:
    i = rng.randrange(len(text) + 1)
    edit = rng.choice(["insert", "delete", "replace", "glue", "zero", "unary", "pow"])
    if edit == "insert":
        return text[:i] + rng.choice(_HOSTILE) + text[i:]
    if edit == "delete":
        return text[:i] + text[i + 1 :]
    if edit == "replace":
        return text[:i] + rng.choice(_HOSTILE) + text[i + 1 :]
    if edit == "glue":
        return text.replace(" ", "", 1)
    if edit == "zero":
        return text.replace("(", "(0", 1)
    if edit == "unary":
        return text[:i] + "-" + text[i:]
    return text.replace("*", "**", 1).replace("/", "//", 1)


def _short_input(rng: random.Random, i: int) -> tuple[str, str, list, int]:
    """(completion, assistant prefix, numbers, target) for one short fuzz input."""
    kind = i % 4
    text, nums, value = _tree(rng, rng.randint(1, 6))
    target = int(value) if value is not None and value.denominator == 1 and rng.random() < 0.7 else rng.randint(0, 100)
    if kind == 0:  # a valid or mutated equation in a well-formed completion
        answer = text if rng.random() < 0.3 else _mutate(rng, text)
        if rng.random() < 0.2:
            answer += f" = {target}"
        return f"<think>\n{rng.choice(_HOSTILE)}\n</think>\n<answer> {answer} </answer>", "", nums, target
    if kind == 1:  # a soup of hostile characters and tag fragments
        soup = "".join(rng.choices(_HOSTILE, k=rng.randint(0, 80)))
        return soup, rng.choice(_PREFIXES), nums, target
    if kind == 2:  # tags in random order around expressions
        parts = rng.choices(["<think>", "</think>", "<answer>", "</answer>", "\n", text, _mutate(rng, text)], k=8)
        return "".join(parts), rng.choice(_PREFIXES), nums, target
    return f"<answer>{text}</answer>", "<think>\n\n</think>\n\n", nums, target  # thinking off


def _long_input(rng: random.Random, i: int) -> tuple[str, str, list, int]:
    kind = (i // LONG_EVERY) % 7
    wrap = "<think>x</think>\n<answer>{}</answer>"
    if kind == 0:
        return wrap.format("(" * 10_000 + "1 + 2" + ")" * 10_000), "", [1, 2], 3
    if kind == 1:
        return wrap.format("(" * 64 + "1 + 2" + ")" * 64), "", [1, 2], 3
    if kind == 2:
        return "<think>" + "why? " * 20_000 + "</think>\n<answer>1 + 2</answer>", "", [1, 2], 3
    if kind == 3:
        digits = "9" * rng.choice([301, 4301, 100_000])
        return wrap.format(f"{digits} ** {digits}"), "", [9, 9], 1
    if kind == 4:
        return "<answer>1 + 2</answer>" * 5_000, rng.choice(_PREFIXES), [1, 2], 3
    if kind == 5:
        return "<think>" + "x" * 1_000_001 + "</think>\n<answer>1 + 2</answer>", "", [1, 2], 3
    soup = "".join(rng.choices(_HOSTILE, k=200))
    return soup * 500, rng.choice(_PREFIXES), [1, 2], 3


def _inputs(n: int, seed: int = 0):
    rng = random.Random(seed)
    for i in range(n):
        yield (_long_input if i % LONG_EVERY == LONG_EVERY - 1 else _short_input)(rng, i)


def _check_one(completion: str, prefix: str, nums: list, target: int) -> None:
    """All four entry points on one input; only the parser may raise, and only ExprError."""
    try:
        parse_equation(completion)
    except ExprError:
        pass
    assert check_equation(completion, nums, target) in (True, False)
    assert format_reward_func([completion], assistant_prefixes=[prefix])[0] in (0.0, 1.0)
    assert equation_reward_func([completion], [target], [nums])[0] in (0.0, 1.0)


def _timed(args) -> float:
    start = time.perf_counter()
    _check_one(*args)
    return time.perf_counter() - start


def test_fuzz_no_exception_and_bounded_time_per_input():
    count, worst, worst_long, slow = 0, 0.0, 0.0, []
    gc.disable()  # a collection pause is not the input's cost
    try:
        for args in _inputs(NUM_INPUTS):
            elapsed = _timed(args)
            count += 1
            worst = max(worst, elapsed)
            if len(args[0]) > 10_000:
                worst_long = max(worst_long, elapsed)
            if elapsed > TIME_BOUND_S:
                slow.append(args)
    finally:
        gc.enable()
    # On a shared machine a slow sample may be the scheduler's doing: re-time those inputs, keep the best of 3.
    retimed = [min(_timed(args) for _ in range(3)) for args in slow]
    print(
        f"\nfuzz: {count} inputs, worst {worst * 1e3:.2f} ms per input (over 10k characters: "
        f"{worst_long * 1e3:.2f} ms); {len(slow)} over {TIME_BOUND_S * 1e3:.0f} ms, "
        f"re-timed worst {max(retimed, default=0) * 1e3:.2f} ms"
    )
    assert count >= NUM_INPUTS
    assert all(t < TIME_BOUND_S for t in retimed)


def test_fuzz_valid_equations_are_scored_correctly():
    """The grammar-based inputs double as a consistency check: unmutated true equations score 1."""
    rng = random.Random(1)
    for _ in range(2_000):
        text, nums, value = _tree(rng, rng.randint(1, 5))
        if value is None or value.denominator != 1:
            continue
        completion = f"<think>\nok\n</think>\n<answer>{text}</answer>"
        assert format_reward_func([completion]) == [1.0]
        assert equation_reward_func([completion], [int(value)], [nums]) == [float(len(text) <= 300)]
        assert equation_reward_func([completion], [int(value) + 1], [nums]) == [0.0]


def test_fuzz_memory_stays_bounded_on_long_inputs():
    long_inputs = [_long_input(random.Random(i), i * LONG_EVERY) for i in range(7)]  # one of each kind
    tracemalloc.start()
    try:
        for args in long_inputs:
            _check_one(*args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\nfuzz: peak traced memory on the long inputs {peak / 2**20:.1f} MB")
    assert peak < MEMORY_BOUND_MB * 2**20
