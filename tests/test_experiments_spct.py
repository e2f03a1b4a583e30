"""The SPCT pipeline's pieces: stage links, the finished-stage check, Table 3 from eval results (the whole pipeline
runs in test_documented_commands: its smoke form, a re-run that skips every stage, a changed stage refused)."""

import json
import runpy

import ml_collections
import pytest

from spct_jax import files
from spct_jax.experiments import spct, validation
from test_documented_commands import REPO

FOLDERS = {stage: f"/w/{stage}" for stage in spct.STAGES}


def _config():
  return runpy.run_path(str(REPO / "configs" / "spct.py"))["get_config"]("smoke")


def test_links_resolve_to_earlier_stages_only():
  config = _config()
  grpo = spct.resolve("grpo", config.stages.grpo, FOLDERS)
  assert grpo.model.name == "/w/rft/grm" and config.stages.grpo.model.name == "{rft}/grm"  # a copy
  final = spct.resolve("eval_final", config.stages.eval_final, FOLDERS)
  assert final.model.name == "/w/grpo/grm" and final.meta_rm.path == "/w/meta_rm/meta_rm"
  # Braces that name no stage are left alone (the smoke teacher's output prefix ends in \\boxed{9, 2}).
  teacher = spct.resolve("rft_generate", config.stages.rft_generate, FOLDERS)
  assert teacher.grm.output_prefix.endswith("\\boxed{9, 2}\n")
  config.stages.rft.model.name = "{grpo}/grm"
  with pytest.raises(validation.ConfigError, match=r"config.stages.rft.model.name='\{grpo\}/grm' links stage 'grpo'"):
    spct.resolve("rft", config.stages.rft, FOLDERS)
  with pytest.raises(validation.ConfigError, match="config.stages.eval_base.experiment='grpo'; expected 'eval'"):
    spct.resolve("eval_base", config.stages.grpo, FOLDERS)


def test_a_finished_stage_is_kept_only_with_its_config(tmp_path):
  stage = ml_collections.ConfigDict({"experiment": "grpo", "total_steps": 3, "optimizer": {"lr": 0.1}})
  assert spct._finished("grpo", files.as_path(tmp_path), stage) is None
  (tmp_path / spct.STAGE_FILE).write_text(json.dumps({"fingerprint": spct.fingerprint(stage),
                                                      "config": stage.to_dict(), "summary": {"step": 3}}))
  assert spct._finished("grpo", files.as_path(tmp_path), stage)["summary"] == {"step": 3}
  stage.optimizer.lr = 0.2
  with pytest.raises(validation.ConfigError, match=r"stage 'grpo' finished .* \(changed: \['optimizer.lr'\]\)"):
    spct._finished("grpo", files.as_path(tmp_path), stage)


def test_a_field_added_at_its_old_behaviour_keeps_a_finished_stage(tmp_path):
  stage = _config().stages.rft_generate
  before = ml_collections.ConfigDict(stage.to_dict())
  del before.rft["position_hints"]  # the stage as a run from before the option stored it
  (tmp_path / spct.STAGE_FILE).write_text(json.dumps({"fingerprint": spct.fingerprint(before),
                                                      "config": spct._as_json(before), "summary": {"items": 4}}))
  assert stage.rft.position_hints is False and spct.fingerprint(stage) == spct.fingerprint(before)
  assert spct._finished("rft_generate", files.as_path(tmp_path), stage)["summary"] == {"items": 4}
  stage.rft.position_hints = True
  with pytest.raises(validation.ConfigError, match=r"\(changed: \['rft.position_hints'\]\)"):
    spct._finished("rft_generate", files.as_path(tmp_path), stage)


def _results(runs, swap=None):
  per_item = lambda acc: {"accuracy_strict": acc, "accuracy_tie_random": acc}
  overall = lambda acc: {"items": len(acc), "accuracy_strict": sum(acc) / len(acc),
                         "accuracy_tie_random": sum(acc) / len(acc), "parse_rate": 1.0, "ci95": {}}
  dataset = {"runs": {name: {"per_item": per_item(acc), "overall": overall(acc)} for name, acc in runs.items()},
             "position_swap": swap, "counts": {"items": 4}}
  from spct_jax.evaluators import metrics
  datasets = {"llmbar": dataset}
  return {"datasets": datasets, "pooled": metrics.pooled(datasets)}


def test_table_three_rows_from_the_eval_stages(tmp_path):
  config = _config()
  swap = {"consistency": 0.25, "per_item": {"consistent": [1.0, 0.0, 0.0, 0.0]}}
  for stage, runs in {"eval_base": {"greedy": [1, 0, 1, 0]}, "eval_rft": {"greedy": [1, 1, 1, 0]},
                      "eval_final": {"greedy": [1, 1, 1, 1], "voting@1": [0, 1, 1, 1], "voting@2": [1, 1, 1, 0],
                                     "metarm@2": [1, 1, 1, 1]}}.items():
    (tmp_path / stage).mkdir()
    (tmp_path / stage / "results.json").write_text(json.dumps(_results(runs, swap)))
  bon = _results({"greedy": [0, 1]})  # a best-of-N list: no position swap
  data = json.loads((tmp_path / "eval_base" / "results.json").read_text())
  data["datasets"]["rmb_bon"] = bon["datasets"]["llmbar"] | {"position_swap": None}
  (tmp_path / "eval_base" / "results.json").write_text(json.dumps(data))
  (tmp_path / "eval_base" / spct.STAGE_FILE).write_text(json.dumps({"seconds": 12.5, "summary": {"step": 0}}))
  table = spct.build_table(files.as_path(tmp_path), config)
  assert table["stages"] == {"eval_base": {"seconds": 12.5, "summary": {"step": 0}}}  # what each stage cost
  assert [(r["row"], r["pooled"]["accuracy_tie_random"]) for r in table["rows"]] == [
      ("base greedy", 0.5), ("RFT greedy", 0.75), ("RFT+GRPO greedy", 1.0), ("RFT+GRPO k=1 sampled", 0.75),
      ("RFT+GRPO Voting@2", 0.75), ("RFT+GRPO MetaRM@2", 1.0)]
  assert table["rows"][0]["position_swap"]["consistency"] == 0.25 and "position_swap" not in table["rows"][3]
  text = spct.format_table(table)
  assert "| base greedy | 50.0 | 50.0 | 50.0 [" in text and text.count("\n| RFT") == 5  # llmbar, rmb_bon, all
  assert table["rows"][0]["position_swap"]["datasets"] == ["llmbar"]  # the list has no swaps
  assert "consistency" not in table["rows"][0]["datasets"]["rmb_bon"]
  assert spct.build_table(files.as_path(tmp_path / "none"), config) is None
  (tmp_path / spct.TABLE_MD).write_text(text)
  published = files.as_path(tmp_path / "results" / "run")
  assert spct.publish(files.as_path(tmp_path), published) == [spct.TABLE_MD]  # only what exists
  assert (published / spct.TABLE_MD).read_text() == text
