"""The seqio Task over RFT trajectories and the decoder-batch converter: inputs/targets, the target-only mask,
packing, per-process shards, and tokenization at the prompt/target seam."""

import numpy as np
import pytest
import seqio

import sft_batches
from scripted_grm import PREFIX, ScriptedGRM, larger_case
from spct_jax import rft
from spct_jax.data import sft_task, trajectories
from spct_jax.grm import templates

LONG = {"inputs": 2048, "targets": 64}


@pytest.fixture(scope="module")
def tokenizer():
  from spct_jax.weights import load_tokenizer  # pylint: disable=g-import-not-at-top
  return load_tokenizer("gemma3-270m")


@pytest.fixture(scope="module")
def task(tmp_path_factory, tokenizer):
  directory = tmp_path_factory.mktemp("run") / "trajectories"
  items, behaviours = larger_case()
  records, _ = rft.generate_batch(ScriptedGRM(items, behaviours), items, n_rft=3, seed=0)
  writer = trajectories.TrajectoryWriter(directory, 2)
  for s in range(2):
    writer.write(s, records[s::2])
  writer.finalize()
  kept = trajectories.read_trajectories(directory, kept=True)
  assert len(kept) >= 6
  return sft_task.register_rft_task(directory, tokenizer, name="spct_rft_test"), kept


def examples(name, **kwargs):
  ds = seqio.get_mixture_or_task(name).get_dataset(sequence_length=kwargs.pop("sequence_length", LONG),
                                                  shuffle=kwargs.pop("shuffle", False), **kwargs)
  return list(ds.as_numpy_iterator())


def test_vocabulary_encodes_like_the_project_tokenizer(tokenizer):
  vocab = sft_task.vocabulary(tokenizer)
  assert vocab.vocab_size == tokenizer.vocab_size and vocab.eos_id == tokenizer.eos_id
  for text in ["Specific Criteria: the response is \\boxed{8, 2}.", "  two  spaces\n\nand 1234 digits ü",
               templates.build_prompt("What is 2+2?", ["4", "5"], output_prefix=PREFIX)]:
    assert list(vocab.encode_tf(text).numpy()) == tokenizer.encode(text, add_bos=False)
  assert sft_task.vocabulary_file(tokenizer).read_bytes() == tokenizer.serialized_model


def test_task_yields_the_kept_prompts_and_targets(task, tokenizer):
  name, kept = task
  got = examples(name)
  assert [(ex["uid"].decode(), ex["sample_index"]) for ex in got] == [(t.uid, t.sample_index) for t in kept]
  for ex, t in zip(got, kept):
    assert list(ex["inputs"]) == tokenizer.encode(t.train_prompt, add_bos=True)
    assert list(ex["targets"]) == tokenizer.encode(t.target, add_bos=False)
    assert t.train_prompt.endswith(PREFIX) and not t.target.startswith(PREFIX)


def test_seam_separate_tokenization_equals_joint_for_template_prompts(tokenizer):
  target = " The query asks for a sum.\nAnalysis: Response 1 is right.\nScores: \\boxed{9, 2}"
  for prefix, chat in [(PREFIX, "raw"), ("", "raw"), ("", "gemma"), (PREFIX, "gemma")]:
    prompt = templates.build_prompt("What is 2+2?", ["4", "5"], output_prefix=prefix, chat_style=chat)
    tail = target if prefix else target.lstrip()
    assert tokenizer.encode(prompt) + tokenizer.encode(tail, add_bos=False) == tokenizer.encode(prompt + tail)


def test_shards_are_disjoint_and_cover_the_kept_records(task):
  name, kept = task
  shards = [examples(name, shard_info=seqio.ShardInfo(index=i, num_shards=2), shuffle=True, seed=3)
            for i in range(2)]
  uids = [[(ex["uid"].decode(), ex["sample_index"]) for ex in shard] for shard in shards]
  assert abs(len(uids[0]) - len(uids[1])) <= 1 and not set(uids[0]) & set(uids[1])
  assert len(uids[0]) + len(uids[1]) == len(kept)


def test_overlong_examples_are_dropped_not_trimmed(task, tokenizer):
  name, kept = task
  target_lengths = sorted(len(tokenizer.encode(t.target, add_bos=False)) for t in kept)
  limit = target_lengths[0]
  assert limit < target_lengths[-1]  # n = 3 judgements are longer than n = 2 ones
  got = examples(name, sequence_length={"inputs": 2048, "targets": limit})
  assert 0 < len(got) == sum(n <= limit for n in target_lengths) < len(kept)
  assert all(len(ex["targets"]) <= limit for ex in got)
  assert sorted(sft_task.token_lengths(name)["targets"]) == target_lengths


@pytest.mark.parametrize("pack", [False, True])
def test_converter_puts_the_loss_on_target_tokens_only(task, pack):
  name, kept = task
  raw = examples(name)
  # Room for about two examples per row.
  lengths = {"inputs": 2 * max(len(ex["inputs"]) for ex in raw), "targets": max(len(ex["targets"]) for ex in raw)}
  ds = seqio.get_dataset(name, task_feature_lengths=lengths, shuffle=False, verbose=False,
                         feature_converter=sft_task.DecoderBatchConverter(pack=pack))
  rows = list(ds.as_numpy_iterator())
  assert set(rows[0]) == set(sft_task.MODEL_KEYS)
  length = lengths["inputs"] + lengths["targets"] - 1
  # Rebuild the expected rows from the examples with the reference packer (greedy, in order).
  packed_rows, row, used = [], [], 0
  for ex in raw:
    size = len(ex["inputs"]) + len(ex["targets"]) - 1
    if pack and row and used + size <= length:
      row.append((ex["inputs"], ex["targets"]))
      used += size
    else:
      if row:
        packed_rows.append(row)
      row, used = [(ex["inputs"], ex["targets"])], size
  packed_rows.append(row)
  expected = sft_batches.batch(packed_rows, length)
  assert len(rows) == len(packed_rows)
  for key in sft_task.MODEL_KEYS:
    np.testing.assert_array_equal(np.stack([r[key] for r in rows]), expected[key], err_msg=key)
  # The weighted next tokens are exactly the targets, segment by segment.
  for r, segment_examples in zip(rows, packed_rows):
    for seg, (_, targets) in enumerate(segment_examples, start=1):
      on = (r["decoder_segment_ids"] == seg) & (r["decoder_loss_weights"] > 0)
      np.testing.assert_array_equal(r["decoder_target_tokens"][on], targets)
  if pack:
    assert len(rows) < len(raw)
  batches = list(sft_task.sft_batches(name, sequence_length=lengths, batch_size=2, pack=pack, shuffle=False,
                                      num_epochs=1).as_numpy_iterator())
  assert len(batches) == len(rows) // 2 and batches[0]["decoder_input_tokens"].shape == (2, length)
