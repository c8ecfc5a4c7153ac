"""The thinking budget: the sampler forces the early-stop text into rows still thinking at the budget,
per row, in one batched decode; the update scores the spliced rows exactly as the rollout did."""

from __future__ import annotations

import dataclasses
import json

import mlx.core as mx
import numpy as np
import pytest
from test_rollout import _full_forward_logits, _truncated_logprobs
from test_update import unpadded_logprobs

from mlx_grpo import rollout
from mlx_grpo.budget import ThinkingBudget
from mlx_grpo.config import QWEN3_THINKING_STOP_TEXT, TrainConfig
from mlx_grpo.errors import UserError
from mlx_grpo.layout import left_pad
from mlx_grpo.logprobs import sequence_logprobs
from mlx_grpo.sampling import SamplingOptions

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17], [18, 19, 20]]


def _generate(model, sampling, group_size=1, prompts=PROMPTS, seed=0) -> rollout.Rollout:
    return rollout.generate(model, prompts, sampling=sampling, group_size=group_size, eos_ids=[], seed=seed)


def _tiny_budget(tokenizer, max_thinking_tokens, max_answer_tokens, max_completion_length=200) -> ThinkingBudget:
    """The budget the training config gives, in the tiny tokenizer's ids (Qwen's stop text, `</think>` special);
    max_answer_tokens None: no answer budget."""
    config = TrainConfig(max_thinking_tokens=max_thinking_tokens, max_completion_length=max_completion_length)
    return dataclasses.replace(ThinkingBudget.of_config(config, tokenizer), max_answer_tokens=max_answer_tokens)


# ---- the real Qwen3 tokenizer ----------------------------------------------------------------


def test_qwen3_ids_of_the_stop_text_and_of_think_end(qwen3_tokenizer_dir):
    from mlx_lm.tokenizer_utils import load as load_tokenizer  # the wrapper mlx_lm.load returns

    tokenizer = load_tokenizer(qwen3_tokenizer_dir)
    budget = ThinkingBudget.of_config(TrainConfig(), tokenizer)
    assert tokenizer.convert_ids_to_tokens(151668) == "</think>" and budget.think_end_id == 151668  # one special token
    assert len(budget.stop_ids) == 24  # as Qwen's docs count it (docs/recipe.md)
    assert budget.stop_ids[:1] == (271,) and budget.stop_ids[-2:] == (151668, 271)  # "\n\n" ... "</think>" "\n\n"
    assert tokenizer.decode(list(budget.stop_ids)) == QWEN3_THINKING_STOP_TEXT
    assert (budget.max_thinking_tokens, budget.max_answer_tokens) == (1024, 128)
    assert 1024 + 24 + 128 == TrainConfig().max_completion_length
    messages = [{"role": "user", "content": "hi"}]
    header = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, enable_thinking=True)
    assert (header + TrainConfig().prefill).endswith("<|im_start|>assistant\n<think>\n")  # rows start inside <think>


# ---- the decode step -------------------------------------------------------------------------


def _choose_think_end(greedy: np.ndarray, budget_tokens: int) -> int:
    """A token that greedy decoding writes before the budget in some rows but not in others, so that one
    batch holds natural closes (at different steps) and forced ones."""
    for token in np.unique(greedy[:, :budget_tokens]):
        firsts = [int(np.argmax(row == token)) if (row[:budget_tokens] == token).any() else None for row in greedy]
        natural = {f for f in firsts if f is not None}
        if len(natural) >= 2 and None in firsts:
            return int(token)
    pytest.fail("no token closes some rows at different steps and leaves others thinking")


def test_rows_close_or_are_forced_each_at_their_own_step_and_answers_are_capped(tiny_model):
    """Until the stop text is forced into a row, it writes what it writes without a budget (same seed,
    same logits, same draws), so the expected rows follow from one unbudgeted run."""
    model, _ = tiny_model
    N, A, K = 8, 3, 4
    plain = np.array(_generate(model, SamplingOptions(max_tokens=30), group_size=3, seed=1).tokens)
    think_end = _choose_think_end(plain, N)
    first, second, last = [t for t in (301, 302, 303, 304) if t != think_end][:3]
    stop_ids = (first, second, think_end, last)
    budget = ThinkingBudget(N, stop_ids, think_end, A)
    out = _generate(model, SamplingOptions(max_tokens=30, budget=budget), group_size=3, seed=1)
    tokens, mask, logps, forced = (np.array(x) for x in (out.tokens, out.mask, out.logps, out.forced))
    lengths = np.array(out.lengths)
    kinds = []
    for r, row in enumerate(plain):
        natural = row[:N] == think_end
        if natural.any():  # closed by the model: its own tokens up to </think>, then A answer tokens
            close = int(np.argmax(natural))
            assert lengths[r] == close + 1 + A and tokens[r, : lengths[r]].tolist() == row[: lengths[r]].tolist()
            assert not forced[r].any() and mask[r, : lengths[r]].all()
            kinds.append(("natural", close))
        else:  # N thought tokens, the stop text forced, then A answer tokens
            assert lengths[r] == N + K + A and tokens[r, :N].tolist() == row[:N].tolist()
            assert tokens[r, N : N + K].tolist() == list(stop_ids)
            assert forced[r].tolist() == [False] * N + [True] * K + [False] * (tokens.shape[1] - N - K)
            assert (mask[r, N : N + K] == 0).all() and (logps[r, N : N + K] == 0).all()
            assert mask[r, :N].all() and mask[r, N + K : lengths[r]].all()
            kinds.append(("forced", N))
        assert (tokens[r, lengths[r] :] == 0).all() and (mask[r, lengths[r] :] == 0).all()
    assert len({k for k, _ in kinds}) == 2 and len({step for k, step in kinds if k == "natural"}) >= 2
    assert out.truncated.all().item()  # the answer budget stopped every row, without a stop token
    assert out.forced_rows.tolist() == [k == "forced" for k, _ in kinds]


@pytest.mark.parametrize("temperature, prompts, group_size", [(1.0, PROMPTS, 2), (0.7, PROMPTS[:3], 3)])
def test_rollout_logps_equal_a_full_forward_pass_over_the_spliced_rows(tiny_model, temperature, prompts, group_size):
    model, tokenizer = tiny_model
    N = 5
    budget = _tiny_budget(tokenizer, N, 4)
    K = len(budget.stop_ids)
    out = _generate(model, SamplingOptions(N + K + 4, temperature, budget=budget), group_size, prompts, seed=2)
    mask, forced = np.array(out.mask), np.array(out.forced)
    assert forced.any(axis=1).all()  # a random model never writes </think>: every row is forced at N
    assert (forced[:, N : N + K]).all() and forced.sum() == K * len(forced) and (mask[forced] == 0).all()
    reference = unpadded_logprobs(model, out, temperature)  # each row alone: prompt + spliced completion
    np.testing.assert_allclose(np.array(out.logps)[mask > 0], reference[mask > 0], atol=1e-4)
    assert (np.array(out.logps)[forced] == 0).all()
    # the update's pass (tokens as inputs whatever the mask) scores the sampled tokens as the rollout did
    row_prompts, pad = left_pad(out.prompts.ids)
    row_prompts, pad = mx.repeat(row_prompts, group_size, axis=0), mx.repeat(pad, group_size)
    update = sequence_logprobs(model, row_prompts, pad, out.tokens, out.mask, temperature=temperature)
    np.testing.assert_allclose(np.array(update), np.array(out.logps), atol=1e-4)


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=0.7, top_k=8, top_p=0.9)])
def test_greedy_and_truncated_sampling_with_the_budget(tiny_model, sampling):
    model, tokenizer = tiny_model
    budget = _tiny_budget(tokenizer, 4, None)  # no answer budget: rows run on to max_tokens
    K = len(budget.stop_ids)
    out = _generate(model, SamplingOptions(4 + K + 6, budget=budget, **sampling), group_size=2, seed=5)
    tokens, forced, logps = np.array(out.tokens), np.array(out.forced), np.array(out.logps)
    assert tokens.shape[1] == 4 + K + 6 and out.lengths.tolist() == [4 + K + 6] * len(tokens)
    assert (tokens[:, 4 : 4 + K] == np.array(budget.stop_ids)).all() and forced[:, 4 : 4 + K].all()
    assert forced.sum() == K * len(tokens)
    if sampling["temperature"] == 0:
        return
    for r in range(len(tokens)):  # the model's tokens: log-probs of the truncated distribution, given the stop text
        logits = _full_forward_logits(model, PROMPTS[r // 2], tokens[r].tolist())
        for t in np.flatnonzero(~forced[r]):
            want = _truncated_logprobs(logits[t], sampling["temperature"], sampling["top_k"], sampling["top_p"])
            assert abs(logps[r, t] - want[tokens[r, t]]) < 1e-4


def test_a_budget_that_never_bites_changes_nothing(tiny_model):
    model, tokenizer = tiny_model
    plain = _generate(model, SamplingOptions(max_tokens=12), group_size=2, seed=4)
    budget = ThinkingBudget(50, (301, 302), 302, None)  # the model would have to write 50 tokens first
    budgeted = _generate(model, SamplingOptions(max_tokens=12, budget=budget), group_size=2, seed=4)
    assert budgeted.tokens.tolist() == plain.tokens.tolist() and not budgeted.forced.any().item()
    np.testing.assert_allclose(np.array(budgeted.logps), np.array(plain.logps), atol=1e-6)
    assert np.array_equal(np.array(budgeted.mask), np.array(plain.mask))


def test_a_stop_token_ends_a_row_inside_its_answer_budget(tiny_model):
    model, _ = tiny_model
    eos = set(range(0, model.args.vocab_size, 3))
    budget = ThinkingBudget(3, (300, 302), 302, 50)  # 300 is a stop token too: forced, it must not stop the row
    out = rollout.generate(
        model, PROMPTS, sampling=SamplingOptions(30, budget=budget), group_size=4, eos_ids=eos, seed=0
    )
    tokens, forced, lengths = np.array(out.tokens), np.array(out.forced), np.array(out.lengths)
    for r in range(len(tokens)):
        model_tokens = [t for t, f in zip(tokens[r, : lengths[r]], forced[r]) if not f]
        stops = [i for i, t in enumerate(model_tokens) if t in eos]
        assert stops in ([], [len(model_tokens) - 1])  # a stop token ends the row; a forced one does not
        assert out.truncated[r].item() == (not stops)


# ---- configuration ---------------------------------------------------------------------------


def test_budget_off_or_out_of_reach_is_none(tiny_model):
    _, tokenizer = tiny_model
    assert ThinkingBudget.of_config(TrainConfig(max_thinking_tokens=0), tokenizer) is None
    assert ThinkingBudget.of_config(TrainConfig(max_completion_length=64), tokenizer) is None  # 1024 >= 64
    with pytest.raises(UserError, match="must exceed max_thinking_tokens"):
        ThinkingBudget.of_config(TrainConfig(max_thinking_tokens=60, max_completion_length=64), tokenizer)


def test_a_tokenizer_without_a_think_end_token_cannot_budget():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(QWEN3_THINKING_STOP_TEXT))
    characters = Tokenizer(models.BPE({c: i for i, c in enumerate(chars)}, merges=[]))  # one token per character
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=characters)
    assert len(tokenizer.encode("</think>", add_special_tokens=False)) == 8
    with pytest.raises(UserError, match="needs </think> to be one token"):
        ThinkingBudget.of_config(TrainConfig(), tokenizer)
    assert ThinkingBudget.of_config(TrainConfig(max_thinking_tokens=0), tokenizer) is None  # off: no need


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(max_thinking_tokens=-1), "max_thinking_tokens must be >= 0"),
        (dict(max_answer_tokens=0), "max_answer_tokens must be positive"),
        (dict(thinking_stop_text="time is up.\n\n"), "must contain </think>"),
    ],
)
def test_bad_budget_settings_are_one_line_errors(settings, message):
    with pytest.raises(UserError, match=message):
        TrainConfig(**settings)


def test_bundled_model_preset_keeps_the_budget_and_qwen3_sampling_off():
    from pathlib import Path

    from mlx_grpo.config import build_config
    from mlx_grpo.presets import preset_for_model

    bundled = Path(__file__).resolve().parents[1] / "weights" / "countdown-tiny"
    config = build_config(None, {"output_dir": "unused"}, base=preset_for_model(str(bundled)))
    assert (config.max_thinking_tokens, config.prefill, config.temperature, config.top_p, config.top_k) == (
        0,
        "",
        1.0,
        1.0,
        0,
    )


# ---- end to end ------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_training_steps_with_the_budget_on_a_qwen3_layout_model(tmp_path, qwen3_tokenizer_dir):
    """A tiny random Qwen3 in Qwen3-0.6B's layout with the real tokenizer and chat template."""
    from hf_cache import cache_tiny_qwen3

    from mlx_grpo.trainer import train

    model = cache_tiny_qwen3(tmp_path / "hf", qwen3_tokenizer_dir)
    run = tmp_path / "run"
    config = TrainConfig(
        model=str(model),
        dataset="generate",
        num_samples=20,
        batch_size=2,
        num_generations=2,
        max_thinking_tokens=6,
        max_answer_tokens=4,
        max_completion_length=6 + 24 + 4,
        max_steps=2,
        learning_rate=1e-3,
        eval_every=0,
        eval_samples=2,
        log_completions_every=1,
        output_dir=str(run),
    )
    summary = train(config, progress=False)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert [line["step"] for line in lines] == [1, 2]
    assert all(line["forced_frac"] == 1.0 for line in lines)  # random weights never write </think> in 6 tokens
    assert summary["eval/forced_frac"] == 1.0
    for record in map(json.loads, (run / "completions.jsonl").open()):
        assert QWEN3_THINKING_STOP_TEXT in record["completion"] and record["rewards"]["format"] == 0.0
