"""DAPO dynamic sampling: train only on groups whose completions disagree, refilling the batch.

A group whose completions all score the same has advantage 0 for every row: it costs generation
and teaches nothing. `DynamicSource(step)` samples the step's B tasks as the plain source does
(round 0: same tasks, same seed), drops the groups whose filter signal is constant, and samples
more prompts in batched rounds until it holds B informative groups or `max_sampling_rounds` rounds
ran; then the step trains on what it has (fewer than B groups when the cap ends it).

- Filter signal: equation correctness by default, not the shaped total. DAPO filters on the
  outcome; filtering on a length-shaped reward keeps groups that differ only in length.
  `total` or any reward's name can be chosen instead.
- Extra prompts: round r > 0 of step s draws its tasks from a generator seeded by (seed, s, r),
  excluding the step's tasks so far, and samples with a seed from the same generator. So the data
  order stays a function of (seed, step) and the samples: `--resume` is exact without storing a
  stream position, and ranks of a multi-process run that see the same samples draw the same tasks.
- Round size: the prompts still missing divided by the share of informative groups seen so far in
  this step, at most MAX_ROUND_FACTOR·B, rounded up to ROUND_QUANTUM prompts (each new row count
  compiles the decoder once, so sizes are kept to a few values).
- When no group is informative after the last round, the step falls back to round 0's groups (a
  plain GRPO step: zero advantages).
- Under `mlx.launch`, each rank samples its contiguous block of every round's groups
  (`EpisodeSource.sample_share`: a call's seed comes from its first group, so a group is sampled
  alike on any rank) and the ranks gather which of their groups are informative. The step keeps the
  first B informative groups in (round, group) order, as one process does: what a step keeps is a
  function of (seed, step) and the samples, not of the number of ranks, and every rank takes the
  same decisions (round sizes, cap, fallback) from the same figures. A rank then trains on its kept
  groups, which may be none (its update adds zeros to the gradient sum).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlx_grpo import distributed
from mlx_grpo.episodes import Episodes, EpisodeSource, step_seed, task_indices
from mlx_grpo.errors import UserError
from mlx_grpo.layout import PromptBatch
from mlx_grpo.rollout import Rollout

MAX_ROUND_FACTOR = 4  # a round samples at most this many times B prompts (bounds its memory)
ROUND_QUANTUM = 4  # extra rounds sample a multiple of this many prompts


def signal_values(episodes: Episodes, signal: str) -> np.ndarray:
    """The filter signal `[R]` of each row: "correct", "total", or a reward name."""
    if signal == "correct":
        return np.array(episodes.correct, dtype=np.float64)
    if signal == "total":
        return np.array(episodes.totals, dtype=np.float64)
    return np.array(episodes.rewards[signal], dtype=np.float64)


def check_signal(signal: str, reward_names: list[str]) -> None:
    """Raises UserError unless `signal` is "correct", "total" or one of `reward_names`."""
    if signal not in ("correct", "total", *reward_names):
        raise UserError(
            f"invalid config: dynamic_sampling_signal must be correct, total or a reward name "
            f"({', '.join(reward_names)}); got {signal!r}"
        )


def informative_groups(values, group_size: int) -> np.ndarray:
    """Indices `[k]` of the groups whose values `[B*G]` are not all equal (group-major rows)."""
    groups = np.asarray(values, dtype=np.float64).reshape(-1, group_size)  # [B, G]
    return np.flatnonzero(~np.all(groups == groups[:, :1], axis=1))


def round_draw(seed: int, step: int, round_: int, count: int, num_tasks: int, exclude: set) -> tuple[list[int], int]:
    """Train-split rows `[<= count]` for extra round `round_` of `step`, and that round's sampling seed."""
    rng = np.random.default_rng([seed, step, round_])
    rows = [int(i) for i in rng.permutation(num_tasks) if int(i) not in exclude][:count]
    return rows, int(rng.integers(2**31))


def round_size(missing: int, informative: int, sampled: int, batch_size: int) -> int:
    """Prompts for the next round: enough to fill `missing` groups at this step's informative rate."""
    rate = informative / sampled if informative else 1 / (MAX_ROUND_FACTOR * batch_size)
    wanted = min(math.ceil(missing / rate), MAX_ROUND_FACTOR * batch_size)
    return ROUND_QUANTUM * math.ceil(wanted / ROUND_QUANTUM)


@dataclass
class DynamicSource:
    """`source(step) -> Episodes` of up to B informative groups, gathered over sampling rounds.

    Under `mlx.launch` it returns this rank's share of them (possibly none); every rank takes the
    same decisions, from the whole round's figures (`distributed.gather`).
    """

    plain: EpisodeSource  # samples and scores any rows of the train split
    signal: str = "correct"
    max_rounds: int = 4

    def __call__(self, step: int) -> Episodes:
        c = self.plain.config
        batch, num_tasks = c.batch_size, len(self.plain.tasks)
        rows, seed = task_indices(step, batch, num_tasks, c.seed), step_seed(c.seed, step)
        rounds, used = [], set()  # rounds: (this rank's episodes or None, indices of its groups kept)
        kept = sampled = flat = surplus = 0  # counts of the whole step, the same on every rank
        for round_ in range(self.max_rounds):
            if round_:
                count = round_size(batch - kept, kept + surplus, sampled, batch)
                rows, seed = round_draw(c.seed, step, round_, count, num_tasks, used)
                if not rows:  # every train task was used by this step
                    break
            episodes, mine = self.plain.sample_share(rows, seed)
            used.update(rows)
            mixed = self._informative(episodes, mine)
            take = mixed[: batch - kept]  # the first informative groups in the round's order
            rounds.append((episodes, take[(take >= mine.start) & (take < mine.stop)] - mine.start))
            kept += len(take)
            sampled += len(rows)
            flat += len(rows) - len(mixed)
            surplus += len(mixed) - len(take)
            if kept == batch:
                break
        stats = {"rounds": len(rounds), "prompts": sampled, "groups_flat": flat, "groups_surplus": surplus}
        if kept == 0:  # nothing informative: round 0 as sampled, a plain step
            return _with_stats(rounds[0][0], rounds, stats, groups=0)
        parts = [r for r in rounds if len(r[1])]
        episodes = _select(parts) if parts else empty_share(rounds[0][0])  # every kept group is another rank's
        return _with_stats(episodes, rounds, stats, groups=kept)

    def _informative(self, episodes: Episodes | None, mine: range) -> np.ndarray:
        """Indices `[k]` in the whole round of its informative groups, in order (every rank's)."""
        G = self.plain.config.num_generations
        local = [] if episodes is None else informative_groups(signal_values(episodes, self.signal), G)
        shares = distributed.gather([mine.start + int(g) for g in local])
        return np.array([g for share in shares for g in share], dtype=np.intp)


def _with_stats(episodes: Episodes, rounds, stats: dict, *, groups: int) -> Episodes:
    """Sum this rank's rounds' times into `episodes`; record the whole step's sampling figures."""
    sampled = [e for e, _ in rounds if e is not None]
    seconds = {k: sum(e.seconds[k] for e in sampled) for k in sampled[0].seconds}
    tokens = sum(int(e.rollout.lengths.sum().item()) for e in sampled)
    shares = distributed.gather([tokens, seconds["generate"]])  # every rank's tokens; the slowest one's time
    episodes.seconds = seconds
    episodes.sampling = {
        **stats,
        "groups_kept": groups,
        "generated_tokens": sum(t for t, _ in shares),
        "generate_s_per_kept_group": max(s for _, s in shares) / max(groups, 1),
    }
    return episodes


def _select(parts: list[tuple[Episodes, np.ndarray]]) -> Episodes:
    """One Episodes of the chosen groups of each part, rows padded to the longest completion."""
    G = parts[0][0].group_size
    rows = [(e, (groups[:, None] * G + np.arange(G)).reshape(-1)) for e, groups in parts]  # [k*G] each
    T = max(int(e.rollout.tokens.shape[1]) for e, _ in parts)
    tasks = [e.tasks[g] for e, groups in parts for g in groups]
    ids = [e.rollout.prompts.ids[g] for e, groups in parts for g in groups]
    rollout = Rollout(
        tokens=mx.concatenate([_pad(e.rollout.tokens[mx.array(r)], T) for e, r in rows]),  # [R, T]
        mask=mx.concatenate([_pad(e.rollout.mask[mx.array(r)], T) for e, r in rows]),
        logps=mx.concatenate([_pad(e.rollout.logps[mx.array(r)], T) for e, r in rows]),
        lengths=mx.concatenate([e.rollout.lengths[mx.array(r)] for e, r in rows]),  # [R]
        truncated=mx.concatenate([e.rollout.truncated[mx.array(r)] for e, r in rows]),
        forced=mx.concatenate([_pad(e.rollout.forced[mx.array(r)], T) for e, r in rows]),  # [R, T] bool
        prompts=PromptBatch.build(ids),
        group_size=G,
    )
    return Episodes(
        tasks=tasks,
        prompts=[e.prompts[g] for e, groups in parts for g in groups],
        rollout=rollout,
        completions=[e.completions[i] for e, r in rows for i in r],
        verdicts=[e.verdicts[i] for e, r in rows for i in r],
        rewards={k: [e.rewards[k][i] for e, r in rows for i in r] for k in parts[0][0].rewards},
        totals=[e.totals[i] for e, r in rows for i in r],
        group_size=G,
        seconds={},
    )


def _pad(x: mx.array, T: int) -> mx.array:
    """Right-pad `[r, t]` with zeros to `[r, T]` (padding: token 0, mask 0, log-prob 0)."""
    return mx.pad(x, [(0, 0), (0, T - x.shape[1])])


def empty_share(like: Episodes) -> Episodes:
    """Zero rows in the layout of `like`: a rank's share when every kept group is another rank's."""
    r = like.rollout
    prompts = PromptBatch([], r.prompts.tokens[:0], r.prompts.pad[:0], 0)
    rollout = Rollout(
        r.tokens[:0], r.mask[:0], r.logps[:0], r.lengths[:0], r.truncated[:0], prompts, r.group_size, r.forced[:0]
    )
    return Episodes([], [], rollout, [], [], {k: [] for k in like.rewards}, [], like.group_size, {})
