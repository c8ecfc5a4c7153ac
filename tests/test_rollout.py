import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_map
from mlx_lm.generate import generate_step
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.utils import linear_to_lora_layers

from mlx_grpo import rollout
from mlx_grpo.layout import left_pad
from mlx_grpo.logprobs import sequence_logprobs
from mlx_grpo.model import adapters_merged
from mlx_grpo.sampling import SamplingOptions, sample

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
PREFIXED = [[5, 6, 7, 8, 9, 10, 11], [5, 6, 7, 12, 13], [5, 6, 14, 15, 16, 17]]  # prefilled once: [5, 6]


def _row_prompts(out: rollout.Rollout):
    """Left-padded prompts repeated per row, as `sequence_logprobs` takes them."""
    prompts, pad = left_pad(out.prompts.ids)
    return mx.repeat(prompts, out.group_size, axis=0), mx.repeat(pad, out.group_size)


def _full_forward_logits(model, prompt, completion):
    """`[T, V]` float32 logits predicting each completion token, from one unpadded forward pass."""
    ids = mx.array([list(prompt) + list(completion)])
    return np.array(model(ids)[0, len(prompt) - 1 : -1].astype(mx.float32))


def _truncated_logprobs(logits, temperature, top_k, top_p):
    """numpy reference: log-probs of the temperature / top-k / top-p renormalised distribution."""
    z = logits.astype(np.float64) / temperature
    if top_k:
        z = np.where(z >= np.sort(z)[-top_k], z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p)
    before = np.cumsum(p[order]) - p[order]
    kept = np.zeros_like(p, dtype=bool)
    kept[order[before < top_p]] = True
    p = np.where(kept, p, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(p / p.sum())


@pytest.mark.parametrize("temperature, prompt_ids", [(1.0, PROMPTS), (0.7, PROMPTS), (1.0, PREFIXED)])
def test_sampled_logps_equal_a_full_forward_pass(tiny_model, temperature, prompt_ids):
    model, _ = tiny_model
    out = rollout.generate(
        model,
        prompt_ids,
        sampling=SamplingOptions(max_tokens=9, temperature=temperature),
        group_size=2,
        eos_ids=[],
        seed=1,
    )
    assert out.tokens.shape == (6, 9) and out.tokens.dtype == mx.int32
    prompts, pad = _row_prompts(out)
    recomputed = sequence_logprobs(model, prompts, pad, out.tokens, out.mask, temperature=temperature)
    np.testing.assert_allclose(np.array(out.logps), np.array(recomputed), atol=1e-4)


def test_top_k_top_p_logps_are_of_the_renormalised_distribution(tiny_model):
    model, _ = tiny_model
    temperature, top_k, top_p = 0.7, 20, 0.6
    out = rollout.generate(
        model,
        PROMPTS,
        sampling=SamplingOptions(max_tokens=6, temperature=temperature, top_k=top_k, top_p=top_p),
        group_size=2,
        eos_ids=[],
        seed=3,
    )
    for r in range(6):
        completion = out.tokens[r].tolist()
        logits = _full_forward_logits(model, PROMPTS[r // 2], completion)
        for t, token in enumerate(completion):
            want = _truncated_logprobs(logits[t], temperature, top_k, top_p)
            assert np.isfinite(want[token]), "sampled a token outside the top-k / top-p set"
            assert abs(out.logps[r, t].item() - want[token]) < 1e-4


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (8, 1.0), (0, 0.7), (8, 0.9)])
def test_sampler_frequencies_follow_the_truncated_distribution(top_k, top_p):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=12).astype(np.float32) * 2
    rows = 20000
    tokens, logps = sample(
        mx.array(np.tile(logits, (rows, 1))), mx.random.key(0), 0.8, top_k=top_k, top_p=top_p if top_p < 1 else None
    )
    want = np.exp(_truncated_logprobs(logits, 0.8, top_k, top_p))
    freq = np.bincount(np.array(tokens), minlength=12) / rows
    assert np.abs(freq - want).max() < 0.015
    np.testing.assert_allclose(np.array(logps), np.log(want[np.array(tokens)]), atol=1e-5)


def test_shared_prefill_matches_separate_prefill(tiny_model):
    model, _ = tiny_model
    prompts, pad = left_pad(PROMPTS)
    logits, keys, values = rollout._prefill(model, prompts, pad, group_size=3)
    assert logits.shape[0] == 9 and keys[0].shape[0] == 9 and keys[0].shape[2] % rollout.CAPACITY_BUCKET == 0
    for b, prompt in enumerate(PROMPTS):
        alone = model(mx.array([prompt]))[0, -1]
        for g in range(3):  # group-major: rows 3b .. 3b+2 are prompt b's
            np.testing.assert_allclose(np.array(logits[3 * b + g]), np.array(alone), atol=1e-5)


def _greedy_reference(model, prompt, n):
    steps = generate_step(mx.array(prompt), model, max_tokens=n, sampler=lambda lp: mx.argmax(lp, axis=-1))
    return [int(token) for token, _ in steps]


@pytest.mark.parametrize("temperature, prompt_ids", [(0.0, PROMPTS), (1e-4, PROMPTS), (0.0, PREFIXED)])
def test_greedy_equals_plain_mlx_lm_argmax_decoding(tiny_model, temperature, prompt_ids):
    model, _ = tiny_model
    out = rollout.generate(
        model,
        prompt_ids,
        sampling=SamplingOptions(max_tokens=12, temperature=temperature),
        group_size=2,
        eos_ids=[],
        seed=0,
    )
    for r in range(6):
        assert out.tokens[r].tolist() == _greedy_reference(model, prompt_ids[r // 2], 12)


def test_stop_token_is_kept_and_the_rest_is_padding(tiny_model):
    model, _ = tiny_model
    eos = set(range(0, model.args.vocab_size, 3))  # about a third of the vocabulary stops a row
    out = rollout.generate(model, PROMPTS, sampling=SamplingOptions(max_tokens=10), group_size=4, eos_ids=eos, seed=0)
    tokens, mask, logps = np.array(out.tokens), np.array(out.mask), np.array(out.logps)
    lengths, truncated = np.array(out.lengths), np.array(out.truncated)
    assert mask.dtype == np.float32 and tokens.shape[1] == lengths.max()
    assert truncated.sum() < len(tokens)  # most rows stopped
    for r in range(len(tokens)):
        n = lengths[r]
        stops = [t for t in range(n) if tokens[r, t] in eos]
        if truncated[r]:
            assert n == 10 and not stops
        else:
            assert stops == [n - 1]  # the stop token is the last kept token
        assert mask[r].tolist() == [1.0] * n + [0.0] * (tokens.shape[1] - n)
        assert np.all(tokens[r, n:] == 0) and np.all(logps[r, n:] == 0) and np.all(logps[r, :n] < 0)


def test_early_exit_when_every_row_stops(tiny_model):
    model, _ = tiny_model
    out = rollout.generate(
        model,
        PROMPTS,
        sampling=SamplingOptions(max_tokens=50),
        group_size=2,
        eos_ids=range(model.args.vocab_size),
        seed=0,
    )
    assert out.tokens.shape == (6, 1)
    assert out.lengths.tolist() == [1] * 6 and not out.truncated.any().item()


def test_truncated_when_no_stop_token(tiny_model):
    model, _ = tiny_model
    out = rollout.generate(model, PROMPTS, sampling=SamplingOptions(max_tokens=5), group_size=2, eos_ids=[], seed=0)
    assert out.truncated.all().item() and out.lengths.tolist() == [5] * 6
    assert out.mask.sum().item() == 30


def test_seed_reproducibility(tiny_model):
    model, _ = tiny_model

    def run(seed):
        return rollout.generate(
            model, PROMPTS, sampling=SamplingOptions(max_tokens=8), group_size=3, eos_ids=[], seed=seed
        ).tokens.tolist()

    assert run(7) == run(7)
    assert run(7) != run(8)
    mx.random.seed(5)
    first = rollout.generate(
        model, PROMPTS, sampling=SamplingOptions(max_tokens=8), group_size=3, eos_ids=[]
    ).tokens.tolist()
    mx.random.seed(5)
    assert (
        rollout.generate(
            model, PROMPTS, sampling=SamplingOptions(max_tokens=8), group_size=3, eos_ids=[]
        ).tokens.tolist()
        == first
    )


def test_lora_model_and_weight_updates_are_seen_by_the_compiled_step(tiny_model):
    model, _ = tiny_model
    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": 4, "scale": 10.0, "dropout": 0.0})

    def check():
        out = rollout.generate(model, PROMPTS, sampling=SamplingOptions(max_tokens=6), group_size=2, eos_ids=[], seed=0)
        prompts, pad = _row_prompts(out)
        recomputed = sequence_logprobs(model, prompts, pad, out.tokens, out.mask)
        np.testing.assert_allclose(np.array(out.logps), np.array(recomputed), atol=1e-4)
        return out.tokens.tolist()

    before = check()
    model.update(tree_map(lambda p: p + 0.5, model.trainable_parameters()))  # as an optimizer step would
    updated = check()
    assert updated != before
    lora = [m for _, m in model.named_modules() if hasattr(m, "lora_b")]
    for m in lora:  # adapters off (the reference policy): a Python attribute the trace must not keep
        m.scale = 0.0
    assert check() != updated


def test_adapters_merged_for_sampling_give_the_same_completions(tiny_model):
    model, _ = tiny_model
    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": 4, "scale": 10.0, "dropout": 0.0})
    model.update(tree_map(lambda p: p + 0.05, model.trainable_parameters()))  # lora_b away from 0
    n_lora = sum(isinstance(m, LoRALinear) for _, m in model.named_modules())
    ids = mx.array([[5, 6, 7, 8]])
    before = model(ids)
    lora = rollout.generate(model, PREFIXED, sampling=SamplingOptions(max_tokens=8), group_size=2, eos_ids=[], seed=3)
    with adapters_merged(model):
        assert not any(isinstance(m, LoRALinear) for _, m in model.named_modules())
        merged = rollout.generate(
            model, PREFIXED, sampling=SamplingOptions(max_tokens=8), group_size=2, eos_ids=[], seed=3
        )
    assert merged.tokens.tolist() == lora.tokens.tolist()
    np.testing.assert_allclose(np.array(merged.logps), np.array(lora.logps), atol=1e-5)
    assert mx.array_equal(model(ids), before).item()  # adapters and base weights back as they were
    with adapters_merged(model, max_bytes=0):  # a merged copy would not fit: left as it is
        assert sum(isinstance(m, LoRALinear) for _, m in model.named_modules()) == n_lora


def test_bad_arguments_raise(tiny_model):
    model, _ = tiny_model
    with pytest.raises(ValueError):
        rollout.generate(model, [[]], sampling=SamplingOptions(max_tokens=4), group_size=2, eos_ids=[])
    with pytest.raises(ValueError):
        rollout.generate(model, PROMPTS, sampling=SamplingOptions(max_tokens=0), group_size=2, eos_ids=[])
    with pytest.raises(ValueError):
        rollout.generate(model, PROMPTS, sampling=SamplingOptions(max_tokens=4, top_p=0.0), group_size=2, eos_ids=[])
