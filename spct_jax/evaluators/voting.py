"""THE held-out evaluator: GRM accuracy over fixed items, greedy, voting@k and metarm@k (spec sec. 5, 6).

Declared in configs (`config.evals.<name> = dict(type="voting", ...)`, fields of `VotingSpec`) and built by
`spct_jax.evaluators.from_config`; the eval experiment runs it once per dataset, every trainer runs it every
`every` steps. It always reports the same metrics (`metrics.HEADLINE`): accuracy_strict (Eq. 10),
accuracy_tie_random (the paper's rule) and parse_rate, plus the rest of `metrics.METRICS`. Runs: "greedy",
"voting@<k>" (Eq. 14 over k samples) and, given a meta RM, "metarm@<k>" (Eq. 14 over the k_meta of the SAME k
samples with the highest meta-RM logits, `meta_rm.guided_vote`), so each pair differs only by the meta RM's filter.

Choices (spec fields):
  * nested_k: max(ks) samples are drawn once and voting@k uses the first k, so k = 1 is one temperature sample
    (the paper's "k=1" row) and the ks are compared on the same samples. Every sample shuffles the responses anew
    (grm.num_distinct_orders None, the paper's rule), so a prefix sees what an independent k-sample run would.
  * temperature: None samples at `grm.temperature`.
  * meta RM (a constructor input, not a spec field): every batch's B x k trajectories are scored in one batched
    call (`meta_rm.MetaRMScorer`); k_meta None keeps max(1, k // 2) per k (the paper's default), an int keeps
    min(k_meta, k) (recorded per run as "k_meta"). The tie-break key of metarm@k is voting@k's.
Everything random (response orders, sampling, tie-breaks) derives from (seed, name, run, batch).
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from spct_jax import meta_rm as meta_rm_lib
from spct_jax.data import schema
from spct_jax.evaluators import metrics
from spct_jax.grm import GRM, reward
from spct_jax.grm.scorer import GRMOptions


def derived_seed(*parts: int | str) -> int:
  """A 31-bit seed from ints and strings (strings by crc32: stable across runs, unlike hash())."""
  ints = [p if isinstance(p, int) else zlib.crc32(p.encode("utf-8")) for p in parts]
  return int(np.random.default_rng(ints).integers(2**31 - 1))


def spec_values(cls, spec: Mapping[str, Any], kind: str) -> dict[str, Any]:
  """The entries of a config spec as a dict; ValueError on a key that is not a field of the dataclass `cls`."""
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(spec.keys()) - fields)
  if unknown:
    raise ValueError(f"{kind} evaluator: unknown key(s) {unknown}; valid: {sorted(fields)}")
  return dict(spec)


@dataclasses.dataclass(frozen=True, kw_only=True)
class VotingSpec:
  """One `config.evals.<name>` entry.

  every: run every N training steps and at the last step (trainers; 0 = never). The eval experiment ignores it.
  greedy: one temperature-0 sample per item (the paper's "greedy" row).
  ks: voting@k over samples drawn at `temperature` (None: grm.temperature).
  nested_k: draw max(ks) once and vote over prefixes (see the module docstring); False: one draw per k.
  batch_size: items per kernel call (rows = batch_size * k).
  samples: keep per-item texts and votes (the eval experiment writes them to samples.jsonl).
  """

  type: str = "voting"
  every: int = 0
  greedy: bool = True
  ks: tuple[int, ...] = ()
  temperature: float | None = None
  nested_k: bool = True
  batch_size: int = 8
  samples: bool = False

  @classmethod
  def from_config(cls, spec: Mapping[str, Any]) -> VotingSpec:
    values = spec_values(cls, spec, "voting")
    if "ks" in values:
      values["ks"] = tuple(sorted({int(k) for k in values["ks"]}))
    return cls(**values)


class MeasuredGRM(GRM):
  """A GRM that keeps the sampler's token count of every row it generated (EOS included) in `last_lengths`."""

  def generate_texts(self, prompts, strategy, seed):
    self.last_lengths = []
    return super().generate_texts(prompts, strategy, seed)

  def _decode(self, row, length):
    self.last_lengths.append(int(length))
    return super()._decode(row, length)


@dataclasses.dataclass
class Scored:
  """Scores of N items x k samples (responses padded to the largest n)."""

  sample_scores: np.ndarray  # int32[N, k, n] original order, 0 where invalid.
  valid: np.ndarray  # bool[N, k]
  perms: np.ndarray  # int32[N, k, n]
  response_mask: np.ndarray  # bool[N, n]
  ratings: np.ndarray  # f32[N, n]
  texts: list[list[str]]
  gen_tokens: np.ndarray | None  # f32[N, k]
  gen_chars: np.ndarray  # f32[N, k]
  seconds: float
  meta_scores: np.ndarray | None = None  # f32[N, k] meta RM logits of every trajectory (None: no meta RM)
  meta_seconds: float = 0.0  # of `seconds`, spent scoring with the meta RM


def _batches(items, batch_size: int) -> list:
  return [items[i:i + batch_size] for i in range(0, len(items), batch_size)]


def _pad(array: np.ndarray, n: int) -> np.ndarray:
  return np.pad(array, [(0, 0)] * (array.ndim - 1) + [(0, n - array.shape[-1])])


def score_items(grm: GRM, items: Sequence[schema.PreferenceItem], *, k: int, batch_size: int, seed: int,
                desc: str = "", progress: bool = False, tokenizer=None, meta_scorer=None) -> Scored:
  """Runs the GRM kernel over `items` in batches, k samples each; a progress bar shows running accuracy.

  meta_scorer: `(items, texts[B][k], perms) -> f32[B, k]` (`meta_rm.as_meta_scorer`), called once per batch on
  all its B x k trajectories; None: no meta scores.
  """
  n = max(item.num_responses for item in items)
  parts, texts, correct, lengths, meta, meta_seconds = [], [], [], [], [], 0.0
  start = time.time()
  bar = tqdm(total=len(items), desc=desc, unit="item", disable=not progress, leave=True)
  for b, batch in enumerate(_batches(items, batch_size)):
    grm.last_lengths = None
    try:
      result = grm.score_batch(batch, k=k, seed=derived_seed(seed, b))
    except ValueError as e:  # name the items: an item-level error must say which item
      raise ValueError(f"scoring items {[item.uid for item in batch]}: {e}") from e
    lengths.append(grm.last_lengths)
    if meta_scorer is not None:
      meta_start = time.time()
      meta.append(np.asarray(meta_scorer(batch, result.texts, result.perms), np.float32).reshape(len(batch), k))
      meta_seconds += time.time() - meta_start
    ratings = reward.ratings_array(batch, n)
    mask = _pad(result.response_mask, n)
    parts.append((_pad(result.sample_scores, n), result.valid, _pad(result.perms, n), mask, ratings))
    texts += result.texts
    acc = metrics.item_metrics(_pad(result.voted, n), ratings, mask, result.valid, jax.random.key(0))
    correct += list(acc["accuracy_tie_expected"])
    bar.update(len(batch))
    parsed = np.mean(np.concatenate([p[1].ravel() for p in parts]))
    bar.set_postfix(acc=f"{100 * np.mean(correct):.1f}%", parsed=f"{100 * parsed:.0f}%")
  bar.close()
  cat = lambda j: np.concatenate([p[j] for p in parts])
  # Lengths of what the model generated: the output prefix was part of the prompt.
  generated = [[t[len(grm.options.output_prefix):] for t in row] for row in texts]
  chars = np.asarray([[len(t) for t in row] for row in generated], np.float32)
  tokens = None
  if all(x is not None and len(x) == len(b) * k for x, b in zip(lengths, _batches(items, batch_size))):
    tokens = np.asarray(sum(lengths, []), np.float32).reshape(len(items), k)  # exact, from the sampler
  elif tokenizer is not None:  # A GRM that is not a MeasuredGRM: re-encode (approximate).
    tokens = np.asarray([[len(tokenizer.encode(t, add_bos=False)) for t in row] for row in generated], np.float32)
  return Scored(sample_scores=cat(0), valid=cat(1), perms=cat(2), response_mask=cat(3), ratings=cat(4),
                texts=texts, gen_tokens=tokens, gen_chars=chars, seconds=time.time() - start,
                meta_scores=np.concatenate(meta) if meta else None, meta_seconds=meta_seconds)


def run_metrics(scored: Scored, items: Sequence[schema.PreferenceItem], k: int, key: jax.Array, *,
                k_meta: int | None = None) -> dict[str, Any]:
  """Aggregated metrics of voting over the first k samples of `scored`; with `k_meta`, over the k_meta of them
  with the highest meta scores (MetaRM@k; `scored.meta_scores` needed)."""
  votes = None
  if k_meta is None:
    voted = metrics.prefix_vote(scored.sample_scores, scored.valid, k)
  else:
    if scored.meta_scores is None:
      raise ValueError("MetaRM@k needs meta scores: score the items with a meta_scorer")
    voted, votes = meta_rm_lib.guided_vote(scored.sample_scores[:, :k], scored.valid[:, :k],
                                           scored.meta_scores[:, :k], k_meta)
  per_item = metrics.item_metrics(
      voted, scored.ratings, scored.response_mask, scored.valid[:, :k], key,
      None if scored.gen_tokens is None else scored.gen_tokens[:, :k], scored.gen_chars[:, :k], votes=votes)
  return metrics.aggregate(per_item, [item.category for item in items], [item.subset for item in items])


def _sample_records(name: str, mode: str, items, scored: Scored) -> list[dict[str, Any]]:
  meta = {} if scored.meta_scores is None else {"meta_scores": scored.meta_scores}
  return [{"dataset": name, "mode": mode, "uid": item.uid, "category": item.category,
           "ratings": list(item.ratings), "perms": scored.perms[i, :, :item.num_responses].tolist(),
           "sample_scores": scored.sample_scores[i, :, :item.num_responses].tolist(),
           "valid": scored.valid[i].tolist(), "texts": scored.texts[i],
           **{key: value[i].tolist() for key, value in meta.items()}} for i, item in enumerate(items)]


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """What one evaluation produced: per-run aggregated metrics, timings and (if asked) per-item records."""

  runs: dict[str, dict[str, Any]]  # "greedy" / "voting@<k>" / "metarm@<k>" -> {"k", "overall", "macro", ...}
  timing: dict[str, float]
  records: list[dict[str, Any]]

  def scalars(self) -> dict[str, float]:
    """Flat `<run>/<metric>` of the headline metrics (what a trainer logs per evaluation)."""
    return {f"{run}/{name}": value["overall"][name] for run, value in self.runs.items()
            for name in metrics.HEADLINE if value["overall"][name] is not None}


class VotingEvaluator:
  """Greedy, voting@k and (given a meta RM) metarm@k accuracy of a GRM on fixed `items` (module docstring).

  meta_rm: a meta scorer `(items, texts[B][k], perms) -> f32[B, k]` (`meta_rm.as_meta_scorer(model, tokenizer)`);
  k_meta: samples it keeps (None: max(1, k // 2) per k; an int: min(k_meta, k)).
  """

  def __init__(self, spec: VotingSpec, *, items: Sequence[schema.PreferenceItem], tokenizer, options: GRMOptions,
               name: str, seed: int = 0, mesh=None, progress: bool = False, skipped: Mapping[str, int] | None = None,
               meta_rm=None, k_meta: int | None = None):
    if not items:
      raise ValueError(f"evaluator {name!r}: no items to evaluate")
    if not spec.greedy and not spec.ks:
      raise ValueError(f"evaluator {name!r}: nothing to evaluate (greedy is False and ks is empty)")
    if meta_rm is not None and not spec.ks:
      raise ValueError(f"evaluator {name!r}: a meta RM needs sampled runs (ks is empty)")
    if k_meta is not None and (meta_rm is None or k_meta < 1):
      raise ValueError(f"evaluator {name!r}: k_meta={k_meta} needs a meta RM and must be >= 1")
    self.spec, self.items, self.tokenizer, self.options = spec, list(items), tokenizer, options
    self.name, self.seed, self.mesh, self.progress = name, seed, mesh, progress
    self.skipped = dict(skipped or {})  # items left out before evaluation, by reason (e.g. too long)
    self.meta_rm, self.k_meta = meta_rm, k_meta

  def k_meta_for(self, k: int) -> int:
    return meta_rm_lib.default_k_meta(k, None if self.k_meta is None else min(self.k_meta, k))

  @property
  def every(self) -> int:
    return self.spec.every

  def _grm(self, model, temperature: float) -> MeasuredGRM:
    return MeasuredGRM(model, self.tokenizer, mesh=self.mesh, **dataclasses.asdict(
        dataclasses.replace(self.options, temperature=temperature)))

  def evaluate(self, model) -> Evaluation:
    """Runs greedy (if asked) and every voting@k run on `model`."""
    spec, items, name = self.spec, self.items, self.name
    runs, timing, records = {}, {}, []
    common = dict(batch_size=spec.batch_size, progress=self.progress, tokenizer=self.tokenizer)
    if spec.greedy:
      scored = score_items(self._grm(model, 0.0), items, k=1, seed=derived_seed(self.seed, name, "greedy"),
                           desc=f"{name} greedy k=1", **common)
      runs["greedy"] = {"k": 1, "temperature": 0.0,
                        **run_metrics(scored, items, 1, jax.random.key(derived_seed(self.seed, name, "greedy", 1)))}
      timing["greedy_s"] = scored.seconds
      if spec.samples:
        records += _sample_records(name, "greedy", items, scored)
    temperature = self.options.temperature if spec.temperature is None else spec.temperature
    ks = list(spec.ks)
    for draw in (ks[-1:] if spec.nested_k else ks):
      scored = score_items(self._grm(model, float(temperature)), items, k=draw,
                           seed=derived_seed(self.seed, name, "sampled", draw),
                           desc=f"{name} T={temperature} k={draw}", meta_scorer=self.meta_rm, **common)
      timing[f"sampled_k{draw}_s"] = scored.seconds
      if self.meta_rm is not None:
        timing[f"meta_rm_k{draw}_s"] = scored.meta_seconds
      if spec.samples:
        records += _sample_records(name, f"sampled_k{draw}", items, scored)
      for k in (ks if spec.nested_k else [draw]):
        key = jax.random.key(derived_seed(self.seed, name, "sampled", k))
        run = {"k": k, "temperature": temperature, "drawn": draw}
        runs[f"voting@{k}"] = {**run, **run_metrics(scored, items, k, key)}
        if self.meta_rm is not None:
          k_meta = self.k_meta_for(k)
          runs[f"metarm@{k}"] = {**run, "k_meta": k_meta, **run_metrics(scored, items, k, key, k_meta=k_meta)}
    return Evaluation(runs=runs, timing=timing, records=records)

  def __call__(self, model) -> dict[str, float]:
    """The periodic form: flat headline metrics, the item count and the skip counts."""
    out = self.evaluate(model).scalars()
    out["items"] = len(self.items)
    out.update({f"skipped_{reason}": count for reason, count in self.skipped.items()})
    return out
