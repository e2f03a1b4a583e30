"""Tests for spct_jax.grm.voting: shuffles undone, Eq. 14 sums, meta-RM filtering, accuracy rules, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spct_jax.grm import voting


def test_response_orders_are_permutations_cycled_and_random():
  perms = voting.response_orders(np.random.default_rng(0), n=5, k=7, num_distinct=3)
  assert perms.shape == (7, 5) and perms.dtype == np.int32
  for row in perms:
    assert sorted(row.tolist()) == list(range(5))
  distinct = {tuple(r) for r in perms[:3].tolist()}
  assert len(distinct) == 3
  for s in range(7):
    np.testing.assert_array_equal(perms[s], perms[s % 3])
  # The first order is random too: over seeds it is not always the identity.
  firsts = {tuple(voting.response_orders(np.random.default_rng(seed), 5, 1, 1)[0]) for seed in range(10)}
  assert len(firsts) > 1


def test_response_orders_caps_at_factorial_and_pads():
  perms = voting.response_orders(np.random.default_rng(1), n=2, k=4, num_distinct=8)
  assert {tuple(r) for r in perms.tolist()} == {(0, 1), (1, 0)}
  padded = voting.response_orders(np.random.default_rng(2), n=2, k=3, num_distinct=2, pad_to=4)
  np.testing.assert_array_equal(padded[:, 2:], [[2, 3]] * 3)
  with pytest.raises(ValueError):
    voting.response_orders(np.random.default_rng(0), n=3, k=2, num_distinct=0)


def test_unshuffle_returns_each_score_to_its_response():
  n, k = 4, 6
  perms = voting.response_orders(np.random.default_rng(3), n, k, num_distinct=k)
  f = np.array([10, 20, 30, 40])  # score is a function of the ORIGINAL response id
  shown = f[perms]  # sample s shows response perms[s, p] at position p, so its score sits there
  out = voting.unshuffle(jnp.asarray(shown), jnp.asarray(perms))
  np.testing.assert_array_equal(out, np.tile(f, (k, 1)))


def test_vote_is_eq14_sum_over_valid_kept_samples():
  scores = jnp.array([[8, 3], [6, 7], [9, 1], [2, 2]])
  valid = jnp.array([True, True, False, True])
  # Hand sum over samples 0, 1, 3: (8+6+2, 3+7+2).
  np.testing.assert_array_equal(voting.vote(scores, valid), [16, 12])
  keep = jnp.array([True, False, True, True])
  np.testing.assert_array_equal(voting.vote(scores, valid, keep), [10, 5])  # samples 0 and 3


def test_meta_rm_keep_top_k_among_valid_with_index_ties():
  meta = jnp.array([0.1, 2.0, 5.0, 2.0, -1.0])
  valid = jnp.array([True, True, False, True, True])
  # Sample 2 is best but invalid; 1 and 3 tie at 2.0 -> lower index 1 first.
  np.testing.assert_array_equal(voting.meta_rm_keep(meta, valid, 1), [False, True, False, False, False])
  np.testing.assert_array_equal(voting.meta_rm_keep(meta, valid, 2), [False, True, False, True, False])
  np.testing.assert_array_equal(voting.meta_rm_keep(meta, valid, 3), [True, True, False, True, False])
  # Asking for more than the valid count keeps every valid sample and nothing else.
  np.testing.assert_array_equal(voting.meta_rm_keep(meta, valid, 5), valid)
  with pytest.raises(ValueError):
    voting.meta_rm_keep(meta, valid, 0)


def test_vote_items_composition_matches_hand_computation_and_jits():
  # Item 0: k=3, n=2. Original-order scores per sample: (8,3), (6,7), (5,5); sample 1 shown reversed.
  perms = np.array([[[0, 1], [1, 0], [0, 1]], [[1, 0], [1, 0], [0, 1]]], np.int32)
  shown = np.array([[[8, 3], [7, 6], [5, 5]], [[2, 9], [4, 4], [1, 1]]], np.int32)
  valid = np.array([[True, True, True], [True, False, True]])
  # Item 1 original order: sample 0 -> (9, 2), sample 1 invalid, sample 2 -> (1, 1).
  expected = np.array([[19, 15], [10, 3]])
  np.testing.assert_array_equal(voting.vote_items(shown, perms, valid), expected)
  np.testing.assert_array_equal(jax.jit(voting.vote_items)(shown, perms, valid), expected)

  meta = np.array([[3.0, 0.0, 1.0], [0.0, 9.0, 1.0]], np.float32)
  # k_meta=2: item 0 keeps samples 0, 2 -> (13, 8); item 1 keeps valid 2, 0 (sample 1 invalid) -> (10, 3).
  guided = np.array([[13, 8], [10, 3]])
  np.testing.assert_array_equal(voting.vote_items(shown, perms, valid, meta, 2), guided)
  np.testing.assert_array_equal(jax.jit(voting.vote_items)(shown, perms, valid, meta, 2), guided)
  # k_meta defaults to k // 2 = 1: item 0 keeps sample 0 only.
  np.testing.assert_array_equal(voting.vote_items(shown, perms, valid, meta)[0], [8, 3])
  with pytest.raises(ValueError, match="without meta_scores"):
    voting.vote_items(shown, perms, valid, None, 2)


def test_best_index_breaks_ties_at_random_over_maxima_only():
  voted = jnp.array([5, 9, 9, 9, 1])
  mask = jnp.array([True, True, True, False, True])  # index 3 is padding
  picks = jax.vmap(lambda k: voting.best_index(voted, k, mask))(jax.random.split(jax.random.key(0), 200))
  assert set(np.asarray(picks).tolist()) == {1, 2}
  assert int(voting.best_index(jnp.array([1, 7, 3]), jax.random.key(1))) == 1


def test_accuracy_tie_random_vs_strict():
  voted = jnp.array([
      [16, 12, 0],  # best clearly ahead: correct under both rules
      [10, 10, 0],  # tie with the best: strict wrong, random right half the time
      [3, 9, 0],    # wrong
      [20, 5, 20],  # RMB-style list of 3: best ties a loser
  ])
  ratings = jnp.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]])
  mask = jnp.array([[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 1]], bool)
  acc = jax.jit(lambda v, r, m, k: voting.accuracy(v, r, response_mask=m, key=k))(voted, ratings, mask,
                                                                                   jax.random.key(0))
  np.testing.assert_array_equal(acc["strict"], [True, False, False, False])
  np.testing.assert_allclose(acc["tie_expected"], [1.0, 0.5, 0.0, 0.5])
  assert acc["tie_random"][0] == 1.0 and acc["tie_random"][2] == 0.0
  # Over many keys the random tie-break on rows 1 and 3 is right about half the time.
  draws = jax.vmap(lambda k: voting.accuracy(voted, ratings, response_mask=mask, key=k)["tie_random"])(
      jax.random.split(jax.random.key(1), 400))
  mean = np.asarray(draws).mean(0)
  assert mean[0] == 1.0 and mean[2] == 0.0
  assert 0.35 < mean[1] < 0.65 and 0.35 < mean[3] < 0.65


def test_accuracy_rmb_best_of_n():
  voted = jnp.array([[30, 12, 29, 7], [28, 12, 29, 7]])
  ratings = jnp.array([[1, 0, 0, 0], [1, 0, 0, 0]])
  acc = voting.accuracy(voted, ratings, key=jax.random.key(0))
  np.testing.assert_array_equal(acc["strict"], [True, False])
  np.testing.assert_array_equal(acc["tie_random"], [1.0, 0.0])
