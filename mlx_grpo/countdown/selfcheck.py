"""Self-checks in a Countdown completion: a candidate computed, compared with the target, rejected, retried.

The "aha moment" of R1-Zero-style training is the model catching its own wrong attempt and trying
again. This module counts that behaviour from the completion's text alone, by a definition narrow
enough to test:

    step       := NUMBER OP NUMBER "=" NUMBER          one arithmetic operation on one line
    rejection  := NUMBER ("!=" | "≠" | "is not") TARGET   at the start of a line

A completion **self-checks** when its thought (the text before `</think>`, or all of it when there
is none) holds, in this order:

1. a candidate: at least one step line, the last of which states the candidate's value `v`;
2. a rejection of it: a line `v != T` whose left side is that stated value `v` and whose right side
   is the task's target `T` (a comparison with any other number, or of a value the lines above
   never computed, is not a check of this candidate);
3. another candidate: at least one step line after the rejection.

A thought written in the bundled model's notation (`countdown.notation`: a first line HEADER, then
numbers with their digits least significant first) is read in it: "440 + 910 = 360" is 44 + 19 = 63.

A line `v = T` that confirms a candidate is not a rejection, and a rejection after which the
thought ends (the model gives up and answers) does not count: the behaviour is *try again*. The
definition reads what the model wrote, right or wrong: `Step.correct` says whether a step's
arithmetic is true, so a caller can also measure how reliable the checks are.

    >>> self_checks("<think>\\n5 + 4 = 9\\n9 != 20\\n5 * 4 = 20\\n</think>", target=20)
    1
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from mlx_grpo.countdown import notation

_NUM = r"\d{1,12}"
_STEP = re.compile(rf"^\s*\(?({_NUM})\)?\s*([-+*/])\s*\(?({_NUM})\)?\s*=\s*({_NUM})\s*$")
# A rejection line; MULTILINE so that a caller can also find (and highlight) every one in a text.
REJECTION_LINE = re.compile(rf"^[ \t]*({_NUM})[ \t]*(?:!=|≠|is not)[ \t]*({_NUM})\b", re.MULTILINE)
_OPS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: Fraction(a, b) if b else None,
}


@dataclass(frozen=True)
class Step:
    """One arithmetic line `left op right = result` as written."""

    left: int
    op: str
    right: int
    result: int

    @property
    def correct(self) -> bool:
        """Whether the stated result is the operation's true value."""
        return _OPS[self.op](self.left, self.right) == self.result


def thought(completion: str) -> str:
    """The part of a completion before its first `</think>` (all of it when there is none)."""
    end = completion.find("</think>")
    return completion if end < 0 else completion[:end]


def _reader(text: str):
    """How the numbers of a thought are read: backwards when it is in the bundled model's notation."""
    return notation.read if notation.is_reversed(text) else int


def steps(completion: str) -> list[Step]:
    """Every step line of the thought, in order."""
    text = thought(completion)
    number = _reader(text)
    found = (_STEP.match(line) for line in text.splitlines())
    return [Step(number(m[1]), m[2], number(m[3]), number(m[4])) for m in found if m]


def self_checks(completion: str, target: int) -> int:
    """How many times the thought rejects its last candidate against `target` and then tries another.

    Returns 0 for a completion that does not self-check (see the module docstring).
    """
    text = thought(completion)
    number = _reader(text)
    count, last_value, pending = 0, None, False
    for line in text.splitlines():
        step = _STEP.match(line)
        if step:
            count += pending  # a rejected candidate followed by a new one
            pending, last_value = False, number(step[4])
            continue
        rejection = REJECTION_LINE.match(line)
        if rejection and last_value is not None and not pending:
            pending = number(rejection[1]) == last_value and number(rejection[2]) == target != last_value
    return count


def is_self_check(completion: str, target: int) -> bool:
    """Whether the completion self-checks at least once (`self_checks(...) >= 1`)."""
    return self_checks(completion, target) > 0
