"""The memory plan: the micro-batch count chosen or checked against --max-memory, and the peaks reported."""

from __future__ import annotations

import mlx.core as mx
import pytest
from conftest import tiny_run_settings
from mlx_lm.models import qwen3

from mlx_grpo.config import TrainConfig, memory_bytes
from mlx_grpo.errors import UserError
from mlx_grpo.memory import (
    DECODE_WORK_BYTES,
    GIB,
    PROMPT_ALLOWANCE,
    MemoryPlan,
    budget_bytes,
    decode_rows,
    micro_batch_count,
    peak_memory,
    plan_memory,
    rollout_bytes,
    step_bytes,
    update_bytes,
    weight_bytes,
)
from mlx_grpo.modelgen import qwen3_config


def test_update_memory_scales_with_the_micro_batch_and_checkpointing_saves(tiny_model):
    model = tiny_model[0]
    one, four = (update_bytes(model, rows, 200, checkpoint=False) for rows in (1, 4))
    assert four > 3 * (one - update_bytes(model, 0, 200, checkpoint=False))
    deep = _deep()
    assert update_bytes(deep, 4, 200, checkpoint=True) < update_bytes(deep, 4, 200, checkpoint=False) / 3
    layers, kv = model.args.num_hidden_layers, model.args.num_key_value_heads * model.args.head_dim
    assert rollout_bytes(model, 8, 100) == 2 * layers * 8 * 100 * kv * 4  # float32 keys + values


def _deep(**shape):
    """A 12-block Qwen3 (checkpointing saves memory only over several blocks); shapes only, never run."""
    return qwen3.Model(qwen3.ModelArgs.from_dict(qwen3_config(num_hidden_layers=12, **shape)))


def _budget(model, rows, positions, k, checkpoint=False) -> str:
    """A --max-memory that fits `k` micro-batches and not one fewer (1 MiB above the update's need)."""
    return f"{(step_bytes(model, rows, positions, k, checkpoint) + 2**20) / 2**20:.0f}MB"


def test_auto_picks_the_fewest_micro_batches_that_fit(tiny_model):
    model = tiny_model[0]
    rows, positions = 8, 4000  # long rows: the update outweighs the rollout's keys/values
    unbounded = TrainConfig(batch_size=2, num_generations=4, max_memory="none")
    assert micro_batch_count(model, rows, positions, unbounded) == 1
    for k in (2, 4):
        budget = _budget(model, rows, positions, k)
        assert step_bytes(model, rows, positions, k // 2, False) > memory_bytes(budget)
        assert micro_batch_count(model, rows, positions, unbounded.replace(max_memory=budget)) == k


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
    deep = _deep()
    checkpointed_only = _budget(deep, rows, positions, 8, checkpoint=True)
    assert step_bytes(deep, rows, positions, 8, False) > memory_bytes(checkpointed_only)
    with pytest.raises(UserError, match="add --gradient-checkpointing"):
        micro_batch_count(deep, rows, positions, c.replace(grad_accumulation=None, max_memory=checkpointed_only))


def test_auto_is_the_weights_plus_4gb_and_none_is_no_budget(tiny_model):
    model = tiny_model[0]
    assert budget_bytes(model, "auto") == weight_bytes(model) + 4 * GIB
    assert budget_bytes(model, "none") is None and budget_bytes(model, None) is None
    assert budget_bytes(model, "3GB") == 3 * GIB
    assert TrainConfig().max_memory == "auto"
    with pytest.raises(UserError, match="max_memory must be auto, none or a size"):
        TrainConfig(max_memory="automatic")


def test_the_plan_turns_checkpointing_on_when_needed_or_when_it_keeps_groups_whole():
    model = _deep()
    rows, positions = 8, 4000
    config = TrainConfig(batch_size=2, num_generations=4)
    roomy = plan_memory(model, config.replace(max_memory="none"), positions)
    assert roomy == MemoryPlan(checkpoint=False, micro_batches=1, groups_per_call=None, eval_rows=32)
    assert not plan_memory(model, config.replace(max_memory=_budget(model, rows, positions, 1)), positions).checkpoint
    tight = _budget(model, rows, positions, 8, checkpoint=True)  # only the checkpointed update fits
    assert step_bytes(model, rows, positions, 8, False) > memory_bytes(tight)
    assert plan_memory(model, config.replace(max_memory=tight), positions).checkpoint
    with pytest.raises(UserError, match="add --gradient-checkpointing"):  # an explicit "off" is kept
        plan_memory(model, config.replace(max_memory=tight, gradient_checkpointing=False), positions)
    # Plain fits only by splitting each 4-row group into rows (8 prompt passes); checkpointed, two
    # micro-batches of one whole group fit (2 prompt passes): with long prompts that is the faster plan.
    model, prompt_heavy = _deep(hidden_size=256, intermediate_size=1024), PROMPT_ALLOWANCE + 40
    needs = [step_bytes(model, rows, prompt_heavy, 8, False), step_bytes(model, rows, prompt_heavy, 2, True)]
    needs.append(weight_bytes(model) + DECODE_WORK_BYTES + rollout_bytes(model, 4, prompt_heavy))
    budget = f"{(max(needs) + 2**20) / 2**20:.0f}MB"
    assert step_bytes(model, rows, prompt_heavy, 4, False) > memory_bytes(budget)
    assert plan_memory(model, config.replace(max_memory=budget), prompt_heavy).checkpoint


def test_the_plan_decodes_as_many_groups_per_call_as_the_budget_holds(tiny_model):
    model = tiny_model[0]
    positions, group = 1000, 4  # the update of one row fits beside the decode's work allowance
    config = TrainConfig(batch_size=4, num_generations=group)
    one_group = rollout_bytes(model, group, positions)
    for groups in (1, 3):
        budget = f"{(weight_bytes(model) + DECODE_WORK_BYTES + groups * one_group + 2**20) / 2**20:.0f}MB"
        plan = plan_memory(model, config.replace(max_memory=budget), positions)
        assert plan.groups_per_call == groups
        assert plan.eval_rows == min(32, decode_rows(model, positions, memory_bytes(budget)))
    short = weight_bytes(model) + DECODE_WORK_BYTES + one_group - 2**21
    with pytest.raises(UserError, match=r"one group's keys/values \(4 rows x 1000 positions\) need"):
        plan_memory(model, config.replace(max_memory=f"{short / 2**20:.0f}MB"), positions)


def test_the_default_run_fits_the_weights_plus_4gb_at_the_qwen3_06b_shape(qwen3_tokenizer_dir):
    """The estimator's plan for the default config on the Qwen3-0.6B shapes (fp32, shapes only)."""
    import json

    args = json.loads((qwen3_tokenizer_dir / "config.json").read_text())
    model = qwen3.Model(qwen3.ModelArgs.from_dict(args))  # lazy parameters: never evaluated
    model.set_dtype(mx.float32)
    config = TrainConfig()
    positions = PROMPT_ALLOWANCE + config.max_completion_length
    plan = plan_memory(model, config, positions)
    rows = config.batch_size * config.num_generations
    k = plan.micro_batches
    assert k == micro_batch_count(model, rows, positions, config.replace(gradient_checkpointing=plan.checkpoint))
    budget = weight_bytes(model) + 4 * GIB
    assert plan.checkpoint and step_bytes(model, rows, positions, k, True) <= budget
    decoded = weight_bytes(model) + rollout_bytes(model, plan.groups_per_call * config.num_generations, positions)
    assert plan.groups_per_call >= 1 and decoded + DECODE_WORK_BYTES <= budget


def test_peak_memory_reports_mlx_and_rss():
    peak = peak_memory()
    assert set(peak) == {"peak_memory_gb", "peak_rss_gb"}
    assert 0 < peak["peak_rss_gb"] < 1024 and peak["peak_memory_gb"] >= 0
    assert GIB == 2**30


def test_a_growing_decode_buffer_never_holds_two_copies_of_every_layer(tmp_path):
    """The decode's peak stays near its final keys/values buffer: growing it by a bucket frees each
    layer's old buffer as the new one is made (measured 1.12x here: 8 blocks, 32 rows, five growths)."""
    import mlx_lm
    from conftest import build_tiny

    from mlx_grpo import rollout
    from mlx_grpo.sampling import SamplingOptions

    model, _ = mlx_lm.load(str(build_tiny(tmp_path / "deep", num_hidden_layers=8, num_key_value_heads=4)))
    rows, steps = 32, 6 * rollout.CAPACITY_BUCKET  # the buffer grows five times
    mx.eval(model.parameters())
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    out = rollout.generate(
        model, [[5, 6, 7]], group_size=rows, sampling=SamplingOptions(max_tokens=steps), eos_ids=[], seed=0
    )
    assert out.tokens.shape == (rows, steps)
    final_buffer = rollout_bytes(model, rows, rollout._bucket(3 + steps))
    assert mx.get_peak_memory() - before < 1.25 * final_buffer


def test_sampling_in_calls_draws_what_each_call_alone_draws(tiny_model_path, tmp_path, spaces_reward):
    """A step sampled in calls of one group holds, group for group, what sampling that group alone with
    the seed of its place in the batch gives; the trainer samples so when the budget says so."""
    from mlx_grpo.episodes import EpisodeSource, step_seed, task_indices
    from mlx_grpo.trainer import prepare, run

    settings = tiny_run_settings(tiny_model_path, tmp_path / "run", batch_size=3, rewards=[spaces_reward], max_steps=1)
    probe = prepare(TrainConfig(**settings, max_memory="none"))
    probe.lock.release()
    c, group = probe.config, probe.config.num_generations
    source = EpisodeSource(probe.model, probe.tokenizer, probe.train_tasks, c, probe.reward_set, groups_per_call=1)
    step = source(1)
    rows = task_indices(1, c.batch_size, len(probe.train_tasks), c.seed)
    for g in range(c.batch_size):
        alone = source.sample([rows[g]], step_seed(c.seed, 1, g))
        assert alone.completions == step.completions[g * group : (g + 1) * group]
        assert (
            alone.rollout.tokens.tolist()
            == step.rollout.tokens[g * group : (g + 1) * group, : alone.rollout.tokens.shape[1]].tolist()
        )
    positions = PROMPT_ALLOWANCE + c.max_completion_length
    group_bytes = rollout_bytes(probe.model, group, positions)
    one_group = weight_bytes(probe.model) + DECODE_WORK_BYTES + group_bytes
    training = prepare(TrainConfig(**settings, max_memory=str(one_group + group_bytes // 2)))  # in bytes
    assert training.memory.groups_per_call == 1 and training.memory.eval_rows == group + group // 2
    logged = []
    run(training, on_step=logged.append, progress=False)
    assert logged[0]["reward"] == pytest.approx(sum(step.totals) / len(step.totals))
