"""RFT rejection rules on constructed cases, with a scripted teacher whose output is a function of the prompt."""

import dataclasses
import re

import numpy as np
import pytest

from scripted_grm import HINT, PREFIX, ScriptedGRM, constructed_case, make_item, position_case, right, shown_order
from spct_jax import rft
from spct_jax.data import meta_rm_examples
from spct_jax.grm import templates


@pytest.fixture
def case():
  return constructed_case()


def by_item(trajectories):
  out = {}
  for t in trajectories:
    out.setdefault(t.uid, []).append(t)
  return out


def test_rules_on_constructed_items(case):
  items, behaviours = case
  grm = ScriptedGRM(items, behaviours, template="default")
  trajectories, stats = rft.generate_batch(grm, items, n_rft=3, hinted=True, seed=3)
  groups = by_item(trajectories)

  # "right": all three correct -> too easy, nothing kept, no hint; still recorded for the meta RM.
  assert [(t.correct, t.kept, t.hinted) for t in groups["u0"]] == [(True, False, False)] * 3
  # positional bias over 3 samples of the 2 orders: some right, some wrong -> exactly the correct ones kept.
  g = groups["u1"]
  assert len(g) == 3 and not any(t.hinted for t in g) and 0 < sum(t.kept for t in g) < 3
  assert [t.kept for t in g] == [t.correct for t in g] == [t.perm[0] == g[0].item().best_index for t in g]
  # all wrong, hint followed -> one hinted, kept, correct trajectory (sample index N_RFT).
  hinted = groups["u2"][-1]
  assert [t.kept for t in groups["u2"][:3]] == [False] * 3
  assert (hinted.sample_index, hinted.hinted, hinted.correct, hinted.kept) == (3, True, True, True)
  # unparseable: all wrong, the hint too; every record invalid with zero scores.
  assert [(t.valid, t.scores, t.kept) for t in groups["u3"]] == [(False, (0, 0), False)] * 4
  assert groups["u3"][-1].hinted
  # wrong and deaf to the hint: hinted tried, rejected.
  assert [(t.hinted, t.correct, t.kept) for t in groups["u4"]] == [(False, False, False)] * 3 + [(True, False, False)]
  # n = 1 all wrong: no response to name, so no hint.
  assert len(groups["u5"]) == 3 and not any(t.hinted for t in groups["u5"])

  # One batched call for every item x N_RFT, one for the items that needed a hint (u2, u3, u4; not n = 1 u5).
  assert len(grm.calls) == 2
  assert len(grm.calls[0][0]) == 3 * len(items)
  assert [re.search(r"User: (q\d+)", p).group(1) for p in grm.calls[1][0]] == ["q2", "q3", "q4"]

  u1_kept = sum(t.kept for t in groups["u1"])
  records_a = 3 + 3 + 4 + 4 + 3  # u0, u1, u2 (+ hint), u4 (+ hint), u5
  assert stats["src_a"] == rft.SourceStats(
      items_seen=5, items_kept=2, items_too_easy=1, items_rejected_wrong=2, hinted_tried=2, hinted_kept=1,
      parse_failures=0, trajectories_kept=u1_kept + 1, trajectories_rejected=records_a - u1_kept - 1)
  assert stats["src_b"] == rft.SourceStats(  # u3 (garbage, + hint), u6 (too easy)
      items_seen=2, items_kept=0, items_too_easy=1, items_rejected_wrong=1, hinted_tried=1, hinted_kept=0,
      parse_failures=4, trajectories_kept=0, trajectories_rejected=4 + 3)


def test_hint_names_the_shown_position_of_the_best(case):
  items, behaviours = case
  grm = ScriptedGRM(items, behaviours)
  for seed in range(6):
    trajectories, _ = rft.generate_batch(grm, items, n_rft=3, seed=seed)
    for t in trajectories:
      hint = HINT.search(t.prompt)
      assert (hint is not None) == t.hinted
      assert HINT.search(t.train_prompt) is None
      if t.hinted:
        assert t.perm[int(hint.group(1)) - 1] == t.item().best_index
      assert shown_order(t.prompt, t.item()) == list(t.perm)


def test_records_prompts_and_targets(case):
  items, behaviours = case
  grm = ScriptedGRM(items, behaviours, demonstrations=("A worked example.\n",),
                    single_demonstrations=("A single-response example.\n",))
  trajectories, _ = rft.generate_batch(grm, items, n_rft=2, seed=0, train_demonstrations=())
  for t in trajectories:
    item = t.item()
    assert item == items[int(t.uid[1:])]
    demo = "A single-response example." if t.n == 1 else "A worked example."  # each item's template's demos
    assert t.prompt.startswith(demo) and t.prompt.endswith(PREFIX)
    assert t.train_prompt == templates.build_prompt(item.conversation, t.shown_responses(), output_prefix=PREFIX,
                                                    template=grm.options.template_for(item))
    assert t.judgement.startswith(PREFIX + " reasons.") and t.target == t.judgement[len(PREFIX):]
    assert t.n == item.num_responses and len(t.scores) == t.n
  # Scores are recorded in SHOWN order: the biased teacher always writes 9 first.
  assert all(t.scores[0] == 9 for t in trajectories if t.uid == "u1")


def test_a_fresh_order_per_sample_and_determinism(case):
  items, behaviours = case
  run = lambda seed: rft.generate_batch(ScriptedGRM(items, behaviours), items, n_rft=3, seed=seed)
  first, stats = run(11)
  assert run(11) == (first, stats)
  for uid, g in by_item(first).items():
    n = g[0].n
    plain = [t.perm for t in g if not t.hinted]
    assert len(set(plain)) == min(3, {1: 1, 2: 2, 3: 6}[n]), (uid, plain)
  assert [t.perm for t in run(12)[0]] != [t.perm for t in first]


def test_hinting_off_and_stats_merge(case):
  items, behaviours = case
  grm = ScriptedGRM(items, behaviours)
  trajectories, stats = rft.generate_batch(grm, items, n_rft=3, hinted=False, seed=0)
  assert len(grm.calls) == 1 and not any(t.hinted for t in trajectories)
  # Stats of separate batches merge to the stats of one batch.
  first, s1 = rft.generate_batch(grm, items[:4], n_rft=3, hinted=False, seed=0)
  second, s2 = rft.generate_batch(grm, items[4:], n_rft=3, hinted=False, seed=1)
  merged = rft.merge_stats(s1, s2)
  assert merged == rft.stats_from_trajectories(first + second)
  assert sum(s.items_seen for s in merged.values()) == len(items)
  assert rft.stats_from_json(rft.stats_to_json(merged)) == merged
  assert rft.stats_to_json(merged)["total"]["items_seen"] == len(items)


def test_generate_shard_seeds_batches_independently(case):
  items, behaviours = case
  grm = ScriptedGRM(items, behaviours)
  seen = []
  whole, stats = rft.generate_shard(grm, items, shard=2, batch_size=3, seed=5,
                                    on_batch=lambda t, s: seen.append(len(t)))
  parts = [rft.generate_batch(grm, items[i:i + 3], seed=rft.batch_seed(5, 2, b))[0]
           for b, i in enumerate(range(0, len(items), 3))]
  assert whole == [t for part in parts for t in part] and seen == [len(p) for p in parts]
  assert stats == rft.stats_from_trajectories(whole)
  assert rft.batch_seed(5, 2, 0) != rft.batch_seed(5, 3, 0) != rft.batch_seed(6, 2, 0)


def query_of(prompt):
  return re.search(r"User: (q\d+)", prompt).group(1)


def test_position_hints_show_the_best_response_at_another_position():
  items, behaviours = position_case()
  grm = ScriptedGRM(items, behaviours)
  trajectories, stats = rft.generate_batch(grm, items, n_rft=3, position_hints=True, seed=1)
  groups = by_item(trajectories)
  position_hinted, needs_hint = [], []
  for item in items:
    group = groups[item.uid]
    plain_kept = [t for t in group if t.kept and not t.hinted]
    extra = [t for t in group if t.hinted]
    if not plain_kept:  # all wrong (today's hint, index N_RFT), too easy or n = 1: no position hint
      assert [t.sample_index for t in extra] == ([3] if item.num_responses > 1 and not any(
          t.correct for t in group if not t.hinted) else [])
      needs_hint += [item.query] if extra else []
      continue
    # The biased teacher is right exactly where the best response is shown first: every kept one shows it first.
    assert rft.best_positions(item, [t.perm for t in plain_kept]) == {0}
    (t,) = extra
    best_at = t.perm.index(item.best_index)
    assert (t.sample_index, t.hinted, best_at != 0) == (rft.position_hint_index(3), True, True)
    assert int(HINT.search(t.prompt).group(1)) == best_at + 1 and shown_order(t.prompt, item) == list(t.perm)
    # SFT's prompt: no hint, the responses in this trajectory's order (a pair: the best shown second).
    assert t.train_prompt == templates.build_prompt(item.conversation, t.shown_responses(), output_prefix=PREFIX,
                                                    template=grm.options.template_for(item))
    assert HINT.search(t.train_prompt) is None
    if item.num_responses == 2:
      assert best_at == 1 and t.train_prompt.index(item.responses[item.best_index]) > t.train_prompt.index(
          item.responses[1 - item.best_index])
    follows = item.uid != "u10"  # u10's teacher ignores the hint: tried, rejected
    assert (t.valid, t.correct, t.kept) == (True, follows, follows)
    if follows:  # the kept set now shows the best response at two positions
      assert rft.best_positions(item, [r.perm for r in group if r.kept]) == {0, best_at}
    position_hinted.append(item.query)
  # Both kinds among the triples, never both for one item; pairs (two orders over three samples) are all kept.
  assert {"q0", "q1", "q2", "q3", "q4", "q5", "q10"} <= set(position_hinted) and needs_hint
  assert {"q6", "q7", "q8", "q9"} & set(position_hinted) and not set(needs_hint) & set(position_hinted)
  # One batched call each: the N_RFT samples, today's hints, the position hints.
  assert [[query_of(p) for p in call[0]] for call in grm.calls[1:]] == [needs_hint, position_hinted]
  total = rft.merge_stats(*({"": s} for s in stats.values()))[""]
  assert (total.position_hinted_tried, total.position_hinted_kept) == (len(position_hinted), len(position_hinted) - 1)
  assert (total.hinted_tried, total.hinted_kept) == (len(needs_hint), len(needs_hint))  # they follow hints
  assert stats == rft.stats_from_trajectories(trajectories)  # what a finished or resumed dataset counts
  assert rft.stats_from_json(rft.stats_to_json(stats)) == stats
  assert rft.stats_to_json(stats)["total"]["position_hinted_kept"] == len(position_hinted) - 1


def test_position_hints_change_no_other_trajectory():
  items, behaviours = position_case()
  for seed in range(3):
    on, on_stats = rft.generate_batch(ScriptedGRM(items, behaviours), items, n_rft=3, position_hints=True, seed=seed)
    off, off_stats = rft.generate_batch(ScriptedGRM(items, behaviours), items, n_rft=3, seed=seed)
    assert [t for t in on if t.sample_index != rft.position_hint_index(3)] == off
    assert any(t.sample_index == rft.position_hint_index(3) for t in on)
    assert sum(s.position_hinted_tried for s in off_stats.values()) == 0
    assert [s.hinted_tried for s in on_stats.values()] == [s.hinted_tried for s in off_stats.values()]
    # The meta RM reads no hinted trajectory: the same examples with and without position hints.
    assert meta_rm_examples.examples_from_trajectories(on) == meta_rm_examples.examples_from_trajectories(off)
  # A shard's batches: each its own position hints, the shard's stats their sum and the records' stats.
  grm = ScriptedGRM(items, behaviours)
  whole, stats = rft.generate_shard(grm, items, shard=1, batch_size=5, seed=5, position_hints=True)
  parts = [rft.generate_batch(grm, items[i:i + 5], position_hints=True, seed=rft.batch_seed(5, 1, b))[0]
           for b, i in enumerate(range(0, len(items), 5))]
  assert whole == [t for part in parts for t in part] and stats == rft.stats_from_trajectories(whole)
  assert sum(s.position_hinted_tried for s in stats.values()) > 0


def test_moved_order_shows_the_best_elsewhere():
  rng = np.random.default_rng(0)
  assert rft.moved_order(rng, 2, best=1, position=1) == [1, 0] and rft.moved_order(rng, 2, best=0, position=0) == [1, 0]
  for n in (3, 4):
    for position in range(n):
      orders = [rft.moved_order(rng, n, best=1, position=position) for _ in range(60)]
      assert all(sorted(o) == list(range(n)) for o in orders)
      assert {o.index(1) for o in orders} == set(range(n)) - {position}  # every other position, at random
      assert len({tuple(o) for o in orders}) > n - 1


def test_rules_and_errors():
  assert rft.item_outcome([True, True, True]) == rft.TOO_EASY
  assert rft.item_outcome([True, False, False]) == rft.KEEP
  assert rft.item_outcome([False] * 3) == rft.NEEDS_HINT
  assert rft.keep_flags([True, False, True]) == [True, False, True]
  assert rft.keep_flags([True, True, True]) == [False] * 3
  assert rft.keep_flags([True]) == [False]  # N_RFT = 1: a correct trajectory is "too easy"
  items = [make_item(0), make_item(0)]
  grm = ScriptedGRM(items[:1], {"q0": right})
  with pytest.raises(ValueError, match="duplicate uids"):
    rft.generate_batch(grm, items)
  with pytest.raises(ValueError, match="n_rft"):
    rft.generate_batch(grm, items[:1], n_rft=0)
  with pytest.raises(TypeError, match="PreferenceItem"):
    rft.generate_batch(grm, [(("user", "q0"),), ("a", "b")])
  t, _ = rft.generate_batch(grm, items[:1])
  with pytest.raises(ValueError, match="kept but not correct"):
    dataclasses.replace(t[0], kept=True, correct=False)
  with pytest.raises(ValueError, match="not one item's"):
    rft.stats_from_trajectories(t + t)
  with pytest.raises(ValueError, match="two hints"):  # an item gets today's hint or a position hint, not both
    rft.stats_from_trajectories(t + [dataclasses.replace(t[0], sample_index=i, hinted=True) for i in (3, 4)])


def test_generate_batch_through_a_real_grm_and_sampler():
  """The real GRM class on a tiny random model: one sampling call per phase, deterministic for a seed."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from hf_fixtures import toy_tokenizer_meta  # pylint: disable=g-import-not-at-top
  from spct_jax.grm import GRM  # pylint: disable=g-import-not-at-top
  from spct_jax.model.config import get_config  # pylint: disable=g-import-not-at-top
  from spct_jax.model.transformer import Transformer  # pylint: disable=g-import-not-at-top
  from spct_jax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top

  short = templates.GRMTemplate(name="short", preamble="Rate.", block_format="[{i}] {response}\n",
                                single_block_format="[] {response}\n", output_format="\\boxed{a, b}",
                                single_output_format="\\boxed{a}")
  tokenizer = Tokenizer.from_gguf_metadata(toy_tokenizer_meta())
  model = Transformer(get_config("tiny-gemma3", vocab_size=tokenizer.vocab_size, max_seq_len=512), rngs=nnx.Rngs(0))
  grm = GRM(model, tokenizer, template=short, max_new_tokens=6, temperature=1.0, output_prefix="ab")
  calls = []
  generate = grm.generate_texts
  grm.generate_texts = lambda prompts, strategy, seed: calls.append(len(prompts)) or generate(prompts, strategy, seed)
  items = [make_item(i) for i in range(3)]
  first, stats = rft.generate_batch(grm, items, n_rft=3, seed=4)
  assert calls == [9, 3]  # random output never parses: every item is hinted, in one call
  assert [t.sample_index for t in first] == [0, 1, 2, 3] * 3 and all(t.judgement.startswith("ab") for t in first)
  assert sum(s.parse_failures for s in stats.values()) == 12
  assert rft.generate_batch(grm, items, n_rft=3, seed=4) == (first, stats)
  assert [t.judgement for t in rft.generate_batch(grm, items, n_rft=3, seed=5)[0]] != [t.judgement for t in first]
