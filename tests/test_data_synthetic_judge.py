"""The scripted synthetic judge: exact prompt lookup, worked judgements, a seeded share of wrong ones (Eq. 10)."""

import numpy as np
import pytest

from spct_jax import rft
from spct_jax.data import synthetic
from spct_jax.data.synthetic_judge import SyntheticJudge
from spct_jax.grm import parsing
from spct_jax.grm.scorer import GRMOptions

OPTIONS = GRMOptions(output_prefix="Specific Criteria:")


def _items():
  return synthetic.generate_items(24, seed=3, num_responses=(1, 4))


@pytest.mark.parametrize("error_rate, correct", [(0.0, 1.0), (1.0, 0.0)])
def test_error_rate_zero_is_always_right_and_one_always_wrong(error_rate, correct):
  records, _ = rft.generate_batch(SyntheticJudge(_items(), OPTIONS, error_rate=error_rate), _items(), n_rft=3,
                                  hinted=False, seed=0)
  assert len(records) == 72 and all(r.valid for r in records)
  assert np.mean([r.correct for r in records]) == correct
  assert {r.n for r in records} == {1, 2, 3, 4}  # every template: n = 1 (0/1 scores) and n >= 2 (1..10)


def test_a_wrong_judgement_keeps_its_analysis_and_swaps_the_scores():
  item = next(i for i in _items() if i.num_responses == 3)
  judge = SyntheticJudge([item], OPTIONS, error_rate=0.5)
  order = (2, 0, 1)
  rng = np.random.default_rng(0)
  right, wrong = judge.judgement(item, order, False, rng), judge.judgement(item, order, True, rng)
  assert right.split("Scores:")[0] == wrong.split("Scores:")[0]
  shown = item.with_order(list(order))
  right_scores = parsing.parse_scores(right, 3).scores
  wrong_scores = parsing.parse_scores(wrong, 3).scores
  assert right_scores[shown.best_index] == synthetic.CORRECT_SCORE
  assert wrong_scores[shown.best_index] == synthetic.WRONG_SCORE and sorted(wrong_scores) == sorted(right_scores)


def test_deterministic_given_the_seed_and_strict_about_prompts():
  items = _items()
  judge = SyntheticJudge(items, OPTIONS, error_rate=0.4)
  first, _ = rft.generate_batch(judge, items, n_rft=4, hinted=False, seed=7)
  again, _ = rft.generate_batch(judge, items, n_rft=4, hinted=False, seed=7)
  assert first == again and 0.3 < np.mean([r.correct for r in first]) < 0.9
  with pytest.raises(ValueError, match="not given"):
    judge.generate_texts(["a prompt of another item"], None, 0)
  with pytest.raises(ValueError, match="error_rate"):
    SyntheticJudge(items, OPTIONS, error_rate=1.5)
