"""`python -m spct_jax.main --config=configs/rft.py`: SFT of the GRM on the kept RFT trajectories (spec sec. 3).

Data: the finished dataset of an rft_generate workdir (`config.data.rft_dir`; its trajectories/), through the seqio
Task `data.sft_task.register_rft_task` (inputs = the record's SFT prompt, targets = its judgement) and
`sft_batches` (the target-only decoder batch, packed or not; each process reads its own shard). The sequence
lengths come from the data (the longest prompt and judgement, the prompt cut so a row fits model.max_seq_len);
longer examples are dropped, never trimmed, and counted (`sft_examples_dropped`). The batch stream is seqio's,
shuffled with config.seed and repeated; step s reads its s-th batch, so a resumed run skips to it and continues
exactly like an uninterrupted one.
Objective: next-token cross-entropy on the judgement tokens only (`train.sft.sft_objective`; each batch gets
`train.sft.with_target_index`, so the LM head runs at those tokens only), one jitted sharded step
(`train.step.make_train_step`). Resume, preemption, metrics.jsonl, the NaN stop, the progress bar and the
periodic held-out evaluation (`config.evals.heldout` on data.eval_items items of data.eval_sources, which must share
no source or prompt with the trajectories' items) are `train.loop`'s.
At the last step the trained weights are exported to `<workdir>/<config.export>` (default `grm/`) with
`weights.orbax_io.save_model` (parameters, config, tokenizer; written atomically): a model path for
`--config.model.name=` of configs/grpo.py and configs/eval.py.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from spct_jax import evaluators as evaluators_lib
from spct_jax import files, multihost
from spct_jax.experiments import common, rft_generate, selection, validation, workdir as workdir_lib
from spct_jax.train import loop
from spct_jax.train.sft import sft_objective, target_width, with_target_index
from spct_jax.train.step import OptimizerConfig, init_train_state, make_optimizer, make_train_step

v = validation
RULES = (
    v.integer("seed"), v.integer("total_steps", 1), v.integer("batch_size", 1), *v.checkpoint_rules(),
    *v.model_rules(), *v.grm_rules(),
    v.string("data.rft_dir"),
    selection.dataset_names_rule("data.eval_sources"), v.integer("data.eval_items", 1), v.integer("data.seed"),
    *v.synthetic_rules(), v.boolean("data.pack"), v.integer("data.shuffle_buffer_size", 1),
    v.integer("data.max_inputs_length", 2, optional=True), v.integer("data.max_targets_length", 1, optional=True),
    *v.optimizer_rules(), v.integer("logprob_chunk_size", 1, optional=True), v.string("export"),
)
PROGRESS_KEYS = ("loss", "tokens", "tokens_per_s")


def dataset_dir(rft_dir: files.PathLike):
  """The finished trajectory dataset of an rft_generate workdir; FileNotFoundError naming what is missing."""
  path = files.as_path(rft_dir)
  if not rft_generate.is_finished(path):
    raise FileNotFoundError(f"config.data.rft_dir={str(path)!r} holds no finished RFT dataset (no "
                            f"{rft_generate.DATASET_DIR}/dataset_info.json): run `python -m spct_jax.main "
                            f"--config=configs/rft_generate.py --workdir={path}` first (re-running it finishes a "
                            "killed run)")
  return path / rft_generate.DATASET_DIR


def sequence_lengths(lengths: Mapping[str, np.ndarray], data_cfg, max_seq_len: int) -> tuple[dict[str, int], int]:
  """({"inputs", "targets"} lengths, examples longer than them). Defaults: the longest judgement, and the longest
  prompt cut so a decoder row (inputs + targets - 1 tokens) fits max_seq_len."""
  targets = data_cfg.max_targets_length or int(lengths["targets"].max())
  inputs = min(data_cfg.max_inputs_length or int(lengths["inputs"].max()), max_seq_len + 1 - targets)
  if inputs < 2:
    raise ValueError(f"judgements of {targets} tokens leave no room for a prompt in model.max_seq_len="
                     f"{max_seq_len}; set data.max_targets_length")
  fits = (lengths["inputs"] <= inputs) & (lengths["targets"] <= targets)
  if not fits.any():
    raise ValueError(f"no SFT example fits inputs <= {inputs} and targets <= {targets} tokens (model.max_seq_len="
                     f"{max_seq_len}; prompts of {int(lengths['inputs'].min())}+ tokens)")
  return {"inputs": inputs, "targets": targets}, int((~fits).sum())


class SFTBody:
  """One SFT step for `loop.train`: the step-th batch of the seeded stream -> the jitted update."""

  def __init__(self, state, train_step, dataset, data_metrics: Mapping[str, float]):
    self.state, self.train_step, self.dataset = state, train_step, dataset
    self.data_metrics = dict(data_metrics)  # constant per run: logged with every step
    self._batches, self._next = None, None

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """The step-th batch (0-based); a resumed run (or any jump) skips the stream to it."""
    if self._next != step:
      self._batches = self.dataset.skip(step).as_numpy_iterator()
    self._next = step + 1
    return next(self._batches)

  def __call__(self, step: int) -> dict[str, float]:
    batch = self.batch(step)
    # The loss then runs the LM head at the targets only (train.sft); every process pads to the same width.
    batch = with_target_index(batch, width=multihost.agree_max(target_width(batch["decoder_loss_weights"])))
    t0 = time.perf_counter()
    metrics = {k: float(x) for k, x in multihost.to_host(self.train_step(self.state, None, batch)).items()}
    segments = batch["decoder_segment_ids"]
    metrics.update(sequences=float(segments.max(axis=1).sum()), row_fill=float((segments > 0).mean()),
                   tokens_per_s=float((segments > 0).sum()) / (time.perf_counter() - t0), **self.data_metrics)
    return metrics


def run(config, workdir) -> dict[str, Any]:
  validation.check(config, RULES + validation.evals(config))
  specs = {name: evaluators_lib.spec_from_config(spec, name) for name, spec in config.evals.items()}
  directory = dataset_dir(config.data.rft_dir)  # before the model loads
  processes = jax.process_count()
  if config.batch_size % processes:
    raise validation.ConfigError(f"config.batch_size={config.batch_size} is not divisible by the {processes} "
                                 "processes (each reads batch_size / processes rows of its own shard)")
  with workdir_lib.locked(workdir) as workdir:
    from spct_jax.data import sft_task, trajectories  # pylint: disable=g-import-not-at-top  (TF: data modules)

    mesh, model, tokenizer, options, budget = common.build_run(config)
    kept = trajectories.read_trajectories(directory, kept=True)
    if not kept:
      raise ValueError(f"{directory}: no kept trajectories, nothing to fine-tune on (see "
                       f"{files.as_path(config.data.rft_dir) / rft_generate.STATS_FILE})")
    trained = list({t.uid: t.item() for t in kept}.values())
    heldout, too_long = selection.eval_items(config.data, budget)
    _, shared = selection.check_disjoint(trained, heldout)
    if shared:
      raise ValueError(f"{directory}: {sum(shared.values())} trained items per source {shared} have the prompt of a "
                       f"held-out item of data.eval_sources={list(config.data.eval_sources)}; regenerate the data "
                       "with these eval_sources (rft_generate drops such items)")

    task = sft_task.register_rft_task(directory, tokenizer, shuffle_buffer_size=config.data.shuffle_buffer_size)
    lengths, dropped = sequence_lengths(sft_task.token_lengths(task), config.data, model.cfg.max_seq_len)
    dataset = sft_task.sft_batches(task, sequence_length=lengths, batch_size=config.batch_size // processes,
                                   pack=config.data.pack, shuffle=True, seed=config.seed, num_epochs=None,
                                   shard_index=jax.process_index(), num_shards=processes)
    sources = collections.Counter(t.source for t in kept)
    data_metrics = {"sft_examples": float(len(kept)), "sft_examples_dropped": float(dropped),
                    "sft_hinted": float(sum(t.hinted for t in kept)),
                    **{f"sft_examples/{s}": float(n) for s, n in sorted(sources.items())}}

    optimizer = make_optimizer(OptimizerConfig(**config.optimizer))
    state = init_train_state(model, optimizer, config.optimizer.trainable, mesh=mesh)
    train_step = make_train_step(sft_objective(mesh=mesh, chunk_size=config.logprob_chunk_size), optimizer, state,
                                 mesh=mesh)
    evaluators = {name: evaluators_lib.from_config(spec, name=name, items=heldout, tokenizer=tokenizer,
                                                   options=options, mesh=mesh, seed=config.seed,
                                                   skipped={"too_long": sum(too_long.values())})
                  for name, spec in config.evals.items() if specs[name].every}
    body = SFTBody(state, train_step, dataset, data_metrics)
    summary = loop.train(body, workdir=workdir, evaluators=evaluators,
                         meta={"seed": config.seed, "sequence_length": lengths},
                         config=loop.LoopConfig.from_config(config, name="rft", progress_keys=PROGRESS_KEYS))
    if summary["step"] == config.total_steps and not summary.get("preempted"):
      common.export_model(state.model(), tokenizer, workdir / config.export)
      summary["model_path"] = str(workdir / config.export)
  return summary
