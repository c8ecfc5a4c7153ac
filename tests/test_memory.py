"""The memory plan: the micro-batch count chosen or checked against --max-memory, and the peaks reported."""

from __future__ import annotations

import pytest
from mlx_lm.models import qwen3

from mlx_grpo.config import TrainConfig, memory_bytes
from mlx_grpo.errors import UserError
from mlx_grpo.memory import GIB, micro_batch_count, peak_memory, rollout_bytes, step_bytes, update_bytes, weight_bytes
from mlx_grpo.modelgen import qwen3_config


def test_update_memory_scales_with_the_micro_batch_and_checkpointing_saves(tiny_model):
    model = tiny_model[0]
    one, four = (update_bytes(model, rows, 200, checkpoint=False) for rows in (1, 4))
    assert four > 3 * (one - update_bytes(model, 0, 200, checkpoint=False))
    deep = qwen3.Model(qwen3.ModelArgs.from_dict(qwen3_config(num_hidden_layers=12)))  # shapes only, never run
    assert update_bytes(deep, 4, 200, checkpoint=True) < update_bytes(deep, 4, 200, checkpoint=False) / 3
    layers, kv = model.args.num_hidden_layers, model.args.num_key_value_heads * model.args.head_dim
    assert rollout_bytes(model, 8, 100) == 2 * layers * 8 * 100 * kv * 4  # float32 keys + values


def _budget(model, rows, positions, k, checkpoint=False) -> str:
    """A --max-memory that fits `k` micro-batches and not one fewer (1 MiB above the step's need)."""
    return f"{(step_bytes(model, rows, positions, k, checkpoint) + 2**20) / 2**20:.0f}MB"


def test_auto_picks_the_fewest_micro_batches_that_fit(tiny_model):
    model = tiny_model[0]
    rows, positions = 8, 4000  # long rows: the update outweighs the rollout's keys/values
    assert micro_batch_count(model, rows, positions, TrainConfig(batch_size=2, num_generations=4)) == 1
    for k in (2, 4):
        budget = _budget(model, rows, positions, k)
        assert step_bytes(model, rows, positions, k // 2, False) > memory_bytes(budget)
        assert (
            micro_batch_count(model, rows, positions, TrainConfig(batch_size=2, num_generations=4, max_memory=budget))
            == k
        )


def test_an_explicit_setting_that_cannot_fit_fails_saying_what_would(tiny_model):
    model = tiny_model[0]
    rows, positions = 8, 4000
    budget = _budget(model, rows, positions, 4)
    c = TrainConfig(batch_size=2, num_generations=4, grad_accumulation=2, max_memory=budget)
    with pytest.raises(
        UserError, match="grad_accumulation 2 needs .* GiB, over --max-memory .*: --grad-accumulation 4"
    ):
        micro_batch_count(model, rows, positions, c)
    assert micro_batch_count(model, rows, positions, c.replace(grad_accumulation=8)) == 8
    tiny = TrainConfig(batch_size=2, num_generations=4, max_memory=f"{weight_bytes(model) // 2**20 + 1}MB")
    with pytest.raises(UserError, match="keys/values alone do not fit"):
        micro_batch_count(model, rows, positions, tiny)


def test_peak_memory_reports_mlx_and_rss():
    peak = peak_memory()
    assert set(peak) == {"peak_memory_gb", "peak_rss_gb"}
    assert 0 < peak["peak_rss_gb"] < 1024 and peak["peak_memory_gb"] >= 0
    assert GIB == 2**30
