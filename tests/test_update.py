"""The update path through the real `update()`: micro-batching, μ > 1, the reference policy, truncated
sampling, and token-weighted metrics, each against an independent computation."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from conftest import tiny_run_settings
from mlx.utils import tree_flatten, tree_unflatten

from mlx_grpo.config import TrainConfig
from mlx_grpo.episodes import EpisodeSource
from mlx_grpo.grpo import batch_normalizer, compute_advantages, policy_loss
from mlx_grpo.logprobs import sequence_logprobs
from mlx_grpo.model import adapters_disabled
from mlx_grpo.trainer import prepare, run
from mlx_grpo.update import make_loss, micro_batches, update, with_fixed_logprobs


def config(model_path, out, reward, **overrides) -> TrainConfig:
    overrides = {"max_completion_length": 10, "save_every": 100, "log_completions_every": 100, **overrides}
    return TrainConfig(**tiny_run_settings(model_path, out, rewards=[reward], **overrides))


def lora_weights(model) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}


def fixed_episodes(training, informative: bool = True):
    """One step's episodes, sampled once: the source every compared run replays, so that the runs
    differ only in how they update."""
    episodes = EpisodeSource(
        training.model, training.tokenizer, training.train_tasks, training.config, training.reward_set
    )(1)
    assert not informative or len(set(episodes.totals)) > 1  # the advantages are not all zero
    return episodes


def nudge_adapters(model, seed: int = 0) -> None:
    """Move every LoRA weight off its initial value (lora_b starts at 0, so lora_a's first gradients
    are exactly 0 and Adam's first steps are sign(g) on noise-level gradients: any rounding would
    flip them). From a generic point, float rounding stays float rounding."""
    mx.random.seed(seed)
    params = tree_flatten(model.trainable_parameters())
    model.update(tree_unflatten([(k, v + 0.02 * mx.random.normal(v.shape)) for k, v in params]))
    mx.eval(model.parameters())


@pytest.mark.parametrize("checkpointing", [False, True])
def test_grad_accumulation_gives_the_same_adapters(tiny_model_path, tmp_path, spaces_reward, checkpointing):
    episodes = None
    adapters = {}
    for k in (1, 2, 4):
        settings = dict(grad_accumulation=k, gradient_checkpointing=checkpointing and k > 1)  # k=1 plain: the reference
        training = prepare(config(tiny_model_path, tmp_path / f"k{k}", spaces_reward, **settings))
        nudge_adapters(training.model)
        start = lora_weights(training.model)
        episodes = episodes or fixed_episodes(training)
        metrics = []
        run(training, source=lambda step, episodes=episodes: episodes, on_step=metrics.append, progress=False)
        adapters[k] = lora_weights(training.model)
        assert not any(m["skipped"] for m in metrics)
        assert all(m["micro_batches"] == k and m["peak_memory_gb"] > 0 and m["peak_rss_gb"] > 0 for m in metrics)
        assert max(np.abs(adapters[k][n] - start[n]).max() for n in start) > 1e-3  # the adapters did train
    for k in (2, 4):
        assert_same_adapters(adapters[k], adapters[1], start)


def assert_same_adapters(got: dict, want: dict, start: dict) -> None:
    """Adam divides by sqrt(v): the few elements whose gradient is near zero amplify rounding, so two
    runs are compared by how far apart they end against how far training moved them (gradients are
    compared element by element in their own test)."""
    flat = [np.concatenate([w[n].ravel() for n in sorted(w)]) for w in (got, want, start)]
    assert np.linalg.norm(flat[0] - flat[1]) < 1e-3 * np.linalg.norm(flat[1] - flat[2])


def test_micro_batch_gradients_sum_to_the_full_batch_gradient(tiny_model_path, tmp_path, spaces_reward):
    c = config(tiny_model_path, tmp_path / "run", spaces_reward, beta=0.04)
    training = prepare(c)
    nudge_adapters(training.model)
    episodes = fixed_episodes(training)
    advantages = compute_advantages(mx.array(episodes.totals), c.num_generations)
    loss_and_grad = nn.value_and_grad(training.model, make_loss(c))
    normalizer = batch_normalizer(episodes.rollout.mask, c.loss_type, c.max_completion_length)
    summed = {}
    for k in (1, 2, 4, 8):
        batches = with_fixed_logprobs(training.model, micro_batches(episodes.rollout, advantages, k), c)
        grads = [dict(tree_flatten(loss_and_grad(training.model, b, normalizer)[1])) for b in batches]
        summed[k] = {name: sum(np.array(g[name]) for g in grads) for name in grads[0]}
    for k in (2, 4, 8):
        for name, full in summed[1].items():
            scale = np.abs(full).max()  # float32 sums of terms of both signs: rounding is relative to the largest
            np.testing.assert_allclose(summed[k][name], full, rtol=1e-4, atol=1e-5 * scale, err_msg=f"k={k} {name}")


def _reference_updates(model, episodes, c: TrainConfig, iterations: int) -> None:
    """μ updates computed from the primitives: one full-batch loss, old log-probs from the sampler."""
    rollout = episodes.rollout
    G = rollout.group_size
    prompts = mx.repeat(rollout.prompts.tokens, G, axis=0)  # one prompt row per completion, no sharing tricks
    pads = mx.repeat(rollout.prompts.pad, G)
    advantages = compute_advantages(mx.array(episodes.totals), G, c.scale_rewards)
    optimizer = optim.AdamW(learning_rate=c.learning_rate, weight_decay=c.weight_decay)

    def loss_fn(model):
        logps = sequence_logprobs(
            model, prompts, pads, rollout.tokens, rollout.mask, temperature=c.temperature, shared=rollout.prompts.shared
        )
        loss, _ = policy_loss(logps, rollout.logps, advantages, rollout.mask, loss_type=c.loss_type)
        return loss

    grad_fn = nn.value_and_grad(model, loss_fn)
    for _ in range(iterations):
        _, grads = grad_fn(model)
        grads, _ = optim.clip_grad_norm(grads, c.max_grad_norm)
        optimizer.update(model, grads)
        mx.eval(model.trainable_parameters(), optimizer.state)


def test_two_iterations_match_two_updates_against_the_sampling_policy(tiny_model_path, tmp_path, spaces_reward):
    c = config(tiny_model_path, tmp_path / "a", spaces_reward, num_iterations=2, learning_rate=2e-2)
    ours = prepare(c)
    nudge_adapters(ours.model)
    start = lora_weights(ours.model)
    episodes = fixed_episodes(ours)
    advantages = compute_advantages(mx.array(episodes.totals), c.num_generations, c.scale_rewards)
    loss_and_grad = nn.value_and_grad(ours.model, make_loss(c))
    result = update(ours.model, ours.optimizer, loss_and_grad, episodes.rollout, advantages, c)
    assert not result.skipped

    reference = prepare(c.replace(output_dir=str(tmp_path / "b")))
    nudge_adapters(reference.model)
    _reference_updates(reference.model, episodes, c, iterations=2)
    assert_same_adapters(lora_weights(ours.model), lora_weights(reference.model), start)

    # the second update sees a ratio != 1: after one update the policy is no longer the sampler's
    refreshed = prepare(c.replace(output_dir=str(tmp_path / "c")))
    nudge_adapters(refreshed.model)
    _reference_updates(refreshed.model, episodes, c, iterations=1)
    rescored = sequence_logprobs(
        refreshed.model,
        mx.repeat(episodes.rollout.prompts.tokens, c.num_generations, axis=0),
        mx.repeat(episodes.rollout.prompts.pad, c.num_generations),
        episodes.rollout.tokens,
        episodes.rollout.mask,
        shared=episodes.rollout.prompts.shared,
    )
    assert np.abs(np.array(rescored) - np.array(episodes.rollout.logps)).max() > 1e-3


def test_reference_policy_is_the_model_with_adapters_off(tiny_model_path, tmp_path, spaces_reward):
    c = config(tiny_model_path, tmp_path / "run", spaces_reward, beta=0.04, max_steps=3)
    training = prepare(c)
    episodes = fixed_episodes(training)
    metrics = []
    run(training, source=lambda step: episodes, on_step=metrics.append, progress=False)
    assert metrics[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts as the identity: policy == reference
    assert metrics[-1]["kl"] > 1e-6  # the policy has moved away from it

    advantages = compute_advantages(mx.array(episodes.totals), c.num_generations)
    batch = with_fixed_logprobs(training.model, micro_batches(episodes.rollout, advantages, 1), c)[0]
    with adapters_disabled(training.model):
        base = unpadded_logprobs(training.model, episodes.rollout)
    np.testing.assert_allclose(np.array(batch.ref_logps), base, atol=1e-4)
    trained = unpadded_logprobs(training.model, episodes.rollout)
    assert np.abs(trained - base).max() > 1e-3


def unpadded_logprobs(model, rollout, temperature: float = 1.0) -> np.ndarray:
    """numpy reference `[R, T]`: each row alone (its prompt and completion, no padding) through the
    model, log-softmax of the full logits in float64; 0 on padding."""
    R, T = rollout.tokens.shape
    out = np.zeros((R, T))
    for r in range(R):
        prompt, n = rollout.prompts.ids[r // rollout.group_size], int(rollout.lengths[r].item())
        completion = rollout.tokens[r, :n].tolist()
        logits = np.array(model(mx.array([prompt + completion]))[0, len(prompt) - 1 : -1], dtype=np.float64)
        logits = logits / temperature
        norm = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        out[r, :n] = logits[np.arange(n), completion] - norm
    return out


@pytest.mark.parametrize("top_p, top_k", [(0.8, 0), (1.0, 12), (0.9, 20)])
def test_truncated_sampling_rescored_in_full_for_the_ratio(tiny_model_path, tmp_path, spaces_reward, top_p, top_k):
    c = config(tiny_model_path, tmp_path / "run", spaces_reward, top_p=top_p, top_k=top_k, max_steps=2)
    training = prepare(c)
    episodes = fixed_episodes(training, informative=False)  # the ratio is what is checked here
    advantages = compute_advantages(mx.array(episodes.totals), c.num_generations)
    batch = with_fixed_logprobs(training.model, micro_batches(episodes.rollout, advantages, 1), c)[0]
    mask = np.array(episodes.rollout.mask) > 0
    np.testing.assert_allclose(
        np.array(batch.old_logps), unpadded_logprobs(training.model, episodes.rollout), atol=1e-4
    )
    sampler, rescored = np.array(episodes.rollout.logps)[mask], np.array(batch.old_logps)[mask]
    assert (rescored <= sampler + 1e-5).all() and (rescored < sampler - 1e-3).any()  # the full distribution
    metrics = []
    run(training, source=lambda step: episodes, on_step=metrics.append, progress=False)
    assert metrics[0]["ratio/mean"] == pytest.approx(1.0, abs=1e-5)  # like compared with like


def test_per_token_metrics_are_weighted_by_tokens_across_micro_batches(tiny_model_path, tmp_path, spaces_reward):
    """After one large step the ratio, kl and clip fractions are far from trivial; splitting the same
    update into micro-batches of unequal token counts must not change them."""
    results = {}
    for k in (1, 4):
        c = config(
            tiny_model_path, tmp_path / f"k{k}", spaces_reward, beta=0.1, grad_accumulation=k, learning_rate=0.05
        )
        training = prepare(c)
        if k == 1:
            episodes = fixed_episodes(training)
            # rows of unequal lengths, as if some had stopped early: micro-batches of unequal tokens
            lengths = [3 + r % 7 for r in range(8)]
            mask = (mx.arange(c.max_completion_length)[None] < mx.array(lengths)[:, None]).astype(mx.float32)
            episodes.rollout = dataclasses.replace(episodes.rollout, mask=mask, lengths=mx.array(lengths))
        advantages = compute_advantages(mx.array(episodes.totals), c.num_generations)
        loss_and_grad = nn.value_and_grad(training.model, make_loss(c))
        update(training.model, training.optimizer, loss_and_grad, episodes.rollout, advantages, c)
        results[k] = update(training.model, training.optimizer, loss_and_grad, episodes.rollout, advantages, c)
    row_sums = [sum(lengths[i : i + 2]) for i in range(0, 8, 2)]
    assert len(set(row_sums)) > 1, "micro-batches with equal token counts would not test the weighting"
    one, four = results[1], results[4]
    assert abs(one.ratio - 1) > 1e-3 and one.kl > 1e-4
    for name in ("kl", "clip_frac_low", "clip_frac_high", "ratio", "loss"):
        assert getattr(four, name) == pytest.approx(getattr(one, name), rel=1e-4, abs=1e-6), name
