"""Metrics to a JSONL file and TensorBoard, written by process 0 only."""

from __future__ import annotations

import json
import os

import jax

from spct_jax import files


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
    if not self.enabled or not self.path.exists():
      return
    kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    files.write_lines(kept, self.path)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    with self.path.open("a") as f:
      f.write(json.dumps({"step": step, **metrics}, sort_keys=True) + "\n")
    if self._tb is not None:
      for key, value in metrics.items():
        if isinstance(value, (int, float)):
          self._tb.add_scalar(key, value, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  path = files.as_path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line]
