"""Dynamic sampling through the real model and sampler: which groups it keeps, how a step fills or
stops, that kept rows are the rows sampled, and that resume repeats a straight run."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_grpo.config import TrainConfig
from mlx_grpo.countdown.tasks import Task
from mlx_grpo.dynamic import DynamicSource, check_signal, informative_groups, round_size
from mlx_grpo.episodes import EpisodeSource, task_indices
from mlx_grpo.errors import UserError
from mlx_grpo.grpo import compute_advantages
from mlx_grpo.trainer import prepare, train
from mlx_grpo.update import make_loss, update

# Mixed exactly in the groups of tasks with an even target: 1.0 on a group's first row, 0.0 on the
# rest (rows are group-major, so a group is a run of rows with the same task).
EVEN_REWARD = """
def even_first(completions, targets, nums_list, **kw):
    out, previous = [], None
    for task in zip(targets, map(tuple, nums_list)):
        out.append(1.0 if int(task[0]) % 2 == 0 and task != previous else 0.0)
        previous = task
    return out
"""


@pytest.fixture(scope="module")
def even_reward(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("reward") / "even.py"
    path.write_text(EVEN_REWARD)
    return f"{path}:even_first"


def config(model_path, out, reward, **overrides) -> TrainConfig:
    settings = dict(
        model=str(model_path),
        dataset="generate",
        rewards=["format", reward],
        num_samples=60,
        test_size=0.2,
        batch_size=4,
        num_generations=2,
        max_completion_length=8,
        max_steps=2,
        learning_rate=5e-3,
        output_dir=str(out),
        eval_every=0,
        save_every=100,
        log_completions_every=100,
        seed=5,
        dynamic_sampling=True,
        dynamic_sampling_signal="even_first",
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def source(training, tasks=None) -> DynamicSource:
    c = training.config
    plain = EpisodeSource(training.model, training.tokenizer, tasks or training.train_tasks, c, training.reward_set)
    return DynamicSource(plain, c.dynamic_sampling_signal, c.max_sampling_rounds)


def test_the_filter_keeps_exactly_the_mixed_groups():
    rewards = [1, 1, 1, 0, 1, 0, 0, 0, 0, 0.5, 0.5, 0.25]  # B=4 groups of G=3, group-major
    np.testing.assert_array_equal(informative_groups(rewards, 3), [1, 3])
    np.testing.assert_array_equal(informative_groups([2.0] * 6, 3), np.zeros(0, int))


def test_round_size_scales_by_the_informative_rate_and_is_capped():
    assert round_size(missing=12, informative=4, sampled=16, batch_size=16) == 48
    assert round_size(missing=3, informative=13, sampled=16, batch_size=16) == 4  # a multiple of 4
    assert round_size(missing=16, informative=0, sampled=16, batch_size=16) == 64  # at most 4·B


def test_a_step_fills_its_batch_with_informative_groups(tiny_model_path, tmp_path, even_reward):
    training = prepare(config(tiny_model_path, tmp_path, even_reward))
    c = training.config
    episodes = source(training)(1)
    stats = episodes.sampling
    assert stats["groups_kept"] == c.batch_size and episodes.num_rows == c.batch_size * c.num_generations
    assert all(t.target % 2 == 0 for t in episodes.tasks)
    first_round = [training.train_tasks[i] for i in task_indices(1, c.batch_size, len(training.train_tasks), c.seed)]
    assert stats["groups_flat"] == stats["prompts"] - c.batch_size - stats["groups_surplus"]
    assert stats["rounds"] > 1 or all(t.target % 2 == 0 for t in first_round)
    assert len({(t.target, tuple(t.nums)) for t in episodes.tasks}) == c.batch_size  # no task twice
    # the concatenated rollout is the rows as sampled: text, lengths and prompts line up
    r = episodes.rollout
    assert r.tokens.shape == r.mask.shape == r.logps.shape == r.forced.shape
    np.testing.assert_array_equal(np.array(r.mask.sum(axis=1)), np.array(r.lengths))
    for row, text in enumerate(episodes.completions):
        keep = int(r.lengths[row].item()) - (0 if r.truncated[row].item() else 1)
        assert training.tokenizer.decode(r.tokens[row, :keep].tolist()) == text
        assert r.prompts.ids[row // c.num_generations] == training.tokenizer.encode(
            episodes.row_prompt(row).text, add_special_tokens=False
        )
    advantages = compute_advantages(mx.array(episodes.totals), c.num_generations)
    loss_and_grad = nn.value_and_grad(training.model, make_loss(c))
    assert not update(training.model, training.optimizer, loss_and_grad, r, advantages, c).skipped


def test_the_round_cap_ends_a_step_that_cannot_fill(tiny_model_path, tmp_path, even_reward):
    training = prepare(config(tiny_model_path, tmp_path, even_reward, max_sampling_rounds=3, grad_accumulation=8))
    c = training.config
    odd = [Task(target=t, nums=(1, 2, 3)) for t in (11, 13, 15, 17, 19, 21, 23, 25, 27)]
    one_even = [*odd[:5], Task(target=12, nums=(1, 2, 3)), *odd[5:]]
    episodes = source(training, one_even)(1)
    assert episodes.sampling["groups_kept"] == 1 and episodes.num_rows == c.num_generations
    assert episodes.sampling["rounds"] <= 3 and episodes.tasks[0].target == 12
    advantages = compute_advantages(mx.array(episodes.totals), c.num_generations)
    loss_and_grad = nn.value_and_grad(training.model, make_loss(c))  # 8 micro-batches asked, 2 rows held
    assert not update(training.model, training.optimizer, loss_and_grad, episodes.rollout, advantages, c).skipped
    # nothing informative at all: every round runs, then round 0's groups are trained on as sampled
    episodes = source(training, odd * 3)(1)
    assert episodes.sampling["rounds"] == 3 and episodes.sampling["groups_kept"] == 0
    assert episodes.num_rows == c.batch_size * c.num_generations


def test_resume_with_dynamic_sampling_equals_a_straight_run(tiny_model_path, tmp_path, even_reward):
    def run_config(out, steps):
        return config(tiny_model_path, out, even_reward, max_steps=steps, save_every=2)

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(run_config(straight, 4), progress=False)
    train(run_config(stopped, 2), progress=False)
    train(run_config(stopped, 4), resume=True, progress=False)
    a, b = (mx.load(str(d / "adapters.safetensors")) for d in (straight, stopped))
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(np.array(a[k]), np.array(b[k]))
    logs = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (straight, stopped)]
    assert [m["sampling/prompts"] for m in logs[0]] == [m["sampling/prompts"] for m in logs[1]]
    assert [m["step"] for m in logs[1]] == [1, 2, 3, 4]


def test_an_unknown_filter_signal_is_one_clear_error():
    with pytest.raises(UserError, match="dynamic_sampling_signal must be correct, total or a reward name"):
        check_signal("equaton", ["format", "equation"])
    check_signal("equation", ["format", "equation"])
