"""Metrics to a JSONL file and TensorBoard, written by process 0 only.

`metrics.jsonl` holds one JSON object per line with a "step" key. A run killed mid-write can leave its last line
cut short: readers drop such a torn final line with a warning (the step is redone after resume anyway), while an
unparseable line anywhere else is corruption and an error naming the file and line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os

import jax

from spct_jax import files

log = logging.getLogger(__name__)


def _records(path: files.PathLike) -> list[tuple[str, dict]]:
  """(line text, record) per non-blank line of a metrics file; see the module docstring for damaged lines."""
  lines = path.read_bytes().split(b"\n")
  out = []
  for number, raw in enumerate(lines, start=1):
    if not raw.strip():
      continue
    try:
      line = raw.decode("utf-8")
      record = json.loads(line)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
      if all(not rest.strip() for rest in lines[number:]):
        log.warning("%s: dropping its incomplete last line %d (%d bytes, a write cut short): %r", path, number,
                    len(raw), raw[:60])
        break
      raise ValueError(f"{path}: line {number}: corrupt metrics record ({e}); only the last line may be "
                       f"incomplete") from None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
      raise ValueError(f"{path}: line {number}: expected a JSON object with an integer 'step', got {line[:80]!r}")
    out.append((line, record))
  return out


class MetricsWriter:
  """Appends one JSON line per step to `workdir/metrics.jsonl` and mirrors scalars to TensorBoard.

  On resume, `truncate_after(step)` drops lines of steps that the restored checkpoint had not reached, so a
  preempted-and-resumed run has exactly one line per step.
  """

  def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True):
    self.path = files.as_path(workdir) / "metrics.jsonl"
    self.enabled = jax.process_index() == 0
    self._tb = None
    if self.enabled:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      if tensorboard:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(str(self.path.parent / "tensorboard"))

  def truncate_after(self, step: int) -> None:
    """Keeps the lines of steps <= `step` (and drops a torn last line), rewriting the file atomically.

    Raises:
      ValueError: a line other than the last is not a metrics record (names the file and line).
    """
    if not self.enabled or not self.path.exists():
      return
    kept = [line for line, record in _records(self.path) if record["step"] <= step]
    files.write_lines(kept, self.path)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    """Appends the step's line; OSError (e.g. a full disk) names the file and step."""
    if not self.enabled:
      return
    try:
      with self.path.open("a") as f:
        f.write(json.dumps({"step": step, **metrics}, sort_keys=True) + "\n")
    except OSError as e:
      raise OSError(e.errno, f"cannot append step {step} to {self.path}: {e.strerror}") from None
    if self._tb is not None:
      for key, value in metrics.items():
        if isinstance(value, (int, float)):
          self._tb.add_scalar(key, value, step)

  def close(self) -> None:
    """Flushes TensorBoard; a failure to flush (e.g. a full disk) is a warning, the JSONL file is the record."""
    if self._tb is None:
      return
    tb, self._tb = self._tb, None
    try:
      tb.close()
    except OSError as e:
      log.warning("TensorBoard events in %s could not be flushed: %s", self.path.parent / "tensorboard", e)
      for writer in (tb.all_writers or {}).values():  # stop its thread, or its atexit hook flushes (and fails) again
        events = writer.event_writer
        with contextlib.suppress(Exception):
          events._worker.stop()  # pylint: disable=protected-access
        events._closed = True  # pylint: disable=protected-access


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  """The records of `workdir/metrics.jsonl` (a torn last line dropped with a warning; see the module docstring)."""
  return [record for _, record in _records(files.as_path(workdir) / "metrics.jsonl")]
