"""Evaluators declared in configs (`config.evals.<name> = dict(type=..., ...)`) and built by one `from_config`.

The eval experiment and every trainer's periodic evaluation build theirs here, so the metrics (names and rules)
are the same everywhere. Types: "voting" (`voting.VotingEvaluator`: held-out greedy / voting@k / metarm@k accuracy
of a GRM) and "binary" (`binary.BinaryEvaluator`: AUC, accuracy, calibration error and log loss of a meta RM).
"""

from __future__ import annotations

from typing import Any, Mapping

from spct_jax.evaluators.binary import BinaryEvaluator, BinarySpec
from spct_jax.evaluators.voting import VotingEvaluator, VotingSpec

EVALUATORS = {"voting": (VotingSpec, VotingEvaluator), "binary": (BinarySpec, BinaryEvaluator)}


def spec_from_config(spec: Mapping[str, Any], name: str = "eval"):
  """The typed spec of one `config.evals` entry; ValueError naming the entry on an unknown type or key."""
  kind = spec.get("type")
  if kind not in EVALUATORS:
    raise ValueError(f"config.evals.{name}.type={kind!r}; valid: {sorted(EVALUATORS)}")
  try:
    return EVALUATORS[kind][0].from_config(spec)
  except (TypeError, ValueError) as e:
    raise ValueError(f"config.evals.{name}: {e}") from e


def from_config(spec: Mapping[str, Any], *, name: str, **kwargs) -> VotingEvaluator | BinaryEvaluator:
  """Builds the evaluator of `config.evals.<name>`; kwargs are the run's pieces (voting: items, tokenizer, options,
  ...; binary: examples, tokenizer, ...)."""
  typed = spec_from_config(spec, name)
  return EVALUATORS[typed.type][1](typed, name=name, **kwargs)


__all__ = ["EVALUATORS", "BinaryEvaluator", "BinarySpec", "VotingEvaluator", "VotingSpec", "from_config",
           "spec_from_config"]
