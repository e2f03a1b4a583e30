"""Held-out metrics of a scalar RM: hand-computed values and brute-force references written here."""

import itertools
import math

import numpy as np
import pytest

from spct_jax.train import binary_metrics as bm


def _pairwise_auc(scores, labels):
  """Reference: the fraction of (positive, negative) pairs ordered right, ties 1/2 (O(P x N))."""
  pos = [s for s, y in zip(scores, labels) if y]
  neg = [s for s, y in zip(scores, labels) if not y]
  wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
  return wins / (len(pos) * len(neg))


def test_auc_by_hand_with_ties():
  # Pairs (pos, neg): (0.9, 0.1) win, (0.9, 0.4) win, (0.4, 0.1) win, (0.4, 0.4) tie -> 3.5 / 4.
  assert bm.roc_auc([0.9, 0.4, 0.4, 0.1], [1, 1, 0, 0]) == pytest.approx(0.875)
  assert bm.roc_auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
  assert bm.roc_auc([1, 2, 3, 4], [1, 1, 0, 0]) == 0.0
  assert bm.roc_auc([5, 5, 5, 5], [1, 0, 1, 0]) == 0.5  # all tied: chance, not 0 or 1


def test_auc_equals_pairwise_reference_on_random_tied_scores():
  rng = np.random.default_rng(0)
  for _ in range(20):
    scores = rng.integers(0, 6, 40).astype(float)  # many ties
    labels = rng.random(40) < 0.3
    if labels.all() or not labels.any():
      continue
    assert bm.roc_auc(scores, labels) == pytest.approx(_pairwise_auc(scores, labels), abs=1e-12)
    # Invariant under a monotone transform (logits vs probabilities).
    assert bm.roc_auc(np.exp(scores), labels) == pytest.approx(bm.roc_auc(scores, labels), abs=1e-12)


def test_auc_is_nan_when_a_class_is_absent():
  assert math.isnan(bm.roc_auc([0.1, 0.2], [1, 1]))


def test_accuracy_threshold_is_strict():
  # p = 0.5 (logit 0) counts as negative, like losses.sigmoid_bce.
  assert bm.accuracy([0.5, 0.51, 0.2, 0.9], [0, 1, 0, 0]) == 0.75


def test_ece_by_hand():
  # 10 bins. Bin 0 [0, .1): p .05 y 0 -> |0 - .05|; bin 8 [.8, .9): p .8, .85 y 1, 0 -> |.5 - .825|;
  # bin 9 [.9, 1]: p .95, 1.0 y 1, 1 -> |1 - .975|. ECE = (1*.05 + 2*.325 + 2*.025) / 5.
  probs = [0.05, 0.8, 0.85, 0.95, 1.0]
  labels = [0, 1, 0, 1, 1]
  assert bm.expected_calibration_error(probs, labels) == pytest.approx((0.05 + 2 * 0.325 + 2 * 0.025) / 5)
  # One bin: |mean label - mean p|.
  assert bm.expected_calibration_error(probs, labels, num_bins=1) == pytest.approx(abs(0.6 - np.mean(probs)))
  assert bm.expected_calibration_error([0.0, 1.0], [0, 1]) == 0.0


def test_log_loss_by_hand_and_stable():
  assert bm.log_loss([0.0], [1]) == pytest.approx(math.log(2))
  assert bm.log_loss([math.log(3)], [1]) == pytest.approx(-math.log(0.75))  # sigmoid(log 3) = 3/4
  assert bm.log_loss([math.log(3)], [0]) == pytest.approx(-math.log(0.25))
  assert bm.log_loss([1000.0, -1000.0], [0, 1]) == pytest.approx(1000.0)  # no overflow


def test_binary_metrics_bundle():
  logits = np.array([2.0, -1.0, 0.5, -3.0])
  labels = np.array([1, 0, 0, 0])
  m = bm.binary_metrics(logits, labels)
  p = 1 / (1 + np.exp(-logits))
  assert m["auc"] == 1.0 and m["accuracy"] == 0.75 and m["count"] == 4
  assert m["log_loss"] == pytest.approx(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
  assert m["mean_prob"] == pytest.approx(p.mean())
  np.testing.assert_allclose(bm.sigmoid([-800.0, 0.0, 800.0]), [0.0, 0.5, 1.0])


def test_bad_labels_are_rejected():
  with pytest.raises(ValueError, match="0/1"):
    bm.roc_auc([0.1, 0.2], [0, 2])
  with pytest.raises(ValueError, match="labels"):
    bm.accuracy([0.1, 0.2], [0])
