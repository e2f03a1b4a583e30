"""The shared experiment pieces: seeded slices, the context budget (too-long items), data splits, GRM options."""

import pathlib
import runpy

import pytest

from spct_jax.data import schema
from spct_jax.experiments import common
from spct_jax.grm.scorer import GRMOptions

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _item(uid, category, responses=("good", "bad"), ratings=(1, 0), source="test"):
  return schema.PreferenceItem(conversation=(("user", f"question {uid}"),), responses=tuple(responses),
                               ratings=tuple(ratings), category=category, source=source, uid=uid).validate()


class CharTokenizer:
  """One token per character (plus BOS): prompt lengths the test can compute by hand."""

  processor = None

  def encode(self, text, add_bos=True):
    return [0] * (len(text) + int(add_bos))


@pytest.fixture(autouse=True)
def _one_char_pieces(monkeypatch):
  monkeypatch.setattr(common, "_longest_piece", lambda tokenizer: 1)


def test_stratified_slice_spans_categories_and_is_seeded():
  items = [_item(f"{c}{i}", c) for c in "abcd" for i in range(5)]
  order = common.seeded_order(items, 3, "stratified")
  assert sorted(order) == list(range(20))
  assert {items[i].category for i in order[:4]} == set("abcd")
  assert order == common.seeded_order(items, 3, "stratified")
  assert order != common.seeded_order(items, 4, "stratified")
  budget = common.ContextBudget(CharTokenizer(), GRMOptions(max_new_tokens=8), max_seq_len=100_000)
  chosen, too_long = common.select_slice(items, budget, seed=3, sampling="stratified", max_items=4)
  assert len(chosen) == 4 and too_long == 0 and {item.category for item in chosen} == set("abcd")
  lengths = [budget.prompt_length(c) for c in chosen]
  assert lengths == sorted(lengths)


def test_context_budget_skips_too_long_items_and_counts_them_per_source():
  options = GRMOptions(max_new_tokens=8)
  short = [_item(f"s{i}", "c", source="rmb") for i in range(3)]
  long = [_item("l0", "c", responses=("good " * 500, "bad"), source="rmb"),
          _item("l1", "c", responses=("x" * 10_000_000, "bad"), source="llmbar")]  # a 10 MB row
  probe = common.ContextBudget(CharTokenizer(), options, max_seq_len=10**9)
  limit = max(probe.prompt_length(i) for i in short) + options.max_new_tokens + common.LENGTH_MARGIN
  budget = common.ContextBudget(CharTokenizer(), options, max_seq_len=limit)
  assert budget.fits(short[0]) and not budget.fits(long[0]) and not budget.fits(long[1])
  kept, skipped = common.drop_too_long(short + long, budget, "test items")
  assert kept == short and skipped == {"llmbar": 1, "rmb": 1}
  with pytest.raises(ValueError, match=r"test items: none of the 2 items fits model\.max_seq_len"):
    common.drop_too_long(long, budget, "test items")
  chosen, too_long = common.select_slice(short + long, budget, seed=0, sampling="uniform", max_items=0)
  assert sorted(c.uid for c in chosen) == ["s0", "s1", "s2"] and too_long == 2


def test_naming_items_names_the_uids():
  with pytest.raises(ValueError, match=r"step 3, items \['rmb/x.json:7'\]: boom"):
    with common.naming_items([_item("rmb/x.json:7", "c")], "step 3"):
      raise ValueError("boom")


def test_grpo_split_is_seeded_and_disjoint(data_root):
  config = runpy.run_path(str(CONFIGS / "grpo.py"))["get_config"]("smoke")
  config.data.name, config.data.root, config.data.num_items, config.data.eval_items = "llmbar", str(data_root), 0, 5
  train, heldout = common.train_and_heldout(config.data)
  assert len(heldout) == 5 and not {i.uid for i in train} & {i.uid for i in heldout}
  again = common.train_and_heldout(config.data)
  assert [i.responses for i in again[1]] == [i.responses for i in heldout]
  config.data.seed = 1  # the seed reaches the reader (response order) and the split
  other = common.train_and_heldout(config.data)
  assert [i.uid for i in other[1]] != [i.uid for i in heldout]


def test_one_grm_options_reader_for_every_experiment():
  for name, arg in (("grpo.py", None), ("eval.py", None), ("grpo.py", "smoke"), ("eval.py", "smoke")):
    config = runpy.run_path(str(CONFIGS / name))["get_config"](arg)
    options = common.grm_options(config)
    assert options.max_new_tokens == config.grm.max_new_tokens and options.temperature == config.grm.temperature
    assert len(options.demonstrations) == config.grm.num_demonstrations
