"""STAND-IN for `spct_jax.data.trajectories.Trajectory` (the RFT helper's record, not merged yet): the same
fields as the trajectory record `rft_generate` writes, for tests that build labelled trajectories by hand.
Replace with the real class once it lands (the meta RM code only reads the fields)."""

from __future__ import annotations

import dataclasses

import numpy as np

from spct_jax.data.schema import PreferenceItem
from spct_jax.grm import reward


@dataclasses.dataclass(frozen=True)
class StandInTrajectory:
  uid: str
  source: str
  item_json: str
  n: int
  sample_index: int
  perm: tuple[int, ...]
  prompt: str
  train_prompt: str
  judgement: str
  scores: tuple[int, ...]
  valid: bool
  correct: bool
  hinted: bool
  kept: bool


def make_trajectory(item: PreferenceItem, perm, shown_scores, *, sample_index: int = 0, valid: bool = True,
                    hinted: bool = False, judgement: str | None = None) -> StandInTrajectory:
  """A trajectory of `item` that showed the responses in `perm` and gave `shown_scores` (shown order); `correct`
  is Eq. 10 on the scores mapped back to the original order, as the real generator computes it."""
  perm = tuple(int(i) for i in perm)
  original = np.zeros(len(perm), np.int32)
  original[list(perm)] = shown_scores
  correct = valid and bool(reward.is_correct(original[None], np.asarray(item.ratings, np.float32)[None])[0])
  if judgement is None:
    judgement = "Specific Criteria: ...\nAnalysis: ...\nScores: \\boxed{" + ", ".join(map(str, shown_scores)) + "}"
  return StandInTrajectory(uid=item.uid, source=item.source, item_json=item.to_json(), n=len(perm),
                           sample_index=sample_index, perm=perm, prompt="", train_prompt="", judgement=judgement,
                           scores=tuple(int(s) for s in shown_scores), valid=valid, correct=correct, hinted=hinted,
                           kept=correct and not hinted)
