"""One GRPO update of the LoRA weights from one batch of episodes.

    rollout [R rows] + advantages [R]
      -> micro_batches: k `MicroBatch`es of R/k rows, each carrying its groups' prompts once
         (k = grad_accumulation, or the fewest that fit max_memory: `memory.micro_batch_count`)
      -> old_logps: the sampler's, or re-scored in full when top-p/top-k truncated the distribution
         (the ratio must compare like with like); ref_logps (adapters off) when β > 0
      -> μ times: Σ over micro-batches of grad(policy loss) -> clip to max_grad_norm -> AdamW
         (skipped when the loss or the gradient is not finite)

Each micro-batch's loss is normalised by the whole batch's denominator (`grpo.batch_normalizer`), so
the summed gradients equal the full batch's exactly, whatever `grad_accumulation` is. The old
log-probs stay those of the policy that sampled through all μ updates (not refreshed in between).

Memory scales with the micro-batch, not the batch: the fixed log-probs and each micro-batch's
forward + backward are evaluated before the next micro-batch is built (the running gradient sum
with them), so one micro-batch's activations are alive at a time; `gradient_checkpointing` keeps
only each block's input of them (`logprobs.hidden_states`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map

from mlx_grpo import distributed
from mlx_grpo.grpo import batch_normalizer, policy_loss
from mlx_grpo.layout import PromptBatch
from mlx_grpo.logprobs import sequence_logprobs
from mlx_grpo.memory import micro_batch_count
from mlx_grpo.model import adapters_disabled
from mlx_grpo.rollout import Rollout
from mlx_grpo.sampling import SamplingOptions


@dataclass
class MicroBatch:
    """Some rows of one step's rollout, with everything the loss needs for them."""

    rows: mx.array  # [r] int32 indices into the step's R rows
    prompts: PromptBatch  # the distinct prompts of these rows [b, P]
    prompt_index: mx.array  # [r] int32: row i continues prompts[prompt_index[i]]
    tokens: mx.array  # [r, T] sampled tokens: data, not a function of the weights
    mask: mx.array  # [r, T] float32, 1 on the tokens the loss counts
    advantages: mx.array  # [r]
    old_logps: mx.array | None = None  # [r, T] under the policy that sampled
    ref_logps: mx.array | None = None  # [r, T] under the reference policy (β > 0)

    @property
    def num_tokens(self) -> float:
        return float(self.mask.sum().item())


@dataclass(frozen=True)
class UpdateResult:
    """Diagnostics of one update (means over μ iterations; per-token ones weighted by tokens)."""

    loss: float
    grad_norm: float
    kl: float  # mean k3 estimate over active tokens (0 without a reference)
    clip_frac_low: float  # share of active tokens clipped below 1-ε (negative advantage)
    clip_frac_high: float  # share clipped above 1+ε_high (positive advantage)
    ratio: float  # mean probability ratio over active tokens
    skipped: bool  # some iteration's loss or gradient was not finite: no step taken
    micro_batches: int = 1  # how many micro-batches the rows were split into


def micro_batches(rollout: Rollout, advantages: mx.array, count: int) -> list[MicroBatch]:
    """Split the R rows into `count` micro-batches of consecutive rows (`count` <= R; 0 when R is 0)."""
    if count == 0:  # a data-parallel rank that holds no rows of this step
        return []
    out = []
    for rows in np.array_split(np.arange(rollout.tokens.shape[0]), count):
        groups, prompt_index = np.unique(rows // rollout.group_size, return_inverse=True)
        index = mx.array(rows.astype(np.int32))
        out.append(
            MicroBatch(
                rows=index,
                prompts=rollout.prompts.select(groups),
                prompt_index=mx.array(prompt_index.astype(np.int32)),
                tokens=mx.stop_gradient(rollout.tokens[index]),
                mask=mx.stop_gradient(rollout.mask[index]),
                advantages=advantages[index],
                old_logps=rollout.logps[index],
            )
        )
    return out


def batch_logprobs(
    model: nn.Module, batch: MicroBatch, temperature: float, differentiable: bool = True, checkpoint: bool = False
) -> mx.array:
    """Log-probs `[r, T]` of a micro-batch's tokens under the model's current weights."""
    p = batch.prompts
    return sequence_logprobs(
        model,
        p.tokens,
        p.pad,
        batch.tokens,
        batch.mask,
        temperature=temperature,
        prompt_index=batch.prompt_index,
        shared=p.shared,
        differentiable=differentiable,
        checkpoint=checkpoint,
    )


def with_fixed_logprobs(model: nn.Module, batches: list[MicroBatch], config) -> list[MicroBatch]:
    """The micro-batches with the log-probs the loss holds fixed: old (re-scored when sampling was
    truncated) and reference (adapters off, when β > 0). Evaluated one micro-batch at a time."""
    temperature = config.temperature
    out = []
    for batch in batches:
        old = batch.old_logps
        if SamplingOptions.of_config(config).truncated:
            old = batch_logprobs(model, batch, temperature, differentiable=False)
        ref = None
        if config.beta > 0:
            with adapters_disabled(model):
                ref = batch_logprobs(model, batch, temperature, differentiable=False)
        mx.eval([x for x in (old, ref) if x is not None])
        out.append(replace(batch, old_logps=old, ref_logps=ref))
    return out


def make_loss(config) -> Callable:
    """`loss(model, batch, normalizer) -> (loss, metrics)`: the clipped GRPO loss of one micro-batch."""

    def loss(model: nn.Module, batch: MicroBatch, normalizer) -> tuple[mx.array, dict]:
        logps = batch_logprobs(model, batch, config.temperature, checkpoint=config.gradient_checkpointing)  # [r, T]
        return policy_loss(
            logps,
            batch.old_logps,
            batch.advantages,
            batch.mask,
            ref_logps=batch.ref_logps,
            beta=config.beta,
            epsilon_low=config.epsilon,
            epsilon_high=config.epsilon_high,
            loss_type=config.loss_type,
            max_completion_length=config.max_completion_length,
            normalizer=normalizer,
        )

    return loss


def update(model, optimizer, loss_and_grad, rollout: Rollout, advantages: mx.array, config) -> UpdateResult:
    """μ = `config.num_iterations` clipped-loss updates on one batch (`advantages [R]`).

    `loss_and_grad` is `nn.value_and_grad(model, make_loss(config))`, built once per run.
    With `mask_truncated_completions`, rows cut by the length cap count no tokens (DAPO).
    """
    if config.mask_truncated_completions:
        rollout = replace(rollout, mask=rollout.mask * ~rollout.truncated[:, None])  # [R, T]
    R, T = rollout.tokens.shape  # a dynamic-sampling step may hold fewer rows than B*G (a rank: none)
    count = micro_batch_count(model, R, rollout.prompts.tokens.shape[1] + T, config) if R else 0
    batches = with_fixed_logprobs(model, micro_batches(rollout, advantages, count), config)
    # data parallel: the whole batch's denominator, from every rank's rows and tokens
    L = config.max_completion_length
    normalizer = batch_normalizer(rollout.mask, config.loss_type, L, total=distributed.all_sum)
    results = [
        _step(model, optimizer, loss_and_grad, batches, normalizer, config.max_grad_norm)
        for _ in range(config.num_iterations)
    ]
    mean = {k: sum(getattr(r, k) for r in results) / len(results) for k in ("loss", "grad_norm", *_TOKEN_METRICS)}
    return UpdateResult(**mean, skipped=any(r.skipped for r in results), micro_batches=count)


_TOKEN_METRICS = ("kl", "clip_frac_low", "clip_frac_high", "ratio")


def _step(model, optimizer, loss_and_grad, batches: list[MicroBatch], normalizer, max_grad_norm: float) -> UpdateResult:
    """One optimizer step: gradients summed over the micro-batches, clipped, applied if finite.
    With no micro-batch (a rank that holds no rows of the batch) its share is zeros."""
    grads, loss, token_sums = None, mx.array(0.0), {k: mx.array(0.0) for k in _TOKEN_METRICS}
    for batch in batches:
        (mb_loss, mb_metrics), mb_grads = loss_and_grad(model, batch, normalizer)
        grads = mb_grads if grads is None else tree_map(mx.add, grads, mb_grads)
        loss = loss + mb_loss
        tokens = batch.mask.sum()  # the metrics are means over this micro-batch's active tokens
        token_sums = {k: token_sums[k] + mb_metrics[k] * tokens for k in _TOKEN_METRICS}
        mx.eval(grads, loss, token_sums)  # frees this micro-batch's graph before the next is built
    if grads is None:
        grads = tree_map(mx.zeros_like, model.trainable_parameters())
    tokens = mx.array(sum((b.num_tokens for b in batches), 0.0))  # float32 on every rank, as all_sum needs
    # data parallel: this rank's rows are a share of the batch, normalised by the whole batch's denominator
    grads = distributed.sum_gradients(grads)
    loss, token_sums, tokens = distributed.all_sum((loss, token_sums, tokens))
    grads, grad_norm = optim.clip_grad_norm(grads, max_grad_norm)
    total_tokens = max(tokens.item(), 1.0)
    mx.eval(loss, grad_norm, token_sums)
    finite = math.isfinite(loss.item()) and math.isfinite(grad_norm.item())
    if finite:
        optimizer.update(model, grads)
        mx.eval(model.trainable_parameters(), optimizer.state)
    token_means = {k: v.item() / total_tokens for k, v in token_sums.items()}
    return UpdateResult(loss.item(), grad_norm.item(), **token_means, skipped=not finite)
