"""seqio tasks and the TFDS builder read back exactly the items the readers / generator produce."""

import pytest
import seqio

from spct_jax.data import readers, synthetic, tasks

SIZES = {"train": 24, "validation": 6, "test": 5}
OPTIONS = {"num_responses": (1, 4), "seed": 5}


@pytest.fixture(scope="module")
def registered():
  # Synthetic only: needs no data folder.
  return tasks.register_tasks(None, names=["synthetic"], synthetic_sizes=SIZES, synthetic_options=OPTIONS)


def test_synthetic_round_trip(registered):
  assert registered == ["spct_synthetic"]
  for split, start in tasks.SYNTHETIC_SPLIT_STARTS.items():
    expected = synthetic.generate_items(SIZES[split], start=start, **OPTIONS)
    assert tasks.load_items_from_task("spct_synthetic", split) == expected


def test_example_features(registered):
  ds = seqio.get_mixture_or_task("spct_synthetic").get_dataset(sequence_length=None, split="train", shuffle=False)
  examples = list(ds.as_numpy_iterator())
  items = synthetic.generate_items(SIZES["train"], **OPTIONS)
  assert [int(e["num_responses"]) for e in examples] == [i.num_responses for i in items]
  assert [int(e["best_index"]) for e in examples] == [i.best_index for i in items]
  assert [e["uid"].decode() for e in examples] == [i.uid for i in items]


def test_registration_is_idempotent(registered):
  again = tasks.register_tasks(None, names=["synthetic"], synthetic_sizes=SIZES, synthetic_options=OPTIONS)
  assert again == registered
  assert "spct_synthetic" in seqio.TaskRegistry.names()
  # Registering with new options replaces the task rather than failing or keeping the old one.
  tasks.register_tasks(None, names=["synthetic"], synthetic_sizes={**SIZES, "test": 2}, synthetic_options=OPTIONS)
  assert len(tasks.load_items_from_task("spct_synthetic", "test")) == 2
  tasks.register_tasks(None, names=["synthetic"], synthetic_sizes=SIZES, synthetic_options=OPTIONS)
  assert len(tasks.load_items_from_task("spct_synthetic", "test")) == SIZES["test"]


def test_sharding_partitions(registered):
  everything = tasks.load_items_from_task("spct_synthetic", "train")
  shards = [tasks.load_items_from_task("spct_synthetic", "train", shard_index=i, num_shards=3) for i in range(3)]
  for i, shard in enumerate(shards):
    assert shard == readers.shard_for_process(everything, i, 3)
  assert sorted(item.uid for shard in shards for item in shard) == sorted(item.uid for item in everything)
  with pytest.raises(ValueError):
    tasks.load_items_from_task("spct_synthetic", "train", shard_index=3, num_shards=3)


def test_errors(registered):
  with pytest.raises(ValueError, match="unknown datasets"):
    tasks.register_tasks(None, names=["nope"])
  with pytest.raises(ValueError, match="need a data_root"):
    tasks.register_tasks(None, names=["synthetic", "judgebench"])
  with pytest.raises(ValueError, match="reader_options for unknown"):
    tasks.register_tasks(None, names=["synthetic"], reader_options={"nope": {}})


def test_real_dataset_matches_reader(data_root):
  names = tasks.register_tasks(data_root, names=["judgebench", "llmbar"],
                               reader_options={"llmbar": {"subsets": ["LLMBar"]}})
  assert names == ["spct_judgebench", "spct_llmbar"]
  expected = readers.read_dataset("judgebench", data_root).items
  assert tasks.load_items_from_task("spct_judgebench", "test") == expected
  shard = tasks.load_items_from_task("spct_judgebench", "test", shard_index=1, num_shards=2)
  assert shard == readers.shard_for_process(expected, 1, 2)
  # Reader options reach the reader: only the 419 LLMBar pairs.
  assert len(tasks.load_items_from_task("spct_llmbar", "test")) == 419
  # A second registration is fine and reads the same items.
  tasks.register_tasks(data_root, names=["judgebench"])
  assert tasks.load_items_from_task("spct_judgebench", "test") == expected


def test_tfds_builder(tmp_path):
  config = tasks.SyntheticConfig(name="tiny", num_train=12, num_validation=4, num_test=3, seed=9,
                                 num_responses=(2, 3))
  train = tasks.load_synthetic_tfds("train", data_dir=tmp_path, config=config)
  assert train == synthetic.generate_items(12, seed=9, num_responses=(2, 3))
  test = tasks.load_synthetic_tfds("test", data_dir=tmp_path, config=config)
  assert test == synthetic.generate_items(3, seed=9, num_responses=(2, 3), start=tasks.SYNTHETIC_SPLIT_STARTS["test"])
  assert (tmp_path / "spct_synthetic" / "tiny" / "1.0.0").is_dir()
