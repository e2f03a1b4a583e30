"""Which items a run reads: the sources, the held-out rules and the context budget.

  config.data   root (epath; gs:// works), seed, num_responses / kinds / difficulty (synthetic items);
                train_sources (mixed, per-source cap max_per_source, total num_items), eval_sources, eval_items
                (`training_items`, `eval_items`); grpo's one source: name, num_items, eval_items (`split_items`)
Held-out data is enforced here: LLMBar, RM-Bench, JudgeBench and RMB best-of-N (`HELDOUT_SOURCES`) are never
trained on, and no training item has the prompt of a held-out item (`check_sources`, `check_disjoint`: shared
prompts are dropped and counted). The context budget (`ContextBudget`, `drop_too_long`, `select_slice`) skips
items whose prompt and answer do not fit the model, and seeded slices (`seeded_order`) pick which ones are scored.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from etils import epath

from spct_jax import files
from spct_jax.data import readers, schema, synthetic
from spct_jax.experiments import validation
from spct_jax.grm import scorer
from spct_jax.grm.scorer import GRMOptions

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
LENGTH_MARGIN = 8  # tokens of slack: shuffled orders can tokenize a little differently at block boundaries
HELDOUT_START = 10**9  # synthetic held-out items: a disjoint index range of the training stream


# ------------------------------------------------------------------------------------------------------------
# Sources: dataset names, reading one, grpo's train / held-out split of one source.


def dataset_names() -> list[str]:
  return sorted(readers.READERS) + [SYNTHETIC]


def dataset_names_rule(key: str) -> validation.Rule:
  """Config rule: a non-empty tuple of `dataset_names()` or .jsonl files."""
  return validation.Rule(key, lambda names: isinstance(names, (tuple, list)) and bool(names) and all(
      n in dataset_names() or str(n).endswith(".jsonl") for n in names),
                         f"a non-empty tuple of dataset names from {dataset_names()} or .jsonl files")


def data_root(data_cfg) -> epath.Path:
  root = files.as_path(data_cfg.root)
  if not root.is_dir():
    raise FileNotFoundError(f"data root {str(root)!r} does not exist; set config key data.root "
                            "(or the SPCT_DATA_ROOT environment variable) to the folder holding rmb/, llmbar/, ...")
  return root


def _synthetic(data_cfg, num: int, start: int = 0) -> list[schema.PreferenceItem]:
  n = data_cfg.num_responses
  return synthetic.generate_items(num, seed=data_cfg.seed, start=start, num_responses=n if isinstance(n, int) else
                                  tuple(n), kinds=tuple(data_cfg.kinds), difficulty=data_cfg.difficulty)


def read_items(name: str, data_cfg, *, pool: int = 64) -> tuple[list[schema.PreferenceItem], dict[str, Any]]:
  """All items of dataset `name` (synthetic: `pool` generated ones) and the reader's stats; seeded by data.seed.

  `name` is a reader name (`readers.READERS`), "synthetic", or a `.jsonl` file in the generic format
  (`PreferenceItem.to_json` per line; relative paths are under data.root).
  """
  if name == SYNTHETIC:
    return _synthetic(data_cfg, pool), {"records": pool, "kept": pool, "skipped": {}}
  if name.endswith(".jsonl"):
    path = files.as_path(name) if os.path.isabs(name) or "://" in name else files.as_path(data_cfg.root) / name
    result = readers.read_jsonl(path)
  else:
    result = readers.read_dataset(name, data_root(data_cfg), seed=data_cfg.seed)
  stats = result.stats
  return list(result.items), {"records": stats.records, "kept": stats.kept, "skipped": dict(stats.skipped)}


def train_and_heldout(data_cfg) -> tuple[list[schema.PreferenceItem], list[schema.PreferenceItem]]:
  """(train, held-out) items of `config.data.name` (`split_items` without its counts)."""
  train, heldout, _ = split_items(data_cfg)
  return train, heldout


def split_items(data_cfg) -> tuple[list[schema.PreferenceItem], list[schema.PreferenceItem], dict[str, int]]:
  """(train, held-out, prompts dropped from training per source) of ONE training source, `config.data.name`.

  Synthetic: disjoint index ranges; a dataset: split by a data.seed permutation (the first eval_items are held
  out), at most num_items (0 = all) for training. The name must be a training source (`check_sources`), and
  training loses every item whose prompt a held-out item has: the split's own (datasets repeat prompts with other
  responses) and, for a benchmark, every item of the held-out benchmarks (`heldout_benchmarks`).
  """
  check_sources((data_cfg.name,), where="config.data.name")
  if data_cfg.name == SYNTHETIC:
    train, heldout = _synthetic(data_cfg, data_cfg.num_items), _synthetic(data_cfg, data_cfg.eval_items, HELDOUT_START)
  else:
    items, _ = read_items(data_cfg.name, data_cfg)
    if len(items) <= data_cfg.eval_items:
      raise ValueError(f"config.data.eval_items={data_cfg.eval_items} leaves no training items of "
                       f"{data_cfg.name!r} ({len(items)} items)")
    order = np.random.default_rng(data_cfg.seed).permutation(len(items))
    items = [items[i] for i in order]
    train, heldout = items[data_cfg.eval_items:], items[:data_cfg.eval_items]
  train, dropped = check_disjoint(train, heldout_benchmarks(data_cfg, (data_cfg.name,)))
  train, dropped_split = drop_shared_prompts(train, heldout)
  dropped = dict(collections.Counter(dropped) + collections.Counter(dropped_split))
  _log_dropped(dropped, f"training items of {data_cfg.name!r}")
  return train[:data_cfg.num_items or None], heldout, dropped


# ------------------------------------------------------------------------------------------------------------
# Training data and held-out data: which sources may be trained on; no held-out prompt in training.

# Held out for evaluation, never in RFT, GRPO or meta-RM training.
HELDOUT_SOURCES = ("llmbar", "rm_bench", "judgebench", "rmb_bon")
# May be trained on; so may .jsonl files (generic format) whose items name no held-out source.
TRAIN_SOURCES = ("rmb_pairwise", "hh_rlhf", "pandalm", "auto_j", SYNTHETIC)
MIX_STREAM = 0x6D6978  # the seed stream that shuffles the training sources together


def prompt_key(item: schema.PreferenceItem) -> tuple[tuple[str, str], ...]:
  """What "the same prompt" means: the conversation (roles and whitespace-normalised texts), responses aside.
  RMB's pairwise and best-of-N sets share 1,906 conversations (12,320 of the 14,529 pairs)."""
  return tuple((role, " ".join(text.split())) for role, text in item.conversation)


def check_sources(train_sources: Sequence[str], eval_sources: Sequence[str] = (), *,
                  where: str = "config.data.train_sources") -> None:
  """ConfigError unless every training source may be trained on and none is also an eval source.

  "synthetic" may be both: its held-out items are generated from their own index range (HELDOUT_START), and
  the prompt check (`drop_shared_prompts`) removes the questions the two ranges happen to share.
  """
  problems = [] if train_sources else [f"{where} is empty; name training sources from {list(TRAIN_SOURCES)}"]
  for name in train_sources:
    if name in HELDOUT_SOURCES:
      problems.append(f"{where} names {name!r}, which is held out for evaluation ({list(HELDOUT_SOURCES)} are "
                      f"never trained on); train on {list(TRAIN_SOURCES)} or .jsonl files")
    elif name not in TRAIN_SOURCES and not str(name).endswith(".jsonl"):
      problems.append(f"{where} names {name!r}; valid: {list(TRAIN_SOURCES)} or .jsonl files")
  for name in eval_sources:
    if name not in dataset_names() and not str(name).endswith(".jsonl"):
      problems.append(f"config.data.eval_sources names {name!r}; valid: {dataset_names()} or .jsonl files")
  shared = sorted(set(train_sources) & set(eval_sources) - {SYNTHETIC})
  if shared:
    problems.append(f"{shared} are both trained on ({where}) and evaluated on (config.data.eval_sources)")
  if problems:
    raise validation.ConfigError("; ".join(problems))


def drop_shared_prompts(train: Sequence[schema.PreferenceItem], heldout: Sequence[schema.PreferenceItem]
                        ) -> tuple[list[schema.PreferenceItem], dict[str, int]]:
  """(the training items whose prompt no held-out item has, how many were dropped per source)."""
  keys = {prompt_key(item) for item in heldout}
  kept, dropped = [], collections.Counter()
  for item in train:
    if prompt_key(item) in keys:
      dropped[item.source] += 1
    else:
      kept.append(item)
  return kept, dict(sorted(dropped.items()))


def check_disjoint(train: Sequence[schema.PreferenceItem], heldout: Sequence[schema.PreferenceItem]
                   ) -> tuple[list[schema.PreferenceItem], dict[str, int]]:
  """Training items against held-out ones: ValueError when a training item comes from a held-out benchmark
  (`HELDOUT_SOURCES`) or from a source the held-out items come from (synthetic excepted, see `check_sources`);
  then `drop_shared_prompts`."""
  sources = {item.source for item in train}
  held = {item.source for item in heldout} - {SYNTHETIC}
  bad = sorted(sources & (set(HELDOUT_SOURCES) | held))
  if bad:
    example = next(item.uid for item in train if item.source in bad)
    raise ValueError(f"training items come from {bad}, which the held-out data comes from or which are held out "
                     f"for evaluation ({list(HELDOUT_SOURCES)}); e.g. item {example!r}")
  return drop_shared_prompts(train, heldout)


def heldout_benchmarks(data_cfg, train_sources: Sequence[str], *, besides: Sequence[str] = ()
                       ) -> list[schema.PreferenceItem]:
  """Every item of every held-out benchmark (but those in `besides`, read already), read in full from data.root,
  when `train_sources` name a benchmark (their prompts must not be trained on: RMB pairwise repeats RMB
  best-of-N's, hh-rlhf and PandaLM some of RM-Bench's, Auto-J some of LLMBar's); none for synthetic items and
  .jsonl files alone."""
  if not any(name in readers.READERS for name in train_sources):
    return []
  return [item for name in HELDOUT_SOURCES if name not in besides for item in read_items(name, data_cfg)[0]]


def eval_items(data_cfg, budget: ContextBudget | None = None) -> tuple[list[schema.PreferenceItem], dict[str, int]]:
  """The held-out items of `data.eval_sources` and the too-long counts per source.

  With a budget: per source the evaluator's slice, data.eval_items items that fit (`select_slice`, stratified,
  seeded by data.seed). Without: every item (synthetic: the first data.eval_items of its held-out range), which
  is what a training stream is checked against.
  """
  items, too_long = [], {}
  for name in data_cfg.eval_sources:
    pool = (_synthetic(data_cfg, data_cfg.eval_items, HELDOUT_START) if name == SYNTHETIC
            else read_items(name, data_cfg)[0])
    if budget is None:
      items += pool
      continue
    chosen, too_long[name] = select_slice(pool, budget, seed=data_cfg.seed, sampling="stratified",
                                          max_items=data_cfg.eval_items)
    if not chosen:
      raise ValueError(f"held-out source {name!r}: no item fits model.max_seq_len={budget.max_seq_len} with "
                       f"grm.max_new_tokens={budget.options.max_new_tokens} ({too_long[name]} too long)")
    items += chosen
  return items, too_long


def training_items(data_cfg, *, fits: Callable[[schema.PreferenceItem], bool] | None = None
                   ) -> tuple[list[schema.PreferenceItem], dict[str, dict[str, int]]]:
  """The training stream: `data.train_sources` mixed in one seeded order, no held-out prompt in it.

  Per source, in a seeded order (data.seed and the name): items whose prompt a held-out item has are dropped
  (`eval_items` of data.eval_sources, plus `heldout_benchmarks`), then items that do not `fits` (the context
  budget) are skipped, and the first data.max_per_source (0 = all; synthetic: that many are generated, or
  data.num_items) are taken. The sources are then shuffled together (seeded) and cut at data.num_items (0 = all).

  Returns:
    (items, per source {"read", "dropped_shared_prompt", "skipped_too_long", "selected"}); ConfigError for a
    source that may not be trained on (`check_sources`), ValueError when nothing is left.
  """
  names, cap, evaluated = tuple(data_cfg.train_sources), data_cfg.max_per_source, tuple(data_cfg.eval_sources)
  check_sources(names, evaluated)
  heldout = eval_items(data_cfg)[0] + heldout_benchmarks(data_cfg, names, besides=evaluated)
  chosen, stats = [], {}
  for name in names:
    if name == SYNTHETIC:
      if not (cap or data_cfg.num_items):
        raise validation.ConfigError("synthetic training items need config.data.max_per_source or "
                                     "config.data.num_items > 0 (how many to generate)")
      pool = _synthetic(data_cfg, cap or data_cfg.num_items)
    else:
      pool = read_items(name, data_cfg)[0]
    allowed, dropped = check_disjoint(pool, heldout)
    picked, too_long = [], 0
    for i in np.random.default_rng([data_cfg.seed, zlib.crc32(name.encode())]).permutation(len(allowed)):
      if cap and len(picked) == cap:
        break
      if fits is not None and not fits(allowed[i]):
        too_long += 1
        continue
      picked.append(allowed[i])
    stats[name] = {"read": len(pool), "dropped_shared_prompt": sum(dropped.values()), "skipped_too_long": too_long,
                   "selected": len(picked)}
    chosen += picked
  mixed = [chosen[i] for i in np.random.default_rng([data_cfg.seed, MIX_STREAM]).permutation(len(chosen))]
  mixed = mixed[:data_cfg.num_items or None]
  uids = collections.Counter(item.uid for item in mixed)
  if len(uids) != len(mixed):
    raise ValueError(f"training items with the same uid: {sorted(u for u, c in uids.items() if c > 1)[:5]}")
  log.info("training items per source (read, dropped for a held-out prompt, too long, selected): %s", stats)
  if not mixed:
    raise ValueError(f"no training items left of {list(names)}: {stats}")
  return mixed, stats


def _log_dropped(dropped: dict[str, int], what: str) -> None:
  if dropped:
    log.warning("%s: dropped %d items whose prompt is held out, per source: %s", what, sum(dropped.values()),
                dropped)


# ------------------------------------------------------------------------------------------------------------
# Context budget: seeded slices of the items that fit.


def seeded_order(items: Sequence[schema.PreferenceItem], seed: int, sampling: str) -> list[int]:
  """Indices in the order a slice draws them: seeded shuffle, then (stratified) round-robin over categories."""
  rng = np.random.default_rng(seed)
  order = [int(i) for i in rng.permutation(len(items))]
  if sampling == "uniform":
    return order
  if sampling != "stratified":
    raise ValueError(f"config key data.sampling must be 'stratified' or 'uniform', got {sampling!r}")
  queues: dict[str, list[int]] = {}
  for i in order:  # Categories enter in seeded order too.
    queues.setdefault(items[i].category, []).append(i)
  out, depth = [], 0
  while len(out) < len(items):
    out += [q[depth] for q in queues.values() if depth < len(q)]
    depth += 1
  return out


@functools.cache
def _longest_piece(tokenizer) -> int:
  sp = tokenizer.processor
  return max(1, max(len(sp.id_to_piece(i)) for i in range(sp.get_piece_size())))


@dataclasses.dataclass(frozen=True)
class ContextBudget:
  """Whether an item's GRM prompt + max_new_tokens (+ a margin) fits the model's context.

  hint: measure the hinted prompt of items with n >= 2 (RFT's hinted sampling adds "The best response is: ...").
  """

  tokenizer: Any
  options: GRMOptions
  max_seq_len: int
  hint: bool = False

  @property
  def limit(self) -> int:
    return self.max_seq_len - self.options.max_new_tokens - LENGTH_MARGIN

  def prompt_length(self, item: schema.PreferenceItem) -> int:
    """Prompt tokens (responses in data order); a row that cannot fit by its characters alone is not encoded
    (a token spans at most the longest piece), so a 10 MB row costs nothing."""
    hint = item.best_index if self.hint and item.num_responses >= 2 else None
    prompt = scorer.item_prompt(item, self.options, hint_best=hint)  # the item's own template and demonstrations
    if len(prompt) > self.limit * _longest_piece(self.tokenizer):
      return len(prompt) // _longest_piece(self.tokenizer)
    return len(self.tokenizer.encode(prompt, add_bos=True))

  def fits(self, item: schema.PreferenceItem) -> bool:
    return self.prompt_length(item) <= self.limit


def drop_too_long(items: Sequence[schema.PreferenceItem], budget: ContextBudget,
                  what: str) -> tuple[list[schema.PreferenceItem], dict[str, int]]:
  """(the items that fit, too-long counts per source); logs the counts. Raises when none fits."""
  kept, skipped = [], collections.Counter()
  for item in items:
    if budget.fits(item):
      kept.append(item)
    else:
      skipped[item.source] += 1
  if skipped:
    log.warning("%s: skipped %d of %d items longer than the context (prompt + grm.max_new_tokens=%d > "
                "model.max_seq_len=%d), per source: %s", what, sum(skipped.values()), len(items),
                budget.options.max_new_tokens, budget.max_seq_len, dict(sorted(skipped.items())))
  if items and not kept:
    raise ValueError(f"{what}: none of the {len(items)} items fits model.max_seq_len={budget.max_seq_len} with "
                     f"grm.max_new_tokens={budget.options.max_new_tokens} and "
                     f"grm.num_demonstrations={len(budget.options.demonstrations)}")
  return kept, dict(sorted(skipped.items()))


def select_slice(items: Sequence[schema.PreferenceItem], budget: ContextBudget, *, seed: int, sampling: str,
                 max_items: int) -> tuple[list[schema.PreferenceItem], int]:
  """The first max_items (0 = all) of `seeded_order` that fit the context, sorted by prompt length so batches pad
  little; and how many were passed over as too long."""
  chosen, lengths, too_long = [], [], 0
  for i in seeded_order(items, seed, sampling):
    if max_items and len(chosen) == max_items:
      break
    length = budget.prompt_length(items[i])
    if length > budget.limit:
      too_long += 1
      continue
    chosen.append(items[i])
    lengths.append(length)
  order = np.argsort(lengths, kind="stable")
  return [chosen[i] for i in order], too_long


@contextlib.contextmanager
def naming_items(items: Sequence[schema.PreferenceItem], what: str) -> Iterator[None]:
  """Re-raises a ValueError inside the block with the uids (file:record) of the items it was working on."""
  try:
    yield
  except ValueError as e:
    raise ValueError(f"{what}, items {[item.uid for item in items]}: {e}") from e
