"""Episodes: the unit that flows from rollout to update, and the source that makes them each step.

B tasks -> B chat prompts -> B×G sampled completions (group-major) -> text -> verdicts -> rewards.
Training and evaluation both produce their samples here, so both judge completions the same way,
once (`countdown.scoring`).

The data order is a function of (seed, step) alone: step s uses the tasks at positions
[(s-1)·B, s·B) of a sequence of seeded permutations of the train split (one per epoch), and its
sampling is seeded from (seed, step). So a resumed run repeats exactly what an uninterrupted one does.
With W data-parallel ranks each samples its own block of whole groups (`distributed.shard`), seeded
from (seed, step, first group of the call): W ranks draw what one process sampling in W calls
(`groups_per_call` = B/W) draws, so a run resumed on another number of machines can repeat it exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from mlx_grpo import distributed
from mlx_grpo.budget import THINK_END
from mlx_grpo.countdown.prompts import Prompt, build_prompt
from mlx_grpo.countdown.scoring import Verdict, judge_all
from mlx_grpo.countdown.tasks import Task
from mlx_grpo.layout import PromptBatch
from mlx_grpo.model import adapters_merged
from mlx_grpo.rewards import RewardSet
from mlx_grpo.rollout import Rollout, generate
from mlx_grpo.sampling import SamplingOptions


@dataclass
class Episodes:
    tasks: list[Task]  # [B]
    prompts: list[Prompt]  # [B]
    rollout: Rollout  # tokens/mask/logps [R, T], R = B*G in group-major order
    completions: list[str]  # [R] decoded completion text, stop token removed, forced stop text kept
    verdicts: list[Verdict]  # [R] well formed / equation / correct, judged once
    rewards: dict[str, list[float]]  # reward name -> [R] unweighted values
    totals: list[float]  # [R] weighted sum of the rewards
    group_size: int
    seconds: dict  # {"generate": ..., "score": ...} wall time of sampling and of decoding + rewards
    sampling: dict = field(default_factory=dict)  # how a filtering source got these groups (dynamic.py)

    @property
    def num_rows(self) -> int:
        return len(self.completions)

    @property
    def correct(self) -> list[bool]:  # [R] the equation reaches the target (accuracy)
        return [v.correct for v in self.verdicts]

    @property
    def well_formed(self) -> list[bool]:  # [R] the format check is met
        return [v.well_formed for v in self.verdicts]

    @property
    def forced(self) -> list[bool]:  # [R] the thinking budget closed the think block
        return [v.forced_close for v in self.verdicts]

    @property
    def self_check(self) -> list[bool]:  # [R] a candidate rejected against the target, then another tried
        return [v.self_check for v in self.verdicts]

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
    """Text of each row's completion without its stop token (the token stays in the trained sequence);
    the thinking budget's stop text stays in it, so the answer is read after it."""
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
    sampling: SamplingOptions,
    reward_set: RewardSet | None = None,
    enable_thinking: bool = True,
    prefill: str = "",
    seed: int | None = None,
    eos_ids: list[int] | None = None,
    overlong_buffer: int | None = None,
) -> Episodes:
    """Sample `group_size` completions per task, judge and score them.

    With `reward_set` None only the verdicts are computed (evaluation). `eos_ids` None: the
    tokenizer's stop tokens ([]: every row runs to the length cap, as the benchmark wants).
    The rewards also get each row's token length, the cap and `overlong_buffer` (the overlong reward).
    """
    start = time.perf_counter()
    prompts, prompt_ids = encode_prompts(tokenizer, tasks, enable_thinking=enable_thinking, prefill=prefill)
    eos_ids = sorted(tokenizer.eos_token_ids) if eos_ids is None else eos_ids
    if any(THINK_END in p.assistant_prefix for p in prompts):  # thinking off: the prompt closed the block
        sampling = sampling.without_budget()
    with adapters_merged(model):  # small models: LoRA's extra ops are ~7% of sampling
        rollout = generate(model, prompt_ids, group_size=group_size, sampling=sampling, eos_ids=eos_ids, seed=seed)
        mx.eval(rollout.tokens, rollout.logps)
    sampled = time.perf_counter()
    completions = decode_completions(tokenizer, rollout)
    row_tasks = [tasks[r // group_size] for r in range(len(completions))]
    prefixes = [prompts[r // group_size].assistant_prefix for r in range(len(completions))]
    verdicts = judge_all(completions, row_tasks, prefixes, rollout.forced_rows.tolist())
    if reward_set is None:
        rewards, totals = {}, [0.0] * len(completions)
    else:
        totals, rewards = reward_set.score(
            completions,
            row_tasks,
            prefixes,
            verdicts=verdicts,
            lengths=rollout.lengths.tolist(),
            max_length=sampling.max_tokens,
            overlong_buffer=overlong_buffer,
        )
    seconds = {"generate": sampled - start, "score": time.perf_counter() - sampled}
    return Episodes(tasks, prompts, rollout, completions, verdicts, rewards, totals, group_size, seconds)


def step_seed(seed: int, step: int, first_group: int = 0) -> int:
    """The sampling seed of one call at `step` whose first group is `first_group` in the global batch."""
    return call_seed((seed * 1_000_003 + step) % (2**31), first_group)


def call_seed(batch_seed: int, first_group: int) -> int:
    """The seed of one sampling call of a batch seeded `batch_seed`, from the call's first group
    (`batch_seed` itself for the first): a group is sampled alike whichever rank samples its call."""
    return (batch_seed + first_group * 7_919_011) % (2**31)


def task_indices(step: int, batch_size: int, num_tasks: int, seed: int) -> list[int]:
    """Rows of the train split used at `step` (1-based): epochs of seeded permutations."""
    out = []
    for position in range((step - 1) * batch_size, step * batch_size):
        epoch, offset = divmod(position, num_tasks)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(num_tasks)[offset]))
    return out


@dataclass
class EpisodeSource:
    """The episodes of each training step: `source(step)` samples and scores that step's tasks.

    The training loop takes any callable `step -> Episodes`; this is the default one.
    Under `mlx.launch` it samples this rank's share of the step's groups only. `eos_ids` None: the
    tokenizer's stop tokens. `groups_per_call`: most groups one sampling call decodes (the memory
    plan's; None: one call for the share).
    """

    model: object
    tokenizer: object
    tasks: list[Task]  # the train split
    config: object  # TrainConfig
    reward_set: RewardSet
    eos_ids: list[int] | None = None
    groups_per_call: int | None = None

    def __call__(self, step: int) -> Episodes:
        c = self.config
        rows = task_indices(step, c.batch_size, len(self.tasks), c.seed)
        return self.sample_share(rows, step_seed(c.seed, step))[0]  # every rank holds whole groups

    def sample_share(self, rows: list[int], batch_seed: int) -> tuple[Episodes | None, range]:
        """This rank's block of the batch of train tasks `rows` (its positions in the batch too),
        sampled in calls seeded by `call_seed` from their first group; None for an empty block."""
        mine = distributed.shard(len(rows))
        if not mine:
            return None, mine
        return self.sample([rows[g] for g in mine], call_seed(batch_seed, mine.start)), mine

    def sample(self, rows: list[int], seed: int) -> Episodes:
        """The episodes of the train tasks at `rows`, sampled with `seed` in calls of at most
        `groups_per_call` groups (the call starting at group i seeded `call_seed(seed, i)`)."""
        size = self.groups_per_call or len(rows)
        starts = range(0, len(rows), size)
        return join_episodes([self._sample_call(rows[i : i + size], call_seed(seed, i)) for i in starts])

    def _sample_call(self, rows: list[int], seed: int) -> Episodes:
        c = self.config
        return run_episodes(
            self.model,
            self.tokenizer,
            [self.tasks[i] for i in rows],
            group_size=c.num_generations,
            sampling=SamplingOptions.of_config(c, self.tokenizer),
            reward_set=self.reward_set,
            enable_thinking=c.enable_thinking,
            prefill=c.prefill,
            seed=seed,
            eos_ids=self.eos_ids,
            overlong_buffer=c.overlong_buffer,
        )


def join_episodes(parts: list[Episodes]) -> Episodes:
    """One batch from consecutive batches of the same step, groups in order."""
    if len(parts) == 1:
        return parts[0]
    rollouts = [p.rollout for p in parts]
    width = max(r.tokens.shape[1] for r in rollouts)  # T of the joined batch

    def stacked(name):  # [R, width], right-padded with 0 like a rollout
        return mx.concatenate([mx.pad(getattr(r, name), [(0, 0), (0, width - r.tokens.shape[1])]) for r in rollouts])

    rollout = Rollout(
        stacked("tokens"),
        stacked("mask"),
        stacked("logps"),
        mx.concatenate([r.lengths for r in rollouts]),
        mx.concatenate([r.truncated for r in rollouts]),
        PromptBatch.build([ids for r in rollouts for ids in r.prompts.ids]),
        parts[0].group_size,
        stacked("forced"),
    )
    return Episodes(
        [t for p in parts for t in p.tasks],
        [q for p in parts for q in p.prompts],
        rollout,
        [x for p in parts for x in p.completions],
        [v for p in parts for v in p.verdicts],
        {k: [x for p in parts for x in p.rewards[k]] for k in parts[0].rewards},
        [x for p in parts for x in p.totals],
        parts[0].group_size,
        {k: sum(p.seconds[k] for p in parts) for k in parts[0].seconds},
    )
