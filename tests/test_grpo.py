"""GRPO advantages and loss against a straightforward loop-based numpy reference written here."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spct_jax import grpo

# ---------------------------------------------------------------- numpy reference (loops, no vectorisation)


def ref_advantages(rewards, g, eps=1e-4, ddof=1, scale=True):
  out = np.zeros(len(rewards), np.float64)
  for b in range(len(rewards) // g):
    grp = [float(x) for x in rewards[b * g:(b + 1) * g]]
    mean = sum(grp) / g
    if all(x == grp[0] for x in grp):
      continue  # all equal -> advantage 0
    var = sum((x - mean)**2 for x in grp) / (g - ddof)
    for j, x in enumerate(grp):
      out[b * g + j] = (x - mean) / (math.sqrt(var) + eps) if scale else x - mean
  return out


def ref_loss(logps, old, ref, adv, mask, eps_low, eps_high, beta, est, agg, max_tokens=None):
  # float64 throughout (NEP 50: python float * np.float32 would stay float32).
  logps, old, adv = (np.asarray(x, np.float64) for x in (logps, old, adv))
  ref = None if ref is None else np.asarray(ref, np.float64)
  n, t = logps.shape
  max_tokens = t if max_tokens is None else max_tokens
  seq_terms, pol_tok, kl_tok, total_tokens = [], [], [], 0
  low = high = 0
  ratios, kls = [], []
  for i in range(n):
    p_sum = k_sum = 0.0
    cnt = 0
    for j in range(t):
      if not mask[i, j]:
        continue
      rho = math.exp(logps[i, j] - old[i, j])
      a = adv[i]
      clipped = min(max(rho, 1 - eps_low), 1 + eps_high)
      obj = min(rho * a, clipped * a)
      if ref is None:
        kl = 0.0
      else:
        d = ref[i, j] - logps[i, j]
        kl = {"k1": -d, "k2": d * d / 2, "k3": math.exp(d) - d - 1}[est]
      p_sum += -obj
      k_sum += kl
      cnt += 1
      low += rho < 1 - eps_low and a < 0
      high += rho > 1 + eps_high and a > 0
      ratios.append(rho)
      kls.append(kl)
    total_tokens += cnt
    seq_terms.append((p_sum, k_sum, cnt))
    pol_tok.append(p_sum)
    kl_tok.append(k_sum)
  if agg == "sequence-mean-token-mean":
    pol = sum(p / max(c, 1) for p, _, c in seq_terms) / n
    kl = sum(k / max(c, 1) for _, k, c in seq_terms) / n
  elif agg == "token-mean":
    pol = sum(pol_tok) / max(total_tokens, 1)
    kl = sum(kl_tok) / max(total_tokens, 1)
  else:
    pol = sum(pol_tok) / (n * max_tokens)
    kl = sum(kl_tok) / (n * max_tokens)
  kl_loss = beta * kl if beta else 0.0
  metrics = {
      "policy_loss": pol,
      "kl_loss": kl_loss,
      "clip_fraction_low": low / total_tokens,
      "clip_fraction_high": high / total_tokens,
      "clip_fraction": (low + high) / total_tokens,
      "kl": sum(kls) / total_tokens,
      "ratio_mean": sum(ratios) / total_tokens,
      "ratio_max": max(ratios),
      "advantage_mean": float(np.mean(adv)),
      "num_tokens": total_tokens,
  }
  return pol + kl_loss, metrics


def make_batch(seed, n=12, t=7, g=4, spread=0.6):
  rng = np.random.default_rng(seed)
  logps = rng.normal(-2.0, 1.0, (n, t))
  old = logps + rng.normal(0, spread, (n, t))  # ratios well outside [0.8, 1.2] for some tokens
  ref = logps + rng.normal(0, spread, (n, t))
  mask = rng.random((n, t)) < 0.7
  mask[2] = False  # one sequence with no completion tokens
  # Two mixed groups (A of both signs) and one constant group (A = 0).
  rewards = np.array([1, -1, -1, 1, -1, 1, 1, 1, 1, 1, 1, 1], np.float32)[:n]
  adv = ref_advantages(rewards, g)
  # Garbage in padding must not matter.
  logps = np.where(mask, logps, 1e4)
  return [x.astype(np.float32) for x in (logps, old, ref, adv)] + [mask]


# ---------------------------------------------------------------- group_advantages


@pytest.mark.parametrize("g,ddof,eps,scale", [(4, 1, 1e-4, True), (4, 0, 1e-6, True), (3, 1, 1e-4, False),
                                              (1, 1, 1e-4, True), (2, 1, 0.0, True)])
def test_group_advantages_matches_reference(g, ddof, eps, scale):
  rng = np.random.default_rng(g * 10 + ddof)
  rewards = rng.normal(size=6 * g).astype(np.float32)
  if g > 1:
    rewards[g:2 * g] = 0.3  # a zero-variance group
  got = grpo.group_advantages(jnp.asarray(rewards), g, eps=eps, std_ddof=ddof, scale_by_std=scale)
  want = ref_advantages(rewards, g, eps=eps, ddof=ddof, scale=scale)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  assert np.all(np.isfinite(np.asarray(got)))


def test_group_advantages_constant_groups_exact_zero():
  # 0.1 * 3 / 3 != 0.1 in float32: a naive (r - mean) / eps would give a nonzero residue.
  rewards = jnp.array([0.1, 0.1, 0.1, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0], jnp.float32)
  for ddof in (0, 1):
    for scale in (True, False):
      adv = grpo.group_advantages(rewards, 3, eps=1e-8, std_ddof=ddof, scale_by_std=scale)
      assert np.all(np.asarray(adv) == 0.0)
  # G = 1 with ddof = 1: sample std undefined -> 0, not NaN.
  adv = grpo.group_advantages(jnp.array([3.0, -2.0]), 1)
  assert np.all(np.asarray(adv) == 0.0)


def test_group_advantages_pair_values_and_jit():
  # TRL convention for a +1/-1 pair: std (ddof=1) = sqrt(2), A = +-1/(sqrt(2)+1e-4).
  f = jax.jit(grpo.group_advantages, static_argnums=1)
  adv = np.asarray(f(jnp.array([1.0, -1.0, 1.0, 1.0]), 2))
  np.testing.assert_allclose(adv, [1 / (math.sqrt(2) + 1e-4), -1 / (math.sqrt(2) + 1e-4), 0, 0], rtol=1e-6)


def test_group_advantages_bad_input():
  with pytest.raises(ValueError, match="multiple"):
    grpo.group_advantages(jnp.zeros(7), 4)
  with pytest.raises(ValueError, match="1-D"):
    grpo.group_advantages(jnp.zeros((2, 4)), 4)
  with pytest.raises(ValueError, match="group_size"):
    grpo.group_advantages(jnp.zeros(4), 0)


# ---------------------------------------------------------------- grpo_loss


@pytest.mark.parametrize("agg", grpo.AGGREGATIONS)
@pytest.mark.parametrize("est", grpo.KL_ESTIMATORS)
def test_grpo_loss_matches_reference(agg, est):
  logps, old, ref, adv, mask = make_batch(seed=10 * grpo.AGGREGATIONS.index(agg) + grpo.KL_ESTIMATORS.index(est))
  kw = dict(epsilon=0.2, epsilon_high=0.28, beta=0.08, kl_estimator=est, aggregation=agg)
  loss, metrics = jax.jit(lambda *a: grpo.grpo_loss(*a, **kw))(logps, old, ref, adv, mask)
  want, want_m = ref_loss(logps, old, ref, adv, mask, 0.2, 0.28, 0.08, est, agg)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-6)
  for k, v in want_m.items():
    np.testing.assert_allclose(float(metrics[k]), v, rtol=1e-5, atol=1e-6, err_msg=k)
  assert want_m["clip_fraction_low"] > 0 and want_m["clip_fraction_high"] > 0  # the test exercises both sides
  np.testing.assert_allclose(float(metrics["policy_loss"] + metrics["kl_loss"]), float(loss), rtol=1e-6)


def test_grpo_loss_dr_grpo_max_tokens():
  logps, old, ref, adv, mask = make_batch(seed=3)
  loss, _ = grpo.grpo_loss(logps, old, ref, adv, mask, aggregation="dr-grpo", max_tokens=20)
  want, _ = ref_loss(logps, old, ref, adv, mask, 0.2, 0.2, 0.08, "k3", "dr-grpo", 20)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_grpo_loss_beta_zero_without_reference():
  logps, old, ref, adv, mask = make_batch(seed=4)
  loss, metrics = grpo.grpo_loss(logps, old, None, adv, mask, beta=0.0)
  want, _ = ref_loss(logps, old, None, adv, mask, 0.2, 0.2, 0.0, "k3", "sequence-mean-token-mean")
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert float(metrics["kl_loss"]) == 0.0
  # With a reference but beta = 0 the loss is the same policy loss (KL only reported).
  loss2, m2 = grpo.grpo_loss(logps, old, ref, adv, mask, beta=0.0)
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)
  assert float(m2["kl"]) > 0
  with pytest.raises(ValueError, match="ref_logps"):
    grpo.grpo_loss(logps, old, None, adv, mask, beta=0.1)


def test_grpo_loss_zero_variance_groups_finite():
  logps, old, ref, _, mask = make_batch(seed=5)
  adv = grpo.group_advantages(jnp.ones(12), 4)  # every group constant
  loss, metrics = grpo.grpo_loss(logps, old, ref, adv, mask)
  assert np.isfinite(float(loss))
  assert float(metrics["policy_loss"]) == 0.0
  np.testing.assert_allclose(float(loss), float(metrics["kl_loss"]), rtol=1e-6)


def test_grpo_loss_all_masked_no_nan():
  logps, old, ref, adv, mask = make_batch(seed=6)
  zero = np.zeros_like(mask)
  for agg in grpo.AGGREGATIONS:
    loss, metrics = grpo.grpo_loss(logps, old, ref, adv, zero, aggregation=agg)
    assert float(loss) == 0.0
    assert all(np.isfinite(float(v)) for v in metrics.values())
    g = jax.grad(lambda lp: grpo.grpo_loss(lp, old, ref, adv, zero, aggregation=agg)[0])(logps)
    assert np.all(np.asarray(g) == 0.0)


def test_grpo_loss_gradient():
  logps, old, ref, adv, mask = make_batch(seed=7, spread=0.1)
  logps = np.where(mask, logps, np.nan).astype(np.float32)  # NaN padding must not leak into the gradient
  kw = dict(epsilon=0.2, epsilon_high=0.28, beta=0.08, aggregation="sequence-mean-token-mean")

  def f(lp, o, r, a):
    return grpo.grpo_loss(lp, o, r, a, mask, **kw)[0]

  grads = jax.grad(f, argnums=(0, 1, 2, 3))(jnp.asarray(logps), old, ref, adv)
  g = np.asarray(grads[0])
  assert np.all(np.isfinite(g))
  assert np.all(g[~mask] == 0.0)
  assert np.any(g[mask] != 0.0)
  for other in grads[1:]:  # stop_gradient on old, ref, advantages
    assert np.all(np.asarray(other) == 0.0)
  # Central finite difference on one unclipped counted element, in float64 numpy reference.
  i, j = map(int, np.argwhere(mask & (np.abs(logps - old) < 0.1))[0])
  h = 1e-4
  base = np.where(mask, logps, 0.0).astype(np.float64)
  plus, minus = base.copy(), base.copy()
  plus[i, j] += h
  minus[i, j] -= h
  args = (old, ref, adv, mask, 0.2, 0.28, 0.08, "k3", "sequence-mean-token-mean")
  fd = (ref_loss(plus, *args)[0] - ref_loss(minus, *args)[0]) / (2 * h)
  np.testing.assert_allclose(g[i, j], fd, rtol=1e-3, atol=1e-6)


def test_grpo_loss_clipped_token_has_no_policy_gradient():
  # One token, A > 0, rho = e^0.5 > 1.2: clipped branch is the min, so the policy gradient is zero.
  lp, old = jnp.array([[0.5]]), jnp.array([[0.0]])
  g = jax.grad(lambda x: grpo.grpo_loss(x, old, None, jnp.array([1.0]), jnp.ones((1, 1)), beta=0.0)[0])(lp)
  assert float(g[0, 0]) == 0.0
  _, m = grpo.grpo_loss(lp, old, None, jnp.array([1.0]), jnp.ones((1, 1)), beta=0.0)
  assert float(m["clip_fraction_high"]) == 1.0 and float(m["clip_fraction_low"]) == 0.0
  # Same ratio with A < 0 is not clipped (the unclipped branch is smaller) and has gradient -A * rho.
  g = jax.grad(lambda x: grpo.grpo_loss(x, old, None, jnp.array([-1.0]), jnp.ones((1, 1)), beta=0.0)[0])(lp)
  np.testing.assert_allclose(float(g[0, 0]), math.exp(0.5), rtol=1e-6)


def test_grpo_loss_on_policy_old_none():
  logps, _, ref, adv, mask = make_batch(seed=8)
  loss, m = grpo.grpo_loss(logps, None, ref, adv, mask)
  loss2, _ = grpo.grpo_loss(logps, logps, ref, adv, mask)
  np.testing.assert_allclose(float(loss), float(loss2), rtol=1e-6)
  assert float(m["ratio_mean"]) == 1.0 and float(m["clip_fraction"]) == 0.0


def test_grpo_loss_bad_options():
  logps, old, ref, adv, mask = make_batch(seed=9)
  with pytest.raises(ValueError, match="k1, k2, k3"):
    grpo.grpo_loss(logps, old, ref, adv, mask, kl_estimator="k4")
  with pytest.raises(ValueError, match="token-mean"):
    grpo.grpo_loss(logps, old, ref, adv, mask, aggregation="sum")
  with pytest.raises(ValueError, match="shape"):
    grpo.grpo_loss(logps, old[:, :3], ref, adv, mask)
  with pytest.raises(ValueError, match="advantages"):
    grpo.grpo_loss(logps, old, ref, adv[:3], mask)
