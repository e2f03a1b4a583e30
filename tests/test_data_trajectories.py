"""The trajectory dataset: atomic ArrayRecord shards, resume after a kill, TFDS metadata, reader, stats.json."""

import json
import os

import pytest
import tensorflow_datasets as tfds

from scripted_grm import ScriptedGRM, larger_case, position_case
from spct_jax import rft
from spct_jax.data import readers, trajectories

NUM_SHARDS = 3


def items_and_teacher():
  items, behaviours = larger_case()
  return items, ScriptedGRM(items, behaviours)


def shard_records(grm, items, shard):
  return rft.generate_shard(grm, readers.shard_for_process(items, shard, NUM_SHARDS), shard=shard, batch_size=2,
                            seed=7)[0]


def run(directory, shards=None, process=(0, 1)):
  """Generates and writes this process's pending shards (or the given ones)."""
  items, grm = items_and_teacher()
  writer = trajectories.TrajectoryWriter(directory, NUM_SHARDS, fingerprint={"seed": 7})
  for s in writer.pending(*process) if shards is None else shards:
    writer.write(s, shard_records(grm, items, s))
  return writer


def files(directory):
  return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  root = tmp_path_factory.mktemp("whole")
  stats = run(root / "trajectories").finalize(stats_path=root / "stats.json")
  return root, stats


def test_written_records_read_back(uninterrupted):
  root, stats = uninterrupted
  directory = root / "trajectories"
  items, grm = items_and_teacher()
  expected = [t for s in range(NUM_SHARDS) for t in shard_records(grm, items, s)]
  assert trajectories.read_trajectories(directory) == expected
  assert trajectories.read_trajectories(directory, kept=True) == [t for t in expected if t.kept]
  assert trajectories.read_trajectories(directory, hinted=False) == [t for t in expected if not t.hinted]
  assert trajectories.read_trajectories(directory, kept=True, shard_index=1, num_shards=2) == \
      [t for t in expected if t.kept][1::2]
  assert any(t.kept for t in expected) and any(t.hinted for t in expected) and any(not t.valid for t in expected)
  # Plain TFDS reads it too.
  builder = tfds.builder_from_directory(os.fspath(directory))
  assert builder.info.splits["train"].num_examples == len(expected)
  assert [len(trajectories.read_shard(writer_path)) for writer_path in sorted(directory.glob("*array_record*"))] == \
      builder.info.splits["train"].shard_lengths
  assert trajectories.from_example(builder.as_data_source("train")[0]) == expected[0]
  # stats.json: merged per source, equal to the stats of the records.
  assert stats == rft.stats_from_trajectories(expected) == trajectories.read_stats(root / "stats.json")
  assert json.loads((root / "stats.json").read_text())["total"]["items_seen"] == len(items)


def test_position_hinted_records_read_back_and_are_counted(tmp_path):
  items, behaviours = position_case()
  records, stats = rft.generate_shard(ScriptedGRM(items, behaviours), items, shard=0, batch_size=4, seed=3,
                                      position_hints=True)
  writer = trajectories.TrajectoryWriter(tmp_path / "trajectories", 1)
  writer.write(0, records)
  stats_path = tmp_path / "stats.json"
  assert writer.finalize(stats_path=stats_path) == stats == trajectories.read_stats(stats_path)
  assert sum(s.position_hinted_kept for s in stats.values()) > 0
  assert trajectories.read_trajectories(tmp_path / "trajectories") == records
  assert trajectories.read_trajectories(tmp_path / "trajectories", hinted=False) == [t for t in records if not t.hinted]


def test_killed_run_resumes_to_an_identical_dataset(tmp_path, uninterrupted):
  directory = tmp_path / "trajectories"
  run(directory, shards=[2])
  items, grm = items_and_teacher()
  writer = trajectories.TrajectoryWriter(directory, NUM_SHARDS, fingerprint={"seed": 7})

  def dies_midway():
    records = shard_records(grm, items, 0)
    yield from records[:3]
    raise KeyboardInterrupt("killed")

  with pytest.raises(KeyboardInterrupt):
    writer.write(0, dies_midway())
  (directory / f".{writer.path(1).name}.abc.tmp").write_bytes(b"half a shard")  # what a SIGKILL leaves behind
  assert writer.pending() == [0, 1] and not writer.path(0).exists()
  with pytest.raises(FileNotFoundError, match=r"shards \[0, 1\]"):
    writer.finalize()
  run(directory)  # the re-run: skips shard 2, writes 0 and 1, removes the stale temporary file
  trajectories.TrajectoryWriter(directory, NUM_SHARDS, fingerprint={"seed": 7}).finalize(
      stats_path=tmp_path / "stats.json")
  whole, _ = uninterrupted
  assert files(directory) == files(whole / "trajectories")
  assert (tmp_path / "stats.json").read_bytes() == (whole / "stats.json").read_bytes()


def test_two_processes_write_disjoint_shards_of_the_same_dataset(tmp_path, uninterrupted):
  directory = tmp_path / "trajectories"
  assert run(directory, process=(1, 2)).pending(1, 2) == []
  writer = run(directory, process=(0, 2))
  assert writer.pending() == []
  writer.finalize()
  assert files(directory) == files(uninterrupted[0] / "trajectories")


def test_refuses_foreign_shards_and_other_runs(tmp_path):
  directory = tmp_path / "trajectories"
  writer = run(directory, shards=[0])
  with pytest.raises(FileExistsError, match="already complete"):
    writer.write(0, [])
  with pytest.raises(ValueError, match="another split into shards"):
    trajectories.TrajectoryWriter(directory, NUM_SHARDS + 1, fingerprint={"seed": 7})
  with pytest.raises(ValueError, match="belongs to another run"):
    trajectories.TrajectoryWriter(directory, NUM_SHARDS, fingerprint={"seed": 8})
  with pytest.raises(FileNotFoundError, match="not a finished trajectory dataset"):
    trajectories.read_trajectories(directory)


def test_serialization_is_deterministic_across_processes(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  code = ("import sys; sys.path.insert(0, 'tests'); from scripted_grm import constructed_case, ScriptedGRM; "
          "from spct_jax import rft; from spct_jax.data import trajectories; items, b = constructed_case(); "
          "t, _ = rft.generate_batch(ScriptedGRM(items, b), items, seed=1); "
          "sys.stdout.write(b''.join(trajectories.serialize(x) for x in t).hex())")
  outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=dict(os.environ, PYTHONHASHSEED=str(seed)), timeout=300).stdout
             for seed in (1, 2)}
  assert len(outputs) == 1 and len(outputs.pop()) > 1000
