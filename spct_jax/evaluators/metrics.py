"""Held-out metrics from GRM votes, their per-category aggregation and the text table.

Per item (`item_metrics`), from voted scores [B, n] and ground-truth ratings; the same names in results.json,
metrics.jsonl and the README:
  accuracy_strict        Eq. 10 on the votes: the best must beat every other response (a tie is wrong). For RMB
                         best-of-N this IS the benchmark's protocol (the best must outscore every loser).
  accuracy_tie_random    the paper's evaluation rule: argmax of the votes, ties broken at random.
  accuracy_tie_expected  its expectation over tie-breaks (1/#tied maxima when the best is among them): less noisy.
  parse_rate             fraction of the item's k samples whose scores parsed.
  no_valid               no sample parsed (all votes 0: a full tie, so tie_random is chance and strict is 0).
  gen_tokens, gen_chars  mean generated length over the k samples.
`aggregate` averages these over items ("overall"), over categories ("macro") and per category / subset, and gives
the overall accuracies a 95% percentile-bootstrap interval (`ci95`; items resampled with replacement, a fixed
seed, so the interval is reproducible) and the per-item values they came from (`per_item`: a later step can pool
datasets or pair two runs item by item).
Single-response items (n = 1) are judged by their voted label (`voting.voted_label`: the mean of the valid samples'
scores rounded half up).

RMB (`rmb_summary`) is reported as its benchmark does: accuracy in each of the four cells {Helpfulness,
Harmlessness} x {pairwise, best-of-N} (the item mean within the cell, from each dataset's `by_subset`), and the
mean of the four cells (the RMB leaderboard's overall number), beside the per-dataset accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from spct_jax import multihost
from spct_jax.grm import voting

METRICS = ("accuracy_strict", "accuracy_tie_random", "accuracy_tie_expected", "parse_rate", "no_valid", "gen_tokens",
           "gen_chars")
# The three every evaluation reports (periodic held-out evaluation logs exactly these per run).
HEADLINE = ("accuracy_strict", "accuracy_tie_random", "parse_rate")
# Metrics that get a bootstrap interval and are kept per item.
INTERVAL_METRICS = ("accuracy_strict", "accuracy_tie_random")
BOOTSTRAP_RESAMPLES = 2000


def prefix_vote(sample_scores: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
  """Eq. 14 over the first k samples: int32[B, n] from sample_scores int32[B, K, n] (original order), valid[B, K]."""
  if not 1 <= k <= sample_scores.shape[1]:
    raise ValueError(f"k={k} outside [1, {sample_scores.shape[1]}] samples")
  vote = jax.vmap(voting.vote)(sample_scores[:, :k], valid[:, :k])
  return np.asarray(multihost.to_host(vote))


def item_metrics(voted: np.ndarray, ratings: np.ndarray, response_mask: np.ndarray, valid: np.ndarray,
                 key: jax.Array, gen_tokens: np.ndarray | None = None,
                 gen_chars: np.ndarray | None = None, votes: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Per-item metrics (float64[B] each; see the module docstring).

  Args:
    voted: [B, n] voted scores in the original response order.
    ratings: [B, n] ground-truth ratings (padding anywhere the mask is False).
    response_mask: bool[B, n] real responses.
    valid: bool[B, k] parseable samples (the parse rate).
    key: PRNG key of the random tie-breaks.
    gen_tokens, gen_chars: [B, k] generated lengths; None: reported as NaN.
    votes: bool[B, k] the samples that voted (their count divides n = 1 items' votes); None: every valid one
      (meta-RM guided voting passes the k_meta it kept).
  """
  valid = np.asarray(valid, bool)
  votes = valid if votes is None else np.asarray(votes, bool)
  acc = multihost.to_host(voting.accuracy(voted, ratings, num_votes=votes.sum(axis=1),
                                          response_mask=response_mask, key=key))
  nan = np.full(valid.shape, np.nan)
  return {
      "accuracy_strict": np.asarray(acc["strict"], np.float64),
      "accuracy_tie_random": np.asarray(acc["tie_random"], np.float64),
      "accuracy_tie_expected": np.asarray(acc["tie_expected"], np.float64),
      "parse_rate": valid.mean(axis=1),
      "no_valid": (~valid.any(axis=1)).astype(np.float64),
      "gen_tokens": np.asarray(nan if gen_tokens is None else gen_tokens, np.float64).mean(axis=1),
      "gen_chars": np.asarray(nan if gen_chars is None else gen_chars, np.float64).mean(axis=1),
  }


def _mean(values: np.ndarray) -> float | None:
  values = np.asarray(values, np.float64)
  if values.size == 0 or np.isnan(values).all():
    return None  # JSON null rather than NaN (not valid JSON).
  return float(np.nanmean(values))


def bootstrap_interval(values: Sequence[float] | np.ndarray, *, level: float = 0.95,
                       num_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> list[float] | None:
  """Percentile-bootstrap interval [lo, hi] of the mean of per-item `values` (NaNs dropped); None without values."""
  values = np.asarray(values, np.float64)
  values = values[~np.isnan(values)]
  if values.size == 0:
    return None
  draws = np.random.default_rng(seed).integers(0, values.size, (num_resamples, values.size))
  lo, hi = np.quantile(values[draws].mean(axis=1), [(1 - level) / 2, (1 + level) / 2])
  return [float(lo), float(hi)]


def intervals(per_item: dict[str, np.ndarray], names: Sequence[str] = INTERVAL_METRICS) -> dict[str, Any]:
  return {name: bootstrap_interval(per_item[name]) for name in names}


def summarize(per_item: dict[str, np.ndarray], rows: np.ndarray | slice = slice(None)) -> dict[str, Any]:
  """Means of every metric over `rows`, plus the item count."""
  out: dict[str, Any] = {"items": int(np.asarray(per_item["accuracy_strict"])[rows].size)}
  out.update({name: _mean(np.asarray(per_item[name])[rows]) for name in METRICS})
  return out


def _groups(labels: Sequence[str | None]) -> dict[str, np.ndarray]:
  groups: dict[str, list[int]] = {}
  for i, label in enumerate(labels):
    if label is not None:
      groups.setdefault(label, []).append(i)
  return {label: np.asarray(idx) for label, idx in sorted(groups.items())}


def aggregate(per_item: dict[str, np.ndarray], categories: Sequence[str],
              subsets: Sequence[str | None] | None = None) -> dict[str, Any]:
  """Overall (micro) means, the macro mean over categories, and per-category / per-subset summaries."""
  by_category = {c: summarize(per_item, idx) for c, idx in _groups(categories).items()}
  macro = {name: _mean([s[name] for s in by_category.values() if s[name] is not None]) for name in METRICS}
  overall = {**summarize(per_item), "ci95": intervals(per_item)}
  out = {"overall": overall, "macro": {"categories": len(by_category), **macro}, "by_category": by_category,
         "per_item": {name: np.asarray(per_item[name], np.float64).tolist() for name in INTERVAL_METRICS}}
  if subsets is not None and any(s is not None for s in subsets):
    out["by_subset"] = {s: summarize(per_item, idx) for s, idx in _groups(subsets).items()}
  return out


def pooled(datasets: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """Per run present in every dataset: accuracies over all datasets' items, with bootstrap intervals (from each
  run's `per_item`), the item-weighted parse rate, and position-swap consistency over the datasets that have it."""
  runs = [set(info["runs"]) for info in datasets.values()]
  out: dict[str, dict[str, Any]] = {}
  for run in sorted(set.intersection(*runs)) if runs else []:
    values = {name: np.concatenate([np.asarray(info["runs"][run]["per_item"][name], np.float64)
                                    for info in datasets.values()]) for name in INTERVAL_METRICS}
    overall = [info["runs"][run]["overall"] for info in datasets.values()]
    parsed = [(o["parse_rate"], o["items"]) for o in overall if o["parse_rate"] is not None]
    out[run] = {"items": int(values[INTERVAL_METRICS[0]].size), **{n: _mean(v) for n, v in values.items()},
                "parse_rate": sum(p * n for p, n in parsed) / sum(n for _, n in parsed) if parsed else None,
                "ci95": intervals(values)}
  # Swaps exist for pairs only (a best-of-N list has none), so they pool over the datasets that have them.
  swaps = {name: info["position_swap"] for name, info in datasets.items() if info.get("position_swap")}
  if swaps:
    consistent = np.concatenate([np.asarray(s["per_item"]["consistent"], np.float64) for s in swaps.values()])
    out["position_swap"] = {"pairs": int(consistent.size), "datasets": sorted(swaps),
                            "consistency": _mean(consistent), "ci95": {"consistency": bootstrap_interval(consistent)}}
  return out


RMB_SETS = (("pairwise", "rmb_pairwise"), ("bon", "rmb_bon"))
RMB_GOALS = ("Helpfulness", "Harmlessness")


def rmb_summary(datasets: dict[str, Any], *, pairwise_metric: str = "accuracy_tie_random",
                bon_metric: str = "accuracy_strict") -> dict[str, dict[str, float | None]]:
  """RMB's four cells and their mean, per run, from evaluated datasets (`{name: {"runs": {run: aggregate()}}}`).

  Args:
    datasets: results per dataset name; "rmb_pairwise" / "rmb_bon" are read, their runs' `by_subset` entries
      "Helpfulness" / "Harmlessness" give the cells.
    pairwise_metric, bon_metric: the per-item metric of each set (`METRICS`). Defaults: the paper's rule for pairs
      (random tie-break) and the benchmark's strict rule for best-of-N (the best must beat every loser).

  Returns:
    {run: {"Helpfulness/pairwise", "Helpfulness/bon", "Harmlessness/pairwise", "Harmlessness/bon": float or None
    (not evaluated), "mean": the mean of the four, or None unless all four were evaluated}}; {} without RMB data.
  """
  metric = {"pairwise": pairwise_metric, "bon": bon_metric}
  runs = sorted({run for _, name in RMB_SETS if name in datasets for run in datasets[name]["runs"]})
  out = {}
  for run in runs:
    cells: dict[str, float | None] = {}
    for goal in RMB_GOALS:
      for kind, name in RMB_SETS:
        subset = datasets.get(name, {}).get("runs", {}).get(run, {}).get("by_subset", {}).get(goal)
        cells[f"{goal}/{kind}"] = None if subset is None else subset[metric[kind]]
    values = list(cells.values())
    out[run] = {**cells, "mean": None if None in values else float(np.mean(values))}
  return out


def jsonable(value: Any) -> Any:
  """numpy scalars / arrays and tuples -> plain JSON types (NaN -> None)."""
  if isinstance(value, dict):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return jsonable(value.tolist())
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not np.isfinite(value):
    return None
  return value


# ------------------------------------------------------------------------------------------------------------
# Text table.


def _pct(value: float | None) -> str:
  return "   -" if value is None else f"{100 * value:5.1f}"


def format_table(datasets: dict[str, Any]) -> str:
  """One row per (dataset, run): strict, tie-random, tie-expected, macro, parse rate, length."""
  header = (f"{'dataset':<14} {'run':<9} {'items':>5} {'strict':>6} {'random':>6} {'exp':>5} {'macro':>5} "
            f"{'parse%':>6} {'len':>6}")
  lines = [header, "-" * len(header)]
  for name, info in datasets.items():
    for run_name, run in info["runs"].items():
      o, m = run["overall"], run["macro"]
      length = "     -" if o["gen_tokens"] is None else f"{o['gen_tokens']:6.1f}"
      lines.append(f"{name:<14} {run_name:<9} {o['items']:>5} {_pct(o['accuracy_strict']):>6} "
                   f"{_pct(o['accuracy_tie_random']):>6} {_pct(o['accuracy_tie_expected'])} "
                   f"{_pct(m['accuracy_tie_expected'])} {_pct(o['parse_rate']):>6} {length}")
  lines.append("voting@k: Eq. 14 over k samples; metarm@k: over the k_meta of them the meta RM rates highest. "
               "strict: Eq. 10, a tie with the best is wrong (accuracy_strict; the RMB best-of-N protocol); random: "
               "the paper's rule, ties broken at random (accuracy_tie_random); exp: its expectation over tie-breaks; "
               "macro: exp averaged over categories; len: generated tokens.")
  return "\n".join(lines)


def format_rmb_table(summary: dict[str, dict[str, float | None]]) -> str:
  """One row per run of `rmb_summary`: the four RMB cells and their mean."""
  cells = [f"{goal}/{kind}" for goal in RMB_GOALS for kind, _ in RMB_SETS]
  header = f"{'RMB run':<9} " + " ".join(f"{c.replace('fulness', '').replace('lessness', ''):>11}" for c in cells)
  header += f" {'mean':>5}"
  lines = [header, "-" * len(header)]
  for run, row in summary.items():
    lines.append(f"{run:<9} " + " ".join(f"{_pct(row[c]):>11}" for c in cells) + f" {_pct(row['mean'])}")
  return "\n".join(lines)
