"""The GRPO loop end to end on the tiny model: outputs, adapters, resume, run-dir safety, learning."""

from __future__ import annotations

import json
import math

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
from conftest import tiny_run_settings

from mlx_grpo.config import TrainConfig
from mlx_grpo.episodes import task_indices
from mlx_grpo.errors import UserError
from mlx_grpo.model import adapters_disabled
from mlx_grpo.trainer import prepare, run, train


def tiny_config(model_path, out, **overrides) -> TrainConfig:
    rewards = ["format", "equation", overrides.pop("extra_reward")]
    overrides = {"eval_samples": 4, "save_every": 1, "log_completions_every": 1, **overrides}
    return TrainConfig(**tiny_run_settings(model_path, out, rewards=rewards, **overrides))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_adapters(run_a, run_b):
    """The two runs' saved adapters hold the same tensors, bit for bit."""
    a, b = (mx.load(str(run / "adapters.safetensors")) for run in (run_a, run_b))
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(np.array(a[k]), np.array(b[k]))


def test_run_writes_metrics_completions_and_mlx_lm_adapters(tiny_model_path, tmp_path, spaces_reward):
    out = tmp_path / "run"
    summary = train(tiny_config(tiny_model_path, out, extra_reward=spaces_reward), progress=False)
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for key in (
        "reward",
        "rewards/format",
        "rewards/equation",
        "accuracy",
        "format_rate",
        "completion_length/mean",
        "completion_length/max",
        "truncated_frac",
        "kl",
        "clip_frac/low",
        "clip_frac/high",
        "grad_norm",
        "lr",
        "time/generate",
        "time/score",
        "time/update",
        "tokens_per_s",
        "peak_memory_gb",
        "zero_adv_frac",
    ):
        assert key in metrics[-1], key
    assert all(math.isfinite(m["loss"]) and not m["skipped"] for m in metrics)
    assert "eval/accuracy" in summary  # a final evaluation runs when eval_every is 0
    completions = read_jsonl(out / "completions.jsonl")
    assert len(completions) == 3 * 2 * 4 and {"prompt", "completion", "rewards", "advantage"} <= set(completions[0])
    given = tiny_config(tiny_model_path, out, extra_reward=spaces_reward).to_dict()
    assert given["gradient_checkpointing"] is None  # decided by the memory plan: saved as it ran
    assert json.loads((out / "config.json").read_text()) == given | {"gradient_checkpointing": False}

    # The adapters load as they are with mlx-lm and change the model's output.
    base, tokenizer = mlx_lm.load(str(tiny_model_path))
    adapted, _ = mlx_lm.load(str(tiny_model_path), adapter_path=str(out))
    ids = mx.array([tokenizer.encode("<think> 44 + 19 </think>")])
    assert not np.allclose(np.array(base(ids)), np.array(adapted(ids)), atol=1e-6)
    text = mlx_lm.generate(adapted, tokenizer, "Given the numbers", max_tokens=4)
    assert isinstance(text, str)


def test_adapters_off_equal_the_base_model_after_training(tiny_model_path, tmp_path, spaces_reward):
    training = prepare(tiny_config(tiny_model_path, tmp_path / "run", max_steps=2, extra_reward=spaces_reward))
    model = training.model
    ids = mx.array([[5, 6, 7, 8, 9]])
    base, _ = mlx_lm.load(str(tiny_model_path))
    want = np.array(base(ids))
    np.testing.assert_allclose(np.array(model(ids)), want, atol=1e-5)  # lora_b starts at zero
    run(training, progress=False)
    assert not np.allclose(np.array(model(ids)), want, atol=1e-4)
    with adapters_disabled(model):
        np.testing.assert_allclose(np.array(model(ids)), want, atol=1e-5)
    assert not np.allclose(np.array(model(ids)), want, atol=1e-4)  # and back on after the block


def test_resumed_run_ends_with_the_same_adapters(tiny_model_path, tmp_path, spaces_reward):
    def config(out, steps):
        return tiny_config(tiny_model_path, out, max_steps=steps, save_every=2, extra_reward=spaces_reward)

    straight = tmp_path / "straight"
    train(config(straight, 4), progress=False)
    stopped = tmp_path / "stopped"
    train(config(stopped, 2), progress=False)
    train(config(stopped, 4), resume=True, progress=False)
    assert_same_adapters(straight, stopped)
    assert [m["step"] for m in read_jsonl(stopped / "metrics.jsonl")] == [1, 2, 3, 4]


def test_existing_run_is_never_overwritten_without_a_flag(tiny_model_path, tmp_path, spaces_reward):
    out = tmp_path / "run"

    def config(out, **kw):
        return tiny_config(tiny_model_path, out, extra_reward=spaces_reward, **{"max_steps": 1, **kw})

    train(config(out), progress=False)
    before = (out / "adapters.safetensors").read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        prepare(config(out))
    with pytest.raises(UserError, match="holds a different run"):
        prepare(config(out, max_steps=2, learning_rate=1e-3), resume=True)
    assert (out / "adapters.safetensors").read_bytes() == before
    with pytest.raises(UserError, match="nothing to resume"):
        prepare(config(tmp_path / "empty"), resume=True)
    train(config(out, seed=9), overwrite=True, progress=False)
    assert json.loads((out / "config.json").read_text())["seed"] == 9


def test_task_order_is_a_seeded_permutation_per_epoch():
    steps = [task_indices(s, 4, 10, seed=1) for s in range(1, 6)]  # 20 draws = 2 epochs of 10
    flat = sum(steps, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert task_indices(3, 4, 10, seed=1) == steps[2]
    assert task_indices(1, 4, 10, seed=2) != steps[0]


def test_non_finite_updates_are_skipped_then_the_run_stops(tiny_model_path, tmp_path, spaces_reward):
    """A learning rate that blows the weights up: later losses are NaN, those updates are skipped,
    and after max_bad_steps in a row the run stops with a clear message."""
    out = tmp_path / "run"
    config = tiny_config(
        tiny_model_path, out, max_steps=8, max_bad_steps=3, learning_rate=1e30, extra_reward=spaces_reward
    )
    with pytest.raises(UserError, match="3 consecutive updates had non-finite loss or gradients"):
        train(config, progress=False)
    skipped = [m["skipped"] for m in read_jsonl(out / "metrics.jsonl")]
    assert skipped[-3:] == [True, True, True] and not skipped[0]
    assert (out / "checkpoints" / "step-000001" / "adapters.safetensors").is_file()


def test_gradients_flow_through_the_whole_loop(tiny_model_path, tmp_path, spaces_reward):
    """A reward that only asks for more word-starting tokens rises clearly within a few dozen steps."""
    out = tmp_path / "run"
    config = tiny_config(
        tiny_model_path,
        out,
        max_steps=16,
        batch_size=4,
        num_generations=8,
        max_completion_length=8,
        learning_rate=5e-3,
        extra_reward=spaces_reward,
        save_every=30,
        log_completions_every=30,
        scale_rewards="batch",
    ).replace(rewards=[spaces_reward])
    train(config, progress=False)
    rewards = [m["reward"] for m in read_jsonl(out / "metrics.jsonl") if "reward" in m]
    first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
    assert last > first + 0.2, (first, last)


def test_qlora_run_on_a_4bit_base_saves_adapters_that_mlx_lm_loads(tiny_model_path, tmp_path, spaces_reward):
    out = tmp_path / "run"
    training = prepare(tiny_config(tiny_model_path, out, max_steps=2, quantize=4, extra_reward=spaces_reward))
    import mlx.nn as nn

    quantized = [m for _, m in training.model.named_modules() if isinstance(m, nn.QuantizedLinear)]
    assert quantized, "the base's linear layers should be 4-bit"
    run(training, progress=False)
    weights = mx.load(str(out / "adapters.safetensors"))
    assert weights and all(k.endswith(("lora_a", "lora_b")) for k in weights)
    assert any(float(mx.abs(v).max()) > 0 for k, v in weights.items() if k.endswith("lora_b"))


def reference_lr(update: int, lr: float, warmup: int, total: int, schedule: str) -> float:
    """The rate of the 0-based `update`: linear warm-up from lr/warmup, then the schedule to 0 at `total`."""
    if update < warmup:
        return lr / warmup + (lr - lr / warmup) * update / warmup
    done = (update - warmup) / (total - warmup)
    return {"constant": lr, "linear": lr * (1 - done), "cosine": lr * 0.5 * (1 + math.cos(math.pi * done))}[schedule]


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_each_step_uses_the_scheduled_learning_rate(tiny_model_path, tmp_path, spaces_reward, schedule):
    config = tiny_config(
        tiny_model_path, tmp_path / "run", max_steps=6, warmup_steps=2, lr_schedule=schedule, extra_reward=spaces_reward
    )
    train(config, progress=False)
    logged = [m["lr"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    want = [reference_lr(t, config.learning_rate, 2, 6, schedule) for t in range(6)]
    np.testing.assert_allclose(logged, want, rtol=1e-5)


def test_a_run_stopped_mid_decay_resumes_on_the_same_schedule(tiny_model_path, tmp_path, spaces_reward):
    def config(out):
        return tiny_config(tiny_model_path, out, max_steps=5, lr_schedule="cosine", extra_reward=spaces_reward)

    class Halt(Exception):
        pass

    def halt_after_step_2(metrics):
        if metrics["step"] == 2:  # its checkpoint is saved (save_every 1): a crash right after it
            raise Halt

    train(config(tmp_path / "straight"), progress=False)
    with pytest.raises(Halt):
        run(prepare(config(tmp_path / "stopped")), on_step=halt_after_step_2, progress=False)
    train(config(tmp_path / "stopped"), resume=True, progress=False)
    straight, stopped = (read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("straight", "stopped"))
    assert [m["step"] for m in stopped] == [1, 2, 3, 4, 5]
    assert [m["lr"] for m in stopped] == [m["lr"] for m in straight]
    assert_same_adapters(tmp_path / "straight", tmp_path / "stopped")
