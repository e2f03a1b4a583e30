"""The RFT SFT experiment (smoke config): it learns, resumes identically after a real SIGTERM, exports a model
folder that the model builder, eval and GRPO load (logits equal to the trained state's), and refuses data that
is unfinished, shares a prompt with its held-out items or comes from a held-out benchmark (so does the meta RM)."""

import pathlib
import runpy
import sys

import numpy as np
import pytest

import preempted_runs
from scripted_grm import ScriptedGRM, larger_case
from spct_jax import rft
from spct_jax.experiments import common, selection

REPO = pathlib.Path(__file__).resolve().parents[1]


def write_rft_workdir(workdir, grm, items, num_shards=2):
  """A finished rft_generate workdir (trajectories/ + stats.json) of `grm`'s judgements of `items`."""
  from spct_jax.data import trajectories
  records, _ = rft.generate_batch(grm, items, n_rft=3, seed=0)
  writer = trajectories.TrajectoryWriter(pathlib.Path(workdir) / "trajectories", num_shards)
  for s in range(num_shards):
    writer.write(s, records[s::num_shards])
  writer.finalize(stats_path=pathlib.Path(workdir) / "stats.json")
  return records


@pytest.fixture(scope="module")
def rft_dir(tmp_path_factory):
  """The scripted teacher's judgements (positional bias, hint followers, ...): ~10 kept trajectories."""
  workdir = tmp_path_factory.mktemp("generated")
  items, behaviours = larger_case()
  records = write_rft_workdir(workdir, ScriptedGRM(items, behaviours), items)
  assert sum(t.kept for t in records) >= 8
  return workdir


def smoke_config(rft_dir, **overrides):
  config = runpy.run_path(str(REPO / "configs" / "rft.py"))["get_config"]("smoke")
  config.data.rft_dir, config.mesh, config.checkpoint.async_save = str(rft_dir), None, False
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, rft_dir):
  from spct_jax.experiments import rft as rft_experiment
  workdir = tmp_path_factory.mktemp("sft")
  config = smoke_config(rft_dir, total_steps=8, **{"evals.heldout.every": 4, "optimizer.learning_rate": 3e-3})
  summary = rft_experiment.run(config, workdir)
  return config, workdir, summary


def test_sft_learns_the_judgements(trained, rft_dir):
  from spct_jax.data import trajectories
  _, workdir, summary = trained
  lines = preempted_runs.metrics(workdir)
  assert [line["step"] for line in lines] == list(range(1, 9)) and summary["step"] == 8
  losses = [line["loss"] for line in lines]
  assert np.mean(losses[-2:]) < 0.5 * losses[0], losses  # the scripted judgements are easy to learn at lr 3e-3
  kept = trajectories.read_trajectories(rft_dir / "trajectories", kept=True)
  assert lines[0]["sft_examples"] == len(kept) and lines[0]["sft_examples_dropped"] == 0
  assert lines[0]["sft_hinted"] == sum(t.hinted for t in kept) >= 1
  assert all(line["params_finite"] == 1.0 and line["tokens"] > 0 for line in lines)
  assert {"heldout/greedy/accuracy_strict", "heldout/greedy/parse_rate"} <= set(lines[3])
  assert "heldout/items" in lines[7] and "heldout/items" not in lines[2]


def test_exported_model_loads_with_the_trained_logits(trained):
  from spct_jax import checkpoint
  from spct_jax.train.step import OptimizerConfig, init_train_state, make_optimizer
  config, workdir, summary = trained
  folder = workdir / "grm"
  assert summary["model_path"] == str(folder) and (folder / "spct_config.json").is_file()
  exported, tokenizer = common.build_model(common_model(name=str(folder), max_seq_len=2048, compute_dtype="float32"))
  # The trained state, restored from the run's last checkpoint into a fresh model of the same config.
  model, smoke_tokenizer = common.build_model(config.model)
  optimizer = make_optimizer(OptimizerConfig(**config.optimizer))
  state = init_train_state(model, optimizer, config.optimizer.trainable)
  restored = checkpoint.Checkpointer(workdir / "checkpoints").restore_latest_valid(
      params_target=state.trainable, opt_state_target=state.opt_state)
  assert restored is not None and restored[0] == 8
  state.trainable = restored[1]
  tokens = np.asarray([tokenizer.encode("User: q7\nScores: \\boxed{9, 2}", add_bos=True)])
  positions = np.arange(tokens.shape[1])[None]
  np.testing.assert_array_equal(np.asarray(exported(tokens, positions)), np.asarray(state.model()(tokens, positions)))
  assert not np.allclose(np.asarray(model(tokens, positions)), np.asarray(exported(tokens, positions)), atol=1e-3)
  assert tokenizer.serialized_model == smoke_tokenizer.serialized_model and exported.cfg == model.cfg


def common_model(**overrides):
  configs = runpy.run_path(str(REPO / "configs" / "common.py"))
  return configs["model"](**overrides)


@pytest.mark.slow  # two more experiments in-process
def test_eval_and_grpo_run_on_the_exported_model(tmp_path, trained):
  from spct_jax.experiments import eval as eval_experiment, grpo
  folder = str(trained[1] / "grm")
  config = runpy.run_path(str(REPO / "configs" / "eval.py"))["get_config"]("smoke")
  config.model = common_model(name=folder, max_seq_len=2048)
  config.data.max_items, config.evals.voting.ks, config.grm.max_new_tokens, config.progress = 2, (), 4, False
  results = eval_experiment.run(config, tmp_path / "eval")
  assert results["model"]["name"] == folder and results["datasets"]["synthetic"]["counts"]["items"] == 2
  config = runpy.run_path(str(REPO / "configs" / "grpo.py"))["get_config"]("smoke")
  config.model = common_model(name=folder, max_seq_len=2048)
  config.mesh, config.total_steps, config.evals.heldout.every, config.grm.max_new_tokens = None, 1, 0, 4
  config.checkpoint.async_save = False
  assert grpo.run(config, tmp_path / "grpo")["step"] == 1


def _command(workdir, rft_dir):
  return [sys.executable, "-m", "spct_jax.main", "--config=configs/rft.py:smoke", f"--workdir={workdir}",
          f"--config.data.rft_dir={rft_dir}", "--config.total_steps=5", "--config.evals.heldout.every=0",
          "--config.checkpoint.async_save=False"]


@pytest.mark.slow  # three subprocess runs
def test_sigterm_then_resume_continues_identically(tmp_path, rft_dir):
  def not_exported(workdir):
    assert not (workdir / "grm").exists()  # the model is exported at the last step only

  a, b, _ = preempted_runs.sigterm_then_resume(lambda workdir: _command(workdir, rft_dir), tmp_path, total_steps=5,
                                               when_stopped=not_exported)
  assert [line["step"] for line in b] == [1, 2, 3, 4, 5]
  assert preempted_runs.comparable(a) == preempted_runs.comparable(b)
  assert len({line["loss"] for line in a}) == 5  # each step saw its own batch
  assert (tmp_path / "interrupted" / "grm" / "spct_config.json").is_file()


def test_unfinished_or_contaminated_data_is_refused(tmp_path, rft_dir):
  from spct_jax.experiments import rft as rft_experiment
  (tmp_path / "unfinished" / "trajectories").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match=r"holds no finished RFT dataset .*configs/rft_generate.py"):
    rft_experiment.run(smoke_config(tmp_path / "unfinished"), tmp_path / "never-created")
  assert not (tmp_path / "never-created").exists()  # refused before anything was built

  class FirstWins:  # a GRM stand-in for any item: "Response 1 is best", whatever the prompt
    options = ScriptedGRM([], {}).options

    def generate_texts(self, prompts, strategy, seed):
      return [" reasons.\nScores: \\boxed{9, 2}"] * len(prompts)

  config = smoke_config(tmp_path / "contaminated")
  heldout = selection.eval_items(config.data)[0]  # exactly the items the evaluator holds out
  write_rft_workdir(tmp_path / "contaminated", FirstWins(), heldout)
  with pytest.raises(ValueError, match=r"2 trained items per source \{'synthetic': 2\} have the prompt of a held-out"):
    rft_experiment.run(config, tmp_path / "run")
  items, _ = larger_case()
  llmbar = [item.__class__(**{**vars(item), "source": "llmbar"}) for item in items]
  write_rft_workdir(tmp_path / "llmbar", FirstWins(), llmbar)
  with pytest.raises(ValueError, match=r"training items come from \['llmbar'\]"):
    rft_experiment.run(smoke_config(tmp_path / "llmbar"), tmp_path / "run2")
  from spct_jax.experiments import meta_rm  # the meta RM refuses the same trajectories
  config = runpy.run_path(str(REPO / "configs" / "meta_rm.py"))["get_config"]("smoke")
  config.data.trajectories_dir = str(tmp_path / "llmbar")
  with pytest.raises(ValueError, match=r"training items come from \['llmbar'\]"):
    meta_rm.load_examples(config, None)
