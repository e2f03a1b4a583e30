"""evaluators.metrics: RMB reported as its benchmark does, and n = 1 items judged by their voted label."""

import jax
import numpy as np
import pytest

from spct_jax.evaluators import metrics


def _run(helpful, harmless, metric):
  """One run's aggregate with only the fields rmb_summary reads (the other metric set apart to catch mix-ups)."""
  other = "accuracy_strict" if metric == "accuracy_tie_random" else "accuracy_tie_random"
  return {"by_subset": {"Helpfulness": {metric: helpful, other: -1.0},
                        "Harmlessness": {metric: harmless, other: -1.0}}}


def test_rmb_summary_four_cells_and_their_mean():
  datasets = {
      "rmb_pairwise": {"runs": {"greedy": _run(0.80, 0.60, "accuracy_tie_random"), "voting@4": _run(0.70, 0.50, "accuracy_tie_random")}},
      "rmb_bon": {"runs": {"greedy": _run(0.40, 0.20, "accuracy_strict")}},
      "llmbar": {"runs": {"greedy": {"by_subset": {}}}},
  }
  summary = metrics.rmb_summary(datasets)
  assert summary["greedy"] == pytest.approx({"Helpfulness/pairwise": 0.80, "Helpfulness/bon": 0.40,
                                             "Harmlessness/pairwise": 0.60, "Harmlessness/bon": 0.20,
                                             "mean": (0.80 + 0.40 + 0.60 + 0.20) / 4})
  # A run without best-of-N reports the cells it has and no mean.
  assert summary["voting@4"]["Helpfulness/pairwise"] == 0.70 and summary["voting@4"]["Helpfulness/bon"] is None
  assert summary["voting@4"]["mean"] is None
  # The metric per set is a choice: strict everywhere reads the other field.
  strict = metrics.rmb_summary(datasets, pairwise_metric="accuracy_strict")
  assert strict["greedy"]["Helpfulness/pairwise"] == -1.0 and strict["greedy"]["Harmlessness/bon"] == 0.20
  assert metrics.rmb_summary({"llmbar": datasets["llmbar"]}) == {}
  table = metrics.format_rmb_table(summary)
  assert "Help/pairwise" in table and " 50.0" in table.splitlines()[2] and "   -" in table.splitlines()[3]


def test_rmb_summary_from_real_aggregates():
  # Two pairwise items per goal and one best-of-N list per goal, through item_metrics and aggregate.
  key = jax.random.key(0)
  pair_votes = np.array([[9, 2], [3, 8], [7, 1], [5, 5]])
  pair = metrics.aggregate(
      metrics.item_metrics(pair_votes, np.array([[1.0, 0.0]] * 4), np.ones((4, 2), bool), np.ones((4, 1), bool),
                              key),
      ["h/a", "h/a", "x/b", "x/b"], ["Helpfulness", "Helpfulness", "Harmlessness", "Harmlessness"])
  bon = metrics.aggregate(
      metrics.item_metrics(np.array([[9, 2, 3], [4, 4, 1]]), np.array([[1.0, 0.0, 0.0]] * 2),
                              np.ones((2, 3), bool), np.ones((2, 1), bool), key),
      ["h/a", "x/b"], ["Helpfulness", "Harmlessness"])
  summary = metrics.rmb_summary({"rmb_pairwise": {"runs": {"greedy": pair}},
                                    "rmb_bon": {"runs": {"greedy": bon}}})["greedy"]
  # Helpfulness pairs: 1 right, 1 wrong; Harmlessness pairs: 1 right, 1 tie (0.5 expected, 1 or 0 drawn).
  assert summary["Helpfulness/pairwise"] == 0.5
  assert summary["Harmlessness/pairwise"] in (0.5, 1.0)
  assert summary["Helpfulness/bon"] == 1.0 and summary["Harmlessness/bon"] == 0.0  # the tie with a loser is wrong
  assert summary["mean"] == pytest.approx(np.mean([summary[c] for c in summary if c != "mean"]))


def test_item_metrics_vote_single_response_items_by_their_label():
  # An n = 1 item (padded to 2) with 3 of 4 valid samples scoring 1: voted label 1 = its label.
  voted = np.array([[3, 0], [3, 0]])
  ratings = np.array([[1.0, 0.0], [0.0, 0.0]])
  mask = np.array([[True, False], [True, False]])
  valid = np.array([[True, True, True, True], [True, True, True, False]])
  per_item = metrics.item_metrics(voted, ratings, mask, valid, jax.random.key(0))
  # Row 0: mean 3/4 -> 1, right. Row 1: mean 3/3 -> 1 on a 0 label, wrong.
  np.testing.assert_array_equal(per_item["accuracy_strict"], [1.0, 0.0])
  np.testing.assert_array_equal(per_item["accuracy_tie_random"], [1.0, 0.0])
