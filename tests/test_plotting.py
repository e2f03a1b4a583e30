"""Tests for spct_jax.plotting.plot_metrics (the accuracy-vs-k figure is covered by the eval experiment's tests)."""

import pytest
from matplotlib import image

from spct_jax import plotting

RECORDS = [{"step": s, "reward_mean": 0.1 * s, "loss": 1.0 / s} for s in range(1, 5)]
RECORDS[1]["heldout/greedy/accuracy_strict"] = 0.5  # an evaluation step
RECORDS[3]["heldout/greedy/accuracy_strict"] = 1.0


def test_one_panel_per_metric_written_as_png(tmp_path):
  one, three = tmp_path / "one.png", tmp_path / "three.png"
  plotting.plot_metrics(RECORDS, one, keys=("loss",))
  plotting.plot_metrics(RECORDS, three, keys=("loss", "reward_mean", "heldout/greedy/accuracy_strict"), title="t")
  assert one.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  width_one, width_three = image.imread(one).shape[1], image.imread(three).shape[1]
  assert width_three == pytest.approx(3 * width_one, rel=0.02)  # 3.6 inches per panel
  assert not list(tmp_path.glob("*.tmp*"))


def test_a_metric_no_record_has_is_an_error_naming_it(tmp_path):
  with pytest.raises(KeyError, match=r"\['kl'\].*'loss'"):
    plotting.plot_metrics(RECORDS, tmp_path / "x.png", keys=("loss", "kl"))
  assert not (tmp_path / "x.png").exists()
