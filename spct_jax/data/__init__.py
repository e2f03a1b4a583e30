"""Preference data: schema, dataset readers and synthetic verifiable items (pure Python, no TensorFlow).

seqio / TFDS integration lives in `spct_jax.data.tasks` (benchmark Tasks, TFDS builder), `.trajectories` (the RFT
trajectory dataset) and `.sft_task` (the RFT SFT Task and its feature converter), which are deliberately NOT
imported here: importing them pulls TensorFlow (seconds, gigabytes) and only the input pipeline needs it.
"""

from spct_jax.data.readers import (
    READERS,
    ReadResult,
    ReadStats,
    read_dataset,
    read_jsonl,
    shard_for_process,
    write_jsonl,
)
from spct_jax.data.schema import SKIP_DUPLICATE, SKIP_TIE, PreferenceItem, skip_reason
from spct_jax.data.synthetic import generate_items, make_item, worked_judgement

__all__ = [
    "READERS",
    "SKIP_DUPLICATE",
    "SKIP_TIE",
    "PreferenceItem",
    "ReadResult",
    "ReadStats",
    "generate_items",
    "make_item",
    "read_dataset",
    "read_jsonl",
    "shard_for_process",
    "skip_reason",
    "worked_judgement",
    "write_jsonl",
]
