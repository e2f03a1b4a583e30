"""The held-out evaluator of a scalar RM (the meta RM): AUC, accuracy, calibration error and log loss of its logits.

Declared in configs like the voting evaluator (`config.evals.<name> = dict(type="binary", ...)`, fields of
`BinarySpec`) and built by `spct_jax.evaluators.from_config` with the run's held-out examples (`text`, `label`:
`data.meta_rm_examples.MetaRMExample`). Every `every` steps (and at the last) the training loop calls it with the
current model; it scores all texts in batched forwards (`meta_rm.MetaRMScorer`) and reports
`train.binary_metrics.binary_metrics` (auc, accuracy, ece, log_loss, positive_fraction, mean_prob, count) plus the
number of held-out items. Deterministic: no sampling, no randomness.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from spct_jax import meta_rm
from spct_jax.evaluators.voting import spec_values
from spct_jax.train import binary_metrics


@dataclasses.dataclass(frozen=True, kw_only=True)
class BinarySpec:
  """One `config.evals.<name>` entry of type "binary".

  every: run every N training steps and at the last step (0 = never).
  batch_size: rows per scoring forward (a memory budget; None: all held-out texts in one forward).
  num_bins: equal-width probability bins of the expected calibration error.
  """

  type: str = "binary"
  every: int = 0
  batch_size: int | None = 32
  num_bins: int = 10

  @classmethod
  def from_config(cls, spec: Mapping[str, Any]) -> BinarySpec:
    return cls(**spec_values(cls, spec, "binary"))


class BinaryEvaluator:
  """Binary metrics of a meta RM's logits on fixed held-out examples (see the module docstring)."""

  def __init__(self, spec: BinarySpec, *, name: str, examples: Sequence[Any], tokenizer, mesh=None,
               length_multiple: int = 64):
    if not examples:
      raise ValueError(f"evaluator {name!r}: no held-out examples to evaluate")
    self.spec, self.name, self.tokenizer, self.mesh = spec, name, tokenizer, mesh
    self.texts = [e.text for e in examples]
    self.labels = np.asarray([e.label for e in examples], np.int32)
    self.items = len({e.uid for e in examples})
    self.length_multiple = length_multiple

  @property
  def every(self) -> int:
    return self.spec.every

  def logits(self, model) -> np.ndarray:
    """f32[N] logits of the held-out texts, in example order."""
    scorer = meta_rm.as_meta_scorer(model, self.tokenizer, max_rows=self.spec.batch_size, mesh=self.mesh,
                                    length_multiple=self.length_multiple)
    return scorer.score(self.texts)

  def __call__(self, model) -> dict[str, float]:
    out = binary_metrics.binary_metrics(self.logits(model), self.labels, num_bins=self.spec.num_bins)
    out["items"] = float(self.items)
    return out
