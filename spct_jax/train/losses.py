"""Losses besides GRPO that the shared train step serves: SFT cross-entropy (RFT, spec section 3) and sigmoid BCE
(the meta RM, spec section 5). Pure and jittable; each returns `(loss, metrics)` with scalar f32 metrics.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def token_cross_entropy(logps: jax.Array, mask: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Next-token cross-entropy: negative mean log-prob over the counted target tokens.

  Token-mean over the whole batch (every counted token weighs the same, long trajectories weigh more), which is
  plain SFT on the kept RFT trajectories.

  Args:
    logps: f32[B, T] log-probs of the target tokens (already gathered from the logits).
    mask: [B, T] bool/int/float, 1 = a target token that counts (e.g. the GRM's output tokens only).

  Returns:
    (loss, metrics): loss f32 scalar (0 when no token counts, never NaN); metrics `tokens` (count), `nll`
    (= loss), `perplexity` (exp(nll)). Padding may hold any value, even -inf: it neither reaches the loss nor
    the gradient.

  Raises:
    ValueError: if the shapes differ or are not 2-D.
  """
  if logps.ndim != 2 or mask.shape != logps.shape:
    raise ValueError(f"logps {logps.shape} and mask {mask.shape} must both be [B, T]")
  m = mask.astype(jnp.float32)
  # `where`, not multiply: -inf padding times 0 would be NaN.
  lp = jnp.where(m > 0, logps.astype(jnp.float32), 0.0)
  tokens = m.sum()
  nll = -(lp * m).sum() / jnp.maximum(tokens, 1.0)
  metrics = {"tokens": tokens, "nll": nll, "perplexity": jnp.exp(nll)}
  return nll, jax.tree.map(jax.lax.stop_gradient, metrics)


def sigmoid_bce(
    logits: jax.Array,
    labels: jax.Array,
    *,
    weights: Optional[jax.Array] = None,
    pos_weight: Optional[float] = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Binary cross-entropy on logits, stable for any |logit|.

  Per example: l = -[pos_weight * y * log sigmoid(x) + (1 - y) * log(1 - sigmoid(x))]
                 = pos_weight * y * softplus(-x) + (1 - y) * softplus(x),
  with softplus(z) = log(1 + e^z) computed without overflow. Reduced as a weighted mean
  sum(w * l) / sum(w) (w = 1 by default), so `weights` can also mask padding examples.

  Args:
    logits: f32[B] logit that the item is positive (for the meta RM: the trajectory is correct).
    labels: f32[B] targets in [0, 1] (soft labels allowed).
    weights: optional f32[B] non-negative example weights.
    pos_weight: optional scalar weight of the positive term (> 1 up-weights positives, as in PyTorch).

  Returns:
    (loss, metrics): loss f32 scalar (0 if all weights are 0); metrics `accuracy` (sign of the logit vs
    label > 0.5, logit 0 counts as negative), `mean_prob` (mean sigmoid), `label_mean`, all weighted like the loss.

  Raises:
    ValueError: if the shapes differ or are not 1-D.
  """
  if logits.ndim != 1 or labels.shape != logits.shape:
    raise ValueError(f"logits {logits.shape} and labels {labels.shape} must both be [B]")
  if weights is not None and weights.shape != logits.shape:
    raise ValueError(f"weights {weights.shape} must match logits {logits.shape}")
  x = logits.astype(jnp.float32)
  y = jax.lax.stop_gradient(labels.astype(jnp.float32))
  w = jnp.ones_like(x) if weights is None else jax.lax.stop_gradient(weights.astype(jnp.float32))
  pw = 1.0 if pos_weight is None else pos_weight
  per_example = pw * y * jax.nn.softplus(-x) + (1.0 - y) * jax.nn.softplus(x)
  total = jnp.maximum(w.sum(), jnp.finfo(jnp.float32).tiny)
  wmean = lambda v: (w * v).sum() / total
  loss = wmean(per_example)
  correct = ((x > 0) == (y > 0.5)).astype(jnp.float32)
  metrics = {"accuracy": wmean(correct), "mean_prob": wmean(jax.nn.sigmoid(x)), "label_mean": wmean(y)}
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)
