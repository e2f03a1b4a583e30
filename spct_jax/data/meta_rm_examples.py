"""Meta-RM training data: GRM trajectories -> (text, label) examples, the held-out split, balance, batch indices.

Pure Python (no TensorFlow). A trajectory is any object with the fields of the trajectory record that
`rft_generate` writes (the `Trajectory` dataclass of `spct_jax.data.trajectories` mirrors it); read here: `uid`,
`source`, `item_json` (the item, original response order), `n`, `sample_index`, `perm` (perm[p] = original index of
the response shown at p), `judgement` (output prefix included), `valid`, `correct`, `hinted`.

- Label (spec sec. 5): Eq. 10 correctness of the trajectory (`correct`); unparseable trajectories are incorrect.
  Hinted samples are excluded: the hint lets them take shortcuts the meta RM never sees at inference.
- Text: `templates.meta_rm_input(conversation, responses in the order the sample showed them (perm), judgement)`.
- Held-out split by item uid: all of an item's trajectories land on the same side (its k samples share prompt
  and responses, so splitting them would leak).
- Class balance, a config choice (`BALANCE_CHOICES`): "none", "pos_weight" (BCE with pos_weight = #neg / #pos,
  `pos_weight_for`) or "batches" (every batch half correct, half incorrect, `batch_indices`).
- Batch indices are a pure function of (seed, step): a resumed run draws exactly the batches it would have drawn.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np

from spct_jax.data.schema import PreferenceItem
from spct_jax.grm import templates

BALANCE_CHOICES = ("none", "pos_weight", "batches")


@dataclasses.dataclass(frozen=True)
class MetaRMExample:
  """One meta-RM training example: `text` (the full meta-RM input) and `label` (1 = the trajectory is correct)."""

  uid: str
  source: str
  sample_index: int
  text: str
  label: int


def example_from_trajectory(trajectory: Any, *, chat_style: str = "raw") -> MetaRMExample:
  """The meta-RM input of one trajectory (responses in its shown order) and its Eq. 10 label.

  Raises:
    ValueError: the record's `perm` is not a permutation of its item's responses, or `n` disagrees (names the uid).
  """
  t = trajectory
  item = PreferenceItem.from_json(t.item_json)
  perm = [int(i) for i in np.asarray(t.perm).reshape(-1)]
  n = item.num_responses
  if int(t.n) != n or sorted(perm) != list(range(n)):
    raise ValueError(f"trajectory uid={t.uid!r} sample {t.sample_index}: perm {perm} with n={t.n} is not a "
                     f"permutation of the item's {n} responses")
  text = templates.meta_rm_input(item.conversation, [item.responses[i] for i in perm], t.judgement,
                                 chat_style=chat_style)
  return MetaRMExample(uid=t.uid, source=t.source, sample_index=int(t.sample_index), text=text,
                       label=int(bool(t.correct)))


def examples_from_trajectories(trajectories: Iterable[Any], *, chat_style: str = "raw",
                               valid_only: bool = False) -> list[MetaRMExample]:
  """Examples of the non-hinted trajectories, in record order.

  valid_only: drop unparseable trajectories (guided voting only ranks parseable samples, so they teach the
    meta RM nothing it uses); default False keeps them as incorrect, as Eq. 10 labels them.
  """
  return [example_from_trajectory(t, chat_style=chat_style) for t in trajectories
          if not t.hinted and (t.valid or not valid_only)]


def label_balance(examples: Sequence[MetaRMExample]) -> dict[str, Any]:
  """Counts to report: examples, items, positives, negatives, positive_fraction, and the same per source."""

  def counts(group):
    pos = sum(e.label for e in group)
    return {"examples": len(group), "items": len({e.uid for e in group}), "positives": pos,
            "negatives": len(group) - pos, "positive_fraction": pos / len(group) if group else float("nan")}

  by_source = collections.defaultdict(list)
  for e in examples:
    by_source[e.source].append(e)
  return dict(counts(list(examples)), by_source={s: counts(g) for s, g in sorted(by_source.items())})


def split_by_uid(examples: Sequence[MetaRMExample], heldout_fraction: float, *,
                 seed: int) -> tuple[list[MetaRMExample], list[MetaRMExample]]:
  """(train, heldout): round(heldout_fraction * #items) items (at least 1 when the fraction is > 0, at most
  #items - 1) drawn by a seeded shuffle of the sorted uids; every trajectory of an item goes with its item."""
  if not 0.0 <= heldout_fraction < 1.0:
    raise ValueError(f"heldout_fraction={heldout_fraction} must lie in [0, 1)")
  uids = sorted({e.uid for e in examples})
  if heldout_fraction == 0.0 or not uids:
    return list(examples), []
  if len(uids) < 2:
    raise ValueError(f"a held-out split needs at least 2 items, got {len(uids)}")
  count = min(len(uids) - 1, max(1, round(heldout_fraction * len(uids))))
  order = np.random.default_rng(seed).permutation(len(uids))
  heldout = {uids[i] for i in order[:count]}
  return [e for e in examples if e.uid not in heldout], [e for e in examples if e.uid in heldout]


def pos_weight_for(labels: Sequence[int], balance: str) -> float | None:
  """BCE pos_weight: #negatives / #positives under "pos_weight" (positives and negatives then weigh the same in
  total), else None."""
  _check_balance(balance)
  if balance != "pos_weight":
    return None
  labels = np.asarray(labels)
  pos, neg = int(labels.sum()), int(len(labels) - labels.sum())
  if pos == 0 or neg == 0:
    raise ValueError(f"balance='pos_weight' needs both classes; got {pos} positives and {neg} negatives")
  return neg / pos


def _stream(n: int, start: int, count: int, seed: Sequence[int]) -> np.ndarray:
  """Elements start .. start + count of the endless stream perm_0 ++ perm_1 ++ ..., perm_e a seeded shuffle of n."""
  out = []
  epoch, offset = divmod(start, n)
  while len(out) < count:
    perm = np.random.default_rng([*seed, epoch]).permutation(n)
    out.extend(perm[offset:offset + count - len(out)])
    epoch, offset = epoch + 1, 0
  return np.asarray(out, np.int64)


def batch_indices(labels: Sequence[int], batch_size: int, step: int, *, seed: int, balance: str) -> np.ndarray:
  """int64[batch_size] example indices of training step `step` (0-based).

  Every example is seen once per epoch in a fresh seeded order; under "batches" positives and negatives are two
  separate such streams and a batch takes batch_size // 2 negatives and the rest positives (the minority class is
  repeated more often).
  """
  _check_balance(balance)
  if batch_size < 1 or step < 0:
    raise ValueError(f"need batch_size >= 1 and step >= 0, got {batch_size}, {step}")
  labels = np.asarray(labels)
  if not len(labels):
    raise ValueError("no training examples")
  if balance != "batches":
    return _stream(len(labels), step * batch_size, batch_size, (seed, 2))
  positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
  if not len(positives) or not len(negatives):
    raise ValueError(f"balance='batches' needs both classes; got {len(positives)} positives and "
                     f"{len(negatives)} negatives")
  num_neg = batch_size // 2
  num_pos = batch_size - num_neg
  if num_neg == 0:
    raise ValueError("balance='batches' needs batch_size >= 2")
  pos = positives[_stream(len(positives), step * num_pos, num_pos, (seed, 1))]
  neg = negatives[_stream(len(negatives), step * num_neg, num_neg, (seed, 0))]
  return np.concatenate([pos, neg])


def _check_balance(balance: str) -> None:
  if balance not in BALANCE_CHOICES:
    raise ValueError(f"meta RM balance={balance!r}; valid: {list(BALANCE_CHOICES)}")
