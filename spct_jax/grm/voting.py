"""Inference-time scaling (sec. 5): shuffled sampling, voting (Eq. 14), meta-RM guided voting, accuracy.

Eq. 14: S*_i = sum_{s=1..k} S_{i,s}. Each of the k samples sees the responses in its own order (positional
bias), so its scores are first mapped back to the original order (`unshuffle`), then summed over the samples
(`vote`). A sample whose scores could not be parsed contributes nothing to any response (our choice; the paper gives no
rule): it adds 0 to every response, so it can favour none, and the vote is over the parseable samples only.
Meta-RM guided voting keeps the k_meta samples the meta RM rates highest and votes over those.

Single-response items (n = 1, a 0/1 label) have no argmax: their voted label is the mean of the voting samples'
scores rounded half up (`voted_label`; for 0/1 scores: 1 iff at least half the valid samples said 1, a majority
vote with ties going to 1), and the item is correct iff it equals the label. No valid sample: wrong. At k = 1 the
voted label is the sample's score, so this is Eq. 10.

Layout: one item is `[k, n]` (samples x responses); batches add a leading B. Every function is pure jnp
and jittable with static shapes, except `response_orders`, which runs on the host.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from spct_jax.grm import reward


def response_orders(rng: np.random.Generator,
                    n: int,
                    k: int,
                    num_distinct: int | None = None,
                    *,
                    pad_to: int | None = None) -> np.ndarray:
  """Draws the response order shown to each of k samples.

  num_distinct None (the paper's rule, sec. 5): every sample draws its own uniform random permutation, independently
  (orders may repeat; samples with the same order share one prompt and one prefill). num_distinct m: `min(m, k, n!)`
  distinct random permutations are drawn (the first one too, so even k = 1 is shuffled) and sample s uses order
  `s % m`.

  Args:
    rng: host random generator.
    n: number of real responses.
    k: number of samples.
    num_distinct: None, or the most distinct orders to use (>= 1).
    pad_to: pad the response axis to this width; padded positions map to themselves.

  Returns:
    perms: int32[k, pad_to or n]; perms[s, p] = original index of the response shown at position p in sample s.
  """
  if n < 1 or k < 1 or (num_distinct is not None and num_distinct < 1):
    raise ValueError(f"need n, k, num_distinct >= 1, got n={n}, k={k}, num_distinct={num_distinct}")
  width = n if pad_to is None else pad_to
  if width < n:
    raise ValueError(f"pad_to={pad_to} is smaller than n={n}")
  perms = np.tile(np.arange(width, dtype=np.int32), (k, 1))
  if num_distinct is None:
    for s in range(k):
      perms[s, :n] = rng.permutation(n)
    return perms
  m = min(num_distinct, k, math.factorial(min(n, 20)))
  distinct: list[tuple[int, ...]] = []
  while len(distinct) < m:
    perm = tuple(int(i) for i in rng.permutation(n))
    if perm not in distinct:
      distinct.append(perm)
  for s in range(k):
    perms[s, :n] = distinct[s % m]
  return perms


def _unshuffle_one(shown: jax.Array, perm: jax.Array) -> jax.Array:
  # The score shown at position p belongs to original response perm[p].
  return jnp.zeros_like(shown).at[perm].set(shown)


def unshuffle(shown_scores: jax.Array, perms: jax.Array) -> jax.Array:
  """Maps per-sample scores back to the original response order.

  Args:
    shown_scores: [k, n] scores in the order each sample saw.
    perms: int32[k, n] as from `response_orders`.

  Returns:
    [k, n] with out[s, perms[s, p]] = shown_scores[s, p].
  """
  return jax.vmap(_unshuffle_one)(shown_scores, perms)


def vote(scores: jax.Array, valid: jax.Array, keep: jax.Array | None = None) -> jax.Array:
  """Eq. 14 over the kept, valid samples.

  Args:
    scores: int32[k, n] in the original response order.
    valid: bool[k] False where the sample was unparseable.
    keep: bool[k] samples selected by the meta RM; None: all.

  Returns:
    int32[n] voted scores.
  """
  use = jnp.asarray(valid, bool)
  if keep is not None:
    use &= jnp.asarray(keep, bool)
  return jnp.where(use[:, None], scores, 0).sum(axis=0).astype(jnp.int32)


def meta_rm_keep(meta_scores: jax.Array, valid: jax.Array, k_meta) -> jax.Array:
  """Selects the top-k_meta samples by meta-RM score among the valid ones.

  Args:
    meta_scores: float[k] meta RM logits.
    valid: bool[k] parseable samples (only these can be kept).
    k_meta: how many to keep (int, may be traced); fewer are kept when fewer are valid.

  Returns:
    bool[k] keep mask; ties go to the lower sample index.
  """
  if isinstance(k_meta, int) and k_meta < 1:
    raise ValueError(f"k_meta must be >= 1, got {k_meta}")
  valid = jnp.asarray(valid, bool)
  key = jnp.where(valid, jnp.asarray(meta_scores, jnp.float32), -jnp.inf)
  order = jnp.argsort(-key, stable=True)  # stable: equal scores keep index order
  rank = jnp.zeros(key.shape, jnp.int32).at[order].set(jnp.arange(key.shape[0], dtype=jnp.int32))
  return (rank < k_meta) & valid


def _vote_item(shown, perms, valid, meta_scores, k_meta):
  keep = None if meta_scores is None else meta_rm_keep(meta_scores, valid, k_meta)
  return vote(unshuffle(shown, perms), valid, keep)


def vote_items(shown_scores: jax.Array,
               perms: jax.Array,
               valid: jax.Array,
               meta_scores: jax.Array | None = None,
               k_meta=None) -> jax.Array:
  """Unshuffle, optionally meta-RM filter, and vote, for B items.

  Args:
    shown_scores: int32[B, k, n] scores in each sample's shown order.
    perms: int32[B, k, n] orders from `response_orders`.
    valid: bool[B, k] parseable samples.
    meta_scores: float[B, k] meta RM logits; None: plain voting.
    k_meta: samples kept per item under meta-RM guidance; None: k // 2 (the paper's default k/2).

  Returns:
    int32[B, n] voted scores in the original response order.
  """
  if meta_scores is None:
    if k_meta is not None:
      raise ValueError("k_meta given without meta_scores")
    return jax.vmap(lambda s, p, v: _vote_item(s, p, v, None, None))(shown_scores, perms, valid)
  if k_meta is None:
    k_meta = max(1, shown_scores.shape[1] // 2)
  return jax.vmap(_vote_item, in_axes=(0, 0, 0, 0, None))(shown_scores, perms, valid, meta_scores, k_meta)


def best_index(voted: jax.Array, key: jax.Array, response_mask: jax.Array | None = None) -> jax.Array:
  """argmax of the voted scores over real responses, ties broken uniformly at random.

  Args:
    voted: [n] voted scores.
    key: PRNG key for the tie-break.
    response_mask: bool[n] real responses; None: all.

  Returns:
    int32[] index of the chosen response.
  """
  voted = jnp.asarray(voted, jnp.float32)
  mask = jnp.ones(voted.shape, bool) if response_mask is None else jnp.asarray(response_mask, bool)
  masked = jnp.where(mask, voted, -jnp.inf)
  is_max = mask & (masked == masked.max())
  noise = jax.random.uniform(key, voted.shape)
  return jnp.argmax(jnp.where(is_max, noise, -1.0)).astype(jnp.int32)


def voted_label(voted: jax.Array, num_votes: jax.Array) -> jax.Array:
  """The voted score of a single-response item: mean of the voting samples' scores, rounded half up.

  Args:
    voted: [...] Eq. 14 sums (int or float).
    num_votes: int[...] how many samples the sums are over.

  Returns:
    int32[...] floor(voted / num_votes + 1/2); -1 where num_votes == 0 (no vote: matches no label).
  """
  voted = jnp.asarray(voted, jnp.float32)
  num_votes = jnp.asarray(num_votes, jnp.int32)
  label = jnp.floor(voted / jnp.maximum(num_votes, 1) + 0.5).astype(jnp.int32)
  return jnp.where(num_votes > 0, label, -1)


def accuracy(voted: jax.Array,
             ratings: jax.Array,
             *,
             num_votes: jax.Array,
             response_mask: jax.Array | None = None,
             key: jax.Array) -> dict[str, jax.Array]:
  """Per-item accuracy of voted scores under the paper's rule and the strict rule.

  For n >= 2 the ground-truth best is the unique argmax of `ratings` (RMB best-of-N: the best beats every loser).
  Rows with a single real response compare their `voted_label` (mean score over the voting samples, rounded half
  up) with the label, under every rule.

  Args:
    voted: [B, n] voted scores.
    ratings: [B, n] ground-truth ratings.
    num_votes: int[B] samples each row's sums are over (the valid, kept ones).
    response_mask: bool[B, n] real responses; None: all.
    key: PRNG key for the random tie-breaks.

  Returns:
    tie_random: float32[B] 1.0 where the randomly tie-broken argmax is the best response (the paper's rule).
    tie_expected: float32[B] expected value of tie_random over tie-breaks (1/#maxima if the best is among them).
    strict: bool[B] Eq. 10 on the voted scores: a tie with the best counts as wrong.
  """
  voted = jnp.asarray(voted)
  ratings = jnp.asarray(ratings, jnp.float32)
  mask = jnp.ones(voted.shape, bool) if response_mask is None else jnp.asarray(response_mask, bool)
  n_real = mask.sum(-1)
  # n = 1 rows: the voted label in every column (only the real one is compared), so Eq. 10's exact match applies.
  label = voted_label(jnp.where(mask, voted, 0).sum(-1), num_votes)
  scores = jnp.where((n_real == 1)[:, None], label[:, None], voted)
  strict = reward.is_correct(scores, ratings, response_mask=mask)

  keys = jax.random.split(key, voted.shape[0])
  chosen = jax.vmap(best_index)(voted, keys, mask)
  masked_r = jnp.where(mask, ratings, -jnp.inf)
  gold = jnp.argmax(masked_r, axis=-1)
  well_posed = (masked_r == masked_r.max(-1, keepdims=True)).sum(-1) == 1
  hit = (chosen == gold) & well_posed

  masked_v = jnp.where(mask, jnp.asarray(voted, jnp.float32), -jnp.inf)
  is_max = mask & (masked_v == masked_v.max(-1, keepdims=True))
  gold_is_max = jnp.take_along_axis(is_max, gold[:, None], axis=-1)[:, 0]
  expected = jnp.where(gold_is_max & well_posed, 1.0 / jnp.maximum(is_max.sum(-1), 1), 0.0)

  multi = n_real >= 2
  tie_random = jnp.where(multi, hit, strict).astype(jnp.float32)
  tie_expected = jnp.where(multi, expected, strict).astype(jnp.float32)
  return {"tie_random": tie_random, "tie_expected": tie_expected, "strict": strict}
