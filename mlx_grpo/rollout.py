"""Batched generation for GRPO: B prompts x G completions, decoded together by a compiled step.

Each prompt is prefilled once (the B prompts in the padded layout of `mlx_grpo.layout`, one forward
pass; the prefix they all share, such as the system prompt, runs once for all of them); its
keys/values are copied G times into a fixed-capacity buffer per layer, so rows [b*G, (b+1)*G) are
prompt b's group. All R = B*G rows are then decoded together by one `mx.compile`d step that writes
the new keys/values at an array-valued slot (`mx.slice_update`) and masks the unused slots, so its
shapes do not change from token to token. The buffer grows by CAPACITY_BUCKET slots when full (one
more compile per new capacity, kept for later calls): attention on the CPU costs in proportion to the
capacity, so a tight buffer beats one sized for max_tokens. Steps are queued with `mx.async_eval`;
the host reads the "every row stopped" flag every CHECK_EVERY steps, one step behind, and stops early
when every row has stopped.

Tokens are drawn by `mlx_grpo.sampling.sample`, whose log-probs are those of the distribution sampled
from. A stop token is kept (mask 1); later slots are padding (token 0, mask 0). `scripts/bench.py`
measures the speed against mlx-lm's `batch_generate`.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlx_grpo.layout import PromptBatch, pad_slots
from mlx_grpo.logprobs import hidden_states, output_layer, prompt_pass
from mlx_grpo.sampling import SamplingOptions, sample

CAPACITY_BUCKET = 32  # KV buffers grow by this many slots (one compile per capacity)
CHECK_EVERY = 4  # decode steps between host checks of "every row stopped"


@dataclass
class Rollout:
    """Sampled completions, R = B * group_size rows in group-major order.

    tokens: `[R, T]` int32 right-padded with 0; T = the longest completion.
    mask: `[R, T]` float32, 1 on generated tokens including the stop token.
    logps: `[R, T]` float32 log-prob of each token under the distribution it was sampled from (0 on padding).
    lengths: `[R]` int32 generated tokens per row (stop token included).
    truncated: `[R]` bool, True where the row hit `max_tokens` without a stop token.
    prompts: the B prompts in the padded layout they were prefilled in; row r continues prompt r // group_size.
    """

    tokens: mx.array
    mask: mx.array
    logps: mx.array
    lengths: mx.array
    truncated: mx.array
    prompts: PromptBatch
    group_size: int


class _SlotCache:
    """One layer's decode cache: a fixed `[R, heads, capacity, head_dim]` buffer written at `slot`."""

    def __init__(self, keys: mx.array, values: mx.array, slot: mx.array, prompt_pad: mx.array, pad_start: mx.array):
        self.keys, self.values = keys, values
        self.slot = slot  # [1] int32, same for every row
        self.prompt_pad, self.pad_start = prompt_pad, pad_start  # [R]; [1]: row r's pad slots start there
        self.offset = slot - prompt_pad  # [R] RoPE position of the token being written

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        self.keys = mx.slice_update(self.keys, keys, self.slot, axes=(2,))
        self.values = mx.slice_update(self.values, values, self.slot, axes=(2,))
        return self.keys, self.values

    def make_mask(self, N: int, **kwargs) -> mx.array:
        slots = mx.arange(self.keys.shape[2])
        visible = ~pad_slots(slots, self.pad_start, self.prompt_pad) & (slots <= self.slot)  # [R, capacity]
        return visible[:, None, None, :]


class _Decoder:
    """Compiled sample and decode steps for one model and one sampling setting."""

    def __init__(self, model: nn.Module, greedy: bool, top_k: int, use_top_p: bool):
        self.model = weakref.ref(model)
        self._greedy, self._top_k, self._use_top_p = greedy, top_k, use_top_p
        self._weights: list = []  # holds model.state during a step, so that updated weights are inputs
        self._sample_fn = mx.compile(self._sample)
        self._step_fn = mx.compile(self._step, inputs=self._weights)

    def sample(self, logits, done, lengths, key, temperature, top_p, eos):
        """Sample the next token of every row; finished rows get pad 0 and log-prob 0.

        Returns `(tokens [R], logps [R], done [R], lengths [R], key)`.
        """
        return self._sample_fn(logits, done, lengths, key, temperature, top_p, eos)

    def step(self, tokens, keys, values, slot, prompt_pad, pad_start, done, lengths, key, temperature, top_p, eos):
        """Feed the last tokens `[R]`, write their keys/values at `slot`, sample the next tokens.

        Returns `sample`'s outputs, then the updated keys, values and slot + 1.
        """
        self._weights.append(self.model().state)
        try:
            return self._step_fn(
                tokens, keys, values, slot, prompt_pad, pad_start, done, lengths, key, temperature, top_p, eos
            )
        finally:
            self._weights.clear()

    def _sample(self, logits, done, lengths, key, temperature, top_p, eos):
        key, sub = mx.random.split(key)
        if self._greedy:
            tokens, logps = mx.argmax(logits, axis=-1).astype(mx.int32), mx.zeros(logits.shape[:1])
        else:
            tokens, logps = sample(
                logits, sub, temperature, top_k=self._top_k, top_p=top_p if self._use_top_p else None
            )
        live = ~done
        tokens = mx.where(live, tokens, 0)
        logps = mx.where(live, logps, 0.0)
        done = done | (tokens[:, None] == eos[None]).any(axis=-1)
        return tokens, logps, done, lengths + live.astype(mx.int32), key

    def _step(self, tokens, keys, values, slot, prompt_pad, pad_start, done, lengths, key, temperature, top_p, eos):
        model = self.model()
        caches = [_SlotCache(k, v, slot, prompt_pad, pad_start) for k, v in zip(keys, values)]
        hidden = hidden_states(model, tokens[:, None], caches)[:, -1]  # [R, H]
        logits = output_layer(model)[1](hidden).astype(mx.float32)  # [R, V]
        out = self._sample(logits, done, lengths, key, temperature, top_p, eos)
        return (*out, [c.keys for c in caches], [c.values for c in caches], slot + 1)


_DECODERS: dict[tuple, _Decoder] = {}


def _signature(model: nn.Module) -> tuple:
    """What a trace bakes in besides the weights: the modules, their types and plain attributes
    (a LoRA layer swapped for its base layer, the training flag, a changed scale, ...)."""
    plain = (bool, int, float, str)
    return tuple(
        (name, type(m).__name__, tuple(sorted((k, v) for k, v in vars(m).items() if isinstance(v, plain))))
        for name, m in model.named_modules()
    )


def _decoder(model: nn.Module, greedy: bool, top_k: int, use_top_p: bool) -> _Decoder:
    """The cached compiled decoder for this model object, its structure and the sampling flags."""
    key = (id(model), _signature(model), greedy, top_k, use_top_p)
    decoder = _DECODERS.get(key)
    if decoder is None or decoder.model() is not model:
        for stale in [k for k, d in _DECODERS.items() if d.model() is None]:
            del _DECODERS[stale]
        decoder = _DECODERS[key] = _Decoder(model, greedy, top_k, use_top_p)
    return decoder


def _bucket(n: int) -> int:
    return -(-n // CAPACITY_BUCKET) * CAPACITY_BUCKET


def _with_capacity(x: mx.array, capacity: int) -> mx.array:
    """Zero-pad a `[rows, heads, slots, head_dim]` cache buffer to `capacity` slots."""
    return mx.pad(x, [(0, 0), (0, 0), (0, capacity - x.shape[2]), (0, 0)])


def _prefill(model: nn.Module, prompts: mx.array, prompt_pad: mx.array, group_size: int, shared: int = 0):
    """One forward pass over the B left-padded prompts `[B, P]`, their first `shared` columns run once.

    Returns `(logits [R, V] float32, keys, values)` with each layer's keys/values `[R, heads, capacity,
    head_dim]`, capacity = P + 1 rounded up to the bucket: the prompt's in slots [0, P), repeated
    group_size times along rows (group-major).
    """
    hidden, caches = prompt_pass(model, prompts, prompt_pad, shared)
    hidden = hidden[:, -1]  # [B, H]
    logits = output_layer(model)[1](hidden).astype(mx.float32)  # [B, V]
    capacity = _bucket(prompts.shape[1] + 1)
    keys = [mx.repeat(_with_capacity(c.keys, capacity), group_size, axis=0) for c in caches]
    values = [mx.repeat(_with_capacity(c.values, capacity), group_size, axis=0) for c in caches]
    return mx.repeat(logits, group_size, axis=0), keys, values


def generate(
    model: nn.Module,
    prompt_ids: list[list[int]],
    *,
    group_size: int,
    sampling: SamplingOptions,
    eos_ids: Iterable[int],
    seed: int | None = None,
) -> Rollout:
    """Sample `group_size` completions for each prompt, all rows decoded together.

    Args:
        model: an mlx-lm causal LM (LoRA layers allowed; see `mlx_grpo.logprobs` for what is assumed).
        prompt_ids: B prompts as token-id lists, any lengths.
        group_size: completions per prompt (G).
        sampling: length cap, temperature, top-p and top-k.
        eos_ids: stop tokens (may be empty: every row runs to max_tokens).
        seed: PRNG seed; None draws one from MLX's global generator (so `mx.random.seed` reproduces).

    Returns:
        A `Rollout` with R = B * group_size rows, prompt b's completions in rows [b*G, (b+1)*G).
    """
    if not prompt_ids or any(len(ids) == 0 for ids in prompt_ids):
        raise ValueError("prompt_ids must be a non-empty list of non-empty token lists")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if seed is None:
        seed = mx.random.randint(0, 2**31 - 1).item()
    was_training = model.training
    model.eval()  # no dropout while sampling
    try:
        return _rollout(model, PromptBatch.build(prompt_ids), group_size, sampling, eos_ids, seed)
    finally:
        model.train(was_training)


def _rollout(model, prompts: PromptBatch, group_size, options: SamplingOptions, eos_ids, seed) -> Rollout:
    """Prefill once, then decode all rows until every row stopped or max_tokens were generated."""
    R, P = len(prompts.ids) * group_size, prompts.tokens.shape[1]
    decoder = _decoder(model, options.greedy, options.top_k, options.top_p < 1)
    logits, keys, values = _prefill(model, prompts.tokens, prompts.pad, group_size, prompts.shared)
    row_pad, pad_start = mx.repeat(prompts.pad, group_size), mx.array([prompts.shared], mx.int32)  # [R], [1]
    eos = mx.array(sorted(set(eos_ids)) or [-1], dtype=mx.int32)
    temperature = mx.array(max(options.temperature, 1e-30), mx.float32)
    sampling = (temperature, mx.array(options.top_p, mx.float32), eos)

    done, lengths, key = mx.zeros((R,), mx.bool_), mx.zeros((R,), mx.int32), mx.random.key(seed)
    tokens, logps, done, lengths, key = decoder.sample(logits, done, lengths, key, *sampling)
    slot = mx.array([P], mx.int32)
    out_tokens, out_logps, all_done = [tokens], [logps], [done.all()]
    for step in range(1, options.max_tokens):
        if P + step > keys[0].shape[2]:  # the buffer is full: grow it by one bucket (one more compile)
            keys = [_with_capacity(k, k.shape[2] + CAPACITY_BUCKET) for k in keys]
            values = [_with_capacity(v, v.shape[2] + CAPACITY_BUCKET) for v in values]
        tokens, logps, done, lengths, key, keys, values, slot = decoder.step(
            tokens, keys, values, slot, row_pad, pad_start, done, lengths, key, *sampling
        )
        all_done.append(done.all())
        mx.async_eval(tokens, logps, all_done[-1], keys, values)
        out_tokens.append(tokens)
        out_logps.append(logps)
        if step % CHECK_EVERY == 0 and all_done[-2].item():  # one step behind: the queue stays full
            break
    return _collect(out_tokens, out_logps, lengths, done, prompts, group_size)


def _collect(out_tokens, out_logps, lengths, done, prompts, group_size) -> Rollout:
    """Stack the per-step outputs into a Rollout, trimmed to the longest completion."""
    T = max(lengths.max().item(), 1)
    tokens = mx.stack(out_tokens, axis=1)[:, :T]  # [R, T]
    logps = mx.stack(out_logps, axis=1)[:, :T]
    mask = (mx.arange(T)[None, :] < lengths[:, None]).astype(mx.float32)
    truncated = ~done
    mx.eval(tokens, mask, logps, truncated)
    return Rollout(tokens, mask, logps, lengths, truncated, prompts, group_size)
