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
  votes = jnp.full((4,), 4)
  acc = jax.jit(lambda v, r, m, k: voting.accuracy(v, r, num_votes=votes, response_mask=m, key=k))(
      voted, ratings, mask, jax.random.key(0))
  np.testing.assert_array_equal(acc["strict"], [True, False, False, False])
  np.testing.assert_allclose(acc["tie_expected"], [1.0, 0.5, 0.0, 0.5])
  assert acc["tie_random"][0] == 1.0 and acc["tie_random"][2] == 0.0
  # Over many keys the random tie-break on rows 1 and 3 is right about half the time.
  draws = jax.vmap(lambda k: voting.accuracy(voted, ratings, num_votes=votes, response_mask=mask, key=k)["tie_random"])(
      jax.random.split(jax.random.key(1), 400))
  mean = np.asarray(draws).mean(0)
  assert mean[0] == 1.0 and mean[2] == 0.0
  assert 0.35 < mean[1] < 0.65 and 0.35 < mean[3] < 0.65


def test_accuracy_rmb_best_of_n():
  voted = jnp.array([[30, 12, 29, 7], [28, 12, 29, 7]])
  ratings = jnp.array([[1, 0, 0, 0], [1, 0, 0, 0]])
  acc = voting.accuracy(voted, ratings, num_votes=jnp.array([3, 3]), key=jax.random.key(0))
  np.testing.assert_array_equal(acc["strict"], [True, False])
  np.testing.assert_array_equal(acc["tie_random"], [1.0, 0.0])


def test_independent_orders_per_sample_by_default():
  # None (the default): sample s draws its own permutation, exactly rng.permutation(n) in turn.
  perms = voting.response_orders(np.random.default_rng(5), n=5, k=8)
  reference = np.random.default_rng(5)
  np.testing.assert_array_equal(perms, [reference.permutation(5) for _ in range(8)])
  assert len({tuple(r) for r in perms.tolist()}) == 8  # 5! = 120 orders: eight distinct draws here, no cycle
  # Each response is shown first about equally often over many samples (uniform, independent orders).
  firsts = voting.response_orders(np.random.default_rng(6), n=4, k=4000)[:, 0]
  np.testing.assert_allclose(np.bincount(firsts) / 4000, 0.25, atol=0.03)
  # n = 2 has two orders, so independent draws repeat them (their prompts then share a prefill).
  pair = voting.response_orders(np.random.default_rng(7), n=2, k=8, pad_to=3)
  assert {tuple(r) for r in pair[:, :2].tolist()} == {(0, 1), (1, 0)}
  np.testing.assert_array_equal(pair[:, 2], 2)


def test_voted_label_is_the_rounded_mean_of_the_valid_samples():
  # Four samples of a 0/1 item: sums 0..4 over 4 votes; 2 of 4 is a tie and goes to 1; no vote is -1.
  sums = jnp.array([0, 1, 2, 3, 4, 1, 0])
  votes = jnp.array([4, 4, 4, 4, 4, 1, 0])
  np.testing.assert_array_equal(voting.voted_label(sums, votes), [0, 0, 1, 1, 1, 1, -1])
  # On the 1..10 scale (n = 1 judged by the default template): mean 7.5 rounds up, 7.25 down.
  np.testing.assert_array_equal(voting.voted_label(jnp.array([15, 29]), jnp.array([2, 4])), [8, 7])


def test_single_response_accuracy_at_k_above_one_uses_the_voted_label():
  # n = 1 items padded to n = 2; k = 4 samples, the sums are over the valid ones.
  voted = jnp.array([[3, 0], [1, 0], [2, 0], [0, 0], [0, 0], [16, 12]])
  ratings = jnp.array([[1, 0], [1, 0], [1, 0], [0, 0], [0, 0], [1, 0]])
  mask = jnp.array([[1, 0], [1, 0], [1, 0], [1, 0], [1, 0], [1, 1]], bool)
  votes = jnp.array([4, 4, 4, 4, 0, 4])
  acc = voting.accuracy(voted, ratings, num_votes=votes, response_mask=mask, key=jax.random.key(0))
  # 3/4 say correct -> 1 (right); 1/4 -> 0 (wrong); 2/4 -> 1 (right); 0/4 -> 0 on a 0 label (right);
  # no valid sample -> wrong; the pair row is unaffected.
  expected = [True, False, True, True, False, True]
  np.testing.assert_array_equal(acc["strict"], expected)
  np.testing.assert_array_equal(acc["tie_random"], np.asarray(expected, np.float32))
  np.testing.assert_array_equal(acc["tie_expected"], np.asarray(expected, np.float32))
