"""Position-swap consistency of greedy pairwise judgements.

Accuracy alone cannot tell a judge from a position habit: a GRM that always scores the response shown first 9 and
the other 2 gets about 50% on shuffled pairs, and any lucky shuffle looks like skill. So every pair with a strict
best is judged twice, greedily and without the scorer's shuffle, once with the best response shown first and once
shown second. `consistency` is the fraction correct (Eq. 10, strict) in both orders: ~0% for the position habit,
the accuracy itself for an order-blind judge. Items with n != 2 are left out (`pairs` counts the rest).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from spct_jax.data import schema
from spct_jax.evaluators import metrics


def reordered(item: schema.PreferenceItem, order: Sequence[int]) -> schema.PreferenceItem:
  """`item` with its responses (and their ratings) shown in `order` (original indices)."""
  return dataclasses.replace(item, responses=tuple(item.responses[i] for i in order),
                             ratings=tuple(item.ratings[i] for i in order))


def swapped_pairs(items: Sequence[schema.PreferenceItem]
                  ) -> tuple[list[schema.PreferenceItem], list[schema.PreferenceItem], list[int]]:
  """(best shown first, best shown second, indices into `items`) for every pair item."""
  first, second, index = [], [], []
  for i, item in enumerate(items):
    if item.num_responses != 2:  # a valid pair has a strict best (schema.validate)
      continue
    best = int(np.argmax(item.ratings))
    first.append(reordered(item, (best, 1 - best)))
    second.append(reordered(item, (1 - best, best)))
    index.append(i)
  return first, second, index


def consistency_metrics(correct_first: np.ndarray, correct_second: np.ndarray) -> dict[str, Any]:
  """Accuracy in each order, consistency (correct in both) with bootstrap intervals, and the per-pair values."""
  first = np.asarray(correct_first, np.float64)
  second = np.asarray(correct_second, np.float64)
  if first.shape != second.shape:
    raise ValueError(f"correct_first {first.shape} and correct_second {second.shape} differ in shape")
  per_item = {"best_first": first, "best_second": second, "consistent": first * second}
  mean = lambda v: float(v.mean()) if v.size else None
  return {"pairs": int(first.size), "accuracy_best_first": mean(first), "accuracy_best_second": mean(second),
          "consistency": mean(per_item["consistent"]),
          "ci95": {"consistency": metrics.bootstrap_interval(per_item["consistent"])},
          "per_item": {name: values.tolist() for name, values in per_item.items()}}


def format_line(name: str, result: dict[str, Any]) -> str:
  pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"
  return (f"{name}: position swap over {result['pairs']} pairs: best shown first {pct(result['accuracy_best_first'])}, "
          f"second {pct(result['accuracy_best_second'])}, consistent {pct(result['consistency'])}")
