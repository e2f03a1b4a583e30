"""seqio / TFDS integration: the only module in spct_jax that imports TensorFlow.

`register_tasks(data_root)` registers one `seqio.Task` per dataset, named `spct_<reader name>` plus
`spct_synthetic`. Each task's source is a `seqio.FunctionDataSource` yielding one example per item:
  item_json      tf.string  PreferenceItem.to_json() (the whole item; decoded back with `features_to_item`)
  uid            tf.string
  num_responses  tf.int32
  best_index     tf.int32   (0 for n = 1 items, whose label is the rating in item_json)
No tokenization happens here: prompts are rendered by the GRM templates from the decoded items, so training and
evaluation read the same examples the same way. Real datasets expose one split, "test" (the shared copies are
evaluation sets); the synthetic task exposes "train", "validation" and "test", drawn from disjoint index ranges
of one seed (`SYNTHETIC_SPLIT_STARTS`).

Sharding: `load_items_from_task(..., shard_index=i, num_shards=k)` passes `seqio.ShardInfo`; a function source
has one input shard, so seqio shards the examples with `tf.data.Dataset.shard` (strided), which equals
`readers.shard_for_process(items, i, k)`.

`SpctSynthetic` is a TFDS `GeneratorBasedBuilder` materialising the synthetic items to a data_dir.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from spct_jax.data import readers, schema, synthetic

TASK_PREFIX = "spct_"
SYNTHETIC = "synthetic"
REAL_SPLITS = ("test",)
SYNTHETIC_SPLIT_STARTS = {"train": 0, "validation": 10**9, "test": 2 * 10**9}
DEFAULT_SYNTHETIC_SIZES = {"train": 2000, "validation": 200, "test": 200}

_TEXT = seqio.Feature(vocabulary=seqio.PassThroughVocabulary(size=0), add_eos=False, dtype=tf.string, rank=0)
_INT = seqio.Feature(vocabulary=seqio.PassThroughVocabulary(size=0), add_eos=False, dtype=tf.int32, rank=0)
OUTPUT_FEATURES = {"item_json": _TEXT, "uid": _TEXT, "num_responses": _INT, "best_index": _INT}


def task_name(dataset: str) -> str:
  return TASK_PREFIX + dataset


def item_to_features(item: schema.PreferenceItem) -> dict[str, Any]:
  return {
      "item_json": item.to_json(),
      "uid": item.uid,
      "num_responses": item.num_responses,
      "best_index": item.best_index,
  }


def features_to_item(example: Mapping[str, Any]) -> schema.PreferenceItem:
  """Decodes one numpy example (bytes or str `item_json`) back to a validated item."""
  text = example["item_json"]
  if isinstance(text, bytes):
    text = text.decode("utf-8")
  return schema.PreferenceItem.from_json(text).validate()


def _freeze(opts: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
  # lru_cache keys must be hashable: lists in options become tuples.
  return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (opts or {}).items()))


@functools.lru_cache(maxsize=32)
def _real_items(name: str, root: str, opts: tuple[tuple[str, Any], ...]) -> tuple[schema.PreferenceItem, ...]:
  # Cached so repeated get_dataset calls (epochs, shards in one process) parse the files once.
  return tuple(readers.read_dataset(name, root, **dict(opts)).items)


def _real_split(name: str, root: str, opts: tuple[tuple[str, Any], ...], split: str):
  del split  # Real datasets have the single split "test".
  return _real_items(name, root, opts)


def _synthetic_items(split: str, sizes: Mapping[str, int], opts: Mapping[str, Any]) -> list[schema.PreferenceItem]:
  return synthetic.generate_items(sizes[split], start=SYNTHETIC_SPLIT_STARTS[split], **opts)


def _to_dataset(items: Sequence[schema.PreferenceItem]) -> tf.data.Dataset:
  columns = {key: [] for key in OUTPUT_FEATURES}
  for item in items:
    for key, value in item_to_features(item).items():
      columns[key].append(value)
  tensors = {
      "item_json": tf.constant(columns["item_json"], dtype=tf.string, shape=[len(items)]),
      "uid": tf.constant(columns["uid"], dtype=tf.string, shape=[len(items)]),
      "num_responses": tf.constant(columns["num_responses"], dtype=tf.int32, shape=[len(items)]),
      "best_index": tf.constant(columns["best_index"], dtype=tf.int32, shape=[len(items)]),
  }
  return tf.data.Dataset.from_tensor_slices(tensors)


def _add_task(name: str, splits: Sequence[str], items_fn) -> None:
  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # One in-memory shard; the Task shuffles examples when asked.
    if split not in splits:
      raise ValueError(f"task {name!r} has no split {split!r}; splits: {list(splits)}")
    return _to_dataset(items_fn(split))

  # Remove first so registering again (new root, new options) replaces the task: idempotent by construction.
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(dataset_fn=dataset_fn, splits=tuple(splits)),
      output_features=OUTPUT_FEATURES,
      preprocessors=[],
  )


def register_tasks(
    data_root: Path | str | None,
    *,
    names: Iterable[str] | None = None,
    reader_options: Mapping[str, Mapping[str, Any]] | None = None,
    synthetic_sizes: Mapping[str, int] | None = None,
    synthetic_options: Mapping[str, Any] | None = None,
) -> list[str]:
  """Registers `spct_<name>` tasks; returns their task names. Safe to call again (tasks are replaced).

  Args:
    data_root: folder holding the dataset folders (rmb/, llmbar/, ...); may be None when only "synthetic" is
      requested. Files are read lazily, on the first `get_dataset`.
    names: dataset names (`readers.READERS` keys and/or "synthetic"); default all of them.
    reader_options: per-dataset keyword options for its reader, e.g. {"rm_bench": {"pairs": "diagonal"}}.
    synthetic_sizes: items per synthetic split; default `DEFAULT_SYNTHETIC_SIZES`.
    synthetic_options: keywords for `synthetic.generate_items` (seed defaults to 0).
  """
  names = list(names) if names is not None else [*readers.READERS, SYNTHETIC]
  unknown = sorted(set(names) - set(readers.READERS) - {SYNTHETIC})
  if unknown:
    raise ValueError(f"unknown datasets {unknown}; known: {sorted(readers.READERS)} and {SYNTHETIC!r}")
  reader_options = reader_options or {}
  bad_options = sorted(set(reader_options) - set(readers.READERS))
  if bad_options:
    raise ValueError(f"reader_options for unknown datasets {bad_options}")
  needs_root = [n for n in names if n != SYNTHETIC]
  if needs_root and data_root is None:
    raise ValueError(f"datasets {needs_root} need a data_root")
  registered = []
  for name in names:
    if name == SYNTHETIC:
      sizes = {**DEFAULT_SYNTHETIC_SIZES, **(synthetic_sizes or {})}
      opts = {"seed": 0, **(synthetic_options or {})}
      items_fn = functools.partial(_synthetic_items, sizes=sizes, opts=opts)
      _add_task(task_name(name), tuple(SYNTHETIC_SPLIT_STARTS), items_fn)
    else:
      items_fn = functools.partial(_real_split, name, str(Path(data_root)), _freeze(reader_options.get(name)))
      _add_task(task_name(name), REAL_SPLITS, items_fn)
    registered.append(task_name(name))
  return registered


def load_items_from_task(
    task: str, split: str, *, shard_index: int = 0, num_shards: int = 1
) -> list[schema.PreferenceItem]:
  """Reads a registered task's split back to items, in order (no shuffling), this shard only."""
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise ValueError(f"need 0 <= shard_index < num_shards, got {shard_index}, {num_shards}")
  shard_info = seqio.ShardInfo(index=shard_index, num_shards=num_shards) if num_shards > 1 else None
  ds = seqio.get_mixture_or_task(task).get_dataset(
      sequence_length=None, split=split, shuffle=False, shard_info=shard_info, try_in_mem_cache=False)
  return [features_to_item(example) for example in ds.as_numpy_iterator()]


# TFDS builder -------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  """Sizes and generator options of a materialised synthetic dataset."""

  num_train: int = 2000
  num_validation: int = 200
  num_test: int = 200
  seed: int = 0
  num_responses: int | tuple[int, int] = 2
  difficulty: str | tuple[str, ...] = "easy"


class SpctSynthetic(tfds.core.GeneratorBasedBuilder):
  """The synthetic verifiable preference items as a TFDS dataset (same features as the seqio tasks)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Arithmetic, unit conversion, sorting and string-edit items."}
  BUILDER_CONFIGS = [SyntheticConfig(name="default", description="2000 / 200 / 200 easy pairs")]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # TFDS looks next to the builder's source for a checksums file; we download nothing. Returning None also
    # avoids TFDS's lazy `importlib_resources` import, which is not installed here.
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "item_json": tfds.features.Text(),
            "uid": tfds.features.Text(),
            "num_responses": tf.int32,
            "best_index": tf.int32,
        }),
        description="spct-jax synthetic verifiable preference items (computed ground truth).",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    config = self.builder_config
    sizes = {"train": config.num_train, "validation": config.num_validation, "test": config.num_test}
    return {split: self._generate_examples(split, n) for split, n in sizes.items()}

  def _generate_examples(self, split: str, num_items: int):
    config = self.builder_config
    items = synthetic.generate_items(
        num_items, seed=config.seed, num_responses=config.num_responses, difficulty=config.difficulty,
        start=SYNTHETIC_SPLIT_STARTS[split])
    for item in items:
      yield item.uid, item_to_features(item)


def load_synthetic_tfds(split: str, *, data_dir: Path | str, config: SyntheticConfig | str = "default"
                        ) -> list[schema.PreferenceItem]:
  """Builds (if needed) and reads a `SpctSynthetic` split from data_dir, in generation order."""
  builder = SpctSynthetic(data_dir=str(data_dir), config=config)
  builder.download_and_prepare()
  ds = builder.as_dataset(split=split, shuffle_files=False)
  items = [features_to_item(example) for example in tfds.as_numpy(ds)]
  # TFDS orders examples by a hash of their key; restore the generation order (uid index).
  return sorted(items, key=lambda item: int(item.uid.rsplit(":", 1)[1]))
