"""Reward functions for Countdown, and the registry that combines them with weights.

A reward function takes the keyword arguments the trainer passes and returns one float per
completion: `completions` (decoded text, stop token removed), `targets`, `nums_list`,
`assistant_prefixes` (the part of the assistant turn already in the prompt), `verdicts` (the
`countdown.scoring.Verdict` of each completion, judged once per step) and, when the caller has them,
`prompts`. Built-in rewards (names for the `rewards` setting) read the verdicts, so no completion is
parsed twice; called without them (the seed notebook's way) they judge the completions themselves:

- "format" (`format_reward_func`): 1.0 when the whole assistant turn is
  `<think>THOUGHT</think>\\n<answer>ANSWER</answer>` ("\\n\\n" passes too) and nothing else, and the
  model closed its think block itself (`Verdict.well_formed`), else 0.0.
- "equation" (`equation_reward_func`): 1.0 when the first `<answer>...</answer>` block holds an
  equation that uses each number exactly once and equals the target exactly (`Verdict.correct`).
- "equation_partial" (off by default): 1.0 when correct; for a valid equation that uses exactly the
  numbers but misses, `0.5 * max(0, 1 - |value - target| / max(|target|, 1))`; 0.0 otherwise.

Custom rewards: `module:function` or `path/to/file.py:function`; any spec may end in `=WEIGHT`.
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

from mlx_grpo.countdown.expr import as_int
from mlx_grpo.countdown.scoring import Verdict, is_well_formed, judge, judge_all
from mlx_grpo.countdown.tasks import Task
from mlx_grpo.errors import UserError

RewardFunc = Callable[..., list]


def format_reward_func(
    completions: Sequence[str],
    assistant_prefixes: Sequence[str] | None = None,
    verdicts: Sequence[Verdict] | None = None,
    **kwargs,
) -> list[float]:
    """1.0 per completion whose assistant turn is exactly `<think>…</think>\\n<answer>…</answer>`, else 0.0
    ("\\n\\n" after `</think>` passes too; a think block the thinking budget closed never does, which
    only the verdicts know: see `countdown.scoring`).

    Args:
        completions: [R] completion texts.
        assistant_prefixes: [R] the assistant-turn text already in each prompt (default: "" each).
        verdicts: [R] the completions' verdicts, when the caller judged them already.
    """
    if verdicts is None:
        prefixes = [""] * len(completions) if assistant_prefixes is None else assistant_prefixes
        _check_lengths(completions, assistant_prefixes=prefixes)
        return [1.0 if is_well_formed(c, p) else 0.0 for c, p in zip(completions, prefixes)]
    return [1.0 if v.well_formed else 0.0 for v in _checked_verdicts(completions, verdicts)]


def equation_reward_func(
    completions: Sequence[str], targets: Sequence, nums_list: Sequence, verdicts=None, **kwargs
) -> list[float]:
    """1.0 per completion whose first answer block reaches its target exactly with its numbers, else 0.0.

    Args:
        completions: [R] completion texts.
        targets: [R] targets, ints or strings like "14".
        nums_list: [R] lists of available numbers, ints or strings.
        verdicts: [R] the completions' verdicts, when the caller judged them already.
    Raises:
        ValueError: a target or number is not an integer (bad task data, not bad model output).
    """
    return [1.0 if v.correct else 0.0 for v in _verdicts(completions, targets, nums_list, verdicts)]


def equation_partial_reward_func(
    completions: Sequence[str], targets: Sequence, nums_list: Sequence, verdicts=None, **kwargs
) -> list[float]:
    """Like `equation_reward_func`, plus up to 0.5 for a valid equation that uses the numbers but misses."""
    verdicts = _verdicts(completions, targets, nums_list, verdicts)
    return [_closeness(v.value, as_int(t)) for v, t in zip(verdicts, targets)]


def _closeness(value: Fraction | None, target: int) -> float:
    if value is None:
        return 0.0
    if value == target:
        return 1.0
    return float(max(Fraction(0), 1 - abs(value - target) / max(abs(target), 1)) / 2)


def _verdicts(completions, targets, nums_list, verdicts) -> Sequence[Verdict]:
    _check_lengths(completions, targets=targets, nums_list=nums_list)
    if verdicts is None:  # the answer's value does not depend on the format: no prefix needed
        verdicts = [judge(c, t, n) for c, t, n in zip(completions, targets, nums_list)]
    return _checked_verdicts(completions, verdicts)


def _checked_verdicts(completions, verdicts) -> Sequence[Verdict]:
    _check_lengths(completions, verdicts=verdicts)
    return verdicts


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
        verdicts: Sequence[Verdict] | None = None,
        prompts: Sequence[str] | None = None,
    ) -> tuple[list[float], dict[str, list[float]]]:
        """Score completions [R] of tasks [R] (one task per completion).

        `verdicts` [R] are the completions' `judge_all` verdicts when the caller has them already
        (they are judged here otherwise); every reward function receives them.

        Returns:
            (totals [R] weighted sums, {name: [R] unweighted values}) in `names` order.
        Raises:
            UserError: a reward returned the wrong number of values or a non-finite value.
        """
        n = len(completions)
        prefixes = [""] * n if assistant_prefixes is None else list(assistant_prefixes)
        kwargs = {
            "completions": list(completions),
            "targets": [t.target for t in tasks],
            "nums_list": [list(t.nums) for t in tasks],
            "assistant_prefixes": prefixes,
            "verdicts": judge_all(completions, tasks, prefixes) if verdicts is None else list(verdicts),
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
