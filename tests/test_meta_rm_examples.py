"""Meta-RM training data: labels (Eq. 10), shown response order, the uid split, class balance, batch indices."""

import dataclasses

import numpy as np
import pytest

from spct_jax.data import meta_rm_examples as mx
from spct_jax.data import synthetic
from spct_jax import rft
from spct_jax.data.schema import PreferenceItem
from spct_jax.grm import reward, templates


def make_trajectory(item: PreferenceItem, perm, shown_scores, *, sample_index: int = 0, valid: bool = True,
                    hinted: bool = False, judgement: str | None = None) -> rft.Trajectory:
  """A trajectory of `item` that showed the responses in `perm` and gave `shown_scores` (shown order); `correct`
  is Eq. 10 on the scores mapped back to the original order, as `rft.generate_batch` computes it."""
  perm = tuple(int(i) for i in perm)
  original = np.zeros(len(perm), np.int32)
  original[list(perm)] = shown_scores
  correct = valid and bool(reward.is_correct(original[None], np.asarray(item.ratings, np.float32)[None])[0])
  if judgement is None:
    judgement = "Specific Criteria: ...\nAnalysis: ...\nScores: \\boxed{" + ", ".join(map(str, shown_scores)) + "}"
  return rft.Trajectory(uid=item.uid, source=item.source, item_json=item.to_json(), n=len(perm),
                        sample_index=sample_index, perm=perm, prompt="", train_prompt="Specific Criteria:",
                        output_prefix="Specific Criteria:", judgement=judgement,
                        scores=tuple(int(s) for s in shown_scores), valid=valid, correct=correct, hinted=hinted,
                        kept=correct and not hinted)


def _items(n=6, seed=0):
  return synthetic.generate_items(n, seed=seed, num_responses=2)


def test_labels_are_eq10_and_text_shows_the_sample_order():
  item = _items(1)[0]
  other = 1 - item.best_index
  # Shown order reversed: position p shows original response 1 - p, so the best sits at position `other`.
  right = make_trajectory(item, (1, 0), [9 if p == other else 2 for p in range(2)])
  tie = make_trajectory(item, (1, 0), [5, 5], sample_index=1)
  wrong = make_trajectory(item, (0, 1), [9 if p == other else 2 for p in range(2)], sample_index=2)
  examples = mx.examples_from_trajectories([right, tie, wrong])
  assert [e.label for e in examples] == [1, 0, 0]
  expected = templates.meta_rm_input(item.conversation, [item.responses[1], item.responses[0]], right.judgement)
  assert examples[0].text == expected
  assert examples[0].text.index(item.responses[1]) < examples[0].text.index(item.responses[0])
  gemma = mx.example_from_trajectory(right, chat_style="gemma")
  assert gemma.text.endswith("<end_of_turn>") and gemma.text.startswith("<start_of_turn>user")


def test_hinted_are_dropped_and_unparseable_are_negatives_unless_asked():
  item = _items(1)[0]
  b = item.best_index
  good = [9 if i == b else 1 for i in range(2)]
  trajs = [make_trajectory(item, (0, 1), good), make_trajectory(item, (0, 1), good, hinted=True, sample_index=3),
           make_trajectory(item, (0, 1), [0, 0], valid=False, sample_index=1)]
  assert [e.label for e in mx.examples_from_trajectories(trajs)] == [1, 0]
  assert [e.sample_index for e in mx.examples_from_trajectories(trajs, valid_only=True)] == [0]


def test_a_bad_perm_names_the_uid():
  item = _items(1)[0]
  good = make_trajectory(item, (0, 1), [1, 2])
  with pytest.raises(ValueError, match=item.uid):  # the record refuses it, and so does the example builder
    dataclasses.replace(good, perm=(0, 0))
  object.__setattr__(good, "perm", (0, 0))  # a record that bypassed validation
  with pytest.raises(ValueError, match=item.uid):
    mx.example_from_trajectory(good)


def _examples(num_items=10, per_item=4, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for item in _items(num_items, seed):
    for s in range(per_item):
      out.append(mx.example_from_trajectory(make_trajectory(item, rng.permutation(2), rng.integers(1, 11, 2),
                                                            sample_index=s)))
  return out


def test_split_keeps_each_item_on_one_side_and_is_seeded():
  examples = _examples()
  train, heldout = mx.split_by_uid(examples, 0.3, seed=1)
  train_uids, heldout_uids = {e.uid for e in train}, {e.uid for e in heldout}
  assert not train_uids & heldout_uids
  assert len(heldout_uids) == 3 and len(train) + len(heldout) == len(examples)
  assert all(sum(e.uid == u for e in heldout) == 4 for u in heldout_uids)
  assert mx.split_by_uid(examples, 0.3, seed=1) == (train, heldout)
  assert mx.split_by_uid(examples, 0.0, seed=1) == (examples, [])
  assert len({e.uid for e in mx.split_by_uid(examples, 0.01, seed=1)[1]}) == 1  # at least one item


def test_label_balance_counts():
  examples = _examples()
  bal = mx.label_balance(examples)
  pos = sum(e.label for e in examples)
  assert bal["examples"] == 40 and bal["items"] == 10 and bal["positives"] == pos
  assert bal["negatives"] == 40 - pos and bal["positive_fraction"] == pos / 40
  assert bal["by_source"]["synthetic"]["examples"] == 40


def test_pos_weight_equalises_class_totals():
  labels = [1, 0, 0, 0, 1, 0]
  w = mx.pos_weight_for(labels, "pos_weight")
  assert w == 2.0 and 2 * w == 4  # 2 positives x 2 == 4 negatives x 1
  assert mx.pos_weight_for(labels, "batches") is None and mx.pos_weight_for(labels, "none") is None
  with pytest.raises(ValueError, match="valid"):
    mx.pos_weight_for(labels, "balanced")


def test_balanced_batches_are_half_and_half_seeded_and_cover_each_class():
  labels = np.array([1] * 3 + [0] * 17)
  batches = [mx.batch_indices(labels, 8, step, seed=5, balance="batches") for step in range(10)]
  for b in batches:
    assert labels[b].sum() == 4 and len(b) == 8
  # Pure function of (seed, step): a resumed run draws the same batch.
  np.testing.assert_array_equal(mx.batch_indices(labels, 8, 7, seed=5, balance="batches"), batches[7])
  assert not np.array_equal(mx.batch_indices(labels, 8, 7, seed=6, balance="batches"), batches[7])
  # Each class is an epoch stream: the first 17 negatives drawn are the 17 negatives, once each.
  negatives = np.concatenate([b[4:] for b in batches])[:17]
  assert sorted(negatives) == list(range(3, 20))
  positives = np.concatenate([b[:4] for b in batches])[:3]
  assert sorted(positives) == [0, 1, 2]


def test_plain_batches_visit_every_example_once_per_epoch():
  labels = np.array([1, 0] * 5)
  seen = np.concatenate([mx.batch_indices(labels, 4, step, seed=0, balance="none") for step in range(5)])
  assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
  with pytest.raises(ValueError, match="both classes"):
    mx.batch_indices(np.ones(4), 4, 0, seed=0, balance="batches")
