"""rft_generate end to end (smoke config, real processes): the dataset and stats.json, a SIGKILL and a SIGTERM
mid-run then a re-run give the uninterrupted run's dataset byte for byte, the seqio Task reads it, and a workdir
of another run is refused."""

import json
import os
import pathlib
import runpy
import shutil
import signal
import subprocess
import sys
import time

import pytest

from spct_jax import rft
from spct_jax.data import schema

REPO = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = ["--config.data.num_items=8", "--config.rft.num_shards=8", "--config.rft.batch_size=1"]
SHARDS = 8


def _command(workdir):
  return [sys.executable, "-m", "spct_jax.main", "--config=configs/rft_generate.py:smoke", f"--workdir={workdir}",
          *OVERRIDES]


def _env():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # one device, like a user's run
  return env


def _shards(workdir):
  return sorted(p.name for p in (pathlib.Path(workdir) / "trajectories").glob("rft_trajectories-train.*"))


def _files(workdir):
  folder = pathlib.Path(workdir) / "trajectories"
  return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} | {
      "stats.json": (pathlib.Path(workdir) / "stats.json").read_bytes()}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  result = subprocess.run(_command(workdir), cwd=REPO, env=_env(), capture_output=True, timeout=900)
  assert result.returncode == 0, result.stderr.decode()[-3000:]
  summary = json.loads(result.stdout.decode()[result.stdout.decode().index("{"):])
  return workdir, summary


def test_smoke_run_writes_the_dataset_and_its_stats(straight):
  from spct_jax.data import trajectories
  workdir, summary = straight
  records = trajectories.read_trajectories(workdir / "trajectories")
  assert len(_shards(workdir)) == SHARDS and (workdir / "trajectories" / "dataset_info.json").is_file()
  # The smoke teacher's verdict "Response 1 is best" is in its output prefix: a pair's judgement is right exactly
  # when the best response is shown first; a triple's never parses (2 scores), so it is hinted once and rejected.
  by_uid = {}
  for t in records:
    by_uid.setdefault(t.uid, []).append(t)
    item = schema.PreferenceItem.from_json(t.item_json)
    if t.n == 2:
      assert t.valid and t.correct == (t.perm[0] == item.best_index) and not t.hinted
    else:
      assert not t.valid and not t.correct and not t.kept
  assert len(by_uid) == 8
  for uid, group in by_uid.items():
    plain = [t for t in group if not t.hinted]
    assert [t.sample_index for t in plain] == [0, 1, 2]
    assert len(group) == 3 + (group[0].n == 3)  # hinted iff all three were wrong
    if group[0].n == 2:  # two orders for three samples: both appear, so one order is right and one wrong
      assert {t.perm for t in plain} == {(0, 1), (1, 0)} and [t.kept for t in plain] == [t.correct for t in plain]
  stats = json.loads((workdir / "stats.json").read_text())
  expected = rft.stats_to_json(rft.stats_from_trajectories(records))
  assert {k: stats[k] for k in ("sources", "total")} == expected
  pairs = sum(g[0].n == 2 for g in by_uid.values())
  assert expected["total"]["items_kept"] == pairs and expected["total"]["items_rejected_wrong"] == 8 - pairs
  assert expected["total"]["hinted_tried"] == 8 - pairs and expected["total"]["parse_failures"] == 4 * (8 - pairs)
  assert stats["selection"] == {"synthetic": {"read": 8, "dropped_shared_prompt": 0, "skipped_too_long": 0,
                                              "selected": 8}}
  assert summary["items_kept"] == pairs and summary["shards_written"] == SHARDS and summary["trajectories_per_s"] > 0


def _wait_for(predicate, proc, what, timeout=600):
  deadline = time.time() + timeout
  while not predicate():
    assert proc.poll() is None, f"the run ended before {what}"
    assert time.time() < deadline, f"timed out waiting for {what}"
    time.sleep(0.05)


@pytest.mark.slow  # three more runs of the smoke config
def test_killed_and_preempted_runs_resume_to_the_uninterrupted_dataset(tmp_path, straight):
  workdir = tmp_path / "resumed"
  proc = subprocess.Popen(_command(workdir), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  _wait_for(lambda: len(_shards(workdir)) >= 1, proc, "the first shard")
  proc.send_signal(signal.SIGKILL)  # no chance to clean up: a temporary shard file may be left behind
  proc.wait(timeout=60)
  killed_at = len(_shards(workdir))
  assert 1 <= killed_at < SHARDS and not (workdir / "trajectories" / "dataset_info.json").exists()

  proc = subprocess.Popen(_command(workdir), cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  _wait_for(lambda: len(_shards(workdir)) > killed_at, proc, "one more shard")
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=300)[0].decode()
  assert proc.returncode == 0, output[-3000:]
  stopped_at = len(_shards(workdir))
  assert killed_at < stopped_at < SHARDS, f"SIGTERM did not stop the run mid-way ({stopped_at} shards)"
  assert "SIGTERM: shard" in output and '"preempted": true' in output
  assert not (workdir / "trajectories" / "dataset_info.json").exists()

  result = subprocess.run(_command(workdir), cwd=REPO, env=_env(), capture_output=True, timeout=900)
  assert result.returncode == 0, result.stderr.decode()[-3000:]
  assert f'"shards_written": {SHARDS - stopped_at}' in result.stdout.decode()
  assert _files(workdir) == _files(straight[0])  # every shard, the TFDS metadata, stats.json: byte for byte
  assert not [p for p in (workdir / "trajectories").iterdir() if p.name.endswith(".tmp")]


def test_the_task_yields_the_kept_prompts_and_targets(straight):
  import seqio
  from spct_jax.data import sft_task, trajectories
  from spct_jax.experiments import common
  workdir, _ = straight
  tokenizer = common.synthetic_tokenizer(seed=0)  # the smoke model's vocabulary
  name = sft_task.register_rft_task(workdir / "trajectories", tokenizer, name="spct_rft_generate_test")
  examples = list(seqio.get_mixture_or_task(name).get_dataset(
      sequence_length={"inputs": 4096, "targets": 64}, shuffle=False).as_numpy_iterator())
  kept = trajectories.read_trajectories(workdir / "trajectories", kept=True)
  assert len(examples) == len(kept) >= 2
  for example, t in zip(examples, kept):
    assert list(example["inputs"]) == tokenizer.encode(t.train_prompt, add_bos=True)
    assert list(example["targets"]) == tokenizer.encode(t.target, add_bos=False)
    assert t.train_prompt.endswith(t.output_prefix) and "The best response is" not in t.train_prompt


def test_position_hints_on_the_smoke_teacher(tmp_path, straight):
  """The smoke teacher's verdict is fixed in its prefix: every kept pair showed the best response first, so each
  pair gets a position-hinted judgement showing it second, which the deaf teacher gets wrong (tried, rejected)."""
  from spct_jax.data import trajectories
  from spct_jax.experiments import rft_generate
  config = runpy.run_path(str(REPO / "configs" / "rft_generate.py"))["get_config"]("smoke")
  config.data.num_items, config.rft.num_shards, config.rft.position_hints = 4, 2, True
  config.mesh, config.progress = None, False
  summary = rft_generate.run(config, tmp_path)
  records = trajectories.read_trajectories(tmp_path / "trajectories")
  by_uid = {}
  for t in records:
    by_uid.setdefault(t.uid, []).append(t)
  pairs = [g for g in by_uid.values() if g[0].n == 2]
  assert pairs and len(pairs) < len(by_uid) == 4
  for group in by_uid.values():
    item = schema.PreferenceItem.from_json(group[0].item_json)
    hinted = [(t.sample_index, t.perm.index(item.best_index), t.correct) for t in group if t.hinted]
    assert hinted == ([(4, 1, False)] if group[0].n == 2 else [(3, hinted[0][1], False)])
  stats = json.loads((tmp_path / "stats.json").read_text())
  assert {k: stats[k] for k in ("sources", "total")} == rft.stats_to_json(rft.stats_from_trajectories(records))
  assert (summary["position_hinted_tried"], summary["position_hinted_kept"]) == (len(pairs), 0)
  assert summary["hinted_tried"] == 4 - len(pairs)
  # The option is in this run's fingerprint; a run with it off has the fingerprint it had before the option.
  assert json.loads((tmp_path / "trajectories" / "run.json").read_text())["run"]["rft"]["position_hints"] is True
  assert sorted(json.loads((straight[0] / "trajectories" / "run.json").read_text())["run"]["rft"]) == [
      "batch_size", "hinted", "n_rft", "train_demonstrations"]


def test_a_workdir_of_another_run_is_refused(tmp_path, straight):
  from spct_jax.experiments import rft_generate
  workdir = tmp_path / "copy"
  shutil.copytree(straight[0], workdir)
  config = runpy.run_path(str(REPO / "configs" / "rft_generate.py"))["get_config"]("smoke")
  config.data.num_items, config.rft.num_shards, config.rft.batch_size = 8, 8, 1
  config.mesh, config.progress = None, False
  config.grm.temperature = 0.5  # the records would differ: mixing them into this dataset would be wrong
  with pytest.raises(ValueError, match=r"run.json belongs to another run"):
    rft_generate.run(config, workdir)
  assert _files(workdir) == _files(straight[0])
