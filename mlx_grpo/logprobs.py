"""Per-token log-probs of completions under the current model, for the GRPO loss.

Rows arrive in the padded layout of `mlx_grpo.layout` (the one `rollout.generate` prefills with):
each row is its prompt, left-padded, followed by its completion tokens `[R, T]`, right-padded, so the
completions of all rows start at the same column.

One forward pass runs over `[prompts | tokens[:, :-1]]`; only the final hidden states of the T
positions that predict a completion token go through the output layer, `chunk_size` positions at a
time, so the `[rows, T, vocab]` logits never exist (`chunk_nbytes` gives the peak). Logits are
divided by the sampling temperature and normalised with a float32 logsumexp. Each log-prob depends
on one hidden-state row only, so its gradient (one row of H numbers) is computed with it, chunk by
chunk, and a custom VJP scales those rows by the incoming cotangents.

Memory, measured (CPU, fp32, vocab 151,936, 8 rows x 256 tokens, value_and_grad with LoRA): peak
0.95 GB with chunk_size=128 against 9.1 GB for one unchunked block; lazily built chunks under
`mx.checkpoint` still peaked at 2.3 GB (chunk 256), because MLX queues ops far ahead of execution on
the CPU and keeps graphs alive inside `mx.grad`, hence the explicit evaluation per chunk.

Works with mlx-lm models whose `__call__` is `output_layer(model.model(inputs, cache=...))`, where the
output layer is `model.lm_head` or the tied `model.model.embed_tokens.as_linear`, and whose attention
takes RoPE positions from `cache.offset` and its mask from `cache.make_mask` (Llama, Qwen2/3, Mistral
and most other mlx-lm decoders). LoRA adapters on the blocks do not matter; the output layer must be
frozen when differentiating.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from mlx_grpo.layout import PaddedCache


def output_layer(model: nn.Module) -> tuple[nn.Module, Callable[[mx.array], mx.array]]:
    """The module that owns the output projection and a function hidden [..., H] -> logits [..., V]."""
    if "lm_head" in model:
        return model.lm_head, model.lm_head
    embed = model.model.embed_tokens
    return embed, embed.as_linear


def hidden_states(model: nn.Module, inputs: mx.array, caches: list[PaddedCache], checkpoint: bool = False) -> mx.array:
    """Final normed hidden states `[N, L, H]` of padded `inputs [N, L]` (one cache per layer).

    `checkpoint`: keep only each transformer block's input for the backward pass and recompute the
    block's activations there (activation checkpointing; the caches must be `PaddedCache`s).
    """
    if not checkpoint:
        return model.model(inputs, cache=caches)
    inner = model.model
    h = inner.embed_tokens(inputs)  # [N, L, H]
    mask = caches[0].make_mask(h.shape[1])
    for layer, cache in zip(inner.layers, caches):
        h = _checkpointed_block(layer, h, mask, cache)
    return inner.norm(h)


def _checkpointed_block(layer: nn.Module, h: mx.array, mask: mx.array, cache: PaddedCache) -> mx.array:
    """`layer(h, mask, cache)` keeping only its inputs for the backward pass, which recomputes it.

    `mx.checkpoint` saves nothing here: `_chunked_logprobs` evaluates the hidden states inside the
    gradient transform, which keeps every evaluated intermediate alive. So the block runs on host
    copies of its inputs (its outputs have no graph behind them) and its VJP recomputes it, one block
    at a time, evaluated. The cache's keys/values are explicit inputs and outputs: the recomputation
    starts from the same earlier keys, and gradients reach them.
    """
    names = [name for name, _ in tree_flatten(layer.trainable_parameters())]
    params = [p for _, p in tree_flatten(layer.trainable_parameters())]
    earlier = [] if cache.keys is None else [cache.keys, cache.values]
    n = len(params)

    def block(*arrays):  # (params..., h, [earlier keys, earlier values])
        original = layer.trainable_parameters()
        layer.update(tree_unflatten(list(zip(names, arrays[:n]))))
        fresh = PaddedCache(cache.prompt_pad, cache.pad_start, *arrays[n + 1 :])
        try:
            return [layer(arrays[n], mask, fresh), fresh.keys, fresh.values]
        finally:
            layer.update(original)

    @mx.custom_function
    def run(*arrays):
        return [_detached(x) for x in block(*[_detached(a) for a in arrays])]

    @run.vjp
    def run_vjp(primals, cotangents, outputs):
        _, grads = mx.vjp(block, [_detached(p) for p in primals], [_detached(c) for c in cotangents])
        return [_detached(g) for g in grads]

    out, cache.keys, cache.values = run(*params, h, *earlier)
    return out  # [N, L, H]


def prompt_pass(model: nn.Module, prompts: mx.array, prompt_pad: mx.array, shared: int = 0, checkpoint: bool = False):
    """Run left-padded prompts `[B, P]` (see `left_pad`) through the model.

    The first `shared` columns, the same in every row, run once as one row (of them only the
    keys/values are used, so MLX never computes the rest). `checkpoint` as in `hidden_states`.

    Returns:
        `(hidden [B, P - shared, H], caches)`: the final hidden states of the columns after the
        shared prefix, and per layer a cache whose keys/values `[B, heads, P, head_dim]` cover all P.
    """
    caches = [PaddedCache(prompt_pad) for _ in model.layers]
    if shared:
        head = [PaddedCache(mx.zeros((1,), mx.int32)) for _ in model.layers]
        hidden_states(model, prompts[:1, :shared], head, checkpoint)
        caches = [PaddedCache(prompt_pad, shared, c.keys, c.values) for c in head]
    return hidden_states(model, prompts[:, shared:], caches, checkpoint), caches


def chunk_nbytes(model: nn.Module, chunk_size: int) -> int:
    """Peak bytes of the output-layer work of `sequence_logprobs`: seven float32 [chunk, vocab] blocks.

    Measured on the CPU backend under `nn.value_and_grad`: two blocks per chunk (the logits and the
    softmax gradient), except that the first chunk of a call keeps all its intermediates until the
    call returns. The transformer's own activations come on top.
    """
    return 7 * chunk_size * model.args.vocab_size * 4


def _detached(x: mx.array) -> mx.array:
    """Evaluate `x` and return a host copy with no graph behind it, so its inputs can be freed."""
    bits = {1: mx.uint8, 2: mx.uint16, 4: mx.uint32, 8: mx.uint64}[x.dtype.size]
    return mx.array(np.array(x.view(bits))).view(x.dtype)


def _chunk_logprobs(project, hidden: mx.array, targets: mx.array, temperature: float, with_grad: bool):
    """Log-probs `[c]` of `targets [c]` given `hidden [c, H]`, and their gradients `[c, H]` w.r.t. hidden.

    Each log-prob depends only on its own row of `hidden`, so its gradient is one row of H numbers:
    the VJP of the whole output layer is that row times the cotangent.
    """
    # The evaluations keep one or two [c, V] blocks alive rather than every op's output at once.
    logits = project(hidden).astype(mx.float32) / temperature  # [c, V]
    norm = mx.logsumexp(logits, axis=-1, keepdims=True)  # [c, 1]
    mx.eval(logits, norm)
    t = targets[:, None]
    logps = _detached((mx.take_along_axis(logits, t, axis=-1) - norm)[:, 0])
    if not with_grad:
        return logps, None
    # d logp / d out = (onehot(t) - softmax(logits)) / temperature, out = project(hidden)
    d_out = _minus_softmax(logits, norm, 1 / temperature)
    del logits
    mx.eval(d_out)
    d_out = mx.put_along_axis(d_out, t, mx.take_along_axis(d_out, t, axis=-1) + 1 / temperature, axis=-1)
    _, (d_hidden,) = mx.vjp(project, [hidden], [d_out.astype(hidden.dtype)])
    return logps, _detached(d_hidden)


@mx.compile
def _minus_softmax(logits: mx.array, norm: mx.array, scale: float) -> mx.array:
    """-softmax * scale from logits `[c, V]` and their logsumexp `[c, 1]`, in one pass."""
    return -mx.exp(logits - norm) * scale


def _chunked_logprobs(model, hidden: mx.array, targets: mx.array, temperature: float, chunk_size: int, with_grad: bool):
    """Log-probs of `targets [n]` given `hidden [n, H]`, through the output layer `chunk_size` rows at a time.

    Each chunk is evaluated before the next is built, and only host copies of its small results are
    kept: lazily built chunks, even under `mx.checkpoint`, were all alive at once (MLX's CPU backend
    queues ops far ahead of execution, and arrays built inside a VJP keep their inputs alive). So the
    per-row gradients are computed here with the log-probs, and the custom VJP only scales them.
    Gradients flow to everything before the output layer, which must be frozen (LoRA on the blocks).
    Not for use under `mx.compile` (it evaluates).
    """
    owner, project = output_layer(model)
    chunks = [slice(start, start + chunk_size) for start in range(0, hidden.shape[0], chunk_size)]

    def run(hidden, targets):
        hidden = _detached(hidden)
        parts = [_chunk_logprobs(project, hidden[c], targets[c], temperature, with_grad) for c in chunks]
        return mx.concatenate([p[0] for p in parts]), (mx.concatenate([p[1] for p in parts]) if with_grad else None)

    if not with_grad:
        return run(hidden, targets)[0]

    @mx.custom_function
    def logprobs(hidden, targets):
        return run(hidden, targets)

    @logprobs.vjp
    def logprobs_vjp(primals, cotangents, outputs):
        if tree_flatten(owner.trainable_parameters()):
            raise ValueError("sequence_logprobs differentiates w.r.t. hidden states only: freeze the output layer")
        return cotangents[0][:, None] * outputs[1], mx.zeros_like(primals[1])  # [n, H], [n]

    return logprobs(hidden, targets)[0]


def sequence_logprobs(
    model: nn.Module,
    prompts: mx.array,
    prompt_pad: mx.array,
    tokens: mx.array,
    mask: mx.array | None = None,
    *,
    temperature: float = 1.0,
    chunk_size: int = 128,
    differentiable: bool = True,
    prompt_index: mx.array | None = None,
    shared: int = 0,
    checkpoint: bool = False,
) -> mx.array:
    """Per-token log-probs of completion tokens under `model`, differentiable w.r.t. its parameters.

    Args:
        model: an mlx-lm causal LM (LoRA layers allowed).
        prompts: `[R, P]` int32 left-padded prompts (see `left_pad` and the module docstring).
        prompt_pad: `[R]` int32 pad slots at the start of each prompt row.
        tokens: `[R, T]` int32 completion tokens, right-padded.
        mask: optional `[R, T]` float mask; where it is 0 the result is 0.
        temperature: the sampling temperature; logits are divided by it before the softmax.
        chunk_size: positions (rows x tokens, flattened) projected to the vocabulary at once
            (see `chunk_nbytes`).
        differentiable: False skips the per-position gradients (about half the output-layer work)
            and returns constants, for log-probs that are never differentiated (reference policy).
        prompt_index: `[R]` int32; when given, `prompts`/`prompt_pad` hold each distinct prompt once
            (`[B, P]`, `[B]`) and row r continues prompt `prompt_index[r]`. Every prompt then runs
            through the model once instead of once per completion (G times fewer prompt tokens).
        shared: the first `shared` prompt columns are the same tokens in every row (`left_pad`
            with `shared`); they run through the model once.
        checkpoint: recompute each transformer block in the backward pass instead of keeping its
            activations (`hidden_states`): memory per row drops from every block's activations to
            every block's input plus one block's activations, for about one more forward pass.

    Returns:
        `[R, T]` float32: log p(tokens[r, t] | prompt r, tokens[r, :t]) at `temperature`.
    """
    R, T = tokens.shape
    if prompt_index is None and not shared:
        hidden = _one_pass_hidden(model, prompts, prompt_pad, tokens, checkpoint)
    else:
        if prompt_index is None:
            prompt_index = mx.arange(R, dtype=mx.int32)
        hidden = _shared_prompt_hidden(model, prompts, prompt_pad, tokens, prompt_index, shared, checkpoint)
    logps = _chunked_logprobs(
        model, hidden.reshape(R * T, -1), tokens.reshape(-1), temperature, chunk_size, differentiable
    )
    logps = logps.reshape(R, T)
    return logps if mask is None else mx.where(mask > 0, logps, 0.0)


def _one_pass_hidden(model, prompts, prompt_pad, tokens, checkpoint) -> mx.array:
    """Hidden states `[R, T, H]` that predict each completion token, one pass over prompt + completion."""
    P = prompts.shape[1]
    inputs = mx.concatenate([prompts, tokens[:, :-1]], axis=1)  # [R, P + T - 1]
    caches = [PaddedCache(prompt_pad) for _ in model.layers]
    return hidden_states(model, inputs, caches, checkpoint)[:, P - 1 :]  # [R, T, H]: each predicts tokens[:, t]


def _shared_prompt_hidden(model, prompts, prompt_pad, tokens, prompt_index, shared, checkpoint) -> mx.array:
    """As `_one_pass_hidden`, with each distinct prompt run once: `prompts [B, P]`, row r's prompt is
    `prompts[prompt_index[r]]`. Gradients reach the prompt's keys and values through the gather."""
    hidden, caches = prompt_pass(model, prompts, prompt_pad, shared, checkpoint)
    last = mx.take(hidden[:, -1:], prompt_index, axis=0)  # [R, 1, H] predicts tokens[:, 0]
    if tokens.shape[1] == 1:
        return last
    row_pad = mx.take(prompt_pad, prompt_index, axis=0)  # [R]
    continued = [
        PaddedCache(row_pad, shared, mx.take(c.keys, prompt_index, axis=0), mx.take(c.values, prompt_index, axis=0))
        for c in caches
    ]
    rest = hidden_states(model, tokens[:, :-1], continued, checkpoint)  # [R, T - 1, H]
    return mx.concatenate([last, rest], axis=1)  # [R, T, H]
