"""Figures written as PNGs (matplotlib, Agg backend: no display needed): an evaluation's accuracy against k, and a
run's metrics.jsonl curves."""

from __future__ import annotations

import os
from typing import Any

from spct_jax import files


def _pyplot():
  """pyplot on the Agg backend (no display needed), imported on first use: importing it is slow."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, path: str | os.PathLike) -> None:
  """The figure as a PNG at `path`, written atomically; the figure is closed either way."""
  plt = _pyplot()
  try:
    fig.tight_layout()
    with files.atomic_write(path, "wb") as f:
      fig.savefig(f, format="png", dpi=110)
  finally:
    plt.close(fig)


PANELS = (("accuracy_tie_expected", "paper rule (random tie-break, expected)"),
          ("accuracy_strict", "strict rule, Eq. 10 (ties wrong)"))
CURVES = (("voting", "o-"), ("metarm", "s--"))  # run-name prefix ("voting@<k>", "metarm@<k>") and line style


def plot_accuracy_vs_k(datasets: dict[str, Any], path: str | os.PathLike, *, title: str = ""):
  """Writes a PNG: per dataset, voting@k and metarm@k accuracy against k (log2 axis; solid circles and dashed
  squares of one colour); greedy as a thin dashed horizontal line of that colour.

  Args:
    datasets: results["datasets"]: name -> {"runs": {"greedy" | "voting@<k>" | "metarm@<k>": {"k": k,
      "overall": {...}}}}.
    path: the PNG to write (atomically).
    title: figure title.
  """
  plt = _pyplot()

  fig, axes = plt.subplots(1, len(PANELS), figsize=(5.5 * len(PANELS), 4.0), squeeze=False)
  all_ks = sorted({run["k"] for info in datasets.values() for name, run in info["runs"].items()
                   if name != "greedy"})
  for ax, (metric, label) in zip(axes[0], PANELS):
    shown = []
    for i, (name, info) in enumerate(datasets.items()):
      color = f"C{i % 10}"
      runs = info["runs"]
      for curve, style in CURVES:
        points = sorted((run["k"], run["overall"][metric]) for key, run in runs.items()
                        if key.startswith(f"{curve}@") and run["overall"][metric] is not None)
        if points:
          ks, values = zip(*points)
          ax.plot(ks, [100 * v for v in values], style, color=color, label=f"{name} {curve}@k")
          shown += values
      greedy = runs.get("greedy", {}).get("overall", {}).get(metric)
      if greedy is not None:
        ax.axhline(100 * greedy, color=color, linestyle="--", linewidth=1, label=f"{name} greedy")
        shown.append(greedy)
    if shown:  # At least a 10-point window, so equal values do not blow up the scale.
      mid = 50 * (min(shown) + max(shown))
      half = max(5.0, 50 * (max(shown) - min(shown)) + 3)
      ax.set_ylim(max(-1.0, mid - half), min(101.0, mid + half))
    ax.set_xscale("log", base=2)
    if all_ks:
      ax.set_xticks(all_ks, [str(k) for k in all_ks])
    ax.set_xlabel("k (samples voted, temperature sampling)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(label, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  if title:
    fig.suptitle(title, fontsize=11)
  _save(fig, path)


def plot_metrics(records: list[dict[str, Any]], path: str | os.PathLike, *, keys: tuple[str, ...], title: str = ""):
  """Writes a PNG: one panel per metric in `keys` against the step (metrics.jsonl records, `read_metrics`);
  evaluation metrics logged on some steps only are drawn at those steps. A key no record has is an error."""
  plt = _pyplot()

  missing = [key for key in keys if not any(key in record for record in records)]
  if missing:
    raise KeyError(f"no metrics record has {missing}; recorded keys: {sorted({k for r in records for k in r})}")
  fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.0), squeeze=False)
  for ax, key in zip(axes[0], keys):
    points = [(record["step"], record[key]) for record in records if key in record]
    steps, values = zip(*points)
    ax.plot(steps, values, "o-", markersize=3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("step")
    ax.set_title(key, fontsize=9)
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title, fontsize=11)
  _save(fig, path)


def plot_table(table: dict[str, Any], path: str | os.PathLike, *, title: str = ""):
  """Writes a PNG of the pipeline's Table 3 (spct_jax.experiments.spct.build_table): per row, the pooled accuracy
  (ties broken at random, the paper's rule) with its 95% bootstrap interval, and strict accuracy beside it; the
  position-swap consistency of the greedy rows as hollow diamonds. Chance for pairs is the dotted line at 50%."""
  plt = _pyplot()

  rows = table["rows"]
  fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 2.5, 4.0))
  positions = range(len(rows))
  for i, row in enumerate(rows):
    pooled = row["pooled"]
    value, (low, high) = pooled["accuracy_tie_random"], pooled["ci95"]["accuracy_tie_random"]
    ax.errorbar([i - 0.12], [100 * value], yerr=[[100 * (value - low)], [100 * (high - value)]], fmt="o",
                color="C0", capsize=4, label="accuracy (random ties), 95% CI" if i == 0 else None)
    if pooled["accuracy_strict"] is not None:
      ax.plot([i + 0.12], [100 * pooled["accuracy_strict"]], "s", color="C1",
              label="strict accuracy (Eq. 10)" if i == 0 else None)
    if row.get("position_swap"):
      ax.plot([i], [100 * row["position_swap"]["consistency"]], "D", mfc="none", color="C2",
              label="position-swap consistency" if not any(r.get("position_swap") for r in rows[:i]) else None)
  ax.axhline(50, color="grey", linestyle=":", linewidth=1)
  ax.set_xticks(list(positions), [row["row"].replace(" ", "\n", 1) for row in rows], fontsize=8)
  ax.set_ylabel("% of held-out items (pooled)")
  ax.set_ylim(-2, 102)
  ax.grid(alpha=0.3, axis="y")
  ax.legend(fontsize=7, loc="upper left")
  if title:
    ax.set_title(title, fontsize=10)
  _save(fig, path)
