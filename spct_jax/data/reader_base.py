"""Pieces every dataset reader shares: result types, tallies, file loading, record errors, response order.

Pure Python (json, gzip, numpy for the seeded shuffle); never imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spct_jax.data import schema

ORDERS = ("source", "shuffled")


@dataclasses.dataclass(frozen=True)
class ReadStats:
  """What a reader saw.

  Attributes:
    records: source records read (lines, list entries; RM-Bench: prompts).
    kept: items produced (RM-Bench makes several items per prompt, so kept can exceed records).
    skipped: reason -> records (RM-Bench: candidate pairs) dropped for that reason.
    notes: counts of documented fix-ups applied while reading (e.g. merged turns), kept or not.
  """

  records: int
  kept: int
  skipped: Mapping[str, int]
  notes: Mapping[str, int]

  @property
  def num_skipped(self) -> int:
    return sum(self.skipped.values())


@dataclasses.dataclass(frozen=True)
class ReadResult:
  items: list[schema.PreferenceItem]
  stats: ReadStats


class Tally:
  """Mutable counter a reader fills while it reads; `result()` freezes it.

  Args:
    where: the file or folder read, named when nothing is kept.
  """

  def __init__(self, where: Path | str):
    self.where = where
    self.records = 0
    self.items: list[schema.PreferenceItem] = []
    self.skipped: Counter[str] = Counter()
    self.notes: Counter[str] = Counter()

  def skip(self, reason: str):
    self.skipped[reason] += 1

  def note(self, what: str):
    self.notes[what] += 1

  def keep(self, item: schema.PreferenceItem):
    self.items.append(item.validate())

  def skip_if_unjudgeable(self, responses: Sequence[str], ratings: Sequence[float]) -> bool:
    """Counts and returns True when (responses, ratings) has a tied or duplicated best (schema policy)."""
    reason = schema.skip_reason(responses, ratings)
    if reason is not None:
      self.skip(reason)
    return reason is not None

  def result(self) -> ReadResult:
    """The items and stats; ValueError naming the source and the skip counts when no item was kept."""
    if not self.items:
      if not self.records:
        raise ValueError(f"{self.where}: no records (empty files, or no file matched the subset/domain filters)")
      counts = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
      raise ValueError(f"{self.where}: no items: all {self.records} records were skipped ({counts})")
    stats = ReadStats(
        records=self.records,
        kept=len(self.items),
        skipped=dict(sorted(self.skipped.items())),
        notes=dict(sorted(self.notes.items())),
    )
    return ReadResult(items=self.items, stats=stats)


def dataset_dir(root: Path | str, name: str) -> Path:
  """`root/name`, or FileNotFoundError naming it; root is the shared data root (holding rmb/, llmbar/, ...)."""
  path = Path(root) / name
  if not path.is_dir():
    raise FileNotFoundError(f"dataset directory {path} does not exist (root should be the data root)")
  return path


def find_files(directory: Path, patterns: Sequence[str]) -> list[Path]:
  """Files under `directory` matching any glob, sorted by relative path so the order is the same everywhere."""
  found = {p for pattern in patterns for p in directory.rglob(pattern) if p.is_file()}
  if not found:
    raise FileNotFoundError(f"no files matching {list(patterns)} under {directory}")
  stems = Counter(str(p)[:-3] if p.suffix == ".gz" else str(p) for p in found)
  clashes = sorted(stem for stem, count in stems.items() if count > 1)
  if clashes:
    # x.json and x.json.gz would give the same uids (uids drop ".gz") and double-count the records.
    raise ValueError(f"both compressed and uncompressed copies of {clashes}; keep one")
  return sorted(found, key=lambda p: p.relative_to(directory).as_posix())


def uid_prefix(path: Path, root: Path | str) -> str:
  """The file part of a uid: path relative to the data root, without ".gz" (uids survive re-compression)."""
  rel = Path(path).relative_to(Path(root)).as_posix()
  return rel[:-3] if rel.endswith(".gz") else rel


_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def _not_utf8(path: Path, data: bytes, err: UnicodeDecodeError, line: int | None = None) -> ValueError:
  """ValueError naming the file, line and column of the first byte that is not UTF-8 in `data`."""
  if line is None:  # `data` is the whole file: count lines up to the bad byte
    line = data.count(b"\n", 0, err.start) + 1
  column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
  return ValueError(f"{path}: line {line} column {column}: not UTF-8 (byte 0x{data[err.start]:02x}: {err.reason})")


def _gzip_error(path: Path, err: Exception, after_line: int | None = None) -> ValueError:
  where = "" if after_line is None else f" after line {after_line}"
  return ValueError(f"{path}: truncated or corrupt gzip data{where} ({type(err).__name__}: {err})")


def load_json_list(path: Path) -> list[Any]:
  """A whole-file JSON list (optionally gzipped); ValueError naming the file (and line) on bad bytes or JSON."""
  try:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
  except _GZIP_ERRORS as err:
    raise _gzip_error(path, err) from None
  except OSError as err:
    raise ValueError(f"{path}: cannot read: {err}") from None
  try:
    obj = json.loads(data.decode("utf-8"))
  except UnicodeDecodeError as err:
    raise _not_utf8(path, data, err) from None
  except json.JSONDecodeError as err:
    raise ValueError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
  if not isinstance(obj, list):
    raise ValueError(f"{path}: expected a JSON list of records, got {type(obj).__name__}")
  return obj


def iter_jsonl(path: Path) -> Iterator[tuple[int, int, Any]]:
  """Yields (record index, 1-based line, decoded object) per non-blank line; ValueError naming file and line.

  Raises ValueError for invalid JSON, bytes that are not UTF-8 (with the column) and truncated gzip data (with
  the last complete line), all naming the file.
  """
  index, line_no = 0, 0
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    lines = enumerate(f, start=1)
    while True:
      try:
        line_no, raw = next(lines)
      except StopIteration:
        return
      except _GZIP_ERRORS as err:
        raise _gzip_error(path, err, after_line=line_no) from None
      if not raw.strip():
        continue
      try:
        obj = json.loads(raw.decode("utf-8"))
      except UnicodeDecodeError as err:
        raise _not_utf8(path, raw, err, line=line_no) from None
      except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {line_no} (record {index}): invalid JSON: {err.msg}") from None
      yield index, line_no, obj
      index += 1


@contextlib.contextmanager
def record_errors(path: Path, index: int, line: int | None = None):
  """Re-raises parsing errors of one record as ValueError naming the file and record (and line)."""
  try:
    yield
  except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
    where = f"record {index}" if line is None else f"line {line} (record {index})"
    detail = f"missing key {err}" if isinstance(err, KeyError) else str(err)
    raise ValueError(f"{path}: {where}: {detail}") from err


def get_str(record: Mapping[str, Any], key: str) -> str:
  """record[key], which must be a string."""
  if not isinstance(record, Mapping):
    raise TypeError(f"expected a JSON object, got {type(record).__name__}")
  value = record[key]
  if not isinstance(value, str):
    raise ValueError(f"field {key!r} must be a string, got {type(value).__name__}")
  return value


def check_order(order: str):
  if order not in ORDERS:
    raise ValueError(f"order must be one of {ORDERS}, got {order!r}")


def arrange(item: schema.PreferenceItem, order: str, seed: int) -> schema.PreferenceItem:
  """Applies the response-order policy.

  "source" keeps the file's order. "shuffled" permutes responses with an RNG keyed on (seed, crc32(uid)): the
  same item gets the same order on every host and run, independent of which other items were read. Datasets that
  store the chosen response first need this, or "always pick Response 1" would score 100%.
  """
  if order == "source" or item.num_responses < 2:
    return item
  rng = np.random.default_rng([seed, zlib.crc32(item.uid.encode("utf-8"))])
  return item.with_order([int(i) for i in rng.permutation(item.num_responses)])


def single_turn(query: str) -> tuple[tuple[str, str], ...]:
  return ((schema.USER, query),)
