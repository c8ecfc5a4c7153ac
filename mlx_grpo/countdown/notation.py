"""Numbers as the bundled model writes them in its thought: least significant digit first, three digits.

    >>> write(44), write(7), write(630)
    ('440', '700', '036')
    >>> read("440")
    44

A tiny transformer that writes "44 + 19 = 63" has to produce the result's first digit, 6, before
the carry of 4 + 9 is on the page. Written backwards and padded to one width, "440 + 910 = 360",
each digit of the result depends on the two digits at fixed distances before it and on the carry
of the digit it has just written: the bundled model's shape learns + and - lines to 99% exact this
way, against 10% written the usual way after the same training (scripts/README.md, section 7; the
layouts of "Teaching Arithmetic to Small Transformers", Lee et al. 2023).

A thought in this notation starts with the line HEADER, so that the text itself says how to read
it: `countdown.selfcheck` then reads its step and rejection lines backwards, and `readable` writes
them the usual way for people. Such a thought then restates the task's numbers and target, the
usual way and reversed (`restatement`: "44 19 35 98 -> 440 910 530 890"): copying a number from
the prompt and reversing it are two easy steps where one was hard. The answer
(`<answer> (44 + 19) + 35 </answer>`) is always written the usual way: it is what the equation
reward parses.
"""

from __future__ import annotations

import re

WIDTH = 3  # every number of a reversed thought: 0..999
HEADER = "digits reversed"
RESTATES = " -> "  # a restatement line: the usual way, RESTATES, reversed
_NUMBER = re.compile(r"\d+")


def write(n: int) -> str:
    """`n` (0..999) with its digits least significant first, padded with zeros to WIDTH."""
    if not 0 <= n < 10**WIDTH:
        raise ValueError(f"{n} does not fit in {WIDTH} reversed digits")
    return f"{n:0{WIDTH}d}"[::-1]


def read(digits: str) -> int:
    """The number that `digits` (least significant first) writes."""
    return int(digits[::-1])


def fits(*numbers: int) -> bool:
    """Whether every number can be written in this notation."""
    return all(0 <= n < 10**WIDTH for n in numbers)


def is_reversed(thought: str) -> bool:
    """Whether a thought (the text after `<think>`, or from it) is written in this notation."""
    text = thought.removeprefix("<think>").lstrip("\n")
    return text.split("\n", 1)[0].strip() == HEADER


def restatement(numbers) -> str:
    """The line that gives `numbers` the usual way, then in this notation: "44 19 35 98 -> 440 910 530 890"."""
    return " ".join(map(str, numbers)) + RESTATES + " ".join(map(write, numbers))


def readable(completion: str) -> str:
    """`completion` with the numbers of a reversed thought written the usual way (for people); the
    left side of a restatement is already."""
    end = completion.find("</think>")
    thought, rest = (completion, "") if end < 0 else (completion[:end], completion[end:])
    if not is_reversed(thought):
        return completion
    lines = []
    for line in thought.split("\n"):
        usual, arrow, reversed_part = line.rpartition(RESTATES)
        lines.append(usual + arrow + _NUMBER.sub(lambda m: str(read(m[0])), reversed_part))
    return "\n".join(lines) + rest
