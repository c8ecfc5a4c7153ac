"""The GRPO math: group advantages and the clipped policy loss, as pure array functions.

Choices, and where they depart from the GRPO paper (Shao et al., 2024, DeepSeekMath):

- Advantages are outcome-level: one scalar per completion, broadcast over its tokens
  (`A_i = (r_i - mean_group(r)) / (std_group(r) + 1e-4)`). The std is the unbiased (Bessel)
  estimate, as TRL computes it. `scale_rewards="batch"` divides by the std of the whole batch
  instead, `"none"` does not divide (Dr. GRPO, Liu et al., 2025: the per-group std biases the
  update towards groups that are almost all right or almost all wrong).
- The surrogate is PPO's clipped ratio, `-min(ρ·A, clip(ρ, 1-ε_low, 1+ε_high)·A)` per token, with
  `ρ = exp(logp - old_logp)`. With one update per batch of generations (μ = 1) `old_logp` is the
  log-prob the sampler produced, so ρ = 1 in value but carries the gradient. DAPO's clip-higher
  (ε_high > ε_low) is available; the default keeps them equal.
- KL to a reference policy uses the k3 estimator `exp(ref - logp) - (ref - logp) - 1` (Schulman),
  as the paper does; it is added per token with weight β. β = 0 (the default, following DAPO and
  Dr. GRPO) drops the reference forward pass altogether.
- `loss_type` only changes how per-token terms are averaged:
    grpo     mean over each row's tokens, then over rows (the paper; favours short completions)
    bnpo     sum over all tokens / number of active tokens in this batch
    dapo     same formula as bnpo here (TRL normalises over the whole global batch, which is
             what one call sees when every micro-batch is scaled by its share of tokens)
    dr_grpo  sum / (rows × max_completion_length), a constant that does not depend on lengths

Shapes: R = rows (completions) in the call, T = padded completion length.
"""

from __future__ import annotations

import mlx.core as mx

_STD_EPS = 1e-4


def compute_advantages(rewards: mx.array, group_size: int, scale_rewards: str = "group") -> mx.array:
    """Per-completion advantages from rewards in group-major order.

    Args:
        rewards: `[N*G]` total rewards; rows `[k*G, (k+1)*G)` are the G completions of prompt k.
        group_size: G, completions per prompt (>= 2).
        scale_rewards: "group" (divide by each group's std), "batch" (by the batch's std) or "none".

    Returns:
        `[N*G]` float32 advantages.

    Example:
        >>> compute_advantages(mx.array([1., 0., 0., 0.]), 2)   # groups [1, 0] and [0, 0]
        array([0.707, -0.707, 0, 0])   # (1 - 0.5) / (std([1, 0]) = 0.7071 + 1e-4); a flat group gives 0
    """
    if group_size < 2:
        raise ValueError("group_size must be at least 2")
    if rewards.ndim != 1 or rewards.size % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of {group_size} entries, got shape {rewards.shape}")
    grouped = rewards.astype(mx.float32).reshape(-1, group_size)  # [N, G]
    centred = grouped - grouped.mean(axis=1, keepdims=True)  # [N, G]
    if scale_rewards == "group":
        std = mx.sqrt((centred**2).sum(axis=1, keepdims=True) / (group_size - 1))  # [N, 1]
        centred = centred / (std + _STD_EPS)
    elif scale_rewards == "batch":
        flat = rewards.astype(mx.float32)
        std = mx.sqrt(((flat - flat.mean()) ** 2).sum() / max(flat.size - 1, 1))
        centred = centred / (std + _STD_EPS)
    elif scale_rewards != "none":
        raise ValueError(f"unknown scale_rewards {scale_rewards!r}")
    return centred.reshape(-1)


def policy_loss(
    logps: mx.array,
    old_logps: mx.array,
    advantages: mx.array,
    mask: mx.array,
    *,
    ref_logps: mx.array | None = None,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "dapo",
    max_completion_length: int | None = None,
    normalizer: mx.array | None = None,
) -> tuple[mx.array, dict]:
    """The clipped GRPO objective, negated (to minimise), with its diagnostics.

    Args:
        logps: `[R, T]` per-token log-probs under the policy being trained.
        old_logps: `[R, T]` log-probs under the policy that sampled the tokens (no gradient).
        advantages: `[R]` one advantage per completion.
        mask: `[R, T]` 1 for completion tokens (the stop token included), 0 for padding.
        ref_logps: `[R, T]` log-probs under the reference policy; needed when beta > 0.
        beta: KL weight β.
        epsilon_low, epsilon_high: clip range `[1 - ε_low, 1 + ε_high]`; ε_high defaults to ε_low.
        loss_type: "grpo", "bnpo", "dapo" or "dr_grpo" (see the module docstring).
        max_completion_length: the length cap, needed by "dr_grpo".
        normalizer: overrides the denominator of the token-level types ("bnpo", "dapo",
            "dr_grpo") so that micro-batches of one batch sum to the full-batch loss; for "grpo",
            the number of rows in the full batch.

    Returns:
        `(loss, metrics)`: scalar loss; metrics `kl` (mean k3 over active tokens, 0 when no
        reference is given), `clip_frac_low` / `clip_frac_high` (fraction of active tokens whose
        ratio was clipped on the side that binds for their advantage's sign), `ratio` (mean ρ).
    """
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    mask = mask.astype(mx.float32)
    old_logps = mx.stop_gradient(old_logps)
    adv = advantages.astype(mx.float32)[:, None]  # [R, 1]

    ratio = mx.exp(logps - old_logps)  # [R, T]
    clipped = mx.clip(ratio, 1 - epsilon_low, 1 + epsilon_high)  # [R, T]
    per_token = -mx.minimum(ratio * adv, clipped * adv)  # [R, T]

    kl = mx.zeros_like(per_token)
    if ref_logps is not None:
        delta = mx.stop_gradient(ref_logps) - logps  # [R, T]
        kl = mx.exp(delta) - delta - 1
    if beta > 0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs ref_logps")
        per_token = per_token + beta * kl

    loss = _aggregate(per_token, mask, loss_type, max_completion_length, normalizer)

    n_active = mx.maximum(mask.sum(), 1)
    low = ((ratio < 1 - epsilon_low) & (adv < 0)).astype(mx.float32)  # [R, T]
    high = ((ratio > 1 + epsilon_high) & (adv > 0)).astype(mx.float32)  # [R, T]
    metrics = {
        "kl": mx.stop_gradient((kl * mask).sum() / n_active),
        "clip_frac_low": (low * mask).sum() / n_active,
        "clip_frac_high": (high * mask).sum() / n_active,
        "ratio": mx.stop_gradient((ratio * mask).sum() / n_active),
    }
    return loss, metrics


def _aggregate(per_token, mask, loss_type, max_completion_length, normalizer):
    masked = per_token * mask  # [R, T]
    if loss_type == "grpo":
        per_row = masked.sum(axis=1) / mx.maximum(mask.sum(axis=1), 1)  # [R]
        rows = per_row.shape[0] if normalizer is None else normalizer
        return per_row.sum() / rows
    if loss_type in ("bnpo", "dapo"):
        tokens = mx.maximum(mask.sum(), 1) if normalizer is None else normalizer
        return masked.sum() / tokens
    if loss_type == "dr_grpo":
        if normalizer is None:
            if max_completion_length is None:
                raise ValueError("loss_type 'dr_grpo' needs max_completion_length")
            normalizer = masked.shape[0] * max_completion_length
        return masked.sum() / normalizer
    raise ValueError(f"unknown loss_type {loss_type!r}")


def batch_normalizer(mask: mx.array, loss_type: str, max_completion_length: int | None = None, total=None):
    """The denominator `policy_loss` uses for the whole batch `mask [R, T]`, to pass to each of its
    micro-batches so that their gradients add up to the full-batch gradient exactly.

    `total` (e.g. a sum over data-parallel ranks, each holding some rows of the batch) is applied to
    the row or token count before the floor of one token: a share may hold no rows, or no active token."""
    total = total or (lambda count: count)
    if loss_type == "grpo":
        return total(mask.shape[0])
    if loss_type in ("bnpo", "dapo"):
        return mx.maximum(total(mask.astype(mx.float32).sum()), 1)
    if loss_type == "dr_grpo":
        return total(mask.shape[0]) * max_completion_length
    raise ValueError(f"unknown loss_type {loss_type!r}")
