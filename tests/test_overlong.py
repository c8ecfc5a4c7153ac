"""DAPO's overlong handling: truncated completions masked out of the loss, and the soft overlong reward."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten
from test_update import config, nudge_adapters

from mlx_grpo.countdown.tasks import Task
from mlx_grpo.episodes import EpisodeSource
from mlx_grpo.errors import UserError
from mlx_grpo.rewards import RewardSet, overlong_reward_func
from mlx_grpo.trainer import prepare
from mlx_grpo.update import make_loss, update


def test_overlong_reward_is_zero_then_linear_inside_the_buffer():
    values = overlong_reward_func(["x"] * 5, lengths=[40, 48, 52, 56, 64], max_length=64, overlong_buffer=16)
    assert values == [0.0, 0.0, -0.25, -0.5, -1.0]
    assert overlong_reward_func(["x"], lengths=[64], max_length=64) == [-1.0]  # default buffer: 64 // 5
    assert overlong_reward_func(["x"], lengths=[51], max_length=64) == [0.0]


def test_overlong_reward_reaches_the_registry_through_score():
    task = Task(target=3, nums=(1, 2))
    totals, per = RewardSet.from_specs(["overlong=0.5"]).score(
        ["a", "b"], [task, task], lengths=[10, 8], max_length=10, overlong_buffer=4
    )
    assert per["overlong"] == [-1.0, -0.5] and totals == [-0.5, -0.25]
    with pytest.raises(UserError, match="needs each completion's token length"):
        RewardSet.from_specs(["overlong"]).score(["a"], [task])


def parameter_step(training, rollout, advantages, c) -> dict[str, np.ndarray]:
    """-gradient of one update (SGD, lr 1, no clipping), the adapters restored afterwards."""
    start = tree_flatten(training.model.trainable_parameters())
    loss_and_grad = nn.value_and_grad(training.model, make_loss(c))
    update(training.model, optim.SGD(learning_rate=1.0), loss_and_grad, rollout, advantages, c)
    after = dict(tree_flatten(training.model.trainable_parameters()))
    training.model.update(tree_unflatten(start))
    return {k: np.array(after[k] - v) for k, v in start}


def test_masked_truncated_rows_carry_no_gradient(tiny_model_path, tmp_path, spaces_reward):
    c = config(tiny_model_path, tmp_path, spaces_reward, max_completion_length=6, max_grad_norm=1e9, batch_size=4)
    training = prepare(c)
    nudge_adapters(training.model)
    stops = list(range(40))  # a random model rarely samples its real stop token: make ~half the rows stop
    plain = EpisodeSource(training.model, training.tokenizer, training.train_tasks, c, training.reward_set, stops)
    episodes = plain(1)
    truncated = np.array(episodes.rollout.truncated)
    assert truncated.any() and not truncated.all()  # both kinds of row, so the comparison means something
    advantages = mx.array(np.random.default_rng(0).normal(size=truncated.shape).astype(np.float32))  # [R]
    noisy = mx.where(mx.array(truncated), advantages * 7 + 3, advantages)  # other advantages on truncated rows
    masked = dataclasses.replace(c, mask_truncated_completions=True)
    with_rows = parameter_step(training, episodes.rollout, advantages, masked)
    changed_rows = parameter_step(training, episodes.rollout, noisy, masked)
    dropped = dataclasses.replace(episodes.rollout, mask=episodes.rollout.mask * ~episodes.rollout.truncated[:, None])
    without_rows = parameter_step(training, dropped, advantages, c)
    unmasked = parameter_step(training, episodes.rollout, advantages, c)
    for name, step in with_rows.items():
        np.testing.assert_allclose(changed_rows[name], step, atol=1e-7)
        np.testing.assert_allclose(without_rows[name], step, atol=1e-7)
    assert max(np.abs(unmasked[n] - with_rows[n]).max() for n in with_rows) > 1e-5  # the rows did count before
