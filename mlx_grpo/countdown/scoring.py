"""Countdown judged once per completion: well formed, an equation over the numbers, correct.

Training (the rewards, the metrics, the completion log) and evaluation all read the same `Verdict`,
so each completion is parsed once per step, and "accuracy" means one thing everywhere.

- well formed: the whole assistant turn is `<think>THOUGHT</think>\\n<answer>ANSWER</answer>` and
  nothing else, as the original notebook's regex
  `^<think>((?:(?!</think>).)*)</think>\\n<answer>((?:(?!</answer>).)*)</answer>$` (DOTALL). The turn is
  `assistant_prefix + completion`, judged from the prefix's `<think>` on (text a prefill puts before it
  is the prompt's, not the model's). When the prefix already closed the think block (Qwen3 with
  thinking off renders `<think>\\n\\n</think>\\n\\n`), the completion must be exactly one
  `<answer>...</answer>` block. One departure: Python's `$` also matches before a final "\\n", so the
  original accepted `</answer>\\n`; here nothing at all may follow `</answer>`.
- equation: the text of the first `<answer>...</answer>` block, and its exact value when it uses each
  of the task's numbers exactly once (`countdown.expr`; a trailing `= N` must be true). Text after
  `</answer>` does not matter here: the format check already punishes it, and keeping the two
  independent keeps accuracy a measure of arithmetic alone.
- correct: that value is the target.

Linear time in the completion (two `str.find`s, then a parser bounded by `expr.MAX_CHARS`);
completions longer than MAX_COMPLETION_CHARS are judged not well formed and wrong outright.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from mlx_grpo.countdown.expr import as_int, equation_value, extract_equation
from mlx_grpo.countdown.tasks import Task

MAX_COMPLETION_CHARS = 1_000_000  # far beyond any generation budget; bounds the time per input


@dataclass(frozen=True)
class Verdict:
    """What one completion of one task is worth."""

    well_formed: bool  # the assistant turn is exactly <think>…</think>\n<answer>…</answer>
    answer: str | None  # stripped text of the first <answer> block; None when there is none
    value: Fraction | None  # the answer's exact value when it is an equation over the task's numbers
    correct: bool  # value == target

    @property
    def is_equation(self) -> bool:
        """The answer is an equation that uses every number once, right or wrong (not a bare result)."""
        return self.value is not None


def judge(completion: str, target, nums: Sequence, assistant_prefix: str = "") -> Verdict:
    """The verdict on one completion (see the module docstring). Never raises on model output.

    Raises:
        ValueError: a target or number is not an integer (bad task data, not bad model output).
    """
    target, nums = as_int(target), [as_int(n) for n in nums]
    readable = isinstance(completion, str) and len(completion) <= MAX_COMPLETION_CHARS
    answer = extract_equation(completion) if readable else None
    value = None if answer is None else equation_value(answer, nums)
    return Verdict(is_well_formed(completion, assistant_prefix), answer, value, value == target)


def judge_all(completions: Sequence[str], tasks: Sequence[Task], assistant_prefixes: Sequence[str]) -> list[Verdict]:
    """Verdicts `[R]` for completions `[R]` of tasks `[R]` with the prompts' assistant prefixes `[R]`."""
    if not len(completions) == len(tasks) == len(assistant_prefixes):
        raise ValueError(f"{len(completions)} completions, {len(tasks)} tasks, {len(assistant_prefixes)} prefixes")
    return [judge(c, t.target, t.nums, p) for c, t, p in zip(completions, tasks, assistant_prefixes)]


def is_well_formed(completion: str, assistant_prefix: str = "") -> bool:
    """The format check for one completion (see the module docstring). Never raises."""
    if not isinstance(completion, str) or len(completion) + len(assistant_prefix) > MAX_COMPLETION_CHARS:
        return False
    closed = assistant_prefix.find("</think>")
    if closed >= 0:  # the prompt closed the think block: only the answer is the model's
        return _is_answer_block(assistant_prefix[closed + len("</think>") :].lstrip() + completion)
    opened = assistant_prefix.find("<think>")
    turn = (assistant_prefix[opened:] if opened >= 0 else assistant_prefix) + completion
    if not turn.startswith("<think>"):
        return False
    end = turn.find("</think>", len("<think>"))  # the think block ends at the first </think>
    after = end + len("</think>")
    return end >= 0 and turn.startswith("\n", after) and _is_answer_block(turn[after + 1 :])


def _is_answer_block(text: str) -> bool:
    # "<answer>", then anything without "</answer>", then "</answer>" as the very end
    return text.startswith("<answer>") and text.find("</answer>", len("<answer>")) == len(text) - len("</answer>")
