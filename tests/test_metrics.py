"""Tests for spct_jax.train.metrics: JSONL lines, TensorBoard scalars read back from the event file, process 0 only."""

import jax
import pytest

from spct_jax.train import metrics


def _tensorboard_scalars(workdir) -> dict[str, list[tuple[int, float]]]:
  """(step, value) per tag, read with TensorFlow's own event reader (the format TensorBoard reads)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  files = sorted((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert len(files) == 1, files
  scalars: dict[str, list[tuple[int, float]]] = {}
  for event in tf.compat.v1.train.summary_iterator(str(files[0])):
    for value in event.summary.value:
      scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_jsonl_and_tensorboard_hold_the_written_values(tmp_path):
  writer = metrics.MetricsWriter(tmp_path)
  writer.write(1, {"loss": 0.5, "reward_mean": -0.25, "completion_tokens": 12, "note": "text"})
  writer.write(2, {"loss": 0.125, "reward_mean": 0.75, "completion_tokens": 7, "note": "more"})
  writer.close()
  assert metrics.read_metrics(tmp_path) == [
      {"step": 1, "loss": 0.5, "reward_mean": -0.25, "completion_tokens": 12, "note": "text"},
      {"step": 2, "loss": 0.125, "reward_mean": 0.75, "completion_tokens": 7, "note": "more"}]
  # Every number is a TensorBoard scalar at its step; text is not.
  assert _tensorboard_scalars(tmp_path) == {"loss": [(1, 0.5), (2, 0.125)], "reward_mean": [(1, -0.25), (2, 0.75)],
                                            "completion_tokens": [(1, 12.0), (2, 7.0)]}


def test_resume_truncates_lines_past_the_restored_step(tmp_path):
  writer = metrics.MetricsWriter(tmp_path, tensorboard=False)
  for step in (1, 2, 3):
    writer.write(step, {"loss": float(step)})
  writer.truncate_after(2)
  writer.write(3, {"loss": 30.0})
  assert [(m["step"], m["loss"]) for m in metrics.read_metrics(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 30.0)]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no TensorBoard folder when off


def test_only_process_zero_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  writer = metrics.MetricsWriter(tmp_path / "run")
  writer.write(1, {"loss": 0.5})
  writer.truncate_after(0)
  writer.close()
  assert not (tmp_path / "run").exists()
  with pytest.raises(FileNotFoundError):
    metrics.read_metrics(tmp_path / "run")
