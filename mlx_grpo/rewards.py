"""Reward functions for Countdown, and the registry that combines them with weights.

A reward function takes the keyword arguments the trainer passes and returns one float per
completion: `completions` (decoded text, stop token removed), `targets`, `nums_list`,
`assistant_prefixes` (the part of the assistant turn already in the prompt) and, when the caller
has them, `prompts`. Built-in rewards (names for the `rewards` setting):

- "format" (`format_reward_func`): 1.0 when the whole assistant turn is
  `<think>THOUGHT</think>\\n<answer>ANSWER</answer>` and nothing else, as the original's regex
  `^<think>((?:(?!</think>).)*)</think>\\n<answer>((?:(?!</answer>).)*)</answer>$` (DOTALL), else 0.0.
  The turn is `assistant_prefix + completion`, judged from the prefix's `<think>` on (text a prefill
  puts before it is the prompt's, not the model's). When the prefix already closed the think block
  (Qwen3 with thinking off renders `<think>\\n\\n</think>\\n\\n`), the completion must be exactly one
  `<answer>...</answer>` block. One departure: Python's `$` also matches before a final "\\n", so
  the original accepted `</answer>\\n`; here nothing at all may follow `</answer>`.
- "equation" (`equation_reward_func`): 1.0 when the first `<answer>...</answer>` block holds an
  equation that uses each number exactly once and equals the target exactly (see
  `countdown.expr`; a trailing `= N` must be true), else 0.0. Text after `</answer>` does not
  matter here: the format reward already punishes it, and keeping the two independent keeps
  accuracy a measure of arithmetic alone (the original's four test cases rely on that).
- "equation_partial" (off by default): 1.0 when correct; for a valid equation that uses exactly the
  numbers but misses, `0.5 * max(0, 1 - |value - target| / max(|target|, 1))`; 0.0 otherwise.

Custom rewards: `module:function` or `path/to/file.py:function`; any spec may end in `=WEIGHT`.

Every built-in reward takes linear time in the completion with a small constant (two `str.find`s,
then a parser bounded by `expr.MAX_CHARS`), and completions longer than MAX_COMPLETION_CHARS score
0.0 outright. Measured (`RewardSet.score`, Python 3.11, the shared 2-core development machine):
10,000 completions in the reference solutions' format, half with a wrong target, score with
format + equation in 0.17 s (0.35 s with equation_partial added), about 17 µs per completion.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from mlx_grpo.countdown.expr import as_int, equation_value, extract_equation
from mlx_grpo.countdown.tasks import Task
from mlx_grpo.errors import UserError

MAX_COMPLETION_CHARS = 1_000_000  # far beyond any generation budget; bounds the time per input

RewardFunc = Callable[..., list]


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


def format_reward_func(
    completions: Sequence[str], assistant_prefixes: Sequence[str] | None = None, **kwargs
) -> list[float]:
    """1.0 per completion whose assistant turn is exactly `<think>…</think>\\n<answer>…</answer>`, else 0.0.

    Args:
        completions: [R] completion texts.
        assistant_prefixes: [R] the assistant-turn text already in each prompt (default: "" each).
    """
    prefixes = [""] * len(completions) if assistant_prefixes is None else assistant_prefixes
    _check_lengths(completions, assistant_prefixes=prefixes)
    return [1.0 if is_well_formed(c, p) else 0.0 for c, p in zip(completions, prefixes)]


def equation_reward_func(completions: Sequence[str], targets: Sequence, nums_list: Sequence, **kwargs) -> list[float]:
    """1.0 per completion whose first answer block reaches its target exactly with its numbers, else 0.0.

    Args:
        completions: [R] completion texts.
        targets: [R] targets, ints or strings like "14".
        nums_list: [R] lists of available numbers, ints or strings.
    Raises:
        ValueError: a target or number is not an integer (bad task data, not bad model output).
    """
    return [1.0 if value == target else 0.0 for value, target in _answer_values(completions, targets, nums_list)]


def equation_partial_reward_func(
    completions: Sequence[str], targets: Sequence, nums_list: Sequence, **kwargs
) -> list[float]:
    """Like `equation_reward_func`, plus up to 0.5 for a valid equation that uses the numbers but misses."""
    return [_closeness(value, target) for value, target in _answer_values(completions, targets, nums_list)]


def _closeness(value: Fraction | None, target: int) -> float:
    if value is None:
        return 0.0
    if value == target:
        return 1.0
    return float(max(Fraction(0), 1 - abs(value - target) / max(abs(target), 1)) / 2)


def _answer_values(completions, targets, nums_list) -> list[tuple[Fraction | None, int]]:
    # [R] (value of the answer's equation or None, target)
    _check_lengths(completions, targets=targets, nums_list=nums_list)
    out = []
    for completion, target, nums in zip(completions, targets, nums_list):
        target, nums = as_int(target), [as_int(n) for n in nums]
        readable = isinstance(completion, str) and len(completion) <= MAX_COMPLETION_CHARS
        answer = extract_equation(completion) if readable else None
        out.append((None if answer is None else equation_value(answer, nums), target))
    return out


def _check_lengths(rows: Sequence, **columns) -> None:
    for name, column in columns.items():
        if len(column) != len(rows):
            raise ValueError(f"{name} has {len(column)} entries for {len(rows)} rows")


BUILTIN_REWARDS: dict[str, RewardFunc] = {
    "format": format_reward_func,
    "equation": equation_reward_func,
    "equation_partial": equation_partial_reward_func,
}
DEFAULT_REWARDS = ("format", "equation")


@dataclass(frozen=True)
class Reward:
    name: str  # metric key: rewards/<name>
    func: RewardFunc
    weight: float = 1.0


def get_reward(spec: str) -> Reward:
    """Resolve "name", "module:function" or "path/to/file.py:function", each optionally "=WEIGHT".

    Examples: "format", "equation=2", "my_pkg.rewards:length_penalty=-0.1", "rewards.py:brevity".
    A custom reward is named after its function. Raises UserError for unknown names, missing
    files or modules, and attributes that are not callables.
    """
    ref, weight = _split_weight(spec)
    if ref in BUILTIN_REWARDS:
        return Reward(ref, BUILTIN_REWARDS[ref], weight)
    if ":" not in ref:
        raise UserError(
            f"unknown reward {ref!r}: use one of {', '.join(BUILTIN_REWARDS)}, "
            "module:function or path/to/file.py:function"
        )
    source, _, attr = ref.rpartition(":")
    module = _load_file(source) if source.endswith(".py") or "/" in source else _import(source)
    func = getattr(module, attr, None)
    if not callable(func):
        raise UserError(f"reward {ref!r}: {source} has no function {attr!r}")
    return Reward(attr, func, weight)


def _split_weight(spec: str) -> tuple[str, float]:
    ref, sep, weight_text = str(spec).strip().rpartition("=")
    if not sep:
        return weight_text, 1.0
    try:
        weight = float(weight_text)
    except ValueError:
        raise UserError(f"reward {spec!r}: weight {weight_text!r} is not a number") from None
    if not math.isfinite(weight):
        raise UserError(f"reward {spec!r}: weight must be finite")
    return ref.strip(), weight


def _load_file(source: str):
    path = Path(source)
    if not path.is_file():
        raise UserError(f"reward file not found: {source}")
    name = f"mlx_grpo_user_reward_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # as importlib's recipe does: dataclasses etc. look themselves up here
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise UserError(f"could not load reward file {source}: {type(e).__name__}: {e}") from e
    return module


def _import(source: str):
    try:
        return importlib.import_module(source)
    except Exception as e:
        raise UserError(f"could not import reward module {source!r}: {type(e).__name__}: {e}") from e


@dataclass(frozen=True)
class RewardSet:
    """Weighted reward functions scored together: total = sum(weight * reward)."""

    rewards: tuple[Reward, ...]

    @classmethod
    def from_specs(cls, specs: Iterable[str] = DEFAULT_REWARDS) -> RewardSet:
        """Build from specs like ["format", "equation=2"] (see `get_reward`)."""
        rewards = tuple(get_reward(s) for s in ([specs] if isinstance(specs, str) else specs))
        if not rewards:
            raise UserError("no reward functions given")
        names = [r.name for r in rewards]
        for name in names:
            if names.count(name) > 1:
                raise UserError(f"reward {name!r} is given more than once")
        return cls(rewards)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rewards]

    @property
    def weights(self) -> list[float]:
        return [r.weight for r in self.rewards]

    def score(
        self,
        completions: Sequence[str],
        tasks: Sequence[Task],
        assistant_prefixes: Sequence[str] | None = None,
        *,
        prompts: Sequence[str] | None = None,
    ) -> tuple[list[float], dict[str, list[float]]]:
        """Score completions [R] of tasks [R] (one task per completion).

        Returns:
            (totals [R] weighted sums, {name: [R] unweighted values}) in `names` order.
        Raises:
            UserError: a reward returned the wrong number of values or a non-finite value.
        """
        n = len(completions)
        kwargs = {
            "completions": list(completions),
            "targets": [t.target for t in tasks],
            "nums_list": [list(t.nums) for t in tasks],
            "assistant_prefixes": [""] * n if assistant_prefixes is None else list(assistant_prefixes),
        }
        if prompts is not None:
            kwargs["prompts"] = list(prompts)
        _check_lengths(tasks, **kwargs)
        per_reward = {r.name: _checked(r.name, r.func(**kwargs), n) for r in self.rewards}
        totals = [sum(r.weight * per_reward[r.name][i] for r in self.rewards) for i in range(n)]
        return totals, per_reward


def _checked(name: str, values, n: int) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise UserError(f"reward {name!r} must return a list of numbers") from None
    if len(out) != n:
        raise UserError(f"reward {name!r} returned {len(out)} values for {n} completions")
    if not all(math.isfinite(v) for v in out):
        raise UserError(f"reward {name!r} returned a NaN or infinite value")
    return out
