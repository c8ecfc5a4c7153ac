"""Countdown judged once per completion: well formed, an equation over the numbers, correct.

Training (the rewards, the metrics, the completion log) and evaluation all read the same `Verdict`,
so each completion is parsed once per step, and "accuracy" means one thing everywhere.

- well formed: the whole assistant turn is `<think>THOUGHT</think>\\n<answer>ANSWER</answer>` and
  nothing else, as the original notebook's regex
  `^<think>((?:(?!</think>).)*)</think>\\n<answer>((?:(?!</answer>).)*)</answer>$` (DOTALL), except
  that "\\n\\n" after `</think>` passes as well as "\\n": Qwen3's chat template renders every turn as
  `<think>\\n…\\n</think>\\n\\n…`, its early-stop text ends in `</think>\\n\\n`, and after `</think>`
  the tokenizer makes "\\n\\n" one token (271), so a Qwen3 that writes its usual turn would otherwise
  never be well formed (docs/recipe.md). No newline there still fails, as in the seed. The turn is
  `assistant_prefix + completion`, judged from the prefix's `<think>` on (text a prefill puts before it
  is the prompt's, not the model's). When the prefix already closed the think block (Qwen3 with
  thinking off renders `<think>\\n\\n</think>\\n\\n`), the completion must be exactly one
  `<answer>...</answer>` block. One departure: Python's `$` also matches before a final "\\n", so the
  original accepted `</answer>\\n`; here nothing at all may follow `</answer>`.
- a forced close is never well formed. When the sampler's thinking budget closed the think block
  (`mlx_grpo.budget`), the completion text holds the early-stop text, `</think>` included, and the
  answer after it. That `</think>` is the prompt's, not the model's: the model never closed its
  thought, so judging the text as it stands would pay the format reward for text the model did not
  write, as much for running into the budget as for finishing in time, and take away the one signal
  that teaches it to think within the budget. (Removing the stop text before judging comes to the
  same: the thought left has no `</think>` of the model's.)
- equation: the text of the first `<answer>...</answer>` block, and its exact value when it uses each
  of the task's numbers exactly once (`countdown.expr`; a trailing `= N` must be true). Text after
  `</answer>` does not matter here: the format check already punishes it, and keeping the two
  independent keeps accuracy a measure of arithmetic alone.
- self-check: the thought rejects a stated candidate against the target and then tries another
  (`countdown.selfcheck`, the measure of the "aha" behaviour; it rewards nothing).
- correct: that value is the target. In a forced row the answer block is the one the model wrote
  after the stop text (which holds no `<answer>`): its own text, conditioned on the stop text as on
  a prompt, so a forced row scores format 0 but can still be correct.

Linear time in the completion (two `str.find`s, then a parser bounded by `expr.MAX_CHARS`);
completions longer than MAX_COMPLETION_CHARS are judged not well formed and wrong outright.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from mlx_grpo.countdown.expr import as_int, equation_value, extract_equation
from mlx_grpo.countdown.selfcheck import is_self_check
from mlx_grpo.countdown.tasks import Task

MAX_COMPLETION_CHARS = 1_000_000  # far beyond any generation budget; bounds the time per input


@dataclass(frozen=True)
class Verdict:
    """What one completion of one task is worth."""

    well_formed: bool  # the assistant turn is exactly <think>…</think>\n<answer>…</answer> (or \n\n)
    answer: str | None  # stripped text of the first <answer> block; None when there is none
    value: Fraction | None  # the answer's exact value when it is an equation over the task's numbers
    correct: bool  # value == target
    forced_close: bool = False  # the sampler's thinking budget closed the think block (never well formed)
    self_check: bool = False  # the thought rejects a candidate against the target, then tries another

    @property
    def is_equation(self) -> bool:
        """The answer is an equation that uses every number once, right or wrong (not a bare result)."""
        return self.value is not None


def judge(completion: str, target, nums: Sequence, assistant_prefix: str = "", forced_close: bool = False) -> Verdict:
    """The verdict on one completion (see the module docstring). Never raises on model output.

    `forced_close`: the sampler appended the early-stop text (the completion includes it).

    Raises:
        ValueError: a target or number is not an integer (bad task data, not bad model output).
    """
    target, nums = as_int(target), [as_int(n) for n in nums]
    readable = isinstance(completion, str) and len(completion) <= MAX_COMPLETION_CHARS
    answer = extract_equation(completion) if readable else None
    value = None if answer is None else equation_value(answer, nums)
    well_formed = not forced_close and is_well_formed(completion, assistant_prefix)
    self_check = readable and is_self_check(completion, target)
    return Verdict(well_formed, answer, value, value == target, forced_close, self_check)


def judge_all(
    completions: Sequence[str],
    tasks: Sequence[Task],
    assistant_prefixes: Sequence[str],
    forced_close: Sequence[bool] | None = None,
) -> list[Verdict]:
    """Verdicts `[R]` for completions `[R]` of tasks `[R]` with the prompts' assistant prefixes `[R]`
    and, with a thinking budget, which rows the sampler closed `[R]` (default: none)."""
    forced_close = [False] * len(completions) if forced_close is None else forced_close
    if not len(completions) == len(tasks) == len(assistant_prefixes) == len(forced_close):
        raise ValueError(
            f"{len(completions)} completions, {len(tasks)} tasks, {len(assistant_prefixes)} prefixes, "
            f"{len(forced_close)} forced flags"
        )
    return [
        judge(c, t.target, t.nums, p, f) for c, t, p, f in zip(completions, tasks, assistant_prefixes, forced_close)
    ]


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
    if end < 0:
        return False
    after = end + len("</think>")
    separator = "\n\n" if turn.startswith("\n\n", after) else "\n"  # Qwen3's template writes "\n\n"
    return turn.startswith(separator, after) and _is_answer_block(turn[after + len(separator) :])


def _is_answer_block(text: str) -> bool:
    # "<answer>", then anything without "</answer>", then "</answer>" as the very end
    # (a text shorter than "</answer>" has find == -1 == len - 9: "<answer>" alone must not pass)
    end = len(text) - len("</answer>")
    return end >= len("<answer>") and text.startswith("<answer>") and text.find("</answer>", len("<answer>")) == end
