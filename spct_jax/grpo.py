"""GRPO math (spec section 4, paper Eq. 15): group-relative advantages and the clipped surrogate loss.

Both functions are pure and jittable (every option is a static Python value). Layout follows the repo
convention: the `G` samples of one prompt are contiguous rows, row `b * G + j` is sample `j` of prompt `b`.

Sign convention: Eq. 15 is an objective to MAXIMISE; `grpo_loss` returns its negation, to MINIMISE.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("sequence-mean-token-mean", "token-mean", "dr-grpo")


def group_advantages(
    rewards: jax.Array,
    group_size: int,
    *,
    eps: float = 1e-4,
    std_ddof: int = 1,
    scale_by_std: bool = True,
) -> jax.Array:
  """Group-relative advantages A_i = (r_i - mean_group(r)) / (std_group(r) + eps).

  Std conventions of peers (choose with `std_ddof`, `eps`, `scale_by_std`):
    * TRL: sample std (ddof=1), eps=1e-4 (our default).
    * Tunix: ddof=1, eps=1e-6.
    * Dr. GRPO: no std scaling, A = r - mean (`scale_by_std=False`).

  A group whose rewards are all equal gets exactly 0 (not a rounding residue divided by eps), never NaN.
  That includes G = 1 with ddof = 1, where the sample std is undefined: we treat it as 0, so A = 0.

  Args:
    rewards: f32[B*G], contiguous groups (row b*G + j is sample j of prompt b).
    group_size: G, samples per prompt (static).
    eps: added to the std in the denominator.
    std_ddof: delta degrees of freedom of the std (1 = sample std, 0 = population std).
    scale_by_std: divide by (std + eps); False gives the Dr. GRPO centred rewards.

  Returns:
    f32[B*G] advantages, same order as `rewards`.

  Raises:
    ValueError: if `rewards` is not 1-D, `group_size` < 1, `std_ddof` < 0, or the length is not a multiple of G.
  """
  if rewards.ndim != 1:
    raise ValueError(f"rewards must be 1-D [B*G], got shape {rewards.shape}")
  if group_size < 1:
    raise ValueError(f"group_size must be >= 1, got {group_size}")
  if std_ddof < 0:
    raise ValueError(f"std_ddof must be >= 0, got {std_ddof}")
  if rewards.shape[0] % group_size:
    raise ValueError(f"len(rewards)={rewards.shape[0]} is not a multiple of group_size={group_size}")

  r = rewards.astype(jnp.float32).reshape(-1, group_size)  # [B, G]
  mean = r.mean(axis=1, keepdims=True)
  centred = r - mean
  # Exactly-equal groups: force 0 so float residue in `mean` cannot be amplified by 1/eps.
  constant = (r.max(axis=1, keepdims=True) == r.min(axis=1, keepdims=True))
  if scale_by_std:
    dof = group_size - std_ddof
    if dof <= 0:
      # Undefined std (e.g. G = 1, ddof = 1): such a group has one reward, so it is constant anyway.
      std = jnp.zeros_like(mean)
    else:
      std = jnp.sqrt(jnp.sum(centred**2, axis=1, keepdims=True) / dof)
    adv = centred / (std + eps)
  else:
    adv = centred
  adv = jnp.where(constant, 0.0, adv)
  return adv.reshape(-1)


def _kl_per_token(logps: jax.Array, ref_logps: jax.Array, estimator: str) -> jax.Array:
  """Per-token estimate of KL(pi_theta || pi_ref), samples drawn from pi_theta; f32[N, T]."""
  d = ref_logps - logps  # log(pi_ref / pi_theta)
  if estimator == "k1":
    return -d
  if estimator == "k2":
    return 0.5 * d**2
  # k3 (Schulman): unbiased and always >= 0; DeepSeekMath / TRL default.
  return jnp.exp(d) - d - 1.0


def _aggregate(per_token: jax.Array, mask: jax.Array, aggregation: str, max_tokens: int) -> jax.Array:
  """Reduce a masked f32[N, T] per-token quantity to a scalar, the way the loss is reduced."""
  masked = per_token * mask
  if aggregation == "sequence-mean-token-mean":
    # Empty rows contribute 0 but still count in the 1/N (TRL's clamp(min=1) convention).
    lengths = jnp.maximum(mask.sum(axis=1), 1.0)
    return jnp.mean(masked.sum(axis=1) / lengths)
  if aggregation == "token-mean":
    return masked.sum() / jnp.maximum(mask.sum(), 1.0)
  # dr-grpo: constant normaliser, so no length bias towards short or long completions.
  return masked.sum() / (per_token.shape[0] * max_tokens)


def grpo_loss(
    logps: jax.Array,
    old_logps: Optional[jax.Array],
    ref_logps: Optional[jax.Array],
    advantages: jax.Array,
    mask: jax.Array,
    *,
    epsilon: float = 0.2,
    epsilon_high: Optional[float] = None,
    beta: float = 0.08,
    kl_estimator: str = "k3",
    aggregation: str = "sequence-mean-token-mean",
    max_tokens: Optional[int] = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Negated GRPO objective (Eq. 15), to minimise.

  Per token: obj = min(rho * A, clip(rho, 1 - epsilon, 1 + epsilon_high) * A) - beta * KL,
  rho = exp(logps - old_logps), KL from `kl_estimator` with d = ref_logps - logps:
  "k1" = -d, "k2" = d^2 / 2, "k3" = exp(d) - d - 1. The loss is `-aggregate(obj)` where aggregation is
    * "sequence-mean-token-mean": mean over sequences of the per-sequence token mean (the paper, 1/G sum_i 1/|o_i|);
    * "token-mean": sum over all masked tokens / their count (DAPO);
    * "dr-grpo": sum over all masked tokens / (num_sequences * max_tokens) (Dr. GRPO).
  Sequences with no mask tokens contribute 0 (and still count as sequences in the first and last aggregation).

  Gradient flows through `logps` only. Masked positions may hold any value, even inf/NaN: they are replaced
  before `exp`, so they give neither NaN nor gradient.

  Args:
    logps: f32[N, T] log pi_theta of the sampled tokens, N = B*G.
    old_logps: f32[N, T] log pi_theta_old from rollout time; None means on-policy (old = stop_gradient(logps),
      so rho = 1 but its gradient is kept).
    ref_logps: f32[N, T] log pi_ref; may be None when beta == 0.
    advantages: f32[N] one advantage per sequence (see `group_advantages`).
    mask: [N, T] bool/int/float, 1 = completion token that counts.
    epsilon: lower clip range, rho >= 1 - epsilon.
    epsilon_high: upper clip range, rho <= 1 + epsilon_high; None means `epsilon` (symmetric).
    beta: KL coefficient (static Python number); 0 skips the KL term entirely.
    kl_estimator: one of KL_ESTIMATORS.
    aggregation: one of AGGREGATIONS.
    max_tokens: "dr-grpo" normaliser per sequence; defaults to T (the padded completion length).

  Returns:
    (loss, metrics): loss is a f32 scalar, loss = metrics["policy_loss"] + metrics["kl_loss"]. Metrics are
    f32 scalars (no gradient): `clip_fraction`, `clip_fraction_low` (rho < 1 - eps and A < 0),
    `clip_fraction_high` (rho > 1 + eps_high and A > 0), `kl` (per-token KL, without beta; 0 if ref_logps is None),
    `ratio_mean`, `ratio_max`, `num_tokens` — masked means / max over counted tokens —, `advantage_mean` (mean
    over all N sequences), `policy_loss` and `kl_loss` (each term reduced with `aggregation`; kl_loss includes beta).

  Raises:
    ValueError: on unknown estimator/aggregation, shape mismatch, beta != 0 without ref_logps, bad max_tokens.
  """
  if kl_estimator not in KL_ESTIMATORS:
    raise ValueError(f"unknown kl_estimator {kl_estimator!r}; valid: {', '.join(KL_ESTIMATORS)}")
  if aggregation not in AGGREGATIONS:
    raise ValueError(f"unknown aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}")
  if logps.ndim != 2:
    raise ValueError(f"logps must be [N, T], got shape {logps.shape}")
  for name, x in (("old_logps", old_logps), ("ref_logps", ref_logps), ("mask", mask)):
    if x is not None and x.shape != logps.shape:
      raise ValueError(f"{name} shape {x.shape} != logps shape {logps.shape}")
  if advantages.shape != logps.shape[:1]:
    raise ValueError(f"advantages shape {advantages.shape} != ({logps.shape[0]},)")
  use_kl = beta != 0
  if use_kl and ref_logps is None:
    raise ValueError(f"beta={beta} needs ref_logps (pass beta=0 to train without a reference model)")
  if max_tokens is None:
    max_tokens = logps.shape[1]
  if max_tokens < 1:
    raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
  eps_low = float(epsilon)
  eps_high = eps_low if epsilon_high is None else float(epsilon_high)

  m = mask.astype(jnp.float32)
  on = m > 0
  logps = logps.astype(jnp.float32)
  # `where` before any nonlinearity: padding garbage must not reach exp (inf * 0 = NaN, also in the VJP).
  lp = jnp.where(on, logps, 0.0)
  if old_logps is None:
    old = jax.lax.stop_gradient(lp)
  else:
    old = jnp.where(on, jax.lax.stop_gradient(old_logps.astype(jnp.float32)), 0.0)
  adv = jax.lax.stop_gradient(advantages.astype(jnp.float32))[:, None]  # [N, 1]

  ratio = jnp.exp(lp - old)
  unclipped = ratio * adv
  clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
  surrogate = jnp.minimum(unclipped, clipped)
  policy_loss = _aggregate(-surrogate, m, aggregation, max_tokens)

  if ref_logps is not None:
    ref = jnp.where(on, jax.lax.stop_gradient(ref_logps.astype(jnp.float32)), 0.0)
    kl = _kl_per_token(lp, ref, kl_estimator)
  else:
    kl = jnp.zeros_like(lp)
  kl_loss = beta * _aggregate(kl, m, aggregation, max_tokens) if use_kl else jnp.zeros((), jnp.float32)
  loss = policy_loss + kl_loss

  # Metrics: masked token means, so padding never dilutes them.
  n_tok = m.sum()
  denom = jnp.maximum(n_tok, 1.0)
  tok_mean = lambda x: (x * m).sum() / denom
  low = ((ratio < 1.0 - eps_low) & (adv < 0)).astype(jnp.float32)
  high = ((ratio > 1.0 + eps_high) & (adv > 0)).astype(jnp.float32)
  metrics = {
      "clip_fraction": tok_mean(jnp.maximum(low, high)),
      "clip_fraction_low": tok_mean(low),
      "clip_fraction_high": tok_mean(high),
      "kl": tok_mean(kl),
      "ratio_mean": tok_mean(ratio),
      "ratio_max": jnp.where(n_tok > 0, jnp.max(jnp.where(on, ratio, -jnp.inf)), 0.0),
      "advantage_mean": jnp.mean(adv),
      "num_tokens": n_tok,
      "policy_loss": policy_loss,
      "kl_loss": kl_loss,
  }
  metrics = jax.tree.map(jax.lax.stop_gradient, metrics)
  return loss, metrics
