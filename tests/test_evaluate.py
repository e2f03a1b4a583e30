"""The evaluation experiment: metric aggregation by hand, slice selection, and `run` end to end (smoke variant)."""

import importlib.util
import json
import pathlib
import re

import jax
import numpy as np
import pytest

from spct_jax import evaluate, metrics_io
from spct_jax.data import schema
from spct_jax.grm import GRM

CONFIG_PATH = pathlib.Path(__file__).resolve().parents[1] / "configs" / "eval.py"


def _get_config(arg=None):
  spec = importlib.util.spec_from_file_location("eval_config", CONFIG_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


class ScriptedGRM(GRM):
  """Scores each shown response by a marker in its text: good=9, bad=2, tie=5, fail -> unparseable output."""

  def __init__(self, **options):
    super().__init__(model=None, tokenizer=None, **options)

  def generate_texts(self, prompts, strategy, seed):
    texts = []
    for prompt in prompts:
      shown = re.findall(r"\[The Begin of Response \d+\]\n(.*?)\n\[The End", prompt, flags=re.S)
      if any("fail" in r for r in shown):
        texts.append(" I am not sure.")  # No boxed scores: a parse failure.
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
      # tied: both scored 5 -> strict wrong, expected accuracy 1/2.
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
  scored = evaluate.score_items(ScriptedGRM(output_prefix="Specific Criteria:"), items, k=k, batch_size=4, seed=0)
  assert scored.sample_scores.shape == (6, k, 3) and scored.valid.shape == (6, k)
  agg = evaluate.run_metrics(scored, items, k, jax.random.key(0))
  cat = agg["by_category"]
  assert set(cat) == {"right", "tied", "wrong", "failed"}
  assert cat["right"]["items"] == 2 and cat["right"]["strict"] == 1.0 and cat["right"]["accuracy"] == 1.0
  assert cat["right"]["accuracy_expected"] == 1.0 and cat["right"]["parse_failure"] == 0.0
  assert cat["tied"]["strict"] == 0.0 and cat["tied"]["accuracy_expected"] == 0.5
  assert cat["tied"]["accuracy"] in (0.0, 0.5, 1.0)  # random tie-break
  assert cat["wrong"]["strict"] == 0.0 and cat["wrong"]["accuracy"] == 0.0
  assert cat["wrong"]["accuracy_expected"] == 0.0
  assert cat["failed"]["parse_failure"] == 1.0 and cat["failed"]["no_valid"] == 1.0
  assert cat["failed"]["strict"] == 0.0 and cat["failed"]["accuracy_expected"] == 0.5
  overall = agg["overall"]
  assert overall["items"] == 6
  assert overall["strict"] == pytest.approx(2 / 6)
  assert overall["accuracy_expected"] == pytest.approx((2 + 0.5 + 0.5 + 0 + 0.5) / 6)
  assert overall["parse_failure"] == pytest.approx(1 / 6)
  assert agg["macro"]["categories"] == 4
  assert agg["macro"]["strict"] == pytest.approx((1 + 0 + 0 + 0) / 4)
  assert agg["by_subset"]["s1"]["items"] == 2 and agg["by_subset"]["s2"]["strict"] == 0.0
  # Lengths exclude the output prefix: " I am not sure." is 15 characters.
  assert cat["failed"]["gen_chars"] == 15.0 and cat["failed"]["gen_tokens"] is None


def test_partial_parse_failures_and_prefix_votes():
  sample_scores = np.array([[[9, 2], [0, 0], [3, 8], [0, 0]]], np.int32)
  valid = np.array([[True, False, True, False]])
  np.testing.assert_array_equal(metrics_io.prefix_vote(sample_scores, valid, 1), [[9, 2]])
  np.testing.assert_array_equal(metrics_io.prefix_vote(sample_scores, valid, 3), [[12, 10]])
  per_item = metrics_io.item_metrics(np.array([[12, 10]]), np.array([[1.0, 0.0]]), np.ones((1, 2), bool),
                                     valid, jax.random.key(0))
  assert per_item["parse_failure"][0] == 0.5 and per_item["no_valid"][0] == 0.0 and per_item["strict"][0] == 1.0
  with pytest.raises(ValueError, match="k=5"):
    metrics_io.prefix_vote(sample_scores, valid, 5)


def test_stratified_slice_spans_categories_and_is_seeded():
  items = [_item(f"{c}{i}", c, ["good", "bad"], [1, 0]) for c in "abcd" for i in range(5)]
  order = evaluate.seeded_order(items, 3, "stratified")
  assert sorted(order) == list(range(20))
  assert {items[i].category for i in order[:4]} == set("abcd")
  assert order == evaluate.seeded_order(items, 3, "stratified")
  assert order != evaluate.seeded_order(items, 4, "stratified")
  config = _get_config("smoke")
  config.data.max_items = 4
  lengths = {item.uid: 10 * (i % 5) for i, item in enumerate(items)}
  chosen, too_long = evaluate.select_items(items, config, lambda item: lengths[item.uid])
  assert len(chosen) == 4 and too_long == 0 and {item.category for item in chosen} == set("abcd")
  assert [lengths[c.uid] for c in chosen] == sorted(lengths[c.uid] for c in chosen)
  config.model.max_seq_len = config.grm.max_new_tokens + evaluate._LENGTH_MARGIN + 25  # only lengths <= 25 fit
  chosen, too_long = evaluate.select_items(items, config, lambda item: lengths[item.uid])
  assert all(lengths[c.uid] <= 25 for c in chosen) and too_long > 0


@pytest.mark.slow  # two full evaluation runs
def test_run_smoke_writes_results_and_plot(tmp_path):
  config = _get_config("smoke")
  config.progress = False
  results = evaluate.run(config, tmp_path)
  files = sorted(p.name for p in tmp_path.iterdir())
  assert files == ["accuracy_vs_k.png", "results.json", "samples.jsonl"]  # no temporary files left behind
  assert (tmp_path / "accuracy_vs_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk == results
  assert {"experiment", "model", "config", "datasets", "timing"} <= set(on_disk)
  assert on_disk["model"]["name"] == "tiny-gemma3"
  synthetic = on_disk["datasets"]["synthetic"]
  assert set(synthetic["runs"]) == {"greedy", "k=1", "k=2"}
  assert synthetic["counts"]["items"] == 4
  for run in synthetic["runs"].values():
    assert {"overall", "macro", "by_category"} <= set(run)
    assert {"accuracy", "accuracy_expected", "strict", "parse_failure", "gen_tokens"} <= set(run["overall"])
    assert run["overall"]["gen_tokens"] <= config.grm.max_new_tokens
  samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
  assert len(samples) == 8 and {s["mode"] for s in samples} == {"greedy", "sampled_k2"}
  # Deterministic given the seed.
  again = evaluate.run(config, tmp_path / "again")["datasets"]["synthetic"]
  assert again["runs"] == synthetic["runs"] and again["uids"] == synthetic["uids"]


def test_rmb_best_of_n_smoke(tmp_path, data_root):
  config = _get_config("smoke,rmb_bon")
  config.data.root = str(data_root)
  config.data.max_items, config.greedy, config.ks, config.batch_size, config.progress = 2, False, (2,), 2, False
  config.output.samples = ""
  results = evaluate.run(config, tmp_path)
  bon = results["datasets"]["rmb_bon"]
  assert bon["primary_metric"] == "strict" and set(bon["runs"]) == {"k=2"}
  assert bon["counts"]["items"] == 2 and all(3 <= int(n) <= 7 for n in bon["counts"]["responses"])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy_vs_k.png", "results.json"]


def test_unknown_dataset_lists_valid_names(tmp_path):
  config = _get_config("smoke")
  config.data.names = ("synthetic", "rewardbench_typo")
  with pytest.raises(ValueError, match=r"rewardbench_typo.*rmb_pairwise.*synthetic"):
    evaluate.run(config, tmp_path)
  assert not any(tmp_path.iterdir())


def test_missing_data_root_names_path_and_key(tmp_path):
  config = _get_config("smoke")
  config.data.names = ("rmb_pairwise",)
  config.data.root = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=r"nowhere.*data\.root"):
    evaluate.run(config, tmp_path)


def test_config_variants():
  assert _get_config().model.name == "gemma3-270m"
  assert _get_config("rmb_bon").data.names == ("rmb_bon",)
  assert max(_get_config("full").ks) == 8
  with pytest.raises(ValueError, match="smoke"):
    _get_config("smok")
