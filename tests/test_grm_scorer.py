"""The decode-and-vote kernel with the model replaced by a deterministic function of the prompt."""

import re

import ml_collections
import numpy as np
import pytest

from spct_jax.data import schema
from spct_jax.experiments import common
from spct_jax.grm import GRM, GRMOptions, is_correct, reward, scorer, templates
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
      task = prompt[prompt.rindex("#### Responses to be Scored ####"):]  # past any demonstrations
      shown = re.findall(r"\[The Begin of Response \d+\]\n(.*?)\n\[The End", task, flags=re.S)
      single = re.findall(r"\[The Begin of Response\]\n(.*?)\n\[The End", task, flags=re.S)
      if self.fail_every and i % self.fail_every == 0:
        texts.append("Analysis: I cannot decide.")
      elif single and "The score is 0 or 1" in prompt:  # the 0/1 template: right iff quality >= 5
        texts.append("Analysis: ...\nScores: \\boxed{" + str(int(_quality(single[0]) >= 5)) + "}")
      else:
        texts.append("Analysis: ...\nScores: \\boxed{" + ", ".join(str(_quality(r)) for r in shown + single) + "}")
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
  meta = lambda items, texts, perms: np.array([[0.1, 0.9, 0.5, 0.7]])
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


def test_given_orders_replace_the_drawn_ones():
  items = [((("user", "q"),), RESPONSES), ((("user", "p"),), RESPONSES[:2])]
  orders = [[[2, 0, 3, 1]], [[1, 0]]]
  options = GRMOptions()
  prompts, perms, mask = scorer.build_prompts(items, 1, options, np.random.default_rng(0), hint_best=[1, 0],
                                              orders=orders)
  np.testing.assert_array_equal(perms[:, 0], [[2, 0, 3, 1], [1, 0, 2, 3]])  # padded positions map to themselves
  np.testing.assert_array_equal(mask, [[True] * 4, [True, True, False, False]])
  assert prompts == [scorer.item_prompt(items[0], options, [2, 0, 3, 1], 1),
                     scorer.item_prompt(items[1], options, [1, 0], 0)]
  assert "The best response is: Response 4" in prompts[0] and "The best response is: Response 2" in prompts[1]
  for bad in ([[[0, 0, 1, 2]], [[1, 0]]], [[[0, 1, 2, 3]], [[1, 0], [0, 1]]]):
    with pytest.raises(ValueError, match="permutations"):
      scorer.build_prompts(items, 1, options, np.random.default_rng(0), orders=bad)


def test_bad_k_raises():
  with pytest.raises(ValueError, match="k must be >= 1"):
    PromptFunctionGRM().score("q", RESPONSES, k=0)
  with pytest.raises(ValueError, match="unknown"):
    PromptFunctionGRM(template="nope")


def _item(responses, ratings, query="q", uid="u"):
  return schema.PreferenceItem(conversation=(("user", query),), responses=tuple(responses), ratings=tuple(ratings),
                               category="c", source="test", uid=uid)


def test_each_item_gets_its_template_demonstrations_and_score_range_in_a_mixed_batch():
  grm = PromptFunctionGRM(demonstrations=("DEMO-PAIR",), single_demonstrations=("DEMO-SINGLE",))
  items = [_item(["answer=7"], [1.0], uid="right"), _item(["answer=3", "answer=9"], [0.0, 1.0], uid="pair"),
           _item(["answer=2"], [0.0], uid="wrong")]
  result = grm.score_batch(items, k=2)
  assert result.templates == ["single_binary", "default", "single_binary"]
  for prompt, name in zip(grm.prompts_seen, np.repeat(result.templates, 2)):
    # The n = 1 items are asked for 0/1 and shown n = 1 demonstrations, the pair the 1..10 prompt and its demos.
    assert prompt.startswith("DEMO-SINGLE" if name == "single_binary" else "DEMO-PAIR")
    assert ("The score is 0 or 1" in prompt) == (name == "single_binary")
    assert ("\\boxed{x, x}" in prompt) == (name == "default")
  # Each row is parsed with its own range: 0/1 for the singles (0 is a valid score there), 1..10 for the pair.
  assert result.valid.all()
  np.testing.assert_array_equal(result.voted, [[2, 0], [6, 18], [0, 0]])
  # GRPO's reward follows the same templates: the right single (label 1) scored 1 is +1, not -1 as the 1..10
  # template's exact match rewarded it; the wrong one scored 0 is +1; a 1..10 score on a single is unparseable.
  texts = ["Scores: \\boxed{1}", "Scores: \\boxed{10}", "Scores: \\boxed{2, 9}", "Scores: \\boxed{9, 2}",
           "Scores: \\boxed{0}", "Scores: \\boxed{1}"]
  perms = np.array([[[0, 1]], [[0, 1]], [[0, 1]]], np.int32)
  rewards, valid = reward.rollout_rewards(texts, items, perms, 2, scorer.item_templates(items, grm.options))
  np.testing.assert_array_equal(rewards, [1, -1, 1, -1, 1, -1])
  np.testing.assert_array_equal(valid, [True, False, True, True, True, True])


def test_single_binary_demonstrations_render_as_single_items():
  # Before: demonstrations were always n = 2 renders, which the 0/1 template rejected ("score 2 outside [0, 1]").
  grm_cfg = lambda single: ml_collections.ConfigDict(dict(num_demonstrations=2, demo_seed=1, template="default",
                                                          single_template=single))
  demos = common.demonstrations(grm_cfg("single_binary"))
  assert len(demos["demonstrations"]) == len(demos["single_demonstrations"]) == 2
  for demo in demos["single_demonstrations"]:
    assert "The score is 0 or 1" in demo and "[The Begin of Response]" in demo
    assert demo.rstrip().endswith(("\\boxed{0}", "\\boxed{1}"))
  assert all("[The Begin of Response 2]" in d for d in demos["demonstrations"])
  assert common.demonstrations(grm_cfg(None))["single_demonstrations"] == ()


def test_template_options_are_validated_per_item():
  grm = PromptFunctionGRM()
  with pytest.raises(ValueError, match="label 7"):  # a 1..10 label on the 0/1 template
    grm.score_batch([_item(["answer=7"], [7.0])], k=1)
  on_default = PromptFunctionGRM(single_template=None)  # n = 1 on the 1..10 scale, exact match with a 1..10 label
  result = on_default.score_batch([_item(["answer=7"], [7.0])], k=1)
  assert result.templates == ["default"] and result.voted[0, 0] == 7
  with pytest.raises(ValueError, match="unknown"):
    PromptFunctionGRM(single_template="nope")


def test_every_sample_shuffles_anew_and_repeated_orders_share_a_prompt():
  grm = PromptFunctionGRM()  # num_distinct_orders None: the default
  result = grm.score("q", RESPONSES, k=8)
  orders = [tuple(p) for p in result.perms[0]]
  assert len(set(orders)) > 2  # not two orders cycled (4! = 24 orders)
  assert orders != [orders[s % 2] for s in range(8)]
  pair = PromptFunctionGRM()
  pair_result = pair.score("q", RESPONSES[:2], k=8)
  assert {tuple(p) for p in pair_result.perms[0]} == {(0, 1), (1, 0)}
  assert len(set(pair.prompts_seen)) == 2  # identical prompts: the sampler prefills each once
  np.testing.assert_array_equal(pair_result.voted[0], [24, 72])


def test_meta_rm_sees_each_samples_order():
  seen = {}

  def meta(items, texts, perms):
    seen.update(items=items, texts=texts, perms=perms)
    return np.arange(perms.shape[0] * perms.shape[1], dtype=np.float32).reshape(perms.shape[:2])

  grm = PromptFunctionGRM(k_meta=2)
  result = grm.score_batch([((("user", "q"),), RESPONSES)], k=4, meta_scorer=meta)
  np.testing.assert_array_equal(seen["perms"], result.perms)
  inputs = scorer.meta_rm_inputs(seen["items"], seen["texts"], seen["perms"])
  for s in range(4):
    shown = [RESPONSES[i] for i in seen["perms"][0, s]]
    # The judgement scores the responses in the order this sample showed them, and so does the meta RM input.
    assert seen["texts"][0][s].endswith("\\boxed{" + ", ".join(str(_quality(r)) for r in shown) + "}")
    assert inputs[0][s] == templates.meta_rm_input((("user", "q"),), shown, seen["texts"][0][s])
    blocks = [inputs[0][s].index(f"[The Begin of Response {p + 1}]\n{r}\n") for p, r in enumerate(shown)]
    assert blocks == sorted(blocks)
  np.testing.assert_array_equal(result.kept[0], [False, False, True, True])


def test_result_counts_votes_and_items_without_labels_use_the_single_template():
  grm = PromptFunctionGRM(fail_every=3)
  result = grm.score("q", ["answer=8"], k=6)  # a bare (conversation, responses) item: no label to check
  assert result.templates == ["single_binary"]
  np.testing.assert_array_equal(result.num_votes, [4])
  assert result.voted.dtype == np.int32 and result.voted[0, 0] == 4


def test_hinted_prompts_keep_per_item_templates():
  grm = PromptFunctionGRM()
  items = [_item(["answer=3", "answer=9"], [0.0, 1.0]), _item(["answer=7"], [1.0])]
  result = grm.score_batch(items, k=2, hint_best=[1, None])
  for prompt, perm in zip(grm.prompts_seen[:2], result.perms[0]):
    assert prompt.endswith(f"The best response is: Response {int(np.flatnonzero(perm == 1)[0]) + 1}\n")
  assert all("The best response" not in p and "The score is 0 or 1" in p for p in grm.prompts_seen[2:])
  assert scorer.item_prompt(items[0], GRMOptions(), [1, 0], hint_best=1).endswith("Response 1\n")
