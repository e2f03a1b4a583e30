"""Correctness of one GRM trajectory (Eq. 10) and the rule-based RL reward (Eq. 11).

Eq. 10, per item with n real responses, predicted scores S and ground-truth ratings r:
  n >= 2: with j = argmax r (a single maximum), correct iff S_j > S_i for every real i != j. STRICT: a tie with
          the best response is wrong.
  n == 1: correct iff S_1 == r_1 (e.g. a 0/1 correctness label).
Unparseable trajectories (`valid=False`) are wrong. Eq. 11: reward +1 if correct, -1 otherwise; no format term.

Rows whose ratings have a tied maximum are ill-posed; `is_correct` returns False for them (it cannot raise under
jit) and `check_ratings` rejects them on the host before training.

`rollout_rewards` is the GRPO reward of generated judgements: parse each rollout under its item's template (its
score range: 0/1 for n = 1 items by default), map the scores back to the original order, then Eq. 11.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spct_jax.grm import parsing, templates


def is_correct(scores: jax.Array,
               ratings: jax.Array,
               *,
               valid: jax.Array | None = None,
               response_mask: jax.Array | None = None) -> jax.Array:
  """Eq. 10 correctness, batched over leading dims.

  Args:
    scores: int32[..., n] predicted scores in the original response order.
    ratings: [..., n] ground-truth ratings (int or float).
    valid: bool[...] False where the trajectory could not be parsed; None: all valid.
    response_mask: bool[..., n] True for real responses (items padded to a common n); None: all real.

  Returns:
    bool[...] True where the trajectory is correct.
  """
  scores = jnp.asarray(scores)
  ratings = jnp.asarray(ratings, jnp.float32)
  mask = jnp.ones(scores.shape, bool) if response_mask is None else jnp.asarray(response_mask, bool)
  n_real = mask.sum(-1)

  # n == 1: exact match on the one real response.
  single = jnp.all(jnp.where(mask, scores == ratings, True), axis=-1)

  # n >= 2: the unique best must beat every other real response strictly.
  masked_ratings = jnp.where(mask, ratings, -jnp.inf)
  best = jnp.argmax(masked_ratings, axis=-1)
  is_best = jax.nn.one_hot(best, scores.shape[-1], dtype=bool)
  unique_max = (masked_ratings == masked_ratings.max(-1, keepdims=True)).sum(-1) == 1
  best_score = jnp.take_along_axis(scores, best[..., None], axis=-1)
  others = mask & ~is_best
  multi = unique_max & jnp.all(jnp.where(others, best_score > scores, True), axis=-1)

  correct = jnp.where(n_real == 1, single, multi) & (n_real >= 1)
  if valid is not None:
    correct &= jnp.asarray(valid, bool)
  return correct


def rule_reward(scores: jax.Array,
                ratings: jax.Array,
                *,
                valid: jax.Array | None = None,
                response_mask: jax.Array | None = None) -> jax.Array:
  """Eq. 11: float32[...] +1 where `is_correct`, else -1 (same arguments as `is_correct`)."""
  correct = is_correct(scores, ratings, valid=valid, response_mask=response_mask)
  return jnp.where(correct, 1.0, -1.0).astype(jnp.float32)


def check_ratings(ratings, response_mask=None) -> None:
  """Host-side check that every item has a well-defined best response.

  Args:
    ratings: [..., n] ratings; a 1-D sequence is one item.
    response_mask: bool[..., n] True for real responses; None: all real.

  Raises:
    ValueError: an item with no real response, or n >= 2 real responses whose maximum is tied.
  """
  ratings = np.asarray(ratings, np.float64)
  if ratings.ndim == 0:
    raise ValueError("ratings must have a response axis, got a scalar")
  mask = np.ones(ratings.shape, bool) if response_mask is None else np.asarray(response_mask, bool)
  if mask.shape != ratings.shape:
    raise ValueError(f"response_mask shape {mask.shape} != ratings shape {ratings.shape}")
  flat_r = ratings.reshape(-1, ratings.shape[-1])
  flat_m = mask.reshape(-1, ratings.shape[-1])
  for row, (r, m) in enumerate(zip(flat_r, flat_m)):
    real = r[m]
    if real.size == 0:
      raise ValueError(f"item {row}: no real responses")
    if real.size >= 2 and np.sum(real == real.max()) > 1:
      raise ValueError(f"item {row}: ratings {real.tolist()} have {int(np.sum(real == real.max()))} responses "
                       f"tied at the maximum {real.max():g}; Eq. 10 needs a single best response")


def ratings_array(items: Sequence, width: int | None = None) -> np.ndarray:
  """f32[B, width] the items' `ratings`, 0 beyond each item's n (width None: the largest n)."""
  width = max(len(item.ratings) for item in items) if width is None else width
  ratings = np.zeros((len(items), width), np.float32)
  for b, item in enumerate(items):
    ratings[b, :len(item.ratings)] = item.ratings
  return ratings


def rollout_rewards(texts: Sequence[str], items: Sequence, perms: np.ndarray, group_size: int,
                    template_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Eq. 11 rewards of G rollouts per item, each parsed under its item's template.

  Args:
    texts: B*G generated judgements, row b*G + j = rollout j of item b (output prefix included).
    items: B items with `.responses` and `.ratings` (e.g. `data.PreferenceItem`).
    perms: int32[B, m, n] the response orders shown: m = 1 (one prompt per item, shared by its G rollouts, as GRPO
      groups are) or m = G (rollout j showed perms[b, j]).
    group_size: G.
    template_names: [B] the template each item was judged under (`scorer.item_templates`).

  Returns:
    rewards f32[B*G] (+1 correct, -1 wrong or unparseable) and valid bool[B*G] (the rollout's scores parsed).
  """
  batch, orders, width = perms.shape
  if len(texts) != batch * group_size or len(items) != batch or len(template_names) != batch:
    raise ValueError(f"expected {batch} items x {group_size} rollouts, got {len(items)} items, {len(texts)} texts, "
                     f"{len(template_names)} template names")
  if orders not in (1, group_size):
    raise ValueError(f"perms has {orders} orders per item; expected 1 or group_size={group_size}")
  num_responses = np.repeat([len(item.responses) for item in items], group_size)
  ranges = [templates.get_template(name).score_range for name in np.repeat(template_names, group_size)]
  shown, valid, _ = parsing.parse_batch(list(texts), num_responses.tolist(), score_range=ranges, width=width)
  row_perms = np.repeat(perms, group_size // orders, axis=1).reshape(batch * group_size, width)
  original = np.zeros_like(shown)
  np.put_along_axis(original, row_perms, shown, axis=1)  # the score shown at p belongs to response row_perms[p]
  mask = np.arange(width)[None, :] < num_responses[:, None]
  ratings = np.repeat(ratings_array(items, width), group_size, axis=0)
  rewards = rule_reward(original, ratings, valid=valid, response_mask=mask)
  return np.asarray(rewards, np.float32), valid
