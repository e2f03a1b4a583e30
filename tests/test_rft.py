"""RFT rejection rules on constructed cases, with a scripted teacher whose output is a function of the prompt."""

import dataclasses
import re

import pytest

from scripted_grm import HINT, PREFIX, ScriptedGRM, constructed_case, make_item, right, shown_order
from spct_jax import rft
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
