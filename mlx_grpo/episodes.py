"""Episodes: the unit that flows from rollout to update.

B tasks -> B chat prompts -> B×G sampled completions (group-major) -> text -> rewards. Training
and evaluation both produce their samples here, so both score completions the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import mlx.core as mx

from mlx_grpo.countdown.prompts import Prompt, build_prompt
from mlx_grpo.countdown.tasks import Task
from mlx_grpo.model import adapters_merged
from mlx_grpo.rewards import RewardSet, equation_reward_func, format_reward_func
from mlx_grpo.rollout import Rollout, generate


@dataclass
class Episodes:
    tasks: list[Task]  # [B]
    prompts: list[Prompt]  # [B]
    rollout: Rollout  # tokens/mask/logps [R, T], R = B*G in group-major order
    completions: list[str]  # [R] decoded completion text, stop token removed
    rewards: dict[str, list[float]]  # reward name -> [R] unweighted values
    totals: list[float]  # [R] weighted sum of the rewards
    correct: list[bool]  # [R] the equation reaches the target (accuracy)
    well_formed: list[bool]  # [R] the format reward is met
    group_size: int
    seconds: dict  # {"generate": ..., "score": ...} wall time of sampling and of decoding + rewards

    @property
    def num_rows(self) -> int:
        return len(self.completions)

    def row_task(self, row: int) -> Task:
        return self.tasks[row // self.group_size]

    def row_prompt(self, row: int) -> Prompt:
        return self.prompts[row // self.group_size]


def encode_prompts(
    tokenizer, tasks: list[Task], *, enable_thinking: bool, prefill: str
) -> tuple[list[Prompt], list[list[int]]]:
    prompts = [build_prompt(tokenizer, t, enable_thinking=enable_thinking, prefill=prefill) for t in tasks]
    ids = [tokenizer.encode(p.text, add_special_tokens=False) for p in prompts]
    return prompts, ids


def decode_completions(tokenizer, rollout: Rollout) -> list[str]:
    """Text of each row's completion without its stop token (the token stays in the trained sequence)."""
    tokens = rollout.tokens.tolist()
    texts = []
    for row, length, truncated in zip(tokens, rollout.lengths.tolist(), rollout.truncated.tolist()):
        keep = length if truncated else max(length - 1, 0)
        texts.append(tokenizer.decode(row[:keep]))
    return texts


def run_episodes(
    model,
    tokenizer,
    tasks: list[Task],
    *,
    group_size: int,
    max_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    reward_set: RewardSet | None = None,
    enable_thinking: bool = True,
    prefill: str = "",
    seed: int | None = None,
) -> Episodes:
    """Sample `group_size` completions per task and score them.

    With `reward_set` None only the accuracy and format checks run (evaluation).
    """
    start = time.perf_counter()
    prompts, prompt_ids = encode_prompts(tokenizer, tasks, enable_thinking=enable_thinking, prefill=prefill)
    with adapters_merged(model):  # small models: LoRA's extra ops are ~7% of sampling
        rollout = generate(
            model,
            prompt_ids,
            group_size=group_size,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            eos_ids=sorted(tokenizer.eos_token_ids),
            seed=seed,
        )
        mx.eval(rollout.tokens, rollout.logps)
    sampled = time.perf_counter()
    completions = decode_completions(tokenizer, rollout)
    row_tasks = [tasks[r // group_size] for r in range(len(completions))]
    prefixes = [prompts[r // group_size].assistant_prefix for r in range(len(completions))]
    targets = [t.target for t in row_tasks]
    nums = [list(t.nums) for t in row_tasks]
    correct = [v == 1.0 for v in equation_reward_func(completions, targets, nums)]
    well_formed = [v == 1.0 for v in format_reward_func(completions, assistant_prefixes=prefixes)]
    if reward_set is None:
        rewards, totals = {}, [0.0] * len(completions)
    else:
        totals, rewards = reward_set.score(completions, row_tasks, prefixes)
    seconds = {"generate": sampled - start, "score": time.perf_counter() - sampled}
    return Episodes(tasks, prompts, rollout, completions, rewards, totals, correct, well_formed, group_size, seconds)
