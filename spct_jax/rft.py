"""Rejective fine-tuning data (spec sec. 3): N_RFT judgements per item, the correct ones kept, hopeless items hinted,
and every sampled trajectory recorded (labelled) for SFT and the meta RM.

Rules, per item (Eq. 10 decides "correct"; an unparseable trajectory is wrong):
  * N_RFT non-hinted trajectories are sampled, each showing the responses in its own random order;
  * all N_RFT correct: the item is "too easy" and gives SFT nothing (its trajectories are still recorded,
    labelled correct, for the meta RM);
  * some correct: the correct ones are kept;
  * none correct, hinted sampling on and n >= 2: one more trajectory is sampled in a fresh order with the hint
    "The best response is: Response j" (j = the best response's SHOWN position); it is kept iff correct and
    flagged `hinted` (sample_index N_RFT). n = 1 items have no response to name, so they are never hinted (our
    choice).
  * some correct, position hints on (`position_hints`, our addition; default off) and n >= 2: when every kept
    trajectory shows the best response at the same position p, one more trajectory is sampled with the same hint
    in an order that shows the best response elsewhere (n = 2: the other order; n > 2: a seeded random order with
    the best not at p); it is kept iff correct and flagged `hinted` (sample_index N_RFT + 1). Rejective sampling
    alone cannot undo a teacher's position bias, it only keeps the orders that agree with it (Gemma 3 270M: all 82
    kept pairwise trajectories showed the best response first); this gives SFT the other position too. Its
    `train_prompt`, like every record's, has no hint and shows the responses in its own order.
An item gets at most one hinted trajectory: the all-wrong ("needs hint") items the first kind, items with kept
trajectories the second; too-easy items neither (nothing of theirs is kept).
With N_RFT = 1 every correct trajectory is "too easy": only hinted ones can be kept (the rule taken literally).

Every sampled trajectory becomes one `Trajectory` record (kept or not, hinted or not), the contract between RFT
generation, SFT (reads `kept`) and the meta RM (reads `not hinted`, both labels); `spct_jax.data.trajectories`
stores the records as a TFDS / ArrayRecord dataset. Statistics are a function of the records
(`stats_from_trajectories`), so one batch, a finished dataset and a resumed run are counted the same way.
Pure Python + the GRM: no TensorFlow.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from spct_jax.data.schema import PreferenceItem
from spct_jax.grm import reward, scorer

TOO_EASY, KEEP, NEEDS_HINT = "too_easy", "keep", "needs_hint"


@dataclasses.dataclass(frozen=True)
class Trajectory:
  """One sampled GRM judgement of one item: the record of the trajectory dataset.

  Attributes:
    uid, source: the item's (`PreferenceItem.uid` / `.source`).
    item_json: the whole item, `PreferenceItem.to_json()`, in its ORIGINAL response order.
    n: number of responses.
    sample_index: 0..N_RFT-1 for the non-hinted samples, N_RFT for the hinted one of an all-wrong item,
      N_RFT + 1 for a position hint (`position_hint_index`).
    perm: int[n], perm[p] = original index of the response SHOWN at position p.
    prompt: the exact text sampled from (demonstrations, hint and output prefix included).
    train_prompt: what SFT conditions on: the same order, no hint, the training demonstrations, the prefix.
    output_prefix: the text `train_prompt` ends with and `judgement` starts with.
    judgement: the generated text, output prefix included (the meta RM's input; SFT's target is `target`).
    scores: int[n] parsed scores in SHOWN order (zeros when unparseable).
    valid: the scores parsed.
    correct: Eq. 10 on the scores mapped back to the original order (n = 1: S_1 == label).
    hinted: sampled with "The best response is: Response j".
    kept: kept for SFT (correct, and the item not too easy).
  """

  uid: str
  source: str
  item_json: str
  n: int
  sample_index: int
  perm: tuple[int, ...]
  prompt: str
  train_prompt: str
  output_prefix: str
  judgement: str
  scores: tuple[int, ...]
  valid: bool
  correct: bool
  hinted: bool
  kept: bool

  def __post_init__(self):
    object.__setattr__(self, "perm", tuple(int(i) for i in self.perm))
    object.__setattr__(self, "scores", tuple(int(s) for s in self.scores))
    where = f"trajectory {self.uid!r} sample {self.sample_index}"
    if sorted(self.perm) != list(range(self.n)) or len(self.scores) != self.n:
      raise ValueError(f"{where}: perm {self.perm} / scores {self.scores} do not fit n={self.n}")
    if not (self.judgement.startswith(self.output_prefix) and self.train_prompt.endswith(self.output_prefix)):
      raise ValueError(f"{where}: judgement must start and train_prompt end with the output prefix "
                       f"{self.output_prefix!r}")
    if self.kept and not self.correct:
      raise ValueError(f"{where}: kept but not correct")

  @property
  def target(self) -> str:
    """What SFT trains on after `train_prompt`: the judgement minus the output prefix the prompt ends with."""
    return self.judgement[len(self.output_prefix):]

  def item(self) -> PreferenceItem:
    """The item in its ORIGINAL response order."""
    return PreferenceItem.from_json(self.item_json)

  def shown_responses(self) -> tuple[str, ...]:
    """The responses in the order this trajectory saw them (what its critique refers to by position)."""
    responses = self.item().responses
    return tuple(responses[i] for i in self.perm)


@dataclasses.dataclass(frozen=True)
class SourceStats:
  """Counts of one data source; `+` merges batches, shards and processes.

  items_seen = items_kept + items_too_easy + items_rejected_wrong. items_kept: at least one kept trajectory
  (hinted ones included). items_rejected_wrong: nothing kept and not too easy (all wrong; the hint, if tried,
  wrong too). hinted_*: the hints of all-wrong items; position_hinted_*: the position hints (disjoint counts).
  parse_failures counts trajectories (hinted ones included) whose scores did not parse.
  """

  items_seen: int = 0
  items_kept: int = 0
  items_too_easy: int = 0
  items_rejected_wrong: int = 0
  hinted_tried: int = 0
  hinted_kept: int = 0
  position_hinted_tried: int = 0
  position_hinted_kept: int = 0
  parse_failures: int = 0
  trajectories_kept: int = 0
  trajectories_rejected: int = 0

  def __add__(self, other: SourceStats) -> SourceStats:
    return SourceStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)})


Stats = dict[str, SourceStats]


def merge_stats(*parts: Mapping[str, SourceStats]) -> Stats:
  """Per-source sums of any number of per-source stats, sources sorted."""
  merged: dict[str, SourceStats] = collections.defaultdict(SourceStats)
  for part in parts:
    for source, stats in part.items():
      merged[source] = merged[source] + stats
  return dict(sorted(merged.items()))


def stats_to_json(stats: Mapping[str, SourceStats]) -> dict[str, Any]:
  """{"sources": {source: counts}, "total": counts}: what stats.json holds."""
  total = merge_stats(*({"": s} for s in stats.values())).get("", SourceStats())
  return {"sources": {k: dataclasses.asdict(v) for k, v in sorted(stats.items())}, "total": dataclasses.asdict(total)}


def stats_from_json(record: Mapping[str, Any]) -> Stats:
  return {source: SourceStats(**counts) for source, counts in record["sources"].items()}


def item_outcome(correct: Sequence[bool]) -> str:
  """TOO_EASY (every non-hinted trajectory correct), KEEP (some) or NEEDS_HINT (none)."""
  if not len(correct):
    raise ValueError("an item needs at least one trajectory")
  if all(correct):
    return TOO_EASY
  return KEEP if any(correct) else NEEDS_HINT


def keep_flags(correct: Sequence[bool]) -> list[bool]:
  """Which non-hinted trajectories SFT keeps: the correct ones, unless all are (too easy)."""
  return [bool(c) and item_outcome(correct) == KEEP for c in correct]


def position_hint_index(n_rft: int) -> int:
  """The sample_index of a position-hinted trajectory (an all-wrong item's hinted one has N_RFT)."""
  return n_rft + 1


def best_positions(item: PreferenceItem, perms: Iterable[Sequence[int]]) -> set[int]:
  """The shown positions of the item's best response in these orders (perm[p] = original index shown at p)."""
  return {[int(i) for i in perm[:item.num_responses]].index(item.best_index) for perm in perms}


def stats_from_trajectories(trajectories: Iterable[Trajectory]) -> Stats:
  """Per-source stats of the records of whole items (every trajectory an item produced)."""
  by_item: dict[tuple[str, str], list[Trajectory]] = collections.defaultdict(list)
  for t in trajectories:
    by_item[t.source, t.uid].append(t)
  stats: dict[str, SourceStats] = collections.defaultdict(SourceStats)
  for (source, uid), records in by_item.items():
    plain = [t for t in records if not t.hinted]
    position_index = position_hint_index(len(plain))
    hinted = [t for t in records if t.hinted and t.sample_index != position_index]
    position = [t for t in records if t.hinted and t.sample_index == position_index]
    samples = [t.sample_index for t in records]
    if len(set(samples)) != len(samples) or not plain or len(hinted) + len(position) > 1:
      raise ValueError(f"item {uid!r} ({source}): sample indices {sorted(samples)} are not one item's "
                       "trajectories (a duplicated uid, hinted records without their item, or two hints)")
    kept = sum(t.kept for t in records)
    outcome = item_outcome([t.correct for t in plain])
    stats[source] = stats[source] + SourceStats(
        items_seen=1, items_kept=int(kept > 0), items_too_easy=int(outcome == TOO_EASY),
        items_rejected_wrong=int(kept == 0 and outcome != TOO_EASY), hinted_tried=len(hinted),
        hinted_kept=sum(t.kept for t in hinted), position_hinted_tried=len(position),
        position_hinted_kept=sum(t.kept for t in position), parse_failures=sum(not t.valid for t in records),
        trajectories_kept=kept, trajectories_rejected=len(records) - kept)
  return dict(sorted(stats.items()))


def batch_seed(seed: int, shard: int, batch: int) -> int:
  """The seed of batch `batch` of work shard `shard`: independent streams, the same on every re-run."""
  return int(np.random.SeedSequence([seed, shard, batch]).generate_state(1)[0])


def _judge(grm, items: Sequence[PreferenceItem], perms: np.ndarray, mask: np.ndarray,
           texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Shown-order scores int32[B, k, n], valid bool[B, k] and Eq. 10 correctness bool[B, k] of B x k texts."""
  batch, k, n_max = perms.shape
  names = np.repeat(scorer.item_templates(items, grm.options), k).tolist()  # each item's template and score range
  shown, valid, _ = scorer.parse_texts(texts, np.repeat(mask.sum(axis=1), k), n_max, names)
  shown, valid = shown.reshape(batch, k, n_max), valid.reshape(batch, k)
  original = np.zeros_like(shown)
  np.put_along_axis(original, perms, shown, axis=-1)  # original[perm[p]] = shown[p]
  ratings = np.zeros((batch, n_max), np.float32)
  for b, item in enumerate(items):
    ratings[b, :item.num_responses] = item.ratings
  full = lambda a: np.broadcast_to(a[:, None, :], (batch, k, n_max))
  correct = np.asarray(reward.is_correct(original, full(ratings), valid=valid, response_mask=full(mask)))
  return shown, valid, correct


def _sample(grm, items: Sequence[PreferenceItem], k: int, options: scorer.GRMOptions, rng: np.random.Generator,
            strategy, seed: int, hint_best: Sequence[int] | None = None, orders=None):
  """One batched sampling call for B items x k samples: prompts, perms, mask, texts (output prefix included).
  orders: `scorer.build_prompts`'s (the given orders instead of drawn ones)."""
  prompts, perms, mask = scorer.build_prompts(items, k, options, rng, hint_best=hint_best, orders=orders)
  texts = [options.output_prefix + t for t in grm.generate_texts(prompts, strategy, seed)]
  if len(texts) != len(prompts):
    raise ValueError(f"the GRM returned {len(texts)} texts for {len(prompts)} prompts")
  return prompts, perms, mask, texts


def moved_order(rng: np.random.Generator, n: int, best: int, position: int) -> list[int]:
  """A random order of n responses (original indices) that shows `best` anywhere but at `position`."""
  shown_at = int(rng.choice([p for p in range(n) if p != position]))
  others = [int(i) for i in rng.permutation([i for i in range(n) if i != best])]
  return others[:shown_at] + [best] + others[shown_at:]


def generate_batch(grm, items: Sequence[PreferenceItem], *, n_rft: int = 3, hinted: bool = True,
                   position_hints: bool = False, seed: int = 0, train_demonstrations: Sequence[str] = (),
                   train_single_demonstrations: Sequence[str] = ()) -> tuple[list[Trajectory], Stats]:
  """Samples, judges and labels one batch of items (the rules in the module docstring).

  One batched sampling call for all items x N_RFT (identical prompts share a prefill in the sampler; each sample
  gets its own order, distinct from the item's other samples while n! allows: `num_distinct_orders` = N_RFT), then
  one batched call for the items that need a hint, then (position_hints) one for the items whose kept trajectories
  all show the best response at one position. All use the GRM's options (template, demonstrations, output prefix,
  stop rule) and its strategy for k = N_RFT (so hinted samples are drawn at the same temperature). The position
  hints draw their orders and sampling seed from their own stream of `seed`: turning them on changes no other
  trajectory.

  Args:
    grm: a `grm.GRM`, or any object with `.options` (`GRMOptions`) and `.generate_texts(prompts, strategy, seed)`.
    items: PreferenceItems with distinct uids.
    n_rft: non-hinted trajectories per item (the paper's N_RFT = 3).
    hinted: sample a hinted trajectory for items whose N_RFT trajectories are all wrong.
    position_hints: sample a position-hinted trajectory for items whose kept trajectories all show the best
      response at one position (module docstring).
    seed: fixes the response orders and the sampling (`batch_seed` gives per-batch seeds).
    train_demonstrations: worked examples the SFT prompt (`train_prompt`) starts with (default none);
    train_single_demonstrations: the same for n = 1 items (their own template).

  Returns:
    (trajectories: per item its N_RFT samples (sample_index 0..N_RFT-1) then the hinted one (N_RFT) or the
    position-hinted one (N_RFT + 1) if any, items in input order; per-source stats of those trajectories).
  """
  if n_rft < 1:
    raise ValueError(f"n_rft must be >= 1, got {n_rft}")
  items = list(items)
  if not items:
    raise ValueError("no items to generate for")
  for i, item in enumerate(items):
    if not isinstance(item, PreferenceItem):
      raise TypeError(f"item {i} is a {type(item).__name__}, not a PreferenceItem (RFT needs the ratings)")
  uids = [item.uid for item in items]
  if len(set(uids)) != len(uids):
    raise ValueError(f"duplicate uids in the batch: {sorted(u for u, c in collections.Counter(uids).items() if c > 1)}")
  options = dataclasses.replace(grm.options, num_distinct_orders=n_rft)  # distinct orders while n! allows
  strategy = options.strategy(n_rft)
  rng = np.random.default_rng(seed)
  sample_seed, hint_seed = (int(s) for s in rng.integers(2**31, size=2))

  prompts, perms, mask, texts = _sample(grm, items, n_rft, options, rng, strategy, sample_seed)
  shown, valid, correct = _judge(grm, items, perms, mask, texts)
  rows = {(b, s): (prompts[b * n_rft + s], perms[b, s], texts[b * n_rft + s], shown[b, s], valid[b, s],
                   correct[b, s], False) for b in range(len(items)) for s in range(n_rft)}
  kept = {(b, s): flag for b in range(len(items)) for s, flag in enumerate(keep_flags(correct[b]))}

  needs_hint = [b for b, item in enumerate(items)
                if hinted and item.num_responses >= 2 and item_outcome(correct[b]) == NEEDS_HINT]
  if needs_hint:
    _add_hinted(grm, items, needs_hint, n_rft, options, rng, strategy, hint_seed, rows, kept)

  if position_hints:
    _add_position_hints(grm, items, n_rft, options, strategy, seed, rows, kept)

  keys = sorted(rows)
  train_prompts = _train_prompts(items, keys, rows, dataclasses.replace(
      options, demonstrations=tuple(train_demonstrations), single_demonstrations=tuple(train_single_demonstrations)))
  trajectories = []
  for key, train_prompt in zip(keys, train_prompts):
    b, s = key
    prompt, perm, text, scores, ok, good, was_hinted = rows[key]
    n = items[b].num_responses
    trajectories.append(Trajectory(
        uid=items[b].uid, source=items[b].source, item_json=items[b].to_json(), n=n, sample_index=s,
        perm=tuple(perm[:n]), prompt=prompt, train_prompt=train_prompt, output_prefix=options.output_prefix,
        judgement=text, scores=tuple(scores[:n]), valid=bool(ok), correct=bool(good), hinted=was_hinted,
        kept=kept[key]))
  return trajectories, stats_from_trajectories(trajectories)


# Where the position hints' randomness comes from: np.random.default_rng([seed, POSITION_HINT_STREAM]).
POSITION_HINT_STREAM = 1


def _add_position_hints(grm, items, n_rft, options, strategy, seed, rows, kept) -> None:
  """Adds to `rows` / `kept` one position-hinted trajectory per item with n >= 2 whose kept non-hinted trajectories
  all show the best response at one position, sampled in one call in orders that show it elsewhere."""
  rng = np.random.default_rng([seed, POSITION_HINT_STREAM])
  sample_seed = int(rng.integers(2**31))
  chosen, orders = [], []
  for b, item in enumerate(items):
    if item.num_responses < 2:
      continue
    positions = best_positions(item, [rows[b, s][1] for s in range(n_rft) if kept[b, s]])
    if len(positions) == 1:
      chosen.append(b)
      orders.append([moved_order(rng, item.num_responses, item.best_index, positions.pop())])
  if chosen:
    _add_hinted(grm, items, chosen, position_hint_index(n_rft), options, rng, strategy, sample_seed, rows, kept,
                orders=orders)


def _add_hinted(grm, items, chosen, index, options, rng, strategy, seed, rows, kept, orders=None) -> None:
  """Samples one hinted trajectory for each item `chosen` (indices into `items`) in one call, judges it and
  stores it in `rows` / `kept` as sample `index`, kept iff correct."""
  hint_items = [items[b] for b in chosen]
  prompts, perms, mask, texts = _sample(grm, hint_items, 1, options, rng, strategy, seed,
                                        hint_best=[item.best_index for item in hint_items], orders=orders)
  shown, valid, correct = _judge(grm, hint_items, perms, mask, texts)
  for j, b in enumerate(chosen):
    rows[b, index] = (prompts[j], perms[j, 0], texts[j], shown[j, 0], valid[j, 0], correct[j, 0], True)
    kept[b, index] = bool(correct[j, 0])


def _train_prompts(items, keys, rows, options: scorer.GRMOptions) -> list[str]:
  """SFT prompts: each trajectory's response order, no hint, the training demonstrations, the output prefix."""
  shown_items = [items[b].with_order([int(i) for i in rows[b, s][1][:items[b].num_responses]]) for b, s in keys]
  prompts, _, _ = scorer.build_prompts(shown_items, 1, dataclasses.replace(options, shuffle=False),
                                       np.random.default_rng(0))
  return prompts


def generate_shard(grm, items: Sequence[PreferenceItem], *, shard: int, batch_size: int, seed: int = 0,
                   n_rft: int = 3, hinted: bool = True, position_hints: bool = False,
                   train_demonstrations: Sequence[str] = (),
                   train_single_demonstrations: Sequence[str] = (),
                   on_batch: Callable[[list[Trajectory], Stats], None] | None = None
                   ) -> tuple[list[Trajectory], Stats]:
  """`generate_batch` over one work shard's items in batches of `batch_size`, batch i seeded by
  `batch_seed(seed, shard, i)`: a shard's records depend only on (items, seed, shard, batch size, options).

  on_batch(trajectories, stats) is called after each batch (e.g. to advance a progress bar).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  trajectories, parts = [], []
  for i, start in enumerate(range(0, len(items), batch_size)):
    batch, stats = generate_batch(grm, items[start:start + batch_size], n_rft=n_rft, hinted=hinted,
                                  position_hints=position_hints, seed=batch_seed(seed, shard, i),
                                  train_demonstrations=train_demonstrations,
                                  train_single_demonstrations=train_single_demonstrations)
    trajectories += batch
    parts.append(stats)
    if on_batch is not None:
      on_batch(batch, stats)
  return trajectories, merge_stats(*parts)
