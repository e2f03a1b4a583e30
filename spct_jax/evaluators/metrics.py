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
`aggregate` averages these over items ("overall"), over categories ("macro") and per category / subset.
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


def prefix_vote(sample_scores: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
  """Eq. 14 over the first k samples: int32[B, n] from sample_scores int32[B, K, n] (original order), valid[B, K]."""
  if not 1 <= k <= sample_scores.shape[1]:
    raise ValueError(f"k={k} outside [1, {sample_scores.shape[1]}] samples")
  vote = jax.vmap(voting.vote)(sample_scores[:, :k], valid[:, :k])
  return np.asarray(multihost.to_host(vote))


def item_metrics(voted: np.ndarray, ratings: np.ndarray, response_mask: np.ndarray, valid: np.ndarray,
                 key: jax.Array, gen_tokens: np.ndarray | None = None,
                 gen_chars: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Per-item metrics (float64[B] each; see the module docstring).

  Args:
    voted: [B, n] voted scores in the original response order.
    ratings: [B, n] ground-truth ratings (padding anywhere the mask is False).
    response_mask: bool[B, n] real responses.
    valid: bool[B, k] parseable samples among those that voted.
    key: PRNG key of the random tie-breaks.
    gen_tokens, gen_chars: [B, k] generated lengths; None: reported as NaN.
  """
  acc = multihost.to_host(voting.accuracy(voted, ratings, response_mask=response_mask, key=key))
  valid = np.asarray(valid, bool)
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
  out = {"overall": summarize(per_item), "macro": {"categories": len(by_category), **macro},
         "by_category": by_category}
  if subsets is not None and any(s is not None for s in subsets):
    out["by_subset"] = {s: summarize(per_item, idx) for s, idx in _groups(subsets).items()}
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
  header = (f"{'dataset':<14} {'run':<8} {'items':>5} {'strict':>6} {'random':>6} {'exp':>5} {'macro':>5} "
            f"{'parse%':>6} {'len':>6}")
  lines = [header, "-" * len(header)]
  for name, info in datasets.items():
    for run_name, run in info["runs"].items():
      o, m = run["overall"], run["macro"]
      length = "     -" if o["gen_tokens"] is None else f"{o['gen_tokens']:6.1f}"
      lines.append(f"{name:<14} {run_name:<8} {o['items']:>5} {_pct(o['accuracy_strict']):>6} "
                   f"{_pct(o['accuracy_tie_random']):>6} {_pct(o['accuracy_tie_expected'])} "
                   f"{_pct(m['accuracy_tie_expected'])} {_pct(o['parse_rate']):>6} {length}")
  lines.append("strict: Eq. 10, a tie with the best is wrong (accuracy_strict; the RMB best-of-N protocol); random: "
               "the paper's rule, ties broken at random (accuracy_tie_random); exp: its expectation over tie-breaks; "
               "macro: exp averaged over categories; len: generated tokens.")
  return "\n".join(lines)
