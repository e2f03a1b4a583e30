"""The meta RM's fresh-sample stage: the trained GRM's own judgements of training items, labelled by Eq. 10.

`config.fresh` (read here only):
  grm          "" (off), a model name / path (the trained GRM, loaded with config.model's dtypes and max_seq_len),
               or "synthetic" (`data.synthetic_judge.SyntheticJudge`: scripted worked judgements, smoke runs)
  num_items    training items to sample (the first num_items of the training split; 0 = all)
  k            samples per item (each in its own response order, like voting's)
  batch_size   items per sampling call
  num_shards   work shards (a kill loses at most one shard's work)
  error_rate   the synthetic judge's fraction of wrong judgements
Items are the TRAINING split of `config.data` (`selection.train_and_heldout`: the held-out items are never sampled);
sampling follows `config.grm` (template, temperature, output prefix, stop rule). Each sample is recorded by
`rft.generate_shard(..., hinted=False)`: a `Trajectory` with its Eq. 10 label, in the same TFDS / ArrayRecord
format that rft_generate writes, under `<workdir>/fresh/trajectories/` (+ `fresh/stats.json`). Shards are written
atomically; a re-run skips the complete ones and, once all are there, loads no GRM at all. `run.json` holds the
stage's fingerprint (GRM, k, seed, items, options): a changed config is refused instead of mixed in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Any

import jax

from spct_jax import files, multihost, rft
from spct_jax.data import readers
from spct_jax.experiments import common, selection
from spct_jax.grm import GRM

log = logging.getLogger(__name__)
SYNTHETIC = "synthetic"
FRESH_DIR = "fresh"


def _sha(value: Any) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def candidate_items(config) -> list:
  """The training items the stage samples (before the GRM's context budget drops any)."""
  train, _ = selection.train_and_heldout(config.data)
  return train[:config.fresh.num_items or None]


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def _build_grm(config, items, options, mesh):
  """(GRM or judge, context budget or None)."""
  f = config.fresh
  if f.grm == SYNTHETIC:
    from spct_jax.data.synthetic_judge import SyntheticJudge  # pylint: disable=g-import-not-at-top
    return SyntheticJudge(items, options, error_rate=f.error_rate), None
  model_cfg = config.model.copy_and_resolve_references()
  model_cfg.name, model_cfg.init = f.grm, "pretrained"
  model, tokenizer = common.build_model(model_cfg, mesh)
  grm = GRM(model, tokenizer, mesh=mesh, **dataclasses.asdict(options))
  return grm, selection.ContextBudget(tokenizer, options, model.cfg.max_seq_len)


def run_stage(config, workdir, mesh=None) -> dict[str, Any] | None:
  """Writes (or finds) the fresh trajectories; returns {"directory", "generated_shards", "stats"} or None (off)."""
  f = config.fresh
  if not f.grm:
    return None
  from spct_jax.data import trajectories  # pylint: disable=g-import-not-at-top  (TF: the experiment's data step)

  stage_dir = files.as_path(workdir) / FRESH_DIR
  directory = stage_dir / "trajectories"
  options = common.grm_options(config)
  items = candidate_items(config)
  if not items:
    raise ValueError(f"config.fresh.num_items: no training items of {config.data.name!r} to sample")
  fingerprint = {"grm": f.grm, "k": f.k, "seed": config.seed, "batch_size": f.batch_size,
                 "error_rate": f.error_rate if f.grm == SYNTHETIC else None, "items": len(items),
                 "uids": _sha([item.uid for item in items]), "options": _sha(dataclasses.asdict(options))}
  writer = trajectories.TrajectoryWriter(directory, f.num_shards, fingerprint=fingerprint)
  pending = writer.pending(jax.process_index(), jax.process_count())
  if pending:
    grm, budget = _build_grm(config, items, options, mesh)
    if budget is not None:  # a function of the GRM's tokenizer and options: the same on every re-run
      items, _ = selection.drop_too_long(items, budget, f"fresh samples of {config.data.name!r}")
    for shard in pending:
      shard_items = readers.shard_for_process(items, shard, f.num_shards)
      records = []
      if shard_items:
        with selection.naming_items(shard_items, f"fresh samples, shard {shard}"):
          records, _ = rft.generate_shard(grm, shard_items, shard=shard, batch_size=f.batch_size, seed=config.seed,
                                          n_rft=f.k, hinted=False)
      writer.write(shard, records)
      log.info("fresh samples: shard %d of %d written (%d trajectories)", shard + 1, f.num_shards, len(records))
    del grm
  _sync("spct_meta_rm_fresh_written")
  if not (directory / "dataset_info.json").is_file() and multihost.is_main_process():
    writer.finalize(stats_path=stage_dir / "stats.json", description="spct-jax meta RM fresh GRM samples")
  _sync("spct_meta_rm_fresh_finalized")
  stats = json.loads((stage_dir / "stats.json").read_text())
  return {"directory": str(directory), "generated_shards": len(pending), "stats": stats}
