"""Dataset readers: every public preference set in the shared data folder -> `PreferenceItem`s.

`read_dataset(name, root, **opts)` dispatches through `READERS`; `root` is the data root that holds one folder per
dataset (`../shared/data` in this workspace). Every reader returns a `ReadResult` (items + `ReadStats`: records
read, items kept, skipped by reason, fix-up notes), reads files in sorted path order, and is deterministic.
Malformed records raise ValueError naming the file and the record index (and line, for JSON lines).

| name           | folder     | item per                     | default order | options                          |
|----------------|------------|------------------------------|---------------|----------------------------------|
| `rmb_pairwise` | rmb/       | pair                         | shuffled      |                                  |
| `rmb_bon`      | rmb/       | best-of-N list (n = 3..7)    | shuffled      |                                  |
| `llmbar`       | llmbar/    | pair                         | source        | subsets                          |
| `hh_rlhf`      | hh-rlhf/   | pair (multi-turn context)    | shuffled      | subsets, split                   |
| `pandalm`      | pandalm/   | pair, majority of 3 votes    | source        |                                  |
| `judgebench`   | judgebench/| pair (objective labels)      | source        |                                  |
| `rm_bench`     | rm-bench/  | 9 style pairs per prompt     | shuffled      | domains, pairs ("all"/"diagonal")|
| `auto_j`       | auto-j/    | pair                         | source        |                                  |

Response order: sets that store the chosen response first (RMB, HH-RLHF, RM-Bench) are shuffled by default with
a per-item RNG keyed on (seed, uid), so the best position is balanced yet identical on every host; sets whose
A/B order is already part of the benchmark keep it. Every reader takes `order=` ("source" / "shuffled"), `seed=`.

Skips (see `schema` for the policy): "tie" (tied best: PandaLM 0-majority, Auto-J label 2), "duplicate_response"
(best text == a loser's text after strip), "prefix_mismatch" (HH-RLHF pairs that differ before the final turn),
"malformed_transcript" (HH-RLHF context not starting and ending with a Human turn), "no_majority" (PandaLM 0/1/2
split). Counts on the shared copy are asserted in tests/test_data_readers.py.

ReaLMistake (realmistake/) is not read: its data.zip is password-protected by the authors as an anti-contamination
measure (keep the decrypted text out of public places), so we neither decrypt it in code nor store the text; it
is also binary error detection on single responses rather than preferences.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from spct_jax import files
from spct_jax.data import schema
from spct_jax.data.reader_base import ReadResult, ReadStats, Tally, iter_jsonl, record_errors
from spct_jax.data.readers_pairs import (
    read_auto_j,
    read_hh_rlhf,
    read_judgebench,
    read_llmbar,
    read_pandalm,
    read_rm_bench,
)
from spct_jax.data.readers_rmb import read_rmb_bon, read_rmb_pairwise

T = TypeVar("T")

READERS: dict[str, Callable[..., ReadResult]] = {
    "rmb_pairwise": read_rmb_pairwise,
    "rmb_bon": read_rmb_bon,
    "llmbar": read_llmbar,
    "hh_rlhf": read_hh_rlhf,
    "pandalm": read_pandalm,
    "judgebench": read_judgebench,
    "rm_bench": read_rm_bench,
    "auto_j": read_auto_j,
}


def read_dataset(name: str, root: Path | str, **opts) -> ReadResult:
  """Reads dataset `name` (a `READERS` key) from the data root; opts go to its reader."""
  if name not in READERS:
    raise ValueError(f"unknown dataset {name!r}; known: {sorted(READERS)}")
  return READERS[name](Path(root), **opts)


def read_jsonl(path: Path | str) -> ReadResult:
  """Reads the generic format: one `PreferenceItem.to_json()` per line (blank lines ignored).

  Items are validated; a bad line raises ValueError naming the file and line. Nothing is skipped: the generic
  format is ours, so a tie or duplicate there is a bug in whatever wrote it.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist")
  tally = Tally(path)
  for index, line, record in iter_jsonl(path):
    tally.records += 1
    with record_errors(path, index, line):
      tally.keep(schema.PreferenceItem.from_dict(record))
  return tally.result()


def write_jsonl(items: Iterable[schema.PreferenceItem], path: Path | str) -> int:
  """Writes items (validated) in the generic format via a temporary file + rename; returns the count."""
  return files.write_lines((item.validate().to_json() for item in items), path)


def shard_for_process(items: Sequence[T], process_index: int, process_count: int) -> list[T]:
  """This process's share of `items`: strided, items[process_index::process_count].

  Strided rather than contiguous because it matches `tf.data.Dataset.shard` (what seqio does when it shards a
  function source), so reading directly and reading through `tasks.py` give each process the same items; shards
  differ in size by at most one and each sees every category. Takes ints so this module needs no jax: pass
  `jax.process_index()`, `jax.process_count()`.
  """
  if process_count < 1:
    raise ValueError(f"process_count must be >= 1, got {process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
  return list(items[process_index::process_count])


__all__ = [
    "READERS",
    "ReadResult",
    "ReadStats",
    "read_auto_j",
    "read_dataset",
    "read_hh_rlhf",
    "read_jsonl",
    "read_judgebench",
    "read_llmbar",
    "read_pandalm",
    "read_rm_bench",
    "read_rmb_bon",
    "read_rmb_pairwise",
    "shard_for_process",
    "write_jsonl",
]
