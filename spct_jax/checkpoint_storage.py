"""Storage faults around orbax checkpoints: free space, failed writes, damaged step folders, quarantine.

The checkpointer (`spct_jax/checkpoint.py`) uses these so that a fault reads as one sentence naming the step and
the file, never as orbax's own reports of it:
- a full disk: `check_free_space` refuses a save that cannot fit before anything is written; a write that fails
  anyway (the disk filled meanwhile) becomes one `OSError` from `write_error`;
- orbax reports a failed asynchronous write from several threads (`logging.exception`, each with a traceback), and
  every TensorStore write still in flight when its asyncio loop closed prints "RuntimeError: Event loop is closed"
  (one per pending chunk: hundreds for a real model). `silence_orbax_echoes` drops exactly those duplicates;
- a damaged step folder: `damage` names what is missing or unreadable, from the files orbax 0.12 writes;
- `quarantine` moves a damaged step out of orbax's sight (kept for inspection) so its step number can be reused.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import sys
import threading
from collections.abc import Sequence
from typing import Any

import jax

from spct_jax import multihost

log = logging.getLogger(__name__)

# Items whose folder orbax's pytree handler writes with a `_METADATA` file (JSON), and JSON items (`metadata`).
PYTREE_ITEMS = ("params", "opt_state")
JSON_ITEMS = ("meta", "checksums")
QUARANTINE = "quarantine"
_JSON_FILES = ("_CHECKPOINT_METADATA", "_METADATA", "_sharding", "metadata")
_IO_ERROR = re.compile(r"RESOURCE_EXHAUSTED|PERMISSION_DENIED|DATA_LOSS|No space left|Read-only file system|"
                       r"Disk quota exceeded|os_error_code")
_FULL = re.compile(r"RESOURCE_EXHAUSTED|No space left|Disk quota exceeded|os_error_code='?(28|122)\b")


def is_io_error(err: BaseException) -> bool:
  """True for an OSError or a TensorStore status that reports a storage failure (full, read-only, lost)."""
  return isinstance(err, OSError) or bool(_IO_ERROR.search(str(err)))


def first_line(err: BaseException, limit: int = 400) -> str:
  """The first line of the innermost cause of `err` (orbax wraps TensorStore's precise status in a vague one)."""
  while (err.__cause__ or err.__context__) is not None:
    err = err.__cause__ or err.__context__
  text = str(err).strip()
  line = text.splitlines()[0] if text else type(err).__name__
  return line if len(line) <= limit else line[:limit] + "..."


def write_error(directory: str, step: int | None, err: BaseException, last_good: int | None) -> OSError:
  """One clear OSError for a checkpoint write that failed with storage error `err`."""
  full = bool(_FULL.search(str(err))) or getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
  what = "no space left on device" if full else "storage error"
  return OSError(errno.ENOSPC if full else errno.EIO,
                 f"checkpoint step {step} could not be written to {directory}: {what}; nothing of it was committed "
                 f"(newest complete step: {last_good}). Free space or move the checkpoints. Cause: {first_line(err)}")


def _local_bytes(tree: Any) -> int:
  """Bytes this process writes for `tree`: its addressable shards, one replica each."""
  total = 0
  for x in jax.tree.leaves(tree):
    if isinstance(x, jax.Array):
      total += sum(s.data.nbytes for s in x.addressable_shards if s.replica_id == 0)
    else:
      total += getattr(x, "nbytes", 8)
  return total


def check_free_space(directory: str, step: int, trees: Sequence[Any], last_good: int | None) -> str | None:
  """None if the step's `trees` fit on the file system of `directory`, else the reason. Call on every process.

  The estimate is the uncompressed size (orbax's zstd rarely shrinks trained float weights by more than ~10%);
  orbax deletes old steps only after the new one is committed, so the whole new step must fit. With several
  processes it is the sum of every process's shards (one all-gather): orbax commits a multi-process step in one
  directory, so they all write to one shared file system. URLs (gs://...) are not checked.
  """
  if "://" in directory:
    return None
  probe = directory
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  need = multihost.sum_over_processes(sum(_local_bytes(t) for t in trees))
  free = shutil.disk_usage(probe).free
  if need + (1 << 20) <= free:
    return None
  return (f"checkpoint step {step} needs about {need / 2**20:.1f} MiB in {directory} but only "
          f"{free / 2**20:.1f} MiB are free: nothing was written (newest complete step: {last_good}). Free space or "
          f"move the checkpoints.")


class _OrbaxEchoFilter(logging.Filter):
  """Drops orbax's ERROR records (with tracebacks) that repeat a storage failure the checkpointer raises."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR or "orbax" not in record.pathname.replace("\\", "/"):
      return True
    err = record.exc_info[1] if record.exc_info else None
    return not ((err is not None and is_io_error(err)) or _IO_ERROR.search(record.getMessage()))


def _is_orbax_echo(unraisable: Any) -> bool:
  err = unraisable.exc_value
  if isinstance(err, RuntimeError) and str(err) == "Event loop is closed":
    return True  # a TensorStore future finishing after orbax closed the asyncio loop that awaited it
  code = getattr(unraisable.object, "cr_code", None)  # an abandoned orbax coroutine whose error was raised already
  return code is not None and "orbax" in code.co_filename.replace("\\", "/")


_silenced = threading.Lock()
_installed = False


def silence_orbax_echoes() -> None:
  """Installs (once per process) the two filters described in the module docstring; other output is untouched."""
  global _installed
  with _silenced:
    if _installed:
      return
    _installed = True
    echo = _OrbaxEchoFilter()
    for name in ("absl", "orbax"):
      logging.getLogger(name).addFilter(echo)
    previous = sys.unraisablehook

    def hook(unraisable):
      if not _is_orbax_echo(unraisable):
        previous(unraisable)

    sys.unraisablehook = hook


def _json_problem(path: str) -> str | None:
  try:
    with open(path, "rb") as f:
      json.loads(f.read())
  except (OSError, UnicodeDecodeError, ValueError) as e:
    return f"{path} is not readable JSON ({first_line(e, 120)})"
  return None


def damage(step_dir: str) -> str | None:
  """What is missing or unreadable in a committed step folder (orbax 0.12's layout), or None if nothing is seen.

  Checks that the step's items exist, that each pytree item has its `_METADATA`, and that every orbax JSON file
  (`_CHECKPOINT_METADATA`, `_METADATA`, `_sharding`, `metadata`, `array_metadatas/*`) parses. Array bytes are
  verified by the checksums after the restore, not here. Local paths only (None for URLs).
  """
  if "://" in step_dir:
    return None
  if not os.path.isdir(step_dir):
    return f"{step_dir} is missing"
  present = set(os.listdir(step_dir))
  if not present:
    return f"{step_dir} is empty"
  missing = [item for item in PYTREE_ITEMS + ("meta",) if item not in present]
  if missing:
    return f"{step_dir} lacks the item folder(s) {missing}"
  for item in PYTREE_ITEMS:
    if not os.path.isfile(os.path.join(step_dir, item, "_METADATA")):
      return f"{os.path.join(step_dir, item, '_METADATA')} is missing"
  for root, _, files in os.walk(step_dir):
    for name in sorted(files):
      if name in _JSON_FILES or os.path.basename(root) == "array_metadatas":
        problem = _json_problem(os.path.join(root, name))
        if problem:
          return problem
  return None


def quarantine(directory: str, step: int) -> str:
  """Moves `directory/step` to `directory/quarantine/step[.k]` and returns the new path (local or URL)."""
  from etils import epath  # orbax's path library: renames on local disks and object stores alike.

  root = epath.Path(directory)
  target_dir = root / QUARANTINE
  target_dir.mkdir(parents=True, exist_ok=True)
  target, k = target_dir / str(step), 1
  while target.exists():
    target, k = target_dir / f"{step}.{k}", k + 1
  (root / str(step)).rename(target)
  return os.fspath(target)


__all__ = ["check_free_space", "damage", "is_io_error", "quarantine", "silence_orbax_echoes", "write_error"]
