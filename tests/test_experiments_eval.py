"""The eval experiment end to end (smoke variant): files written, both accuracy rules reported, determinism."""

import json
import pathlib
import runpy

import numpy as np
import pytest

from spct_jax import meta_rm
from spct_jax.evaluators import voting
from spct_jax.experiments import common, selection
from spct_jax.experiments import eval as eval_experiment
from spct_jax.grm import templates

CONFIG_PATH = pathlib.Path(__file__).resolve().parents[1] / "configs" / "eval.py"


def _get_config(arg=None):
  return runpy.run_path(str(CONFIG_PATH))["get_config"](arg)


@pytest.mark.slow  # two full evaluation runs
def test_run_smoke_writes_results_with_both_accuracy_rules(tmp_path):
  config = _get_config("smoke")
  config.progress = False
  results = eval_experiment.run(config, tmp_path)
  files = sorted(p.name for p in tmp_path.iterdir())
  assert files == ["accuracy_vs_k.png", "results.json", "samples.jsonl"]  # no temporary files or lock left behind
  assert (tmp_path / "accuracy_vs_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk == results
  assert {"experiment", "model", "config", "datasets", "timing"} <= set(on_disk)
  assert on_disk["model"]["name"] == "tiny-gemma3"
  synthetic = on_disk["datasets"]["synthetic"]
  assert set(synthetic["runs"]) == {"greedy", "voting@1", "voting@2"}
  assert synthetic["counts"]["items"] == 4 and synthetic["primary_metric"] == "accuracy_tie_random"
  for run in synthetic["runs"].values():
    assert {"overall", "macro", "by_category"} <= set(run)
    overall = run["overall"]
    assert {"accuracy_strict", "accuracy_tie_random", "accuracy_tie_expected", "parse_rate", "gen_tokens"} <= set(
        overall)
    assert overall["accuracy_strict"] <= overall["accuracy_tie_expected"] + 1e-9  # a tie can only help tie rules
    assert overall["gen_tokens"] <= config.grm.max_new_tokens
  samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
  assert len(samples) == 8 and {s["mode"] for s in samples} == {"greedy", "sampled_k2"}
  # Deterministic given the seed.
  again = eval_experiment.run(config, tmp_path / "again")["datasets"]["synthetic"]
  assert again["runs"] == synthetic["runs"] and again["uids"] == synthetic["uids"]


def test_rmb_best_of_n_smoke(tmp_path, data_root):
  config = _get_config("smoke,rmb_bon")
  config.data.root = str(data_root)
  config.data.max_items, config.progress = 2, False
  config.evals.voting.greedy, config.evals.voting.ks, config.evals.voting.batch_size = False, (2,), 2
  config.output.samples = ""
  results = eval_experiment.run(config, tmp_path)
  bon = results["datasets"]["rmb_bon"]
  assert bon["primary_metric"] == "accuracy_strict" and set(bon["runs"]) == {"voting@2"}
  assert bon["counts"]["items"] == 2 and all(3 <= int(n) <= 7 for n in bon["counts"]["responses"])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy_vs_k.png", "results.json"]


def test_unknown_dataset_lists_valid_names(tmp_path):
  config = _get_config("smoke")
  config.data.names = ("synthetic", "rewardbench_typo")
  with pytest.raises(ValueError, match=r"data\.names.*rewardbench_typo.*rmb_pairwise.*synthetic"):
    eval_experiment.run(config, tmp_path)
  assert not any(tmp_path.iterdir())


def test_missing_data_root_names_path_and_key(tmp_path):
  config = _get_config("smoke")
  config.data.names = ("rmb_pairwise",)
  config.data.root = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=r"nowhere.*data\.root"):
    eval_experiment.run(config, tmp_path)


def test_config_variants():
  assert _get_config().model.name == "gemma3-270m"
  assert _get_config("rmb_bon").data.names == ("rmb_bon",)
  assert max(_get_config("full").evals.voting.ks) == 8
  assert _get_config("smoke,rmb_bon").model.name == "tiny-gemma3"
  with pytest.raises(ValueError, match="smoke"):
    _get_config("smok")


class RandomScoresGRM(voting.MeasuredGRM):
  """Parseable judgements with seeded random 1..10 scores per shown response: samples disagree, so which ones a meta
  RM keeps changes the vote. The rest of the eval path (prompts, parsing, voting, the meta RM) is the real one."""

  def generate_texts(self, prompts, strategy, seed):
    self.last_lengths = None  # not a sampler: score_items re-encodes the texts for their lengths
    texts = []
    for row, prompt in enumerate(prompts):
      n = prompt.count("[The Begin of Response")
      scores = np.random.default_rng([seed, row]).integers(1, 11, n)
      texts.append(" ...\nAnalysis: ...\nScores: \\boxed{" + ", ".join(map(str, scores)) + "}")
    return texts


def _strict(voted, ratings):
  best = int(np.argmax(ratings))
  return float(all(voted[best] > v for i, v in enumerate(voted) if i != best))


@pytest.mark.slow  # two evaluation runs and a meta RM save
def test_eval_reports_metarm_at_k_beside_voting_at_k_from_the_same_samples(tmp_path, monkeypatch):
  monkeypatch.setattr(voting, "MeasuredGRM", RandomScoresGRM)
  config = _get_config("smoke")
  config.progress, config.data.max_items, config.evals.voting.ks = False, 6, (1, 2, 4)
  backbone, tokenizer = common.build_model(config.model)
  meta_rm.save_meta_rm(meta_rm.from_backbone(backbone, seed=0, init_std=1.0), tmp_path / "meta", tokenizer=tokenizer)
  config.meta_rm.path = str(tmp_path / "meta")
  results = eval_experiment.run(config, tmp_path / "run")
  runs = results["datasets"]["synthetic"]["runs"]
  assert list(runs) == ["greedy", "voting@1", "metarm@1", "voting@2", "metarm@2", "voting@4", "metarm@4"]
  assert [runs[f"metarm@{k}"]["k_meta"] for k in (1, 2, 4)] == [1, 1, 2]  # k // 2, at least 1
  assert runs["voting@4"]["overall"]["parse_rate"] == 1.0 and results["meta_rm"]["path"] == config.meta_rm.path
  assert (tmp_path / "run" / "accuracy_vs_k.png").is_file()

  # By hand from samples.jsonl: the meta scores are the meta RM's own logits of each trajectory (shown order),
  # and MetaRM@4 votes over the two samples with the highest of them.
  model, meta_tokenizer = meta_rm.load_meta_rm(tmp_path / "meta", dtype=config.model.param_dtype,
                                               compute_dtype=config.model.compute_dtype)  # as eval loads it
  scorer = meta_rm.as_meta_scorer(model, meta_tokenizer)
  pool = {item.uid: item for item in selection.read_items("synthetic", config.data, pool=4 * 6)[0]}
  records = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
  sampled = [r for r in records if r["mode"] == "sampled_k4"]
  assert len(sampled) == 6
  strict, picks = [], []
  for record in sampled:
    item = pool[record["uid"]]
    texts = [templates.meta_rm_input(item.conversation, [item.responses[i] for i in perm], text)
             for perm, text in zip(record["perms"], record["texts"])]
    np.testing.assert_allclose(record["meta_scores"], scorer.score(texts), rtol=1e-4, atol=1e-4)
    top = np.argsort(-np.asarray(record["meta_scores"]), kind="stable")[:2]
    picks.append(sorted(top.tolist()))
    strict.append(_strict(np.asarray(record["sample_scores"])[top].sum(axis=0), item.ratings))
  assert runs["metarm@4"]["overall"]["accuracy_strict"] == pytest.approx(np.mean(strict))
  assert len({tuple(p) for p in picks}) > 1  # the logits pick different samples per item: not a fixed prefix

  # k_meta = k keeps every sample: MetaRM@k is Voting@k (same samples, same tie-breaks), metric for metric.
  config.meta_rm.k_meta = 4
  full = eval_experiment.run(config, tmp_path / "full")["datasets"]["synthetic"]["runs"]
  for k in (1, 2, 4):
    assert full[f"metarm@{k}"]["k_meta"] == k
    assert {key: v for key, v in full[f"metarm@{k}"].items() if key != "k_meta"} == full[f"voting@{k}"]
  assert full["voting@4"] == runs["voting@4"]  # k_meta changes nothing but the metarm runs


def test_meta_rm_path_errors_name_the_key(tmp_path):
  config = _get_config("smoke")
  config.meta_rm.path = str(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match="missing.*does not exist"):
    eval_experiment.run(config, tmp_path / "run")
  config.evals.voting.ks = ()
  with pytest.raises(ValueError, match=r"config\.meta_rm\.path=.*needs sampled runs"):
    eval_experiment.run(config, tmp_path / "run")
