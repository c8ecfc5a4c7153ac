"""How one token is drawn: the sampling options, and the sampler that returns exact log-probs.

`sample`: logits / temperature, then top-k, then top-p (nucleus) on what top-k kept, then an
inverse-CDF draw from the renormalised distribution; the returned log-prob is that of the sampled
token under exactly this truncated, renormalised distribution (float32). Temperature 0 is greedy
decoding (the caller takes the argmax; its log-prob is 0). A thinking budget (`mlx_grpo.budget`)
is applied on top of the drawn token, by the decode step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import mlx.core as mx

from mlx_grpo.budget import ThinkingBudget


@dataclass(frozen=True)
class SamplingOptions:
    """How completions are sampled: by training's rollout, evaluation and the benchmark alike.

    max_tokens: the most tokens generated per completion (the stop token included).
    temperature: softmax temperature; 0 is greedy decoding.
    top_p: nucleus sampling mass (1: off).
    top_k: keep only the k most likely tokens (0: off).
    budget: the thinking budget (None: off); `max_tokens` still caps every row.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    budget: ThinkingBudget | None = None

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(
                f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got {self.temperature}, {self.top_p}, {self.top_k}"
            )

    @classmethod
    def of_config(cls, config, tokenizer=None) -> SamplingOptions:
        """Training's sampling, from a `TrainConfig`; its thinking budget needs the `tokenizer` (without
        one there is none: enough for `truncated`)."""
        budget = None if tokenizer is None else ThinkingBudget.of_config(config, tokenizer)
        return cls(config.max_completion_length, config.temperature, config.top_p, config.top_k, budget)

    def without_budget(self) -> SamplingOptions:
        return replace(self, budget=None)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def truncated(self) -> bool:
        """Samples come from a truncated distribution (top-p or top-k), not the model's full one."""
        return self.top_p < 1 or self.top_k > 0


def sample(logits: mx.array, key: mx.array, temperature, *, top_k: int = 0, top_p=None):
    """Draw one token per row and return its log-prob under the distribution sampled from.

    Inverse-CDF sampling: one uniform number per row and one `exp` over the vocabulary, which is
    shared with the normaliser of the log-prob (Gumbel-max would need two more passes over it).

    Args:
        logits: `[R, V]` float32.
        key: a PRNG key (`mx.random.key`).
        temperature: float or scalar array > 0 (greedy decoding is handled by the caller).
        top_k: keep the k most likely tokens (0: all).
        top_p: None, or keep the smallest most-likely set whose mass reaches top_p (after top-k).

    Returns:
        `(tokens [R] int32, logps [R] float32)`.
    """
    scaled = logits / temperature  # [R, V]
    if top_k:
        order = mx.argpartition(-scaled, kth=top_k - 1, axis=-1)
        scaled = mx.put_along_axis(scaled, order[:, top_k:], mx.array(-mx.inf, scaled.dtype), axis=-1)
    peak = mx.max(scaled, axis=-1, keepdims=True)  # [R, 1]
    weights = mx.exp(scaled - peak)  # [R, V] unnormalised probabilities, 0 where dropped
    if top_p is not None:
        # sorting 151,936 floats per row costs ~20 ms each on a CPU: sort only top-k's survivors if any
        kept = mx.take_along_axis(weights, order[:, :top_k], axis=-1) if top_k else weights
        ordered = -mx.sort(-kept, axis=-1)  # [R, k or V] descending
        mass_before = mx.cumsum(ordered, axis=-1) - ordered
        keep = mx.sum(mass_before < top_p * ordered.sum(axis=-1, keepdims=True), axis=-1, keepdims=True)  # >= 1
        weights = mx.where(weights < mx.take_along_axis(ordered, keep - 1, axis=-1), 0.0, weights)
    cdf = mx.cumsum(weights, axis=-1)  # [R, V]
    total = cdf[:, -1:]
    draw = mx.random.uniform(shape=total.shape, key=key) * total
    tokens = mx.minimum(mx.sum(cdf <= draw, axis=-1), cdf.shape[-1] - 1)  # first index with cdf > draw
    # float rounding can land the draw past the last kept token: take the mode then (probability ~1e-7)
    picked = mx.take_along_axis(weights, tokens[:, None], axis=-1)[:, 0]
    tokens = mx.where(picked > 0, tokens, mx.argmax(weights, axis=-1)).astype(mx.int32)
    picked = mx.take_along_axis(scaled, tokens[:, None], axis=-1)
    return tokens, (picked - peak - mx.log(total))[:, 0]
