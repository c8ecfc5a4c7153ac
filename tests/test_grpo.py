"""The GRPO math against independent numpy implementations of the formulas of the GRPO, DAPO and Dr. GRPO papers."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_grpo.grpo import batch_normalizer, compute_advantages, policy_loss


def np_advantages(rewards, G, scale):
    r = np.asarray(rewards, dtype=np.float64)
    out = np.empty_like(r)
    for k in range(len(r) // G):
        g = r[k * G : (k + 1) * G]
        a = g - g.mean()
        if scale == "group":
            a = a / (g.std(ddof=1) + 1e-4)
        elif scale == "batch":
            a = a / (r.std(ddof=1) + 1e-4)
        out[k * G : (k + 1) * G] = a
    return out


def np_loss(logps, old, adv, mask, ref, beta, lo, hi, loss_type, L):
    R, T = logps.shape
    per_token = np.zeros((R, T))
    kls = np.zeros((R, T))
    for i in range(R):
        for t in range(T):
            ratio = np.exp(logps[i, t] - old[i, t])
            obj = min(ratio * adv[i], np.clip(ratio, 1 - lo, 1 + hi) * adv[i])
            k3 = 0.0
            if ref is not None:
                d = ref[i, t] - logps[i, t]
                k3 = np.exp(d) - d - 1
            kls[i, t] = k3
            per_token[i, t] = -obj + beta * k3
    m = mask
    if loss_type == "grpo":
        loss = np.mean([(per_token[i] * m[i]).sum() / max(m[i].sum(), 1) for i in range(R)])
    elif loss_type in ("bnpo", "dapo"):
        loss = (per_token * m).sum() / max(m.sum(), 1)
    else:
        loss = (per_token * m).sum() / (R * L)
    return loss, (kls * m).sum() / m.sum()


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_match_numpy(scale):
    rng = np.random.default_rng(0)
    rewards = rng.integers(0, 3, size=24).astype(np.float32) / 2
    rewards[:4] = 1.0  # a flat group: advantage 0 everywhere in it
    got = np.array(compute_advantages(mx.array(rewards), 4, scale))
    np.testing.assert_allclose(got, np_advantages(rewards, 4, scale), rtol=1e-5, atol=1e-5)
    assert np.all(got[:4] == 0)


def test_advantages_docstring_example():
    got = np.array(compute_advantages(mx.array([1.0, 0.0, 0.0, 0.0]), 2))
    np.testing.assert_allclose(
        got, [0.5 / (np.std([1, 0], ddof=1) + 1e-4), -0.5 / (np.std([1, 0], ddof=1) + 1e-4), 0, 0], rtol=1e-6
    )


def test_advantages_reject_bad_shapes():
    with pytest.raises(ValueError):
        compute_advantages(mx.array([1.0, 2.0, 3.0]), 2)
    with pytest.raises(ValueError):
        compute_advantages(mx.array([1.0, 2.0]), 1)


def _random_batch(seed, R=6, T=7, spread=0.5):
    rng = np.random.default_rng(seed)
    old = rng.normal(-2, 1, size=(R, T))
    logps = old + rng.normal(0, spread, size=(R, T))  # ratios well outside [0.8, 1.2] for some tokens
    ref = old + rng.normal(0, spread, size=(R, T))
    adv = rng.normal(0, 1, size=R)
    lengths = rng.integers(1, T + 1, size=R)
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float64)
    return logps, old, adv, mask, ref


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta,hi", [(0.0, None), (0.04, None), (0.1, 0.28)])
def test_policy_loss_matches_numpy(loss_type, beta, hi):
    logps, old, adv, mask, ref = _random_batch(1)
    L = 9
    loss, metrics = policy_loss(
        mx.array(logps, dtype=mx.float32),
        mx.array(old, dtype=mx.float32),
        mx.array(adv, dtype=mx.float32),
        mx.array(mask, dtype=mx.float32),
        ref_logps=mx.array(ref, dtype=mx.float32),
        beta=beta,
        epsilon_low=0.2,
        epsilon_high=hi,
        loss_type=loss_type,
        max_completion_length=L,
    )
    want, want_kl = np_loss(logps, old, adv, mask, ref, beta, 0.2, 0.2 if hi is None else hi, loss_type, L)
    assert float(loss) == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert float(metrics["kl"]) == pytest.approx(want_kl, rel=1e-4)


def test_clip_fractions_and_ratio_match_numpy():
    logps, old, adv, mask, _ = _random_batch(2, R=8, T=5, spread=0.6)
    _, m = policy_loss(
        mx.array(logps, dtype=mx.float32),
        mx.array(old, dtype=mx.float32),
        mx.array(adv, dtype=mx.float32),
        mx.array(mask, dtype=mx.float32),
        epsilon_low=0.2,
        epsilon_high=0.3,
    )
    ratio = np.exp(logps - old)
    low = ((ratio < 0.8) & (adv[:, None] < 0)) * mask
    high = ((ratio > 1.3) & (adv[:, None] > 0)) * mask
    assert float(m["clip_frac_low"]) == pytest.approx(low.sum() / mask.sum(), abs=1e-6)
    assert float(m["clip_frac_high"]) == pytest.approx(high.sum() / mask.sum(), abs=1e-6)
    assert float(m["ratio"]) == pytest.approx((ratio * mask).sum() / mask.sum(), rel=1e-5)
    assert 0 < float(m["clip_frac_low"]) + float(m["clip_frac_high"]) < 1  # the batch exercises clipping


def test_on_policy_gradient_is_minus_advantage_weighted_score():
    """With old == logps (μ = 1), d loss / d logp_t = -A / n_tokens for each active token (dapo)."""
    logps, _, adv, mask, _ = _random_batch(3)
    x = mx.array(logps, dtype=mx.float32)

    def f(lp):
        return policy_loss(lp, x, mx.array(adv, dtype=mx.float32), mx.array(mask, dtype=mx.float32))[0]

    grad = np.array(mx.grad(f)(x))
    np.testing.assert_allclose(grad, -adv[:, None] * mask / mask.sum(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss_type", ["bnpo", "dapo"])
def test_shares_of_a_batch_sum_their_tokens_before_the_floor_of_one(loss_type):
    mask = mx.array([[1, 1, 0], [1, 0, 0]], dtype=mx.float32)  # [R=2, T=3]: 3 active tokens
    for empty in (mask[:0], mx.zeros_like(mask)):  # a share with no row; one with no active token
        # `total` stands for the sum over two ranks: this share and the one holding `mask`
        shared = batch_normalizer(empty, loss_type, total=lambda tokens: tokens + mask.sum())
        assert shared.item() == batch_normalizer(mask, loss_type).item() == 3  # not 4: the empty share adds 0


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_micro_batches_with_batch_normalizer_sum_to_full_batch_loss(loss_type):
    logps, old, adv, mask, ref = _random_batch(4, R=8)
    args = [mx.array(a, dtype=mx.float32) for a in (logps, old, adv, mask, ref)]
    full, _ = policy_loss(*args[:4], ref_logps=args[4], beta=0.04, loss_type=loss_type, max_completion_length=10)
    norm = batch_normalizer(args[3], loss_type, 10)
    parts = [
        policy_loss(
            *(a[s] for a in args[:4]),
            ref_logps=args[4][s],
            beta=0.04,
            loss_type=loss_type,
            max_completion_length=10,
            normalizer=norm,
        )[0]
        for s in (slice(0, 3), slice(3, 8))
    ]
    assert float(parts[0] + parts[1]) == pytest.approx(float(full), rel=1e-5)


def test_beta_needs_reference_and_unknown_loss_type_fails():
    z = mx.zeros((2, 3))
    with pytest.raises(ValueError):
        policy_loss(z, z, mx.zeros((2,)), mx.ones((2, 3)), beta=0.1)
    with pytest.raises(ValueError):
        policy_loss(z, z, mx.zeros((2,)), mx.ones((2, 3)), loss_type="ppo")
