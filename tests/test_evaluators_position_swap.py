"""Position-swap consistency: the reordering, the metric by hand, and the evaluator on judges whose habits the test
chooses (a position habit must get 0% consistency however its accuracy looks); bootstrap intervals and pooling."""

import re

import numpy as np
import pytest

from spct_jax import evaluators
from spct_jax.data import schema
from spct_jax.evaluators import metrics, position_swap, voting
from spct_jax.grm import GRM
from spct_jax.grm.scorer import GRMOptions

SHOWN = re.compile(r"\[The Begin of Response \d+\]\n(.*?)\n\[The End", flags=re.S)


def _item(uid, responses, ratings):
  return schema.PreferenceItem(conversation=(("user", f"question {uid}"),), responses=tuple(responses),
                               ratings=tuple(ratings), category="c", source="test", uid=uid).validate()


def _items():
  return [_item("p1", ["good a", "bad b"], [1, 0]), _item("p2", ["bad c", "good d"], [0, 1]),
          _item("p3", ["bad e", "good f"], [0, 1]),
          _item("single", ["good g"], [1]),  # not a pair: left out
          _item("list", ["bad i", "good j", "bad k"], [0, 1, 0])]  # not a pair: left out


class FirstShownWins(GRM):
  """The position habit: 9 for whatever is shown first, 2 for the rest."""

  def __init__(self, model=None, tokenizer=None, **options):
    super().__init__(model=None, tokenizer=None, **options)
    self.prompts = []

  def generate_texts(self, prompts, strategy, seed):
    self.prompts += prompts
    return [" ...\nScores: \\boxed{" + ", ".join(["9"] + ["2"] * (len(SHOWN.findall(p)) - 1)) + "}" for p in prompts]


class ReadsContent(FirstShownWins):
  """An order-blind judge: 9 for a "good" response, 2 for a "bad" one, wherever it is shown."""

  def generate_texts(self, prompts, strategy, seed):
    self.prompts += prompts
    return [" ...\nScores: \\boxed{" + ", ".join("9" if r.startswith("good") else "2" for r in SHOWN.findall(p)) + "}"
            for p in prompts]


def test_swapped_pairs_show_the_best_first_then_second():
  first, second, index = position_swap.swapped_pairs(_items())
  assert index == [0, 1, 2]
  assert [item.responses for item in first] == [("good a", "bad b"), ("good d", "bad c"), ("good f", "bad e")]
  assert [item.responses for item in second] == [("bad b", "good a"), ("bad c", "good d"), ("bad e", "good f")]
  assert all(item.best_index == 0 for item in first) and all(item.best_index == 1 for item in second)


def test_consistency_metrics_by_hand():
  result = position_swap.consistency_metrics(np.array([1, 1, 0, 1.0]), np.array([0, 1, 0, 1.0]))
  assert result["pairs"] == 4 and result["accuracy_best_first"] == 0.75 and result["accuracy_best_second"] == 0.5
  assert result["consistency"] == 0.5 and result["per_item"]["consistent"] == [0, 1, 0, 1]
  lo, hi = result["ci95"]["consistency"]
  assert 0.0 <= lo < 0.5 < hi <= 1.0
  with pytest.raises(ValueError, match="differ in shape"):
    position_swap.consistency_metrics(np.ones(2), np.ones(3))


@pytest.mark.parametrize("judge, first, second, consistent", [(FirstShownWins, 1.0, 0.0, 0.0),
                                                              (ReadsContent, 1.0, 1.0, 1.0)])
def test_evaluator_reports_consistency(monkeypatch, judge, first, second, consistent):
  made = []
  monkeypatch.setattr(voting, "MeasuredGRM", lambda *a, **kw: made.append(judge(**kw)) or made[-1])
  spec = evaluators.spec_from_config(dict(type="voting", greedy=True, ks=(), position_swap=True), "heldout")
  evaluator = voting.VotingEvaluator(spec, items=_items(), tokenizer=None,
                                     options=GRMOptions(output_prefix="Specific Criteria:"), name="heldout")
  result = evaluator.evaluate(model=None)
  swap = result.position_swap
  assert (swap["pairs"], swap["accuracy_best_first"], swap["accuracy_best_second"], swap["consistency"]) == (
      3, first, second, consistent)
  assert result.scalars()["position_swap/consistency"] == consistent
  # One GRM judges both orders, showing the responses exactly as reordered: the scorer's shuffle is off for it.
  assert [SHOWN.findall(p) for p in made[-1].prompts] == [
      ["good a", "bad b"], ["good d", "bad c"], ["good f", "bad e"],
      ["bad b", "good a"], ["bad c", "good d"], ["bad e", "good f"]]
  assert made[-1].options.temperature == 0.0 and not made[-1].options.shuffle


def test_bootstrap_interval_covers_the_mean_and_narrows_with_items():
  small = metrics.bootstrap_interval(np.array([1, 0] * 10, float))
  large = metrics.bootstrap_interval(np.array([1, 0] * 500, float))
  assert small[0] < 0.5 < small[1] and large[0] < 0.5 < large[1]
  assert large[1] - large[0] < (small[1] - small[0]) / 4  # ~1/sqrt(50) of the width
  # 1000 items at p = 0.5: the normal interval is +-1.96 * sqrt(0.25 / 1000) = +-0.031.
  assert large[1] - large[0] == pytest.approx(2 * 1.96 * np.sqrt(0.25 / 1000), rel=0.15)
  assert metrics.bootstrap_interval(np.array([np.nan])) is None
  assert metrics.bootstrap_interval(np.ones(5)) == [1.0, 1.0]


def test_pooled_weighs_datasets_by_items():
  def dataset(strict, swap=None):
    per_item = {"accuracy_strict": strict, "accuracy_tie_random": strict}
    overall = {"items": len(strict), "parse_rate": 1.0 if strict[0] else 0.5}
    return {"runs": {"greedy": {"per_item": per_item, "overall": overall}}, "position_swap": swap}

  pooled = metrics.pooled({"a": dataset([1.0, 1.0, 1.0]), "b": dataset([0.0])})
  assert pooled["greedy"]["items"] == 4 and pooled["greedy"]["accuracy_strict"] == 0.75
  assert pooled["greedy"]["parse_rate"] == pytest.approx((3 * 1.0 + 1 * 0.5) / 4)  # item-weighted
  assert "position_swap" not in pooled  # no dataset has it
  swap = {"per_item": {"consistent": [1.0, 0.0]}}
  pooled = metrics.pooled({"a": dataset([1.0], swap), "b": dataset([0.0], swap)})
  assert pooled["position_swap"]["pairs"] == 4 and pooled["position_swap"]["consistency"] == 0.5
  # A best-of-N list has no swaps: the pairs of the other datasets pool without it.
  pooled = metrics.pooled({"a": dataset([1.0], {"per_item": {"consistent": [1.0, 1.0, 0.0]}}), "bon": dataset([0.0])})
  assert pooled["position_swap"]["pairs"] == 3 and pooled["position_swap"]["datasets"] == ["a"]
  assert pooled["position_swap"]["consistency"] == pytest.approx(2 / 3)
