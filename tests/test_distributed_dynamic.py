"""Dynamic sampling over ranks (ring backend, two processes on localhost, as tests/test_distributed.py):
the ranks keep the groups one process keeps, however unevenly they fall, and train as it trains.

The "marked" reward is mixed exactly in the groups of the tasks in MARKED (1.0 on a group's first
row, 0.0 on the rest), so which groups are informative is planned: in each step's rounds, the
groups at the positions PLAN lists (rank 0 samples the first half of each round's groups).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
from ring import (
    assert_same_adapters,
    assert_same_metrics,
    initial_adapters,
    load,
    read_jsonl,
    run_worker,
    settings,
)

from mlx_grpo.config import TrainConfig
from mlx_grpo.countdown.data import load_tasks, split_tasks
from mlx_grpo.dynamic import empty_share, round_draw, round_size
from mlx_grpo.episodes import EpisodeSource, task_indices
from mlx_grpo.trainer import prepare
from mlx_grpo.update import make_loss, update

MARKED_REWARD = """
MARKED = {marked!r}

def marked(completions, targets, nums_list, **kw):
    out, previous = [], None
    for task in zip(map(int, targets), map(tuple, nums_list)):
        out.append(1.0 if task in MARKED and task != previous else 0.0)
        previous = task
    return out
"""
PLAN = {1: [[2], []], 2: [[], []], 3: [[0, 1, 2], [0, 3]]}  # step -> informative groups of rounds 0, 1
KEPT = [1, 0, 4]  # step 1: rank 1's one group, the cap; step 2: none, round 0 as sampled; step 3: B
RANK_ROWS = {1: [0, 4], 2: [8, 8], 3: [12, 4]}  # rows each rank trains on (G = 4)


def dynamic_settings(model_path, out, reward, **overrides) -> dict:
    dynamic = dict(dynamic_sampling=True, dynamic_sampling_signal="marked", max_sampling_rounds=2)
    return settings(model_path, out, reward, num_samples=80, seed=4, **dynamic, **overrides)


def planned_tasks(train_tasks, batch: int, seed: int) -> tuple[set, set]:
    """The (target, nums) of the tasks PLAN marks informative, and of those it marks flat."""
    marked, flat = set(), set()
    for step, rounds in PLAN.items():
        rows, used, kept, sampled, surplus = task_indices(step, batch, len(train_tasks), seed), set(), 0, 0, 0
        for round_, informative in enumerate(rounds):
            if round_:
                count = round_size(batch - kept, kept + surplus, sampled, batch)
                rows, _ = round_draw(seed, step, round_, count, len(train_tasks), used)
            used.update(rows)
            for i, row in enumerate(rows):
                (marked if i in informative else flat).add((train_tasks[row].target, tuple(train_tasks[row].nums)))
            take = informative[: batch - kept]
            kept, sampled, surplus = kept + len(take), sampled + len(rows), surplus + len(informative) - len(take)
    return marked, flat


@pytest.fixture(scope="module")
def marked_reward(tmp_path_factory, tiny_model_path) -> str:
    c = dynamic_settings(tiny_model_path, "unused", "unused")
    train, _ = split_tasks(load_tasks(c["dataset"], seed=c["seed"], num_samples=c["num_samples"]), c["test_size"])
    marked, flat = planned_tasks(train, c["batch_size"], c["seed"])
    assert not marked & flat  # no task is planned both ways (it holds for this seed)
    path = tmp_path_factory.mktemp("reward") / "marked.py"
    path.write_text(MARKED_REWARD.format(marked=marked))
    return f"{path}:marked"


@pytest.fixture(scope="module")
def dynamic_straight(tiny_model_path, tmp_path_factory, marked_reward) -> Path:
    """One rank, dynamic sampling, each round sampled in calls of 2 groups (as 2 ranks sample it)."""
    out = tmp_path_factory.mktemp("straight")
    config = dynamic_settings(tiny_model_path, out / "run", marked_reward)
    run_worker(config, out / "{rank}.safetensors", groups_per_call=2, record=str(out / "record-{rank}.json"))
    return out


def rank_rows(out: Path, world: int) -> dict[int, list[int]]:
    records = [json.loads((out / f"record-{r}.json").read_text()) for r in range(world)]
    return {int(step): [rec["rows"][step] for rec in records] for step in records[0]["rows"]}


def assert_planned_sampling(run: Path) -> None:
    metrics = read_jsonl(run / "metrics.jsonl")[1:]  # after the step-0 evaluation
    assert [m["sampling/groups_kept"] for m in metrics] == KEPT
    assert [m["sampling/rounds"] for m in metrics] == [2, 2, 2]
    assert [m["sampling/prompts"] for m in metrics] == [4 + 12, 4 + 16, 4 + 4]  # the round sizes it planned


@pytest.mark.slow
def test_two_rank_dynamic_sampling_equals_one_rank_with_kept_groups_spread_unevenly(
    tiny_model_path, tmp_path, marked_reward, dynamic_straight
):
    config = dynamic_settings(tiny_model_path, tmp_path / "run", marked_reward)
    record = str(tmp_path / "record-{rank}.json")
    run_worker(config, tmp_path / "{rank}.safetensors", world=2, groups_per_call=2, record=record)

    assert rank_rows(tmp_path, 2) == RANK_ROWS  # rank 0 holds no row at step 1
    assert rank_rows(dynamic_straight, 1) == {step: [sum(rows)] for step, rows in RANK_ROWS.items()}
    assert_planned_sampling(tmp_path / "run")
    start = initial_adapters(tiny_model_path, tmp_path, marked_reward, seed=4)
    want = load(dynamic_straight / "run" / "adapters.safetensors")
    for rank in (0, 1):
        assert_same_adapters(load(tmp_path / f"{rank}.safetensors"), want, start)
    # the same rows, in rank order (a rank's rounds, then the next rank's): means may round differently
    got, straight = (read_jsonl(d / "run" / "metrics.jsonl") for d in (tmp_path, dynamic_straight))
    assert_same_metrics(got, straight, rows_rel=1e-12)
    completions = [read_jsonl(d / "run" / "completions.jsonl") for d in (tmp_path, dynamic_straight)]
    assert sorted(c["completion"] for c in completions[0]) == sorted(c["completion"] for c in completions[1])


@pytest.mark.slow
def test_two_rank_dynamic_run_resumed_on_one_rank_ends_where_a_straight_run_ends(
    tiny_model_path, tmp_path, marked_reward, dynamic_straight
):
    first = dynamic_settings(tiny_model_path, tmp_path / "run", marked_reward, max_steps=2)
    run_worker(first, tmp_path / "first-{rank}.safetensors", world=2, groups_per_call=2)
    run_worker({**first, "max_steps": 3}, tmp_path / "{rank}.safetensors", groups_per_call=2, resume=True)

    start = initial_adapters(tiny_model_path, tmp_path, marked_reward, seed=4)
    want = load(dynamic_straight / "run" / "adapters.safetensors")
    assert_same_adapters(load(tmp_path / "run" / "adapters.safetensors"), want, start)
    got, straight = (read_jsonl(d / "run" / "metrics.jsonl") for d in (tmp_path, dynamic_straight))
    assert_same_metrics(got, straight, rows_rel=1e-12)


@pytest.mark.slow
def test_two_ranks_sampling_each_share_in_one_call_keep_the_groups_one_rank_keeps(
    tiny_model_path, tmp_path, marked_reward, dynamic_straight
):
    config = dynamic_settings(tiny_model_path, tmp_path / "run", marked_reward)  # as the trainer samples
    run_worker(config, tmp_path / "{rank}.safetensors", world=2, record=str(tmp_path / "record-{rank}.json"))
    assert rank_rows(tmp_path, 2) == RANK_ROWS
    assert_planned_sampling(tmp_path / "run")
    got, straight = (read_jsonl(d / "run" / "metrics.jsonl") for d in (tmp_path, dynamic_straight))
    sampling = [
        [{k: v for k, v in m.items() if k.startswith("sampling/") and "_s_" not in k} for m in ms]
        for ms in (got, straight)
    ]
    assert sampling[0] == sampling[1]


def test_a_rank_that_holds_no_rows_joins_the_update_with_a_zero_share(tiny_model_path, tmp_path, spaces_reward):
    config = settings(tiny_model_path, tmp_path, spaces_reward, grad_accumulation=2, max_memory="8GB")
    training = prepare(TrainConfig(**config))
    c = training.config
    none = empty_share(
        EpisodeSource(training.model, training.tokenizer, training.train_tasks, c, training.reward_set)(1)
    )
    assert none.num_rows == 0 and none.rollout.tokens.shape[0] == 0
    loss_and_grad = nn.value_and_grad(training.model, make_loss(c))
    result = update(training.model, training.optimizer, loss_and_grad, none.rollout, mx.zeros((0,)), c)
    assert (result.micro_batches, result.loss, result.grad_norm, result.skipped) == (0, 0.0, 0.0, False)
