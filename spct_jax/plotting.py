"""Accuracy-vs-k figure of an evaluation (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from typing import Any

from spct_jax import files

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
  import matplotlib  # Deferred: importing pyplot is slow and only this function needs it.
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

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
  fig.tight_layout()
  try:
    with files.atomic_write(path, "wb") as f:
      fig.savefig(f, format="png", dpi=110)
  finally:
    plt.close(fig)
