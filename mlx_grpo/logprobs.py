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
time, each chunk under `mx.checkpoint`, so neither the forward nor the backward pass holds more than
one `[chunk_size, vocab]` float32 logits block (`chunk_nbytes`). Logits are divided by the sampling
temperature and normalised with a float32 logsumexp.

Works with mlx-lm models whose `__call__` is `output_layer(model.model(inputs, cache=...))`, where the
output layer is `model.lm_head` or the tied `model.model.embed_tokens.as_linear`, and whose attention
takes RoPE positions from `cache.offset` and its mask from `cache.make_mask` (Llama, Qwen2/3, Mistral
and most other mlx-lm decoders). LoRA layers in either part do not matter.
"""

from __future__ import annotations

from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn


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
    """Bytes of the largest float32 logits block `sequence_logprobs` holds: chunk_size x vocab x 4."""
    return chunk_size * model.args.vocab_size * 4


def _chunked_logprobs(model: nn.Module, hidden: mx.array, targets: mx.array, temperature: float, chunk_size: int):
    """Log-probs of `targets [n]` given `hidden [n, H]`, projecting `chunk_size` rows at a time."""
    owner, project = output_layer(model)

    def chunk_logprobs(h, t):
        logits = project(h).astype(mx.float32) / temperature  # [c, V]
        picked = mx.take_along_axis(logits, mx.stop_gradient(t)[:, None], axis=-1)[:, 0]  # ids: no VJP
        return picked - mx.logsumexp(logits, axis=-1)  # [c]

    chunk_fn = nn.utils.checkpoint(owner, chunk_logprobs)
    parts = [
        chunk_fn(hidden[start : start + chunk_size], targets[start : start + chunk_size])
        for start in range(0, hidden.shape[0], chunk_size)
    ]
    return mx.concatenate(parts)


def sequence_logprobs(
    model: nn.Module,
    prompts: mx.array,
    prompt_pad: mx.array,
    tokens: mx.array,
    mask: Optional[mx.array] = None,
    *,
    temperature: float = 1.0,
    chunk_size: int = 512,
) -> mx.array:
    """Per-token log-probs of completion tokens under `model`, differentiable w.r.t. its parameters.

    Args:
        model: an mlx-lm causal LM (LoRA layers allowed).
        prompts: `[R, P]` int32 left-padded prompts (see `left_pad` and the module docstring).
        prompt_pad: `[R]` int32 pad slots at the start of each prompt row.
        tokens: `[R, T]` int32 completion tokens, right-padded.
        mask: optional `[R, T]` float mask; where it is 0 the result is 0.
        temperature: the sampling temperature; logits are divided by it before the softmax.
        chunk_size: positions (rows x tokens, flattened) projected to the vocabulary at once.

    Returns:
        `[R, T]` float32: log p(tokens[r, t] | prompt r, tokens[r, :t]) at `temperature`.
    """
    R, P = prompts.shape
    T = tokens.shape[1]
    inputs = mx.concatenate([prompts, tokens[:, :-1]], axis=1)  # [R, P + T - 1]
    caches = [LeftPadCache(prompt_pad) for _ in model.layers]
    hidden = hidden_states(model, inputs, caches)[:, P - 1 :]  # [R, T, H]: each predicts tokens[:, t]
    logps = _chunked_logprobs(model, hidden.reshape(R * T, -1), tokens.reshape(-1), temperature, chunk_size)
    logps = logps.reshape(R, T)
    return logps if mask is None else mx.where(mask > 0, logps, 0.0)
