import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map
from mlx_lm.tuner.utils import linear_to_lora_layers

from mlx_grpo.layout import PaddedCache, left_pad, shared_prefix_length
from mlx_grpo.logprobs import chunk_nbytes, hidden_states, output_layer, sequence_logprobs

PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]


def _batch(vocab: int, T: int = 5, seed: int = 0):
    """Left-padded prompts and random completion tokens (with some right padding)."""
    prompts, pad = left_pad(PROMPTS)
    tokens = mx.array(np.random.default_rng(seed).integers(0, vocab, (len(PROMPTS), T)), dtype=mx.int32)
    mask = mx.array([[1] * T, [1] * (T - 2) + [0, 0], [1] * (T - 1) + [0]], dtype=mx.float32)
    return prompts, pad, tokens, mask


def _reference(model, prompt, completion, temperature=1.0):
    """log p(completion | prompt) from one plain forward pass over the unpadded row."""
    ids = mx.array([list(prompt) + list(completion)])
    logits = model(ids)[0, len(prompt) - 1 : -1].astype(mx.float32) / temperature  # [T, V]
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return np.array(mx.take_along_axis(logp, mx.array(completion)[:, None], axis=-1)[:, 0])


def test_left_pad_layout():
    prompts, pad = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert prompts.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert pad.tolist() == [0, 2]
    assert prompts.dtype == mx.int32


def test_shared_prefix_layout():
    ids = [[5, 6, 7, 9], [5, 6, 8], [5, 6, 7]]
    assert shared_prefix_length(ids) == 2
    prompts, pad = left_pad(ids, shared=2)
    assert prompts.tolist() == [[5, 6, 7, 9], [5, 6, 0, 8], [5, 6, 0, 7]] and pad.tolist() == [0, 1, 1]
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # each prompt keeps a token of its own
    assert shared_prefix_length([[1, 2], [3, 2]]) == 0
    assert shared_prefix_length([[1, 2, 3]]) == 0


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_batched_left_padded_rows_match_single_unpadded_rows(tiny_model, temperature):
    model, _ = tiny_model
    prompts, pad, tokens, mask = _batch(model.args.vocab_size)
    got = np.array(sequence_logprobs(model, prompts, pad, tokens, mask, temperature=temperature))
    for r, prompt in enumerate(PROMPTS):
        n = int(mask[r].sum().item())
        want = _reference(model, prompt, tokens[r, :n].tolist(), temperature)
        np.testing.assert_allclose(got[r, :n], want, atol=1e-5)
        assert np.all(got[r, n:] == 0)


def test_more_left_padding_gives_the_same_logprobs(tiny_model):
    model, _ = tiny_model
    completion = mx.array([[40, 41, 42, 43]], dtype=mx.int32)
    results = []
    for extra in (0, 3, 17):
        prompts = mx.array([[0] * extra + [5, 6, 7]], dtype=mx.int32)
        results.append(np.array(sequence_logprobs(model, prompts, mx.array([extra]), completion)))
    np.testing.assert_allclose(results[1], results[0], atol=1e-5)
    np.testing.assert_allclose(results[2], results[0], atol=1e-5)


def test_chunked_equals_unchunked(tiny_model):
    model, _ = tiny_model
    prompts, pad, tokens, mask = _batch(model.args.vocab_size, T=7)
    whole = sequence_logprobs(model, prompts, pad, tokens, mask, chunk_size=10**6)
    for chunk in (1, 4, 5):
        chunked = sequence_logprobs(model, prompts, pad, tokens, mask, chunk_size=chunk)
        np.testing.assert_allclose(np.array(chunked), np.array(whole), atol=1e-5)


def test_non_differentiable_gives_the_same_values_and_no_gradient(tiny_model):
    model, _ = tiny_model
    prompts, pad, tokens, mask = _batch(model.args.vocab_size)
    with_grad = sequence_logprobs(model, prompts, pad, tokens, mask, chunk_size=4)
    plain = sequence_logprobs(model, prompts, pad, tokens, mask, chunk_size=4, differentiable=False)
    np.testing.assert_array_equal(np.array(plain), np.array(with_grad))
    _lora(model)
    loss = lambda m: sequence_logprobs(m, prompts, pad, tokens, mask, differentiable=False).sum()  # noqa: E731
    _, grads = nn.value_and_grad(model, loss)(model)
    assert all(mx.all(g == 0).item() for _, g in tree_flatten(grads))


def test_chunk_nbytes(tiny_model):
    model, _ = tiny_model
    assert chunk_nbytes(model, 256) == 7 * 256 * model.args.vocab_size * 4


def _lora(model):
    mx.random.seed(0)  # the LoRA init draws from the global key: same weights whatever ran before
    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": 4, "scale": 10.0, "dropout": 0.0})
    return model


def _autodiff_reference(model, prompts, pad, tokens):
    """The same log-probs through full [R, T, V] logits and MLX's own autodiff."""
    P = prompts.shape[1]
    caches = [PaddedCache(pad) for _ in model.layers]
    hidden = hidden_states(model, mx.concatenate([prompts, tokens[:, :-1]], axis=1), caches)[:, P - 1 :]
    logits = output_layer(model)[1](hidden).astype(mx.float32)  # [R, T, V]
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return mx.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


def test_lora_gradients_match_autodiff_through_full_logits(tiny_model):
    model = _lora(tiny_model[0])
    prompts, pad, tokens, mask = _batch(model.args.vocab_size)
    weights = mx.array(np.random.default_rng(1).normal(size=tokens.shape), dtype=mx.float32) * mask

    def grads(logprobs_fn):
        def loss(params):
            model.update(params)
            return (weights * logprobs_fn()).sum()

        _, g = mx.value_and_grad(loss)(model.trainable_parameters())
        return dict(tree_flatten(g))

    chunked = grads(lambda: sequence_logprobs(model, prompts, pad, tokens, mask, chunk_size=4))
    reference = grads(lambda: _autodiff_reference(model, prompts, pad, tokens))
    assert chunked and all(".lora_" in name for name in chunked)
    lora_b = [name for name in chunked if name.endswith("lora_b")]  # lora_a's gradient is 0 while lora_b is 0
    assert lora_b and all(mx.abs(chunked[name]).sum().item() > 0 for name in lora_b)
    for name in chunked:
        np.testing.assert_allclose(np.array(chunked[name]), np.array(reference[name]), atol=1e-5, rtol=1e-4)


def test_gradient_through_an_unfrozen_output_layer_is_refused(tiny_model):
    model, _ = tiny_model
    prompts, pad, tokens, mask = _batch(model.args.vocab_size)
    with pytest.raises(ValueError, match="freeze"):
        nn.value_and_grad(model, lambda m: sequence_logprobs(m, prompts, pad, tokens, mask).sum())(model)


def test_value_and_grad_through_a_module_loss(tiny_model):
    model = _lora(tiny_model[0])
    prompts, pad, tokens, mask = _batch(model.args.vocab_size)
    loss_and_grad = nn.value_and_grad(model, lambda m: -sequence_logprobs(m, prompts, pad, tokens, mask).sum())
    loss, grads = loss_and_grad(model)
    assert np.isfinite(loss.item())
    assert all(np.isfinite(np.array(g)).all() for _, g in tree_flatten(grads))


def test_each_prompt_run_once_gives_the_same_logprobs_and_gradients(tiny_model):
    """Shared-prompt layout (B distinct prompts, R rows pointing at them) == one row per prompt copy."""
    model = _lora(tiny_model[0])
    # lora_b at 0 would hide wrong gradients to lora_a: give the adapters a value first
    model.update(tree_map(lambda p: p + 0.05, model.trainable_parameters()))
    unique, unique_pad = left_pad(PROMPTS)  # [B, P]
    index = mx.array([0, 0, 1, 1, 1, 2, 2], dtype=mx.int32)  # groups of different sizes
    rows, rows_pad = left_pad([PROMPTS[i] for i in index.tolist()])  # [R, P]
    rng = np.random.default_rng(3)
    tokens = mx.array(rng.integers(0, model.args.vocab_size, (7, 6)), dtype=mx.int32)
    mask = mx.array((np.arange(6)[None] < rng.integers(1, 7, size=7)[:, None]).astype(np.float32))
    weights = mx.array(rng.normal(size=(7, 6)), dtype=mx.float32) * mask

    def value_and_grads(**layout):
        def loss(params):
            model.update(params)
            return (weights * sequence_logprobs(model, tokens=tokens, mask=mask, chunk_size=8, **layout)).sum()

        value, g = mx.value_and_grad(loss)(model.trainable_parameters())
        return value.item(), dict(tree_flatten(g))

    shared_value, shared = value_and_grads(prompts=unique, prompt_pad=unique_pad, prompt_index=index)
    copied_value, copied = value_and_grads(prompts=rows, prompt_pad=rows_pad)
    assert shared_value == pytest.approx(copied_value, rel=1e-5)
    for name in copied:
        np.testing.assert_allclose(np.array(shared[name]), np.array(copied[name]), atol=1e-5, rtol=1e-4)
    one_token = sequence_logprobs(model, unique, unique_pad, tokens[:, :1], prompt_index=index)
    np.testing.assert_allclose(
        np.array(one_token), np.array(sequence_logprobs(model, rows, rows_pad, tokens[:, :1])), atol=1e-5
    )


def test_shared_prefix_run_once_gives_the_same_logprobs_and_gradients(tiny_model):
    """Prompts that start alike: the prefix run once, in front of the pad slots == every row padded in full."""
    model = _lora(tiny_model[0])
    model.update(tree_map(lambda p: p + 0.05, model.trainable_parameters()))
    ids = [[5, 6, 7, 8, 9, 10, 11], [5, 6, 7, 8, 12], [5, 6, 7, 13, 14, 15]]  # shared prefix [5, 6, 7]
    shared = shared_prefix_length(ids)
    assert shared == 3
    rng = np.random.default_rng(4)
    tokens = mx.array(rng.integers(0, model.args.vocab_size, (3, 5)), dtype=mx.int32)
    weights = mx.array(rng.normal(size=(3, 5)), dtype=mx.float32)

    def value_and_grads(prompt_ids, **kw):
        prompts, pad = left_pad(prompt_ids, shared=kw.get("shared", 0))

        def loss(params):
            model.update(params)
            return (weights * sequence_logprobs(model, prompts, pad, tokens, chunk_size=8, **kw)).sum()

        value, g = mx.value_and_grad(loss)(model.trainable_parameters())
        return value.item(), dict(tree_flatten(g))

    plain_value, plain = value_and_grads(ids)
    index = mx.array([0, 1, 2], dtype=mx.int32)
    for layout in ({"shared": shared}, {"shared": shared, "prompt_index": index}):
        value, grads = value_and_grads(ids, **layout)
        assert value == pytest.approx(plain_value, rel=1e-5)
        for name in plain:
            np.testing.assert_allclose(np.array(grads[name]), np.array(plain[name]), atol=1e-5, rtol=1e-4)
    for r, prompt in enumerate(ids):  # and each row as one unpadded forward pass
        prompts, pad = left_pad(ids, shared=shared)
        got = sequence_logprobs(model, prompts, pad, tokens, shared=shared, differentiable=False)
        np.testing.assert_allclose(np.array(got[r]), _reference(model, prompt, tokens[r].tolist()), atol=1e-5)


@pytest.mark.parametrize("layout", ["one_pass", "shared_prefix_and_prompt_index"])
def test_checkpointed_gradients_equal_plain_ones(tiny_model, layout):
    """Activation checkpointing recomputes the blocks in the backward pass: same values, same gradients."""
    model = _lora(tiny_model[0])
    model.update(tree_map(lambda p: p + 0.05, model.trainable_parameters()))
    ids = [[5, 6, 7, 8, 9, 10, 11], [5, 6, 7, 8, 12], [5, 6, 7, 13, 14, 15]]
    kw = {} if layout == "one_pass" else {"shared": 3, "prompt_index": mx.array([0, 0, 1, 2], dtype=mx.int32)}
    prompts, pad = left_pad(ids, shared=kw.get("shared", 0))
    R = 4 if kw else 3
    rng = np.random.default_rng(5)
    tokens = mx.array(rng.integers(0, model.args.vocab_size, (R, 6)), dtype=mx.int32)
    weights = mx.array(rng.normal(size=(R, 6)), dtype=mx.float32)

    def value_and_grads(checkpoint):
        def loss(params):
            model.update(params)
            logps = sequence_logprobs(model, prompts, pad, tokens, chunk_size=8, checkpoint=checkpoint, **kw)
            return (weights * logps).sum()

        value, g = mx.value_and_grad(loss)(model.trainable_parameters())
        return value.item(), dict(tree_flatten(g))

    plain_value, plain = value_and_grads(False)
    value, checkpointed = value_and_grads(True)
    assert value == pytest.approx(plain_value, rel=1e-6)
    assert set(checkpointed) == set(plain)
    for name in plain:
        np.testing.assert_allclose(np.array(checkpointed[name]), np.array(plain[name]), atol=1e-6, rtol=1e-5)
