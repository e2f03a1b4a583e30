"""The meta_rm experiment on trajectory files written like rft_generate's: training, held-out metrics, the saved
model, resume after SIGTERM, and the fresh-sample stage (labels, skip on re-run, one lost shard regenerated)."""

import dataclasses
import json
import os
import pathlib
import runpy
import signal

import numpy as np
import pytest

from spct_jax import meta_rm, rft
from spct_jax.data import meta_rm_examples as mx
from spct_jax.data import synthetic, trajectories
from spct_jax.data.synthetic_judge import SyntheticJudge
from spct_jax.experiments import common, fresh_samples, selection, validation
from spct_jax.experiments import meta_rm as meta_rm_exp
from spct_jax.grm import reward
from spct_jax.grm import scorer
from spct_jax.grm.scorer import GRMOptions
from spct_jax.train import binary_metrics
from spct_jax.train.metrics import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
K = 3  # non-hinted samples per item in the written dataset


def _config(arg="smoke"):
  config = runpy.run_path(str(REPO / "configs" / "meta_rm.py"))["get_config"](arg)
  config.checkpoint.async_save = False
  return config


def _with_cue(record):
  """The judgement ends in a word that gives its label away: a separable labelling, so learning can be asserted."""
  return dataclasses.replace(record, judgement=record.judgement + ("Verdict: sound" if record.correct else
                                                                   "Verdict: flawed"))


def _write_rft_dataset(directory, num_items=12):
  """An rft_generate-like dataset: K labelled samples per item by the scripted judge (with a label cue), plus one
  hinted record per item (the meta RM must skip those)."""
  items = synthetic.generate_items(num_items, seed=5, num_responses=(1, 3))
  judge = SyntheticJudge(items, GRMOptions(output_prefix="Specific Criteria:"), error_rate=0.5)
  writer = trajectories.TrajectoryWriter(directory, 2, fingerprint={"test": "meta_rm"})
  for shard in range(2):
    records, _ = rft.generate_shard(judge, items[shard::2], shard=shard, batch_size=4, seed=0, n_rft=K,
                                    hinted=False)
    records = [_with_cue(r) for r in records]
    hinted = [dataclasses.replace(r, hinted=True, sample_index=K) for r in records if r.sample_index == 0]
    writer.write(shard, records + hinted)
  writer.finalize()
  return items


def _rft_config(tmp_path):
  _write_rft_dataset(tmp_path / "rft" / "trajectories")
  config = _config()
  config.data.trajectories_dir, config.fresh.grm = str(tmp_path / "rft"), ""
  return config


def _heldout(config, directory):
  examples = mx.examples_from_trajectories(trajectories.read_trajectories(directory, hinted=False))
  return mx.split_by_uid(examples, config.data.heldout_fraction, seed=config.data.seed)


def test_trains_reports_heldout_metrics_and_saves_a_loadable_meta_rm(tmp_path):
  config = _rft_config(tmp_path)
  summary = meta_rm_exp.run(config, tmp_path / "run")
  lines = read_metrics(tmp_path / "run")
  assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
  assert [line["step"] for line in lines if "heldout/auc" in line] == [3, 6]
  assert all(line["params_finite"] == 1.0 for line in lines)

  train, heldout = _heldout(config, tmp_path / "rft" / "trajectories")
  data = json.loads((tmp_path / "run" / "data.json").read_text())
  assert data["origins"] == {"rft": 12 * K}  # hinted records skipped
  assert data["balance"]["train"]["positives"] == sum(e.label for e in train)
  assert data["balance"]["heldout"]["examples"] == len(heldout) == lines[-1]["heldout/count"]
  labels = [e.label for e in train]
  assert data["pos_weight"] == pytest.approx((len(labels) - sum(labels)) / sum(labels))  # balance="pos_weight"
  assert lines[0]["train_positive_fraction"] == pytest.approx(np.mean(labels))

  # The saved model is the trained one: it reproduces the last held-out evaluation exactly.
  model, tokenizer = meta_rm.load_meta_rm(summary["meta_rm"])
  logits = meta_rm.as_meta_scorer(model, tokenizer).score([e.text for e in heldout])
  expected = binary_metrics.binary_metrics(logits, [e.label for e in heldout])
  for name in ("auc", "accuracy", "ece", "log_loss"):
    assert lines[-1][f"heldout/{name}"] == pytest.approx(expected[name], abs=1e-5)
  # It learned: the zero-initialized head starts at log 2 (p = 0.5 everywhere).
  assert lines[-1]["heldout/log_loss"] < np.log(2) and lines[-1]["heldout/auc"] > 0.9


@pytest.mark.slow  # three short runs
def test_sigterm_then_resume_continues_identically(tmp_path, monkeypatch):
  config = _rft_config(tmp_path)
  meta_rm_exp.run(config, tmp_path / "straight")

  original = meta_rm_exp.MetaRMBody.batch

  def batch_then_sigterm(self, step):
    if step == 1:  # step 2 finishes, is saved, and the run stops
      os.kill(os.getpid(), signal.SIGTERM)
    return original(self, step)

  monkeypatch.setattr(meta_rm_exp.MetaRMBody, "batch", batch_then_sigterm)
  stopped = meta_rm_exp.run(config, tmp_path / "resumed")
  assert stopped["preempted"] and stopped["step"] == 2 and "meta_rm" not in stopped
  assert not (tmp_path / "resumed" / "meta_rm").exists()
  monkeypatch.setattr(meta_rm_exp.MetaRMBody, "batch", original)
  meta_rm_exp.run(config, tmp_path / "resumed")

  comparable = lambda lines: [{k: v for k, v in line.items() if k != "step_time_s"} for line in lines]
  assert comparable(read_metrics(tmp_path / "straight")) == comparable(read_metrics(tmp_path / "resumed"))
  heads = [meta_rm.load_meta_rm(tmp_path / run / "meta_rm")[0].head for run in ("straight", "resumed")]
  np.testing.assert_array_equal(np.asarray(heads[0].weight[...]), np.asarray(heads[1].weight[...]))


def _shard_bytes(directory):
  return {p.name: p.read_bytes() for p in sorted(pathlib.Path(directory).glob("*.array_record-*"))}


def test_fresh_stage_writes_labelled_training_samples_and_skips_them_on_rerun(tmp_path, monkeypatch):
  config = _config()  # fresh.grm="synthetic": 16 training items x 4 samples
  stage = fresh_samples.run_stage(config, tmp_path)
  assert stage["generated_shards"] == config.fresh.num_shards
  records = trajectories.read_trajectories(stage["directory"])
  train, heldout = selection.train_and_heldout(config.data)
  assert len(records) == 16 * config.fresh.k and not any(r.hinted for r in records)
  assert {r.uid for r in records} == {item.uid for item in train[:16]}  # training items only
  assert not {r.uid for r in records} & {item.uid for item in heldout}
  for r in records:  # the label is Eq. 10 on the parsed scores, recomputed here
    item = r.item()
    original = np.zeros(r.n, np.int32)
    original[list(r.perm)] = r.scores
    assert r.valid and r.correct == bool(reward.is_correct(original[None], np.asarray(item.ratings)[None]))
  assert 0.3 < np.mean([r.correct for r in records]) < 0.9  # both labels (the judge errs 40% of the time)
  stats = json.loads((tmp_path / "fresh" / "stats.json").read_text())
  assert stats["total"]["items_seen"] == 16

  before = _shard_bytes(stage["directory"])

  def no_grm(*args):
    raise AssertionError("a complete fresh stage must not load the GRM")

  monkeypatch.setattr(fresh_samples, "_build_grm", no_grm)
  again = fresh_samples.run_stage(config, tmp_path)
  assert again["generated_shards"] == 0 and _shard_bytes(stage["directory"]) == before

  # A lost shard (a run killed before it was renamed into place) is regenerated alone, byte for byte.
  lost = sorted(before)[1]
  (pathlib.Path(stage["directory"]) / lost).unlink()
  (pathlib.Path(stage["directory"]) / "dataset_info.json").unlink()
  monkeypatch.undo()
  assert fresh_samples.run_stage(config, tmp_path)["generated_shards"] == 1
  assert _shard_bytes(stage["directory"]) == before

  config.fresh.k = 2  # another stage config in the same workdir is refused, not mixed in
  with pytest.raises(ValueError, match="belongs to another run"):
    fresh_samples.run_stage(config, tmp_path)


def test_fresh_stage_samples_a_real_grm_folder(tmp_path):
  """The trained-GRM path: a model folder (here a tiny random one) sampled with config.grm, labelled by Eq. 10."""
  from spct_jax.weights import save_model
  config = _config()
  model, tokenizer = common.build_model(config.model)
  save_model(model, model.cfg, tmp_path / "grm", tokenizer=tokenizer)
  config.fresh.grm, config.fresh.num_items, config.fresh.k, config.fresh.num_shards = str(tmp_path / "grm"), 2, 2, 1
  config.grm.max_new_tokens = 4
  stage = fresh_samples.run_stage(config, tmp_path / "run")
  records = trajectories.read_trajectories(stage["directory"])
  assert len(records) == 4 and {r.sample_index for r in records} == {0, 1}
  train, _ = selection.train_and_heldout(config.data)
  options = common.grm_options(config)
  for r in records:  # prompts of the training items, as the GRM options render them
    item = next(i for i in train if i.uid == r.uid)
    assert r.judgement.startswith(options.output_prefix) and r.prompt.endswith(options.output_prefix)
    assert r.item() == item and r.prompt == scorer.item_prompt(item, options, r.perm)
    assert not r.valid and not r.correct  # 4 random tokens do not parse: Eq. 10 calls them wrong


def test_bad_configs_fail_before_any_model_loads(tmp_path):
  config = _config()
  config.fresh.grm = ""
  with pytest.raises(validation.ConfigError, match="trajectories_dir and config.fresh.grm are both empty"):
    meta_rm_exp.run(config, tmp_path)
  config.data.trajectories_dir = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=r"config\.data\.trajectories_dir=.*nowhere.*rft_generate"):
    meta_rm_exp.run(config, tmp_path)
  config = _config()
  config.evals.heldout.type = "voting"
  with pytest.raises(validation.ConfigError, match=r"evals\.heldout\.type='voting'.*\['binary'\]"):
    meta_rm_exp.run(config, tmp_path)
  config = _config()
  config.meta_rm.balance = "oversample"
  with pytest.raises(validation.ConfigError, match=r"meta_rm\.balance='oversample'.*pos_weight"):
    meta_rm_exp.run(config, tmp_path)
  assert not (tmp_path / "checkpoints").exists()
