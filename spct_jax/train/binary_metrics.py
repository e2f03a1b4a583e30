"""Binary-classifier metrics of a scalar RM's logits (the meta RM's held-out evaluation). Pure numpy, host side.

- `roc_auc`: probability that a random positive outranks a random negative, ties counting 1/2 (Mann-Whitney U
  with mid-ranks). NaN when a class is absent (undefined, not 0.5: a held-out set without negatives says nothing).
- `accuracy`: predicted positive iff p > threshold (default 0.5, i.e. logit > 0; a logit of exactly 0 counts as
  negative, as in `losses.sigmoid_bce`).
- `expected_calibration_error`: `num_bins` equal-width bins over [0, 1] (bin i holds p in [i/M, (i+1)/M), the last
  bin also holds p = 1); ECE = sum over bins of (n_bin / N) * |mean label - mean p|; empty bins count 0.
- `log_loss`: mean binary cross-entropy in nats, from the logits (stable for any |logit|).
"""

from __future__ import annotations

import numpy as np


def _as_arrays(logits_or_probs, labels) -> tuple[np.ndarray, np.ndarray]:
  x = np.asarray(logits_or_probs, np.float64).reshape(-1)
  y = np.asarray(labels).reshape(-1)
  if x.shape != y.shape:
    raise ValueError(f"{x.shape[0]} scores but {y.shape[0]} labels")
  if not np.isin(y, (0, 1)).all():
    raise ValueError("labels must be 0/1 (or bool)")
  return x, y.astype(np.float64)


def sigmoid(logits) -> np.ndarray:
  x = np.asarray(logits, np.float64)
  e = np.exp(-np.abs(x))  # never overflows
  return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _mid_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of x ascending, tied values sharing the mean of their ranks."""
  order = np.argsort(x, kind="stable")
  sorted_x = x[order]
  starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
  ends = np.r_[starts[1:], len(x)]
  ranks_sorted = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # mean of ranks start+1 .. end
  ranks = np.empty(len(x))
  ranks[order] = ranks_sorted
  return ranks


def roc_auc(scores, labels) -> float:
  """Area under the ROC curve of `scores` (any monotone transform gives the same value) for 0/1 `labels`."""
  x, y = _as_arrays(scores, labels)
  n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  rank_sum = _mid_ranks(x)[y == 1].sum()
  return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def accuracy(probs, labels, threshold: float = 0.5) -> float:
  p, y = _as_arrays(probs, labels)
  return float(np.mean((p > threshold) == (y == 1))) if len(y) else float("nan")


def expected_calibration_error(probs, labels, num_bins: int = 10) -> float:
  if num_bins < 1:
    raise ValueError(f"num_bins must be >= 1, got {num_bins}")
  p, y = _as_arrays(probs, labels)
  if not len(p):
    return float("nan")
  if ((p < 0) | (p > 1)).any():
    raise ValueError("probabilities must lie in [0, 1]")
  bins = np.minimum((p * num_bins).astype(np.int64), num_bins - 1)
  total = 0.0
  for b in np.unique(bins):
    members = bins == b
    total += members.sum() / len(p) * abs(y[members].mean() - p[members].mean())
  return float(total)


def log_loss(logits, labels) -> float:
  x, y = _as_arrays(logits, labels)
  if not len(x):
    return float("nan")
  softplus = lambda z: np.logaddexp(0.0, z)
  return float(np.mean(y * softplus(-x) + (1 - y) * softplus(x)))


def binary_metrics(logits, labels, *, num_bins: int = 10) -> dict[str, float]:
  """auc, accuracy (at 0.5), ece (`num_bins` equal-width bins), log_loss, positive_fraction, mean_prob, count."""
  x, y = _as_arrays(logits, labels)
  p = sigmoid(x)
  return {"auc": roc_auc(x, y), "accuracy": accuracy(p, y), "ece": expected_calibration_error(p, y, num_bins),
          "log_loss": log_loss(x, y), "positive_fraction": float(y.mean()) if len(y) else float("nan"),
          "mean_prob": float(p.mean()) if len(p) else float("nan"), "count": float(len(y))}
