"""`python -m spct_jax.main --config=configs/rft_generate.py`: RFT data by rejective sampling (spec sec. 3).

The training stream (`selection.training_items`: data.train_sources mixed in one seeded order, no held-out prompt,
items too long for the context skipped and counted) is cut into rft.num_shards work shards, shard s =
items[s::num_shards]. Each process samples its own shards (s % process_count == process index) with a model on
its own devices (`rft.generate_shard`: N_RFT judgements per item in one batched call per batch, the correct ones
kept, hopeless items hinted; with rft.position_hints, items whose kept judgements all show the best response at
one position get a hinted judgement that shows it elsewhere) and writes each shard atomically when it is done. A
re-run skips the complete shards (after a kill, or a SIGTERM, which stops after the shard in progress); a shard's
records depend only on its items and seeds, so the finished dataset equals an uninterrupted run's. A workdir
holding another run's shards (other config or items) is refused. Once every shard exists, process 0 writes
(atomically):
  trajectories/   the TFDS ArrayRecord dataset (`data.trajectories`; the record: `rft.Trajectory`); its
                  dataset_info.json is written last and marks the dataset finished (`is_finished`)
  stats.json      "sources"/"total": items seen, kept, too easy, rejected wrong, hinted tried / kept, position
                  hinted tried / kept, parse failures, trajectories kept / rejected; "selection": per source
                  items read, dropped for a held-out prompt, skipped as too long, selected
and run() returns the totals, with trajectories/s of this run's sampling.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from typing import Any

import jax
from ml_collections import ConfigDict
from tqdm import tqdm

from spct_jax import files, multihost, rft
from spct_jax.experiments import common, selection, validation, workdir as workdir_lib
from spct_jax.grm import GRM
from spct_jax.train import loop

log = logging.getLogger(__name__)
v = validation
RULES = (
    v.integer("seed"), v.boolean("progress"), *v.model_rules(),
    v.names("data.train_sources"), v.names("data.eval_sources", nonempty=False), v.integer("data.seed"),
    v.integer("data.max_per_source", 0), v.integer("data.num_items", 0), v.integer("data.eval_items", 0),
    *v.synthetic_rules(), *v.grm_rules(),
    v.integer("rft.n_rft", 1), v.boolean("rft.hinted"), v.boolean("rft.position_hints"),
    v.integer("rft.train_demonstrations", 0),
    v.integer("rft.batch_size", 1), v.integer("rft.num_shards", 1),
)
DATASET_DIR, STATS_FILE = "trajectories", "stats.json"


def is_finished(workdir: files.PathLike) -> bool:
  """Whether `workdir` holds a finished dataset (what configs/rft.py reads)."""
  return (files.as_path(workdir) / DATASET_DIR / "dataset_info.json").is_file()


def train_demonstrations(config) -> dict[str, tuple[str, ...]]:
  """The worked examples of the SFT prompt: the first rft.train_demonstrations of the sampling prompt's stream."""
  grm_cfg = ConfigDict(config.grm.to_dict())
  grm_cfg.num_demonstrations = config.rft.train_demonstrations
  demos = common.demonstrations(grm_cfg)
  return {"train_demonstrations": demos["demonstrations"],
          "train_single_demonstrations": demos["single_demonstrations"]}


def fingerprint(config, items) -> dict[str, Any]:
  """What the records depend on: the teacher, the prompts and sampling, the RFT rules and the items themselves."""
  digest = hashlib.sha256("\n".join(item.to_json() for item in items).encode("utf-8")).hexdigest()
  r = config.rft
  rules = {"n_rft": r.n_rft, "hinted": r.hinted, "train_demonstrations": r.train_demonstrations,
           "batch_size": r.batch_size}
  if r.position_hints:  # named only when on: runs from before the option keep their fingerprint
    rules["position_hints"] = True
  return {"seed": config.seed, "model": config.model.to_dict(), "grm": config.grm.to_dict(), "rft": rules,
          "items": len(items), "items_sha256": digest}


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


class _Progress:
  """The progress bar (process 0): items done, and kept / too easy / rejected wrong / hinted kept / position
  hinted kept so far."""

  def __init__(self, total: int, done: int, enabled: bool):
    self.bar = tqdm(total=total, initial=done, desc="rft_generate", unit="item", disable=not enabled)
    self.stats: rft.Stats = {}
    self.trajectories = 0

  def __call__(self, records, stats) -> None:
    self.stats = rft.merge_stats(self.stats, stats)
    self.trajectories += len(records)
    total = rft.merge_stats(*({"": s} for s in self.stats.values()))[""]
    self.bar.update(sum(s.items_seen for s in stats.values()))  # (a disabled bar has no .initial to count from)
    self.bar.set_postfix(kept=total.items_kept, too_easy=total.items_too_easy, wrong=total.items_rejected_wrong,
                         hinted=total.hinted_kept, pos_hinted=total.position_hinted_kept,
                         parse_fail=total.parse_failures)


def run(config, workdir) -> dict[str, Any]:
  validation.check(config, RULES)
  selection.check_sources(tuple(config.data.train_sources), tuple(config.data.eval_sources))
  start = time.time()
  with workdir_lib.locked(workdir) as workdir:
    from spct_jax.data import trajectories  # pylint: disable=g-import-not-at-top  (TensorFlow: data modules only)

    r = config.rft
    mesh, model, tokenizer, options, budget = common.build_run(config, devices=jax.local_devices(),
                                                               hint=r.hinted or r.position_hints)
    items, source_stats = selection.training_items(config.data, fits=budget.fits)
    num_shards = min(r.num_shards, len(items))
    writer = trajectories.TrajectoryWriter(workdir / DATASET_DIR, num_shards, fingerprint=fingerprint(config, items))
    mine = list(range(jax.process_index(), num_shards, jax.process_count()))
    pending = writer.pending(jax.process_index(), jax.process_count())
    shard_items = lambda s: items[s::num_shards]
    progress = _Progress(sum(len(shard_items(s)) for s in mine),
                         sum(len(shard_items(s)) for s in mine if s not in pending),
                         bool(config.progress) and multihost.is_main_process())
    grm = GRM(model, tokenizer, mesh=mesh, **dataclasses.asdict(options))
    demos = train_demonstrations(config)
    log.info("rft_generate: %d items in %d shards, %d of this process's %d to do", len(items), num_shards,
             len(pending), len(mine))
    sampling_start, written, preempted = time.time(), 0, False
    with loop.Preemption() as preemption:
      for shard in pending:
        with selection.naming_items(shard_items(shard), f"rft_generate shard {shard}"):
          records, _ = rft.generate_shard(grm, shard_items(shard), shard=shard, batch_size=r.batch_size,
                                          seed=config.seed, n_rft=r.n_rft, hinted=r.hinted,
                                          position_hints=r.position_hints, on_batch=progress, **demos)
        writer.write(shard, records)
        written += 1
        if preemption.reached(shard) and shard != pending[-1]:
          log.warning("SIGTERM: shard %d written, %d of this process's shards left; re-run to finish", shard,
                      len(pending) - written)
          preempted = True
          break
    progress.bar.close()
    sampling_s = time.time() - sampling_start
    summary = {"shards": num_shards, "shards_written": written, "trajectories_sampled": progress.trajectories,
               "trajectories_per_s": progress.trajectories / max(sampling_s, 1e-9)}
    if preempted:
      return dict(summary, preempted=True, seconds=time.time() - start)
    _sync("rft_generate: every shard written")
    if multihost.is_main_process():
      writer.finalize(stats_path=workdir / STATS_FILE, extra_stats={"selection": source_stats},
                      description=f"spct-jax RFT trajectories of {config.model.name} on "
                                  f"{list(config.data.train_sources)}")
    _sync("rft_generate: finalized")
    written_stats = json.loads((workdir / STATS_FILE).read_text())
  per_source = {f"{key}/{source}": counts[key] for source, counts in written_stats["sources"].items()
                for key in ("items_seen", "items_kept")}
  return {**summary, **written_stats["total"], **per_source,
          "skipped_too_long": sum(s["skipped_too_long"] for s in source_stats.values()),
          "dropped_shared_prompt": sum(s["dropped_shared_prompt"] for s in source_stats.values()),
          "seconds": time.time() - start}
