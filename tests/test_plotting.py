"""The accuracy-vs-k figure (one voting@k and one metarm@k curve per dataset, greedy as a line) and plot_metrics."""

import pytest
from matplotlib import image
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


def test_table_figure_draws_each_row_with_its_interval_and_consistency(tmp_path, monkeypatch):
  bars, marks = [], []
  original_errorbar, original_plot = Axes.errorbar, Axes.plot
  monkeypatch.setattr(Axes, "errorbar", lambda self, x, y, **kw: bars.append((x, y, kw["yerr"]))
                      or original_errorbar(self, x, y, **kw))
  monkeypatch.setattr(Axes, "plot", lambda self, *a, **kw: marks.append(a) or original_plot(self, *a, **kw))
  pooled = lambda acc, low, high, strict: {"accuracy_tie_random": acc, "accuracy_strict": strict,
                                           "ci95": {"accuracy_tie_random": [low, high]}}
  table = {"rows": [{"row": "base greedy", "pooled": pooled(0.5, 0.4, 0.7, 0.25), "position_swap": {"consistency": 0.1}},
                    {"row": "RFT+GRPO Voting@8", "pooled": pooled(0.75, 0.6, 0.8, None)}]}
  plotting.plot_table(table, tmp_path / "table.png", title="t")
  assert (tmp_path / "table.png").read_bytes()[:4] == b"\x89PNG"
  assert [v for _, y, e in bars for v in (y[0], e[0][0], e[1][0])] == pytest.approx([50, 10, 20, 75, 15, 5])
  # Row 0: strict accuracy and consistency; row 1 has neither (no strict value, no position swap).
  assert [(list(x), list(y)) for x, y, _ in marks] == [([0.12], [25]), ([0], [10])]
