"""Tests for spct_jax.grm.reward: Eq. 10 correctness and the Eq. 11 reward on hand-made cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spct_jax.grm import reward


@pytest.mark.parametrize("scores, ratings, expected", [
    ([8, 3], [1, 0], True),          # best first, strictly higher
    ([3, 8], [1, 0], False),         # wrong order
    ([6, 6], [1, 0], False),         # tie with the best is wrong
    ([2, 9], [0, 1], True),          # best second
    ([9, 5, 7], [3, 1, 2], True),    # n = 3, best beats both
    ([9, 9, 7], [3, 1, 2], False),   # tie with a loser
    ([7, 9, 1], [3, 1, 2], False),   # best beats one loser only
    ([9, 5, 5, 5], [1, 0, 0, 0], True),  # RMB best-of-N: losers may tie among themselves
    ([1], [1], True),                # n = 1: exact match
    ([0], [1], False),
    ([7], [7], True),
])
def test_eq10_cases(scores, ratings, expected):
  assert bool(reward.is_correct(jnp.array(scores), jnp.array(ratings))) is expected


def test_invalid_rows_are_wrong_and_reward_is_pm1():
  scores = jnp.array([[8, 3], [8, 3], [3, 8]])
  ratings = jnp.array([[1, 0], [1, 0], [1, 0]])
  valid = jnp.array([True, False, True])
  np.testing.assert_array_equal(reward.is_correct(scores, ratings, valid=valid), [True, False, False])
  r = reward.rule_reward(scores, ratings, valid=valid)
  assert r.dtype == jnp.float32
  np.testing.assert_array_equal(r, [1.0, -1.0, -1.0])


def test_response_mask_ignores_padding():
  # Row 0: a pair padded to 3; the padded score 9 would beat the best if it counted.
  # Row 1: a single response padded to 3 with garbage, label 1: exact match on the real one only.
  # Row 2: three real responses.
  scores = jnp.array([[5, 2, 9], [1, 5, 0], [4, 6, 5]])
  ratings = jnp.array([[1, 0, 0], [1, 0, 0], [0, 2, 1]])
  mask = jnp.array([[True, True, False], [True, False, False], [True, True, True]])
  np.testing.assert_array_equal(reward.is_correct(scores, ratings, response_mask=mask), [True, True, True])
  # Without the mask rows 0 and 1 are judged as 3-way items and the padding wins.
  np.testing.assert_array_equal(reward.is_correct(scores, ratings), [False, False, True])


def test_tied_ground_truth_is_never_correct_in_jit():
  assert not bool(reward.is_correct(jnp.array([9, 1, 1]), jnp.array([2, 2, 0])))


def test_float_ratings_and_leading_dims():
  scores = jnp.array([[[8, 3], [3, 8]], [[5, 5], [1, 9]]])  # [2, 2, n=2]
  ratings = jnp.array([[[0.9, 0.2]] * 2, [[0.1, 0.7]] * 2])
  np.testing.assert_array_equal(reward.is_correct(scores, ratings), [[True, False], [False, True]])


def test_jit_and_vmap_agree_with_eager():
  scores = jnp.array([[8, 3, 0], [3, 8, 0], [6, 6, 1], [1, 0, 0]])
  ratings = jnp.array([[1, 0, 0], [1, 0, 0], [2, 0, 1], [1, 0, 0]])
  mask = jnp.array([[1, 1, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0]], bool)
  valid = jnp.array([True, True, True, False])
  eager = reward.rule_reward(scores, ratings, valid=valid, response_mask=mask)
  np.testing.assert_array_equal(eager, [1.0, -1.0, -1.0, -1.0])
  jitted = jax.jit(lambda s, r, v, m: reward.rule_reward(s, r, valid=v, response_mask=m))(scores, ratings, valid, mask)
  vmapped = jax.vmap(lambda s, r, v, m: reward.rule_reward(s, r, valid=v, response_mask=m))(scores, ratings, valid,
                                                                                               mask)
  np.testing.assert_array_equal(jitted, eager)
  np.testing.assert_array_equal(vmapped, eager)


def test_check_ratings():
  reward.check_ratings([1, 0])
  reward.check_ratings([[3, 1, 1], [0, 5, 2]])
  reward.check_ratings([7])  # n = 1: any label
  reward.check_ratings([[1, 0, 1]], response_mask=[[True, True, False]])  # the tie is with padding only
  with pytest.raises(ValueError, match=r"item 1: .*2 responses tied at the maximum 5"):
    reward.check_ratings([[3, 1, 1], [5, 5, 2]])
  with pytest.raises(ValueError, match="no real responses"):
    reward.check_ratings([[1, 0]], response_mask=[[False, False]])


class _Item:
  def __init__(self, responses, ratings):
    self.responses, self.ratings = tuple(responses), tuple(ratings)


def test_rollout_rewards_unshuffle_each_rollout_and_use_each_items_range():
  items = [_Item(["a", "b", "c"], [0, 1, 0]), _Item(["x"], [1])]
  # Item 0 shows (2, 1, 0): the best (original 1) sits at position 1. Item 1 is a single 0/1 item.
  perms = np.array([[[2, 1, 0]], [[0, 1, 2]]], np.int32)
  texts = ["\\boxed{3, 9, 1}", "\\boxed{9, 3, 1}", "\\boxed{1}", "\\boxed{0}"]
  rewards, valid = reward.rollout_rewards(texts, items, perms, 2, ["default", "single_binary"])
  np.testing.assert_array_equal(rewards, [1, -1, 1, -1])
  assert valid.all()
  # One order per rollout (m = G): rollout 1 showed the identity order, so its 9 is response 0's.
  per_rollout = np.array([[[2, 1, 0], [0, 1, 2]], [[0, 1, 2], [0, 1, 2]]], np.int32)
  rewards, _ = reward.rollout_rewards(texts, items, per_rollout, 2, ["default", "single_binary"])
  np.testing.assert_array_equal(rewards, [1, -1, 1, -1])
  texts[1] = "\\boxed{3, 9, 1}"
  rewards, _ = reward.rollout_rewards(texts, items, per_rollout, 2, ["default", "single_binary"])
  np.testing.assert_array_equal(rewards, [1, 1, 1, -1])
  with pytest.raises(ValueError, match="orders per item"):
    reward.rollout_rewards(texts, items, np.zeros((2, 3, 3), np.int32), 2, ["default", "single_binary"])
  with pytest.raises(ValueError, match="2 items x 2 rollouts"):
    reward.rollout_rewards(texts[:3], items, perms, 2, ["default", "single_binary"])


def test_ratings_array_pads_with_zeros():
  np.testing.assert_array_equal(reward.ratings_array([_Item("ab", [0, 1]), _Item("x", [1])], 3),
                                [[0, 1, 0], [1, 0, 0]])
