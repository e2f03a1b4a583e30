"""Dataset readers against the shared data copies (counts from each SOURCE.txt), plus malformed-input errors."""

import gzip
import json
import os
import pathlib
import subprocess
import sys
from collections import Counter

import pytest

from spct_jax.data import readers
from spct_jax.data.schema import PreferenceItem

# name -> (records read, items kept, skipped by reason, notes).
EXPECTED = {
    # SOURCE: 14,543 pairs; 14 with identical chosen/reject text (11 byte-identical + 3 differing only in
    # surrounding whitespace, which our strip() comparison also counts).
    "rmb_pairwise": (14543, 14529, {"duplicate_response": 14}, {}),
    # SOURCE: 3,786 lists; 6 with bon_best text equal to a loser's.
    "rmb_bon": (3786, 3780, {"duplicate_response": 6}, {}),
    # SOURCE: 1,200 pairs over 13 subsets, no ties. Observed: 1 LLMEval^2 pair has identical outputs.
    "llmbar": (1200, 1199, {"duplicate_response": 1}, {}),
    # SOURCE: 8,552 pairs, 36 with chosen == rejected (0/2/2/32). Observed: 17 pairs whose transcripts differ
    # before the final Assistant turn (5 harmless-base, 9 helpful-base, 3 helpful-rejection-sampled); 10 turn
    # merges where a transcript repeats a role.
    "hh_rlhf": (8552, 8499, {"duplicate_response": 36, "prefix_mismatch": 17}, {"merged_turns": 10}),
    # SOURCE: 999 rows. Majority votes: 105 rows have a 0 (tie) majority, none a three-way split. 6 responses
    # stored as JSON booleans are read as "True"/"False".
    "pandalm": (999, 894, {"tie": 105}, {"bool_response_as_text": 6}),
    # SOURCE: 350 + 270 pairs, no ties. Observed: 1 Claude pair has identical responses.
    "judgebench": (620, 619, {"duplicate_response": 1}, {}),
    # SOURCE: 129 + 228 + 284 + 157 = 798 prompts; all 9 style pairs each, none duplicated.
    "rm_bench": (798, 7182, {}, {}),
    # SOURCE: 1,392 pairs, labels 520/499/373 (373 ties). Observed: 1 non-tie pair has identical responses.
    "auto_j": (1392, 1018, {"duplicate_response": 1, "tie": 373}, {}),
}


@pytest.fixture(scope="module")
def results(data_root):
  return {name: readers.read_dataset(name, data_root) for name in readers.READERS}


def test_registry_is_complete():
  assert set(readers.READERS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_counts(results, name):
  records, kept, skipped, notes = EXPECTED[name]
  stats = results[name].stats
  assert (stats.records, stats.kept, dict(stats.skipped), dict(stats.notes)) == (records, kept, skipped, notes)
  assert len(results[name].items) == kept


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_items_valid_and_unique(results, name):
  items = results[name].items
  assert len({item.uid for item in items}) == len(items)
  for item in items:
    item.validate()
    assert item.source == name


def _counts(items, key):
  return dict(Counter(key(item) for item in items))


def test_rmb(results):
  pairs, bon = results["rmb_pairwise"].items, results["rmb_bon"].items
  # SOURCE: Helpfulness 8,456 + Harmlessness 6,087 pairs; 7 duplicates in each half.
  assert _counts(pairs, lambda i: i.subset) == {"Helpfulness": 8449, "Harmlessness": 6080}
  # SOURCE: Helpfulness 2,109 + Harmlessness 1,677 lists; duplicates 2 + 4.
  assert _counts(bon, lambda i: i.subset) == {"Helpfulness": 2107, "Harmlessness": 1673}
  # SOURCE: loser_list lengths 2:2878, 3:712, 4:165, 5:24, 6:7; the 6 duplicates are 4 of length 2, 2 of length 3.
  assert _counts(bon, lambda i: i.num_responses) == {3: 2874, 4: 710, 5: 165, 6: 24, 7: 7}
  first = pairs[0]
  assert first.uid == "rmb/Pairwise_set/Harmlessness/S1.json:0"
  assert first.category == "Harmlessness/S1"
  assert first.query.startswith("How do I hack into a secure database")
  assert bon[0].query == "How do I get away with murder"
  assert all(sum(i.ratings) == 1.0 for i in bon)
  # Multi-turn conversations (1, 3 or 5 messages) survive intact.
  assert {len(i.conversation) for i in pairs} == {1, 3, 5}


def test_shuffled_order_is_balanced_and_deterministic(results, data_root):
  for name in ("rmb_pairwise", "hh_rlhf", "rm_bench"):
    share = sum(i.best_index == 0 for i in results[name].items) / results[name].stats.kept
    assert 0.45 < share < 0.55, (name, share)
  again = readers.read_dataset("rmb_bon", data_root).items
  assert again == results["rmb_bon"].items
  source = readers.read_dataset("rmb_bon", data_root, order="source").items
  assert all(i.best_index == 0 for i in source)
  reseeded = readers.read_dataset("rmb_bon", data_root, seed=1).items
  assert [i.responses for i in reseeded] != [i.responses for i in again]
  assert [sorted(i.responses) for i in reseeded] == [sorted(i.responses) for i in again]


def test_hh_rlhf(results):
  items = results["hh_rlhf"].items
  # SOURCE: 2312 / 2354 / 1137 / 2749 rows minus the skips listed in EXPECTED.
  assert _counts(items, lambda i: i.category) == {
      "harmless-base": 2307, "helpful-base": 2343, "helpful-online": 1135, "helpful-rejection-sampled": 2714}
  first = items[0]
  assert first.uid == "hh-rlhf/harmless-base/test.jsonl:0"
  assert first.conversation[0] == ("user", "what are some pranks with a pen i can do?")
  assert first.query == "okay some of these do not have anything to do with pens"
  assert [role for role, _ in first.conversation] == ["user", "assistant", "user", "assistant", "user"]
  chosen, rejected = first.responses[first.best_index], first.responses[1 - first.best_index]
  assert chosen.startswith("No, sorry!  All of these involve a pen")
  assert rejected.startswith("There are lots of funny things you can do with pens")
  assert all(not r.startswith(" ") for i in items for r in i.responses)


def test_llmbar(results, data_root):
  items = results["llmbar"].items
  counts = _counts(items, lambda i: i.category)
  assert counts["LLMBar/Natural"] == 100 and counts["LLMBar/Adversarial/Neighbor"] == 134
  assert counts["Processed/LLMEval^2"] == 199  # 200 minus the duplicate.
  assert len(counts) == 13
  only = readers.read_dataset("llmbar", data_root, subsets=("LLMBar",))
  assert only.stats.kept == 419  # = RewardBench's llmbar-* subsets.
  assert items[0].uid == "llmbar/Dataset/CaseStudy/Base_10/dataset.json:0"
  assert items[0].query.startswith("You are a mathematician. Assuming that all numbers are in base")


def test_pandalm(results):
  items = results["pandalm"].items
  assert _counts(items, lambda i: i.best_index) == {0: 422, 1: 472}
  first = items[0]  # idx 0: all three annotators voted 2.
  assert first.best_index == 1
  assert first.query.startswith("The sentence you are given might be too wordy")
  assert first.query.endswith("please let me know.")  # The input follows the instruction.
  assert first.category == "Grammarly"


def test_judgebench(results):
  items = results["judgebench"].items
  # SOURCE: gpt-4o A>B 193 / B>A 157; claude 143 / 127 (one B>A pair is the duplicate).
  assert _counts(items, lambda i: (i.subset[:6], i.best_index)) == {
      ("gpt-4o", 0): 193, ("gpt-4o", 1): 157, ("claude", 0): 143, ("claude", 1): 126}
  assert items[0].category == "mmlu-pro-health"
  assert items[0].query.startswith("In the brain stem, pathways for:")


def test_rm_bench(results, data_root):
  items = results["rm_bench"].items
  assert _counts(items, lambda i: i.category) == {
      "chat": 9 * 129, "code": 9 * 228, "safety-refuse": 9 * 284, "safety-response": 9 * 157}
  assert items[0].uid == "rm-bench/data/chat_filtered.json:0:c0r0"
  assert items[0].query == "What are different drawers I should have for clothes?"
  diagonal = readers.read_dataset("rm_bench", data_root, pairs="diagonal", domains=("chat",))
  assert (diagonal.stats.records, diagonal.stats.kept) == (129, 3 * 129)
  assert diagonal.items[2].uid.endswith(":0:c2r2")


def test_auto_j(results):
  items = results["auto_j"].items
  assert _counts(items, lambda i: i.best_index) == {0: 520, 1: 498}
  assert len({i.category for i in items}) == 58
  assert items[0].category == "post_summarization" and items[0].best_index == 1  # Label 1: response 2 better.
  assert items[0].query.startswith("Summarize the following post")


def test_jsonl_round_trip(results, tmp_path):
  sample = [item for name in sorted(results) for item in results[name].items[:25]]
  path = tmp_path / "out" / "items.jsonl"
  assert readers.write_jsonl(sample, path) == len(sample)
  back = readers.read_jsonl(path)
  assert back.items == sample
  assert (back.stats.records, back.stats.kept) == (len(sample), len(sample))
  assert [p.name for p in path.parent.iterdir()] == ["items.jsonl"]  # No temporary file left behind.


def test_shard_for_process():
  items = list(range(10))
  shards = [readers.shard_for_process(items, i, 3) for i in range(3)]
  assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
  assert sorted(x for s in shards for x in s) == items
  assert readers.shard_for_process(items, 0, 1) == items
  for bad in ((3, 3), (-1, 3), (0, 0)):
    with pytest.raises(ValueError):
      readers.shard_for_process(items, *bad)


def test_unknown_and_missing(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset"):
    readers.read_dataset("nope", tmp_path)
  with pytest.raises(FileNotFoundError, match="llmbar"):
    readers.read_dataset("llmbar", tmp_path)
  with pytest.raises(ValueError, match="order"):
    readers.read_dataset("llmbar", tmp_path, order="random")


# Malformed files ---------------------------------------------------------------------------------------------
def _write(path, text, compress=False):
  path.parent.mkdir(parents=True, exist_ok=True)
  if compress:
    with gzip.open(path, "wt", encoding="utf-8") as f:
      f.write(text)
  else:
    path.write_text(text, encoding="utf-8")


def test_malformed_llmbar(tmp_path):
  good = {"input": "q", "output_1": "a", "output_2": "b", "label": 1}
  _write(tmp_path / "llmbar/Dataset/X/dataset.json", json.dumps([good, {**good, "label": 3}]))
  with pytest.raises(ValueError, match=r"X/dataset\.json: record 1: label must be 1 or 2"):
    readers.read_dataset("llmbar", tmp_path)
  _write(tmp_path / "llmbar/Dataset/X/dataset.json", json.dumps([good, {"input": "q"}]))
  with pytest.raises(ValueError, match=r"dataset\.json: record 1: missing key 'output_1'"):
    readers.read_dataset("llmbar", tmp_path)
  _write(tmp_path / "llmbar/Dataset/X/dataset.json", "[{")
  with pytest.raises(ValueError, match=r"dataset\.json: invalid JSON at line 1"):
    readers.read_dataset("llmbar", tmp_path)


def test_malformed_jsonl_names_line(tmp_path):
  good = {"scenario": "s", "label": 0, "prompt": "q", "response 1": "a", "response 2": "b"}
  path = tmp_path / "auto-j/data/test/testdata_pairwise.jsonl"
  _write(path, json.dumps(good) + "\n\n" + "{oops\n")
  with pytest.raises(ValueError, match=r"testdata_pairwise\.jsonl: line 3 \(record 1\): invalid JSON"):
    readers.read_dataset("auto_j", tmp_path)
  _write(path, json.dumps(good) + "\n" + json.dumps({**good, "response 2": None}) + "\n")
  with pytest.raises(ValueError, match=r"line 2 \(record 1\): field 'response 2' must be a string"):
    readers.read_dataset("auto_j", tmp_path)


def test_malformed_rmb_and_hh(tmp_path):
  record = {"conversation_input": [{"role": "assistant", "content": "hi"}], "chosen": {"answer": "a"},
            "reject": {"answer": "b"}, "category_path": "Pairwise_set/Helpfulness/Chat"}
  _write(tmp_path / "rmb/Pairwise_set/Helpfulness/Chat.json.gz", json.dumps([record]), compress=True)
  with pytest.raises(ValueError, match=r"Chat\.json\.gz: record 0: .*turn 0 has role 'assistant'"):
    readers.read_dataset("rmb_pairwise", tmp_path)
  _write(tmp_path / "rmb/Pairwise_set/Helpfulness/Chat.json", json.dumps([record]))
  with pytest.raises(ValueError, match="both compressed and uncompressed"):
    readers.read_dataset("rmb_pairwise", tmp_path)
  rows = [{"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q (no reply)"}]
  _write(tmp_path / "hh-rlhf/helpful-base/test.jsonl.gz", json.dumps(rows[0]) + "\n", compress=True)
  with pytest.raises(ValueError, match=r"test\.jsonl\.gz: line 1 \(record 0\): .*no '\\n\\nAssistant:'"):
    readers.read_dataset("hh_rlhf", tmp_path, subsets=("helpful-base",))


def test_malformed_pandalm_vote(tmp_path):
  row = {"idx": 0, "motivation_app": "m", "instruction": "i", "input": "", "response1": "a", "response2": "b",
         "annotator1": 1, "annotator2": "1", "annotator3": 3}
  _write(tmp_path / "pandalm/data/testset-v1.json", json.dumps([row]))
  with pytest.raises(ValueError, match=r"testset-v1\.json: record 0: annotator vote must be 0, 1 or 2"):
    readers.read_dataset("pandalm", tmp_path)


def test_read_jsonl_rejects_invalid_item(tmp_path):
  item = PreferenceItem(conversation=(("user", "q"),), responses=("a", "b"), ratings=(1.0, 1.0), category="c",
                        source="s", uid="u:1")
  path = tmp_path / "items.jsonl"
  _write(path, item.to_json() + "\n")
  with pytest.raises(ValueError, match=r"items\.jsonl: line 1 \(record 0\): PreferenceItem 'u:1': best rating"):
    readers.read_jsonl(path)


def test_imports_without_tensorflow():
  code = (
      "import sys, time\n"
      "t = time.perf_counter()\n"
      "import spct_jax.data, spct_jax.data.schema, spct_jax.data.readers, spct_jax.data.synthetic\n"
      "elapsed = time.perf_counter() - t\n"
      "heavy = [m for m in ('tensorflow', 'seqio', 'tensorflow_datasets', 'jax') if m in sys.modules]\n"
      "assert not heavy, heavy\n"
      "print(elapsed)\n"
  )
  repo = pathlib.Path(__file__).resolve().parents[1]
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=repo, env=env)
  assert out.returncode == 0, out.stderr
  # Typically ~0.1 s (numpy is the only import of note); the bound leaves room for a loaded shared machine.
  assert float(out.stdout) < 2.0
