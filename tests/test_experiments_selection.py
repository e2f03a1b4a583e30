"""Which items a run reads: seeded slices, the context budget (too-long items), grpo's split, the held-out rules."""

import pathlib
import runpy

import pytest

from spct_jax.data import schema
from spct_jax.experiments import selection
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
  monkeypatch.setattr(selection, "_longest_piece", lambda tokenizer: 1)


def test_stratified_slice_spans_categories_and_is_seeded():
  items = [_item(f"{c}{i}", c) for c in "abcd" for i in range(5)]
  order = selection.seeded_order(items, 3, "stratified")
  assert sorted(order) == list(range(20))
  assert {items[i].category for i in order[:4]} == set("abcd")
  assert order == selection.seeded_order(items, 3, "stratified")
  assert order != selection.seeded_order(items, 4, "stratified")
  budget = selection.ContextBudget(CharTokenizer(), GRMOptions(max_new_tokens=8), max_seq_len=100_000)
  chosen, too_long = selection.select_slice(items, budget, seed=3, sampling="stratified", max_items=4)
  assert len(chosen) == 4 and too_long == 0 and {item.category for item in chosen} == set("abcd")
  lengths = [budget.prompt_length(c) for c in chosen]
  assert lengths == sorted(lengths)


def test_context_budget_skips_too_long_items_and_counts_them_per_source():
  options = GRMOptions(max_new_tokens=8)
  short = [_item(f"s{i}", "c", source="rmb") for i in range(3)]
  long = [_item("l0", "c", responses=("good " * 500, "bad"), source="rmb"),
          _item("l1", "c", responses=("x" * 10_000_000, "bad"), source="llmbar")]  # a 10 MB row
  probe = selection.ContextBudget(CharTokenizer(), options, max_seq_len=10**9)
  limit = max(probe.prompt_length(i) for i in short) + options.max_new_tokens + selection.LENGTH_MARGIN
  budget = selection.ContextBudget(CharTokenizer(), options, max_seq_len=limit)
  assert budget.fits(short[0]) and not budget.fits(long[0]) and not budget.fits(long[1])
  kept, skipped = selection.drop_too_long(short + long, budget, "test items")
  assert kept == short and skipped == {"llmbar": 1, "rmb": 1}
  with pytest.raises(ValueError, match=r"test items: none of the 2 items fits model\.max_seq_len"):
    selection.drop_too_long(long, budget, "test items")
  chosen, too_long = selection.select_slice(short + long, budget, seed=0, sampling="uniform", max_items=0)
  assert sorted(c.uid for c in chosen) == ["s0", "s1", "s2"] and too_long == 2


def test_naming_items_names_the_uids():
  with pytest.raises(ValueError, match=r"step 3, items \['rmb/x.json:7'\]: boom"):
    with selection.naming_items([_item("rmb/x.json:7", "c")], "step 3"):
      raise ValueError("boom")


def test_grpo_split_is_seeded_and_disjoint(data_root):
  config = runpy.run_path(str(CONFIGS / "grpo.py"))["get_config"]("smoke")
  config.data.name, config.data.root, config.data.num_items, config.data.eval_items = "pandalm", str(data_root), 0, 5
  train, heldout = selection.train_and_heldout(config.data)
  assert len(heldout) == 5 and not {i.uid for i in train} & {i.uid for i in heldout}
  again = selection.train_and_heldout(config.data)
  assert [i.responses for i in again[1]] == [i.responses for i in heldout]
  config.data.seed = 1  # the seed reaches the reader (response order) and the split
  other = selection.train_and_heldout(config.data)
  assert [i.uid for i in other[1]] != [i.uid for i in heldout]


# ---- training data and held-out data -------------------------------------------------------------------------
def _conversations(items):
  return {tuple((role, " ".join(text.split())) for role, text in item.conversation) for item in items}


def test_real_configs_train_on_no_heldout_source_or_prompt(data_root):
  from spct_jax.data import readers
  generate = runpy.run_path(str(CONFIGS / "rft_generate.py"))["get_config"]()
  generate.data.root = str(data_root)
  items, stats = selection.training_items(generate.data)
  assert len(items) == generate.data.num_items == 256
  assert {item.source for item in items} == set(generate.data.train_sources)
  assert all(s["selected"] == 64 for s in stats.values())
  # Independently: no training conversation is the conversation of any item of the four held-out benchmarks.
  held = set().union(*(_conversations(readers.read_dataset(name, data_root).items) for name in selection.HELDOUT_SOURCES))
  assert not _conversations(items) & held
  assert stats["rmb_pairwise"]["dropped_shared_prompt"] > 0 and stats["pandalm"]["dropped_shared_prompt"] > 0
  # The SFT config evaluates on a held-out benchmark only; GRPO's default trains on generated items.
  sft = runpy.run_path(str(CONFIGS / "rft.py"))["get_config"]()
  assert set(sft.data.eval_sources) <= set(selection.HELDOUT_SOURCES)
  selection.check_sources(generate.data.train_sources, sft.data.eval_sources)
  grpo = runpy.run_path(str(CONFIGS / "grpo.py"))["get_config"]()
  train, heldout, dropped = selection.split_items(grpo.data)
  # One of the 512 generated training questions is also one of the 8 held-out ones: dropped, counted.
  assert dropped == {"synthetic": 1} and len(train) == grpo.data.num_items - 1 and len(heldout) == 8
  assert not _conversations(train) & _conversations(heldout)


def test_a_config_naming_a_heldout_benchmark_for_training_fails():
  from spct_jax.experiments import grpo, rft_generate, validation
  config = runpy.run_path(str(CONFIGS / "rft_generate.py"))["get_config"]("smoke")
  config.data.train_sources = ("synthetic", "llmbar")
  with pytest.raises(validation.ConfigError, match=r"names 'llmbar', which is held out for evaluation"):
    rft_generate.run(config, "/nonexistent/never-created")  # fails before any model or workdir
  config.data.train_sources, config.data.eval_sources = ("pandalm",), ("pandalm", "llmbar")
  with pytest.raises(validation.ConfigError, match=r"\['pandalm'\] are both trained on"):
    selection.training_items(config.data)
  with pytest.raises(validation.ConfigError, match=r"names 'nope'; valid"):
    selection.check_sources(("nope",))
  config = runpy.run_path(str(CONFIGS / "grpo.py"))["get_config"]("smoke")
  config.data.name = "rmb_bon"
  with pytest.raises(validation.ConfigError, match=r"config.data.name names 'rmb_bon'"):
    grpo.run(config, "/nonexistent/never-created")
  # Items that say they come from a held-out benchmark (a .jsonl copy of one, say) fail too.
  with pytest.raises(ValueError, match=r"training items come from \['judgebench'\].*'j0'"):
    selection.check_disjoint([_item("j0", "c", source="judgebench")], [])
  with pytest.raises(ValueError, match=r"training items come from \['mine'\]"):
    selection.check_disjoint([_item("a", "c", source="mine")], [_item("b", "c", source="mine")])


def test_rmb_pairwise_items_with_a_best_of_n_prompt_are_dropped_and_counted(data_root):
  from spct_jax.data import readers
  config = runpy.run_path(str(CONFIGS / "rft_generate.py"))["get_config"]()
  config.data.root, config.data.eval_sources = str(data_root), ()
  config.data.max_per_source, config.data.num_items = 0, 0
  items, stats = selection.training_items(config.data)
  # Every training source repeats some held-out prompts (the counts the README quotes).
  assert {name: s["dropped_shared_prompt"] for name, s in stats.items()} == {
      "rmb_pairwise": 12_320, "hh_rlhf": 23, "pandalm": 64, "auto_j": 39}
  items = [item for item in items if item.source == "rmb_pairwise"]
  pairs = readers.read_dataset("rmb_pairwise", data_root).items
  bon = _conversations(readers.read_dataset("rmb_bon", data_root).items)
  shared = [item for item in pairs if _conversations([item]) <= bon]
  assert len(shared) == 12_320  # RMB's two sets share 1,906 conversations
  assert stats["rmb_pairwise"] == {"read": len(pairs), "dropped_shared_prompt": len(shared), "skipped_too_long": 0,
                                   "selected": len(pairs) - len(shared)}
  assert sorted(item.uid for item in items) == sorted({i.uid for i in pairs} - {i.uid for i in shared})


def test_training_stream_is_seeded_mixed_and_capped(tmp_path):
  from spct_jax.data import readers
  config = runpy.run_path(str(CONFIGS / "rft_generate.py"))["get_config"]("smoke")
  mine = [_item(f"mine.jsonl:{i}", "c", responses=(f"good {i}", "bad"), source="mine") for i in range(10)]
  readers.write_jsonl(mine, tmp_path / "mine.jsonl")
  config.data.root, config.data.train_sources = str(tmp_path), ("synthetic", "mine.jsonl")
  config.data.max_per_source, config.data.num_items = 6, 10
  long_uids = {"mine.jsonl:1", "mine.jsonl:2"}
  fits = lambda item: item.uid not in long_uids
  items, stats = selection.training_items(config.data, fits=fits)
  assert len(items) == 10 and stats["mine.jsonl"]["selected"] == 6 and stats["synthetic"]["selected"] == 6
  assert stats["mine.jsonl"]["skipped_too_long"] in (1, 2) and not long_uids & {item.uid for item in items}
  assert {item.source for item in items} == {"mine", "synthetic"}
  assert [item.source for item in items] != sorted(item.source for item in items)  # mixed, not concatenated
  assert [i.uid for i in selection.training_items(config.data, fits=fits)[0]] == [i.uid for i in items]
  config.data.seed = 1
  assert [i.uid for i in selection.training_items(config.data, fits=fits)[0]] != [i.uid for i in items]
  # A synthetic training item whose question a held-out item asks is dropped (the two ranges can repeat one).
  config.data.seed, config.data.train_sources, config.data.eval_items = 0, ("synthetic",), 64
  config.data.max_per_source, config.data.num_items = 0, 200
  items, stats = selection.training_items(config.data)
  heldout = selection.eval_items(config.data)[0]
  assert stats["synthetic"]["dropped_shared_prompt"] == 200 - len(items) > 0
  assert not _conversations(items) & _conversations(heldout)
