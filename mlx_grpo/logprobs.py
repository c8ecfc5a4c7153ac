"""Per-token log-probs of completions under the current model, for the GRPO loss.

Input layout (the same one `rollout.generate` prefills with): every row is its prompt, LEFT-padded
to the batch's longest prompt P, followed by its completion tokens, right-padded to T:

    prompts  [R, P]  int32   pad pad p0 p1 p2        (prompt_pad [R] = number of pad slots, here 2)
    tokens   [R, T]  int32   c0 c1 c2 EOS pad pad    (mask [R, T] = 1 1 1 1 0 0)

so the completions of all rows start at the same column P. Pad slots are masked out of attention
and RoPE positions start at 0 on each row's first real token, so a row's log-probs do not depend on
how much padding it carries (up to float rounding). `left_pad(prompt_ids)` builds `prompts` and
`prompt_pad` from token-id lists; for a micro-batch slice all three arrays along rows.

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

from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten


def left_pad(prompt_ids: list[list[int]], pad_id: int = 0) -> tuple[mx.array, mx.array]:
    """Left-pad token-id lists into one array.

    Args:
        prompt_ids: N non-empty lists of token ids.
        pad_id: token id written into the pad slots (it is never attended to).

    Returns:
        `(prompts [N, P] int32, prompt_pad [N] int32)` with P the longest length, e.g.
        `[[5, 6, 7], [8]] -> ([[5, 6, 7], [0, 0, 8]], [0, 2])`.
    """
    longest = max(len(ids) for ids in prompt_ids)
    rows = [[pad_id] * (longest - len(ids)) + list(ids) for ids in prompt_ids]
    pads = [longest - len(ids) for ids in prompt_ids]
    return mx.array(rows, dtype=mx.int32), mx.array(pads, dtype=mx.int32)


class LeftPadCache:
    """Stand-in for a KV cache during one pass over left-padded rows (one instance per layer).

    Masks the pad slots out of attention (a pad query attends to itself only, which keeps it finite
    on every backend) and shifts RoPE positions so that each row's first real token is at 0. Keeps
    the last keys/values it saw, which `rollout` uses as the prefilled cache.
    """

    def __init__(self, prompt_pad: mx.array):
        self.prompt_pad = prompt_pad  # [N]
        self.offset = -prompt_pad  # [N] RoPE position of column 0
        self.keys = self.values = None

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        self.keys, self.values = keys, values  # [N, heads, L, head_dim]
        return keys, values

    def make_mask(self, N: int, **kwargs) -> mx.array:
        cols = mx.arange(N)
        causal = cols[None, :] <= cols[:, None]  # [L, L]
        real = cols[None, None, :] >= self.prompt_pad[:, None, None]  # [N, 1, L]
        diagonal = cols[None, :] == cols[:, None]
        return (causal & (real | diagonal))[:, None]  # [N, 1, L, L]


class PrefixCache:
    """KV cache for a pass over completion tokens that continue already computed prompt keys/values.

    `keys`/`values` `[R, heads, P, head_dim]` come from a `LeftPadCache` pass over the prompts
    (gathered so that row r holds its prompt's); pad slots stay masked, and RoPE positions continue
    from each row's real prompt length.
    """

    def __init__(self, keys: mx.array, values: mx.array, prompt_pad: mx.array):
        self.prefix_keys, self.prefix_values = keys, values
        self.prompt_pad = prompt_pad  # [R]
        self.offset = keys.shape[2] - prompt_pad  # [R] RoPE position of the first completion token

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        return (mx.concatenate([self.prefix_keys, keys], axis=2),
                mx.concatenate([self.prefix_values, values], axis=2))

    def make_mask(self, N: int, **kwargs) -> mx.array:
        P = self.prefix_keys.shape[2]
        cols = mx.arange(P + N)
        rows = mx.arange(N)[:, None] + P  # [N, 1] column of each query
        visible = (cols[None] <= rows) & (cols[None] >= self.prompt_pad[:, None, None])  # [R, N, P + N]
        return visible[:, None]  # [R, 1, N, P + N]


def output_layer(model: nn.Module) -> tuple[nn.Module, Callable[[mx.array], mx.array]]:
    """The module that owns the output projection and a function hidden [..., H] -> logits [..., V]."""
    if "lm_head" in model:
        return model.lm_head, model.lm_head
    embed = model.model.embed_tokens
    return embed, embed.as_linear


def hidden_states(model: nn.Module, inputs: mx.array, caches: list[LeftPadCache]) -> mx.array:
    """Final normed hidden states `[N, L, H]` of left-padded `inputs [N, L]` (one cache per layer)."""
    return model.model(inputs, cache=caches)


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
    mask: Optional[mx.array] = None,
    *,
    temperature: float = 1.0,
    chunk_size: int = 128,
    differentiable: bool = True,
    prompt_index: Optional[mx.array] = None,
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

    Returns:
        `[R, T]` float32: log p(tokens[r, t] | prompt r, tokens[r, :t]) at `temperature`.
    """
    R, T = tokens.shape
    if prompt_index is None:
        hidden = _one_pass_hidden(model, prompts, prompt_pad, tokens)
    else:
        hidden = _shared_prompt_hidden(model, prompts, prompt_pad, tokens, prompt_index)
    logps = _chunked_logprobs(
        model, hidden.reshape(R * T, -1), tokens.reshape(-1), temperature, chunk_size, differentiable
    )
    logps = logps.reshape(R, T)
    return logps if mask is None else mx.where(mask > 0, logps, 0.0)


def _one_pass_hidden(model, prompts, prompt_pad, tokens) -> mx.array:
    """Hidden states `[R, T, H]` that predict each completion token, one pass over prompt + completion."""
    P = prompts.shape[1]
    inputs = mx.concatenate([prompts, tokens[:, :-1]], axis=1)  # [R, P + T - 1]
    caches = [LeftPadCache(prompt_pad) for _ in model.layers]
    return hidden_states(model, inputs, caches)[:, P - 1 :]  # [R, T, H]: each predicts tokens[:, t]


def _shared_prompt_hidden(model, prompts, prompt_pad, tokens, prompt_index) -> mx.array:
    """As `_one_pass_hidden`, with each distinct prompt run once: `prompts [B, P]`, row r's prompt is
    `prompts[prompt_index[r]]`. Gradients reach the prompt's keys and values through the gather."""
    caches = [LeftPadCache(prompt_pad) for _ in model.layers]
    last = hidden_states(model, prompts, caches)[:, -1:]  # [B, 1, H] predicts tokens[:, 0]
    last = mx.take(last, prompt_index, axis=0)  # [R, 1, H]
    if tokens.shape[1] == 1:
        return last
    row_pad = mx.take(prompt_pad, prompt_index, axis=0)  # [R]
    continued = [
        PrefixCache(mx.take(c.keys, prompt_index, axis=0), mx.take(c.values, prompt_index, axis=0), row_pad)
        for c in caches
    ]
    rest = hidden_states(model, tokens[:, :-1], continued)  # [R, T - 1, H]
    return mx.concatenate([last, rest], axis=1)  # [R, T, H]
