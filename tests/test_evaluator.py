"""The held-out voting evaluator on a scripted GRM whose scores the test chooses: every metric computed by hand."""

import re

import jax
import numpy as np
import pytest

from spct_jax import evaluators
from spct_jax.data import schema
from spct_jax.evaluators import metrics, voting
from spct_jax.grm import GRM
from spct_jax.grm.scorer import GRMOptions


class ScriptedGRM(GRM):
  """Scores each shown response by a marker in its text: good=9, bad=2, tie=5; "fail" -> unparseable output."""

  def __init__(self, model=None, tokenizer=None, **options):
    super().__init__(model=None, tokenizer=None, **options)

  def generate_texts(self, prompts, strategy, seed):
    texts = []
    for prompt in prompts:
      shown = re.findall(r"\[The Begin of Response \d+\]\n(.*?)\n\[The End", prompt, flags=re.S)
      if any("fail" in r for r in shown):
        texts.append(" I am not sure.")  # no boxed scores: a parse failure
        continue
      scores = [{"good": 9, "bad": 2, "tie": 5}[r.split()[0]] for r in shown]
      texts.append(" ...\nAnalysis: ...\nScores: \\boxed{" + ", ".join(map(str, scores)) + "}")
    return texts


def _item(uid, category, responses, ratings, subset=None):
  return schema.PreferenceItem(conversation=(("user", f"question {uid}"),), responses=tuple(responses),
                               ratings=tuple(ratings), category=category, source="test", uid=uid,
                               subset=subset).validate()


def _items():
  return [
      # right: the better response gets the higher score (one pair, one best-of-3 list).
      _item("a1", "right", ["good one", "bad one"], [1, 0], "s1"),
      _item("a2", "right", ["bad x", "bad y", "good z"], [0, 0, 1], "s1"),
      # tied: both scored 5 -> strict wrong, tie-random a coin flip, tie-expected 1/2.
      _item("t1", "tied", ["tie p", "tie q"], [1, 0], "s2"),
      _item("t2", "tied", ["tie r", "tie s"], [0, 1], "s2"),
      # wrong: the worse response gets the higher score.
      _item("w1", "wrong", ["bad u", "good v"], [1, 0], "s2"),
      # unparseable: every sample fails; votes all 0 -> a 2-way tie.
      _item("f1", "failed", ["fail a", "fail b"], [1, 0], "s2"),
  ]


@pytest.mark.parametrize("k", [1, 3])
def test_per_category_metrics_by_hand(k):
  items = _items()
  scored = voting.score_items(ScriptedGRM(output_prefix="Specific Criteria:"), items, k=k, batch_size=4, seed=0)
  assert scored.sample_scores.shape == (6, k, 3) and scored.valid.shape == (6, k)
  agg = voting.run_metrics(scored, items, k, jax.random.key(0))
  cat = agg["by_category"]
  assert set(cat) == {"right", "tied", "wrong", "failed"}
  assert cat["right"]["items"] == 2 and cat["right"]["accuracy_strict"] == 1.0
  assert cat["right"]["accuracy_tie_random"] == 1.0 and cat["right"]["accuracy_tie_expected"] == 1.0
  assert cat["right"]["parse_rate"] == 1.0
  assert cat["tied"]["accuracy_strict"] == 0.0 and cat["tied"]["accuracy_tie_expected"] == 0.5
  assert cat["tied"]["accuracy_tie_random"] in (0.0, 0.5, 1.0)
  assert cat["wrong"]["accuracy_strict"] == 0.0 and cat["wrong"]["accuracy_tie_random"] == 0.0
  assert cat["wrong"]["accuracy_tie_expected"] == 0.0
  assert cat["failed"]["parse_rate"] == 0.0 and cat["failed"]["no_valid"] == 1.0
  assert cat["failed"]["accuracy_strict"] == 0.0 and cat["failed"]["accuracy_tie_expected"] == 0.5
  overall = agg["overall"]
  assert overall["items"] == 6
  assert overall["accuracy_strict"] == pytest.approx(2 / 6)
  assert overall["accuracy_tie_expected"] == pytest.approx((2 + 0.5 + 0.5 + 0 + 0.5) / 6)
  assert overall["parse_rate"] == pytest.approx(5 / 6)
  assert agg["macro"]["categories"] == 4
  assert agg["macro"]["accuracy_strict"] == pytest.approx((1 + 0 + 0 + 0) / 4)
  assert agg["by_subset"]["s1"]["items"] == 2 and agg["by_subset"]["s2"]["accuracy_strict"] == 0.0
  # Lengths exclude the output prefix: " I am not sure." is 15 characters.
  assert cat["failed"]["gen_chars"] == 15.0 and cat["failed"]["gen_tokens"] is None


def test_evaluator_from_config_reports_both_rules_and_parse_rate(monkeypatch):
  """The evaluator a trainer runs periodically: greedy + voting@2 on the scripted GRM."""
  monkeypatch.setattr(voting, "MeasuredGRM", ScriptedGRM)
  items = _items()
  spec = dict(type="voting", every=5, greedy=True, ks=(2,), temperature=0.5, nested_k=True, batch_size=4)
  evaluator = evaluators.from_config(spec, name="heldout", items=items, tokenizer=None,
                                     options=GRMOptions(output_prefix="Specific Criteria:"), seed=3,
                                     skipped={"too_long": 2})
  assert evaluator.every == 5
  out = evaluator(model=None)
  for run in ("greedy", "voting@2"):
    assert out[f"{run}/accuracy_strict"] == pytest.approx(2 / 6)  # a1, a2
    assert out[f"{run}/parse_rate"] == pytest.approx(5 / 6)  # f1's samples never parse
    # Ties broken at random: a1, a2 always right, w1 always wrong, t1 / t2 / f1 coin flips.
    assert out[f"{run}/accuracy_tie_random"] in {(2 + j) / 6 for j in range(4)}
  assert out["items"] == 6 and out["skipped_too_long"] == 2
  assert set(out) == {f"{run}/{m}" for run in ("greedy", "voting@2") for m in metrics.HEADLINE} | {
      "items", "skipped_too_long"}
  assert evaluator(model=None) == out  # deterministic given the seed


def test_tie_random_breaks_ties_uniformly():
  """Over many items that are all a 2-way tie, the random rule is right about half of the time; strict never."""
  n = 400
  voted = np.full((n, 2), 5)
  ratings = np.tile([1.0, 0.0], (n, 1))
  per_item = metrics.item_metrics(voted, ratings, np.ones((n, 2), bool), np.ones((n, 1), bool), jax.random.key(1))
  assert per_item["accuracy_strict"].sum() == 0
  assert 0.4 < per_item["accuracy_tie_random"].mean() < 0.6
  assert (per_item["accuracy_tie_expected"] == 0.5).all()


def test_partial_parse_failures_and_prefix_votes():
  sample_scores = np.array([[[9, 2], [0, 0], [3, 8], [0, 0]]], np.int32)
  valid = np.array([[True, False, True, False]])
  np.testing.assert_array_equal(metrics.prefix_vote(sample_scores, valid, 1), [[9, 2]])
  np.testing.assert_array_equal(metrics.prefix_vote(sample_scores, valid, 3), [[12, 10]])
  per_item = metrics.item_metrics(np.array([[12, 10]]), np.array([[1.0, 0.0]]), np.ones((1, 2), bool),
                                  valid, jax.random.key(0))
  assert per_item["parse_rate"][0] == 0.5 and per_item["no_valid"][0] == 0.0
  assert per_item["accuracy_strict"][0] == 1.0
  with pytest.raises(ValueError, match="k=5"):
    metrics.prefix_vote(sample_scores, valid, 5)


def test_bad_specs_name_the_entry():
  with pytest.raises(ValueError, match=r"config\.evals\.heldout\.type='votes'.*voting"):
    evaluators.spec_from_config({"type": "votes"}, "heldout")
  with pytest.raises(ValueError, match=r"config\.evals\.heldout.*unknown key.*'kk'"):
    evaluators.spec_from_config({"type": "voting", "kk": (1,)}, "heldout")
  spec = evaluators.spec_from_config({"type": "voting", "greedy": False, "ks": ()}, "x")
  with pytest.raises(ValueError, match="nothing to evaluate"):
    voting.VotingEvaluator(spec, items=_items(), tokenizer=None, options=GRMOptions(), name="x")


class AlternatingGRM(GRM):
  """Sample s of every item (of k = 4) is right for even s (the best response 9, the other 2), wrong for odd s."""

  k = 4

  def __init__(self, model=None, tokenizer=None, **options):
    super().__init__(model=None, tokenizer=None, **options)

  def generate_texts(self, prompts, strategy, seed):
    texts = []
    for row, prompt in enumerate(prompts):
      shown = re.findall(r"\[The Begin of Response \d+\]\n(.*?)\n\[The End", prompt, flags=re.S)
      right = row % self.k % 2 == 0
      scores = [9 if ("good" in r) == right else 2 for r in shown]
      texts.append(" ...\nScores: \\boxed{" + ", ".join(map(str, scores)) + "}")
    return texts


def _pairs():
  return [_item(f"p{i}", "c", [f"good {i}", f"bad {i}"][::1 if i % 2 else -1], [1, 0][::1 if i % 2 else -1])
          for i in range(5)]


@pytest.mark.parametrize("prefer, expected", [("even", 1.0), ("odd", 0.0)])
def test_metarm_at_k_votes_over_exactly_the_top_k_meta_samples(monkeypatch, prefer, expected):
  """Voting@4 over 2 right + 2 wrong samples ties; MetaRM@4 (k_meta=2) keeps the two the scripted meta scorer ranks
  highest: all right or all wrong. The scorer sees every batch's B x k trajectories in one call."""
  monkeypatch.setattr(voting, "MeasuredGRM", AlternatingGRM)
  calls = []

  def meta_scorer(items, texts, perms):
    calls.append((len(items), [len(t) for t in texts], perms.shape))
    parity = 0 if prefer == "even" else 1
    return np.tile([1.0 if s % 2 == parity else -1.0 for s in range(4)], (len(items), 1))

  spec = evaluators.spec_from_config(dict(type="voting", greedy=False, ks=(2, 4), temperature=0.5, batch_size=3), "heldout")
  evaluator = voting.VotingEvaluator(spec, items=_pairs(), tokenizer=None, options=GRMOptions(), name="heldout",
                                     meta_rm=meta_scorer)
  runs = evaluator.evaluate(model=None).runs
  assert list(runs) == ["voting@2", "metarm@2", "voting@4", "metarm@4"]
  assert calls == [(3, [4, 4, 4], (3, 4, 2)), (2, [4, 4], (2, 4, 2))]  # one sampling of k=4, one call per batch
  for k in (2, 4):
    assert runs[f"voting@{k}"]["overall"]["accuracy_strict"] == 0.0  # 9+2 vs 2+9: a tie
    assert runs[f"voting@{k}"]["overall"]["accuracy_tie_expected"] == 0.5
  assert runs["metarm@4"]["k_meta"] == 2 and runs["metarm@2"]["k_meta"] == 1
  for k in (2, 4):  # k_meta = k // 2 samples of one parity
    assert runs[f"metarm@{k}"]["overall"]["accuracy_strict"] == expected
    assert runs[f"metarm@{k}"]["overall"]["parse_rate"] == 1.0  # of all k samples, not only the kept ones
  # k_meta = k keeps every sample: MetaRM@k is Voting@k, metric for metric.
  full = voting.VotingEvaluator(spec, items=_pairs(), tokenizer=None, options=GRMOptions(), name="heldout",
                                meta_rm=meta_scorer, k_meta=4).evaluate(model=None).runs
  for k in (2, 4):
    assert full[f"metarm@{k}"]["k_meta"] == k
    assert {key: v for key, v in full[f"metarm@{k}"].items() if key != "k_meta"} == full[f"voting@{k}"]
  with pytest.raises(ValueError, match="k_meta=2 needs a meta RM"):
    voting.VotingEvaluator(spec, items=_pairs(), tokenizer=None, options=GRMOptions(), name="x", k_meta=2)
