"""The seqio Task over RFT trajectories (SFT's input) and the feature converter that makes decoder batches.

`register_rft_task(trajectories_dir, tokenizer)` registers `spct_rft` (a run's workdir is only known at run time,
so registration takes the directory). Its source reads the KEPT records of a finished trajectory dataset
(`data/trajectories.py`) and yields
  inputs   the record's `train_prompt` (no hint, SFT's demonstrations, ending with the output prefix)
  targets  its `target`: the judgement minus that output prefix
tokenized by a `seqio.SentencePieceVocabulary` on the model's own sentencepiece model.

Tokens, the rule at the seam: inputs are `encode(train_prompt, add_bos=True)` (BOS first, as the sampler encodes
prompts), targets are `encode(target)` on their own, no EOS (the stop rule ends a judgement at its scores). This is
exactly the sequence the GRM sees at inference, its prompt as the sampler tokenizes it followed by its own tokens;
tokenizing prompt + target in one go could merge a token across the seam. (For the templates' prompts, which end in
a newline or the output prefix, both ways agree: tests/test_data_sft_task.py.)
Examples longer than `sequence_length["inputs"]` / `["targets"]` are DROPPED, not trimmed: a truncated judgement
loses its scores. Size the lengths from the data (`token_lengths`).

Sharding: the source supports arbitrary sharding; with `seqio.ShardInfo(index, num_shards)` (e.g. index =
jax.process_index()) a process reads kept[index::num_shards] of the (seeded, when shuffled) record order.

`DecoderBatchConverter` is seqio's PrefixLM contract without its shift-right: the sequence is `BOS prompt target`,
decoder_input_tokens = sequence[:-1], decoder_target_tokens = sequence[1:], decoder_loss_weights = 1 on the
positions whose next token is a target token, plus decoder_positions and decoder_segment_ids always (packed or
not; 0 = padding). seqio's own converters shift right with id 0, which is Gemma's padding, not its BOS. The
loss over these batches is `spct_jax.train.sft`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import seqio
import tensorflow as tf

from spct_jax import files
from spct_jax.data import trajectories
from spct_jax.tokenizer import Tokenizer
from spct_jax.weights.cache import cache_dir

TASK_NAME = "spct_rft"
MODEL_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_positions",
              "decoder_segment_ids")


def vocabulary_file(tokenizer: Tokenizer) -> Path:
  """The tokenizer's serialized sentencepiece model as a file (content-addressed under the cache dir, written
  atomically once): what `seqio.SentencePieceVocabulary` opens."""
  data = tokenizer.serialized_model
  path = cache_dir() / "tokenizers" / f"{hashlib.sha256(data).hexdigest()[:24]}.model"
  if not path.is_file():
    with files.atomic_path(path) as tmp:
      Path(tmp).write_bytes(data)
  return path


def vocabulary(tokenizer: Tokenizer | str | os.PathLike) -> seqio.SentencePieceVocabulary:
  """A seqio vocabulary on a `Tokenizer` (e.g. rebuilt from a GGUF) or a `tokenizer.model` path."""
  path = vocabulary_file(tokenizer) if isinstance(tokenizer, Tokenizer) else Path(tokenizer)
  if not path.is_file():
    raise FileNotFoundError(f"sentencepiece model {os.fspath(path)!r} does not exist")
  return seqio.SentencePieceVocabulary(os.fspath(path))


class TrajectorySource(seqio.DataSource):
  """The kept records of a finished trajectory dataset as examples {inputs, targets, uid} (text) + sample_index."""

  def __init__(self, directory: str | os.PathLike):
    super().__init__(splits=(trajectories.SPLIT,), caching_permitted=False)
    self.directory = Path(directory)
    self._kept: list | None = None

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def _load(self) -> list:
    if self._kept is None:  # read on first use: the directory may be written after registration
      self._kept = trajectories.read_trajectories(self.directory, kept=True)
    return self._kept

  def list_shards(self, split: str) -> Sequence[str]:
    return [os.fspath(p) for p in sorted(self.directory.glob(f"{trajectories.DATASET_NAME}-{split}.*"))]

  def num_input_examples(self, split: str) -> int:
    return len(self._load())

  def get_dataset(self, split: str = trajectories.SPLIT, shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None, use_cached: bool = False,
                  num_epochs: int | None = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs  # seqio's Task applies these
    if split not in self.splits:
      raise ValueError(f"{self.directory}: no split {split!r}; splits: {list(self.splits)}")
    kept = self._load()
    order = np.arange(len(kept))
    if shuffle:  # one permutation for every process (same seed), then strided: disjoint shards
      order = np.random.default_rng(seed).permutation(len(kept))
    if shard_info is not None:
      order = order[shard_info.index::shard_info.num_shards]
    records = [kept[i] for i in order]
    column = lambda values, dtype: tf.constant(values, dtype=dtype, shape=[len(records)])
    return tf.data.Dataset.from_tensor_slices({
        "inputs": column([t.train_prompt for t in records], tf.string),
        "targets": column([t.target for t in records], tf.string),
        "uid": column([t.uid for t in records], tf.string),
        "sample_index": column([t.sample_index for t in records], tf.int32)})


def _prepend_bos(bos_id: int):
  def prepend(dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.map(lambda ex: dict(ex, inputs=tf.concat([[bos_id], ex["inputs"]], axis=0)),
                       num_parallel_calls=tf.data.AUTOTUNE)
  return prepend


def drop_overlong(dataset: tf.data.Dataset, sequence_length: Mapping[str, int] | None) -> tf.data.Dataset:
  """Drops examples whose inputs or targets exceed their sequence length (seqio would trim them)."""
  if not sequence_length:
    return dataset
  def fits(ex):
    ok = tf.constant(True)
    for key in ("inputs", "targets"):
      if sequence_length.get(key) is not None:
        ok &= tf.size(ex[key]) <= sequence_length[key]
    return ok
  return dataset.filter(fits)


def register_rft_task(trajectories_dir: str | os.PathLike, tokenizer: Tokenizer | str | os.PathLike, *,
                      name: str = TASK_NAME, shuffle_buffer_size: int = 10_000) -> str:
  """Registers (or replaces) the SFT task over `trajectories_dir`; returns its name."""
  vocab = vocabulary(tokenizer)
  bos_id = tokenizer.bos_id if isinstance(tokenizer, Tokenizer) else Tokenizer.from_file(tokenizer).bos_id
  feature = seqio.Feature(vocabulary=vocab, add_eos=False, dtype=tf.int32)
  seqio.TaskRegistry.remove(name)  # registering again (another workdir) replaces the task
  seqio.TaskRegistry.add(
      name, source=TrajectorySource(trajectories_dir),
      preprocessors=[seqio.preprocessors.tokenize, _prepend_bos(bos_id), drop_overlong],
      output_features={"inputs": feature, "targets": feature}, shuffle_buffer_size=shuffle_buffer_size)
  return name


class DecoderBatchConverter(seqio.FeatureConverter):
  """{inputs (BOS first), targets} -> the decoder batch of `spct_jax.train.sft` (module docstring), packed or not.

  Model length = inputs length + targets length - 1 (the longest example fills a row exactly).
  """

  TASK_FEATURES = {"inputs": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
                   "targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)}
  MODEL_FEATURES = {key: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32) for key in MODEL_KEYS}
  PACKING_FEATURE_DTYPES = {}  # positions and segment ids are model features, packed or not

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    length = self.get_model_feature_lengths(task_feature_lengths)["decoder_input_tokens"]

    def to_row(ex):
      sequence = tf.concat([ex["inputs"], ex["targets"]], axis=0)
      # seqio's packer cuts every feature at its count of non-zero values, so only zero-free features are packed:
      # the tokens and the prompt width (>= 1, BOS); weights are derived after packing.
      return {"decoder_input_tokens": sequence[:-1], "decoder_target_tokens": sequence[1:],
              "inputs_width": tf.fill([tf.size(sequence) - 1], tf.size(ex["inputs"]))}

    def finish(ex):
      if self.pack:
        positions, segments = ex["decoder_input_tokens_positions"], ex["decoder_input_tokens_segment_ids"]
      else:
        segments = tf.cast(ex["inputs_width"] > 0, tf.int32)
        positions = tf.range(length) * segments
      # Position p predicts token p + 1, a target token once p + 1 >= the prompt width.
      weights = tf.cast((positions >= ex["inputs_width"] - 1) & (segments > 0), tf.int32)
      return {"decoder_input_tokens": ex["decoder_input_tokens"], "decoder_target_tokens": ex["decoder_target_tokens"],
              "decoder_loss_weights": weights, "decoder_positions": positions, "decoder_segment_ids": segments}

    ds = ds.map(to_row, num_parallel_calls=tf.data.AUTOTUNE)
    ds = self._pack_or_pad(ds, {"decoder_input_tokens": length, "decoder_target_tokens": length,
                                "inputs_width": length})
    return ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    length = task_feature_lengths["inputs"] + task_feature_lengths["targets"] - 1
    return {key: length for key in MODEL_KEYS}


def sft_batches(task: str, *, sequence_length: Mapping[str, int], batch_size: int, pack: bool = True,
                shuffle: bool = True, seed: int | None = None, num_epochs: int | None = None,
                shard_index: int = 0, num_shards: int = 1) -> tf.data.Dataset:
  """The task's decoder batches (int32 [batch_size, L], remainder dropped) for this process's shard."""
  shard_info = seqio.ShardInfo(index=shard_index, num_shards=num_shards) if num_shards > 1 else None
  return seqio.get_dataset(task, task_feature_lengths=dict(sequence_length),
                           feature_converter=DecoderBatchConverter(pack=pack), shuffle=shuffle, seed=seed,
                           num_epochs=num_epochs, shard_info=shard_info, batch_size=batch_size, verbose=False)


def token_lengths(task: str) -> dict[str, np.ndarray]:
  """Token counts of every example's inputs and targets (no length limit applied): to size sequence_length."""
  ds = seqio.get_mixture_or_task(task).get_dataset(sequence_length=None, shuffle=False, trim_output_features=False)
  lengths = {"inputs": [], "targets": []}
  for ex in ds.as_numpy_iterator():
    for key in lengths:
      lengths[key].append(len(ex[key]))
  return {key: np.asarray(v, np.int32) for key, v in lengths.items()}
