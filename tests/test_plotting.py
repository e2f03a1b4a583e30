"""The accuracy-vs-k figure: one voting@k and one metarm@k curve per dataset, greedy as a horizontal line."""

import pytest
from matplotlib.axes import Axes

from spct_jax import plotting


def _run(k, strict, expected):
  return {"k": k, "overall": {"accuracy_strict": strict, "accuracy_tie_expected": expected}}


def test_draws_voting_and_metarm_curves_and_greedy(tmp_path, monkeypatch):
  drawn, lines = [], []
  original_plot, original_axhline = Axes.plot, Axes.axhline
  monkeypatch.setattr(Axes, "plot", lambda self, *a, **kw: drawn.append((a, kw)) or original_plot(self, *a, **kw))
  monkeypatch.setattr(Axes, "axhline", lambda self, y, **kw: lines.append((y, kw)) or original_axhline(self, y, **kw))
  runs = {"greedy": _run(1, 0.5, 0.6), "voting@1": _run(1, 0.4, 0.5), "metarm@1": _run(1, 0.4, 0.5),
          "voting@4": _run(4, 0.5, 0.55), "metarm@4": _run(4, 0.75, 0.8)}
  plotting.plot_accuracy_vs_k({"llmbar": {"runs": runs}}, tmp_path / "plot.png", title="t")
  assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
  # Two panels (tie-expected, strict), each with both curves (sorted by k) and the greedy line.
  assert [(kw["label"], list(a[0])) for a, kw in drawn] == [("llmbar voting@k", [1, 4]), ("llmbar metarm@k", [1, 4])] * 2
  assert [v for a, _ in drawn for v in a[1]] == pytest.approx([50, 55, 50, 80, 40, 50, 40, 75])
  assert [y for y, _ in lines] == pytest.approx([60, 50])
