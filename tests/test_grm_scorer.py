"""The decode-and-vote kernel with the model replaced by a deterministic function of the prompt."""

import re

import numpy as np
import pytest

from spct_jax.grm import GRM, is_correct
from spct_jax.grm.scorer import _vote

RESPONSES = ("answer=3", "answer=9", "answer=5", "answer=1")


def _quality(response: str) -> int:
  return int(response.split("=")[1])


class PromptFunctionGRM(GRM):
  """Scores each response shown in the prompt by the number in it: a pure function of the prompt."""

  def __init__(self, fail_every: int = 0, **options):
    super().__init__(model=None, tokenizer=None, **options)
    self.prompts_seen = []
    self.fail_every = fail_every

  def generate_texts(self, prompts, strategy, seed):
    self.prompts_seen.extend(prompts)
    texts = []
    for i, prompt in enumerate(prompts):
      shown = re.findall(r"\[The Begin of Response \d+\]\n(.*?)\n\[The End", prompt, flags=re.S)
      if self.fail_every and i % self.fail_every == 0:
        texts.append("Analysis: I cannot decide.")
      else:
        texts.append("Analysis: ...\nScores: \\boxed{" + ", ".join(str(_quality(r)) for r in shown) + "}")
    return texts


def test_each_score_returns_to_its_response_after_shuffling():
  grm = PromptFunctionGRM(num_distinct_orders=3)
  result = grm.score("Which is best?", RESPONSES, k=6)
  expected = np.array([_quality(r) for r in RESPONSES])
  # The responses really were shown in different orders ...
  assert len({tuple(p) for p in result.perms[0]}) == 3
  assert len(set(grm.prompts_seen)) == 3
  # ... and every sample's scores came back to the right response, so Eq. 14 is k times the truth.
  np.testing.assert_array_equal(result.sample_scores[0], np.tile(expected, (6, 1)))
  np.testing.assert_array_equal(result.voted[0], 6 * expected)
  assert result.valid.all() and result.parse_failures[0] == 0


def test_unparseable_samples_contribute_nothing_and_are_counted():
  grm = PromptFunctionGRM(fail_every=2, num_distinct_orders=2)
  result = grm.score_batch([((("user", "q1"),), RESPONSES), ((("user", "q2"),), RESPONSES[:2])], k=4)
  assert result.voted.shape == (2, 4)
  np.testing.assert_array_equal(result.valid, [[False, True, False, True]] * 2)
  np.testing.assert_array_equal(result.parse_failures, [2, 2])
  np.testing.assert_array_equal(result.voted[0], 2 * np.array([3, 9, 5, 1]))
  np.testing.assert_array_equal(result.voted[1], [6, 18, 0, 0])  # padded responses stay 0
  np.testing.assert_array_equal(result.response_mask[1], [True, True, False, False])


def test_meta_rm_keeps_top_k_meta_samples():
  grm = PromptFunctionGRM(num_distinct_orders=2, k_meta=2)
  meta = lambda items, texts: np.array([[0.1, 0.9, 0.5, 0.7]])
  result = grm.score_batch([((("user", "q"),), RESPONSES)], k=4, meta_scorer=meta)
  np.testing.assert_array_equal(result.kept[0], [False, True, False, True])
  np.testing.assert_array_equal(result.voted[0], 2 * np.array([3, 9, 5, 1]))


def test_voting_kernel_matches_eq14_by_hand():
  rng = np.random.default_rng(0)
  shown = rng.integers(1, 11, (3, 5, 4)).astype(np.int32)
  perms = np.stack([np.stack([rng.permutation(4) for _ in range(5)]) for _ in range(3)]).astype(np.int32)
  valid = rng.random((3, 5)) > 0.3
  voted, original, kept = _vote(shown, perms, valid, np.zeros((3, 5), np.float32), 5)
  expected = np.zeros((3, 4))
  for b in range(3):
    for s in range(5):
      for p in range(4):
        if valid[b, s]:
          expected[b, perms[b, s, p]] += shown[b, s, p]
  np.testing.assert_array_equal(voted, expected)
  np.testing.assert_array_equal(kept, valid)


def test_voted_scores_feed_eq10():
  grm = PromptFunctionGRM()
  result = grm.score("q", RESPONSES, k=2)
  assert bool(is_correct(result.voted[0], np.array([0, 1, 0, 0])))
  assert not bool(is_correct(result.voted[0], np.array([1, 0, 0, 0])))


def test_hint_names_the_shown_position_of_the_best_response():
  grm = PromptFunctionGRM(num_distinct_orders=2)
  result = grm.score_batch([((("user", "q"),), RESPONSES)], k=2, hint_best=[1])
  for prompt, perm in zip(grm.prompts_seen, result.perms[0]):
    shown_position = int(np.flatnonzero(perm == 1)[0]) + 1
    assert f"The best response is: Response {shown_position}" in prompt


def test_bad_k_raises():
  with pytest.raises(ValueError, match="k must be >= 1"):
    PromptFunctionGRM().score("q", RESPONSES, k=0)
  with pytest.raises(ValueError, match="unknown"):
    PromptFunctionGRM(template="nope")
