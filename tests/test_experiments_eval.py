"""The eval experiment end to end (smoke variant): files written, both accuracy rules reported, determinism."""

import json
import pathlib
import runpy

import pytest

from spct_jax.experiments import eval as eval_experiment

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
  assert set(synthetic["runs"]) == {"greedy", "k=1", "k=2"}
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
  assert bon["primary_metric"] == "accuracy_strict" and set(bon["runs"]) == {"k=2"}
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
