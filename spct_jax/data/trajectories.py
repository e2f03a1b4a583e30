"""The RFT trajectory dataset on disk: TFDS features, ArrayRecord shards written atomically, metadata, reader.

A dataset directory (`<workdir>/trajectories/`) holds
  rft_trajectories-train.array_record-00000-of-00008, ...   one file per work shard (TFDS's file naming)
  features.json, dataset_info.json                          written by `TrajectoryWriter.finalize`
  run.json                                                  the fingerprint of the run the shards belong to
and `tfds.builder_from_directory(dir).as_data_source("train")` reads it (ArrayRecord: random access; TFDS offers
no `as_dataset` for this format). `read_trajectories` returns `rft.Trajectory` records.

Work split: shard s holds the records of `items[s::num_shards]` of the run's item list (that is
`readers.shard_for_process(items, s, num_shards)`), and process p writes the shards s with s % process_count == p.
A shard is written under a temporary name in the same folder and renamed once closed, so it is either absent or
complete: a killed run leaves no partial shard visible, and a re-run skips the complete ones. A shard's records
depend only on its items and seeds (`rft.generate_shard`) and are serialized deterministically (sorted proto map
keys), so a resumed dataset equals an uninterrupted one file for file. num_shards bounds the work a kill loses
and the records a process holds in memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from array_record.python import array_record_module

from spct_jax import files, rft

DATASET_NAME = "rft_trajectories"
SPLIT = "train"
VERSION = "1.0.0"
RUN_FILE = "run.json"
_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
_TEXT = ("uid", "source", "item_json", "prompt", "train_prompt", "output_prefix", "judgement")
_INT = ("n", "sample_index")
_VECTORS = ("perm", "scores")
_FLAGS = ("valid", "correct", "hinted", "kept")

FEATURES = tfds.features.FeaturesDict({
    **{name: tfds.features.Text() for name in _TEXT},
    **{name: tfds.features.Scalar(dtype=np.int32) for name in _INT},
    **{name: tfds.features.Tensor(shape=(None,), dtype=np.int32) for name in _VECTORS},
    **{name: tfds.features.Scalar(dtype=np.bool_) for name in _FLAGS},
})


def to_example(t: rft.Trajectory) -> dict[str, Any]:
  return {name: getattr(t, name) for name in (*_TEXT, *_INT, *_VECTORS, *_FLAGS)}


def from_example(example: Mapping[str, Any]) -> rft.Trajectory:
  """A decoded TFDS example (bytes text, numpy values) back to a `Trajectory`."""
  text = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)
  return rft.Trajectory(**{name: text(example[name]) for name in _TEXT},
                        **{name: int(example[name]) for name in _INT},
                        **{name: tuple(int(x) for x in example[name]) for name in _VECTORS},
                        **{name: bool(example[name]) for name in _FLAGS})


def serialize(t: rft.Trajectory) -> bytes:
  """The tf.train.Example bytes of a record, with map keys sorted (byte-identical in every process)."""
  proto = tf.train.Example.FromString(FEATURES.serialize_example(to_example(t)))
  return proto.SerializeToString(deterministic=True)


def _template(directory: Path) -> tfds.core.ShardedFileTemplate:
  return tfds.core.ShardedFileTemplate(data_dir=directory, template=_TEMPLATE, dataset_name=DATASET_NAME,
                                       split=SPLIT, filetype_suffix="array_record")


def read_shard(path: str | os.PathLike) -> list[rft.Trajectory]:
  """Every record of one shard file, in order (no metadata needed)."""
  reader = array_record_module.ArrayRecordReader(os.fspath(path))
  try:
    blobs = reader.read_all()
  finally:
    reader.close()
  return [from_example(FEATURES.deserialize_example_np(blob)) for blob in blobs]


class TrajectoryWriter:
  """Writes a dataset directory shard by shard; see the module docstring for the layout and guarantees.

  fingerprint: anything JSON-able that identifies the run (config, item count, seed); stored in run.json by the
  first writer, and a directory holding another run's shards is refused instead of being mixed into.
  """

  def __init__(self, directory: str | os.PathLike, num_shards: int, *, fingerprint: Any = None):
    if num_shards < 1:
      raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    self.directory = Path(directory)
    self.num_shards = num_shards
    self.directory.mkdir(parents=True, exist_ok=True)
    self._template = _template(self.directory)
    foreign = sorted(p.name for p in self.directory.iterdir()
                     if (info := self._template.parse_filename_info(p.name)) and info.num_shards != num_shards)
    if foreign:
      raise ValueError(f"{self.directory} holds shards of another split into shards ({foreign[:3]}...), not "
                       f"{num_shards}; use a fresh directory")
    self._check_fingerprint({"num_shards": num_shards, "run": fingerprint})

  def _check_fingerprint(self, fingerprint: Any) -> None:
    path = self.directory / RUN_FILE
    if not path.is_file():
      files.write_json(fingerprint, path)  # every process writes the same content: the race is harmless
    stored = json.loads(path.read_text())
    if stored != json.loads(json.dumps(fingerprint)):
      raise ValueError(f"{path} belongs to another run: {stored} != {fingerprint}; use a fresh directory")

  def path(self, shard: int) -> Path:
    if not 0 <= shard < self.num_shards:
      raise ValueError(f"shard {shard} outside [0, {self.num_shards})")
    return Path(self._template.sharded_filepath(shard_index=shard, num_shards=self.num_shards))

  def is_complete(self, shard: int) -> bool:
    return self.path(shard).is_file()

  def pending(self, process_index: int = 0, process_count: int = 1) -> list[int]:
    """This process's shards (s % process_count == process_index) that are not written yet."""
    if not 0 <= process_index < process_count:
      raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, {process_count}")
    return [s for s in range(process_index, self.num_shards, process_count) if not self.is_complete(s)]

  def write(self, shard: int, trajectories: Iterable[rft.Trajectory]) -> Path:
    """Writes one shard atomically (temporary file, then rename); a complete shard is never rewritten."""
    path = self.path(shard)
    if path.is_file():
      raise FileExistsError(f"shard {shard} is already complete: {path}")
    for stale in self.directory.glob(f".{path.name}.*.tmp"):  # left by a killed run; this shard is ours alone
      stale.unlink()
    with files.atomic_path(path) as tmp:
      writer = array_record_module.ArrayRecordWriter(os.fspath(tmp), "group_size:1")  # TFDS's option: one record per chunk
      try:
        for t in trajectories:
          writer.write(serialize(t))
      finally:
        writer.close()
    return path

  def finalize(self, *, stats_path: str | os.PathLike | None = None,
               description: str = "spct-jax RFT trajectories") -> rft.Stats:
    """Once every shard exists: TFDS metadata and (if given) stats.json, both written atomically.

    Returns the per-source stats of all records (`rft.stats_from_trajectories`). Idempotent.
    """
    missing = [s for s in range(self.num_shards) if not self.is_complete(s)]
    if missing:
      raise FileNotFoundError(f"{self.directory}: shards {missing} of {self.num_shards} are not written yet")
    lengths, num_bytes, records = [], 0, []
    for s in range(self.num_shards):
      shard = read_shard(self.path(s))
      lengths.append(len(shard))
      num_bytes += sum(len(serialize(t)) for t in shard)
      records += shard
    stats = rft.stats_from_trajectories(records)
    if stats_path is not None:
      files.write_json(rft.stats_to_json(stats), stats_path)
    info = tfds.core.DatasetInfo(
        builder=tfds.core.DatasetIdentity(name=DATASET_NAME, version=tfds.core.Version(VERSION),
                                          data_dir=os.fspath(self.directory), module_name=""),
        features=FEATURES, description=description)
    info.set_file_format("array_record")
    info.set_splits(tfds.core.SplitDict([tfds.core.SplitInfo(
        name=SPLIT, shard_lengths=lengths, num_bytes=num_bytes, filename_template=self._template)]))
    # TFDS writes the files in place: write them into a scratch folder and rename each into the dataset;
    # dataset_info.json (what marks a dataset readable) comes last.
    scratch = self.directory / f".metadata.{os.getpid()}.tmp"
    scratch.mkdir(exist_ok=True)
    try:
      info.write_to_directory(scratch)
      names = sorted(p.name for p in scratch.iterdir())
      for name in sorted(names, key=lambda n: n == "dataset_info.json"):
        os.replace(scratch / name, self.directory / name)
    finally:
      for leftover in scratch.iterdir():
        leftover.unlink()
      scratch.rmdir()
    return stats


def data_source(directory: str | os.PathLike):
  """The finalized dataset as TFDS's random-access ArrayRecord data source (decoded numpy examples)."""
  directory = Path(directory)
  if not (directory / "dataset_info.json").is_file():
    raise FileNotFoundError(f"{directory} is not a finished trajectory dataset (no dataset_info.json; "
                            "run TrajectoryWriter.finalize)")
  return tfds.builder_from_directory(os.fspath(directory)).as_data_source(split=SPLIT)


def read_trajectories(directory: str | os.PathLike, *, kept: bool | None = None, hinted: bool | None = None,
                      shard_index: int = 0, num_shards: int = 1) -> list[rft.Trajectory]:
  """Records of a finished dataset in storage order, filtered (`kept=True`: SFT's; `hinted=False`: the meta RM's),
  then strided for this process: `selected[shard_index::num_shards]`."""
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"need 0 <= shard_index < num_shards, got {shard_index}, {num_shards}")
  source = data_source(directory)
  records = [from_example(source[i]) for i in range(len(source))]
  selected = [t for t in records
              if (kept is None or t.kept == kept) and (hinted is None or t.hinted == hinted)]
  return selected[shard_index::num_shards]


def read_stats(path: str | os.PathLike) -> rft.Stats:
  with open(path, encoding="utf-8") as f:
    return rft.stats_from_json(json.load(f))

