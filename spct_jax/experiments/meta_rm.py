"""`python -m spct_jax.main --config=configs/meta_rm.py`: the meta RM (spec sec. 5), BCE on Eq. 10 labels.

Data: the non-hinted trajectories of `config.data.trajectories_dir` (an rft_generate workdir, or its
`trajectories/` folder), both labels, plus, when `config.fresh.grm` is set, fresh samples of the trained GRM on
training items (`experiments.fresh_samples`, written under `<workdir>/fresh/`, skipped on a re-run). Each
trajectory becomes `meta_rm_input(query, responses as that sample showed them, judgement)` with label = its Eq. 10
correctness (`data.meta_rm_examples`). Items are split by uid into training and held-out examples
(`data.heldout_fraction`); the label balance of both (overall and per source) goes to the log, `data.json` and every
metrics line. Class balance is `meta_rm.balance`: "pos_weight" (BCE with #neg / #pos on positives), "batches"
(half positive, half negative) or "none".

Training: a `meta_rm.MetaRM` (scalar head on `config.model`'s backbone: the base, or an RFT / GRPO checkpoint)
with `meta_rm.bce_objective` through the shared `train.step.make_train_step` (sharded over `config.mesh`) and
`train.loop.train` (orbax checkpoints, resume, SIGTERM, metrics.jsonl, NaN stop). Step s trains on
`batch_indices(labels, batch_size, s, seed=config.seed)`: a resumed run draws the batches an uninterrupted one
would. `optimizer.trainable` picks the trained parameters ("^head/": frozen backbone, a linear probe, the CPU
default; ".*": everything). Held-out AUC / accuracy / ECE / log loss every `evals.heldout.every` steps
(`evaluators.binary`). A run that ends at total_steps (not preempted) has process 0 write the model (backbone +
head + tokenizer) to `<workdir>/meta_rm/` atomically (`meta_rm.save_meta_rm`; replaced by a later run that
extends total_steps); `configs/eval.py --config.meta_rm.path=<workdir>/meta_rm` reads it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from spct_jax import evaluators as evaluators_lib
from spct_jax import files, meta_rm, multihost
from spct_jax import sharding as shd
from spct_jax.data import meta_rm_examples as mx
from spct_jax.data import synthetic
from spct_jax.evaluators import metrics as metrics_lib
from spct_jax.experiments import common, fresh_samples, selection, validation, workdir as workdir_lib
from spct_jax.grm import templates
from spct_jax.train import loop
from spct_jax.train.step import OptimizerConfig, init_train_state, make_optimizer, make_train_step

log = logging.getLogger(__name__)
MODEL_DIR = "meta_rm"
v = validation
RULES = (
    v.integer("seed"), v.integer("total_steps", 1), v.integer("batch_size", 1),
    v.integer("checkpoint.every", 1), v.integer("checkpoint.keep", 1), v.boolean("checkpoint.async_save"),
    v.one_of("model.init", ("pretrained", "random")), v.integer("model.max_seq_len", 16), v.string("model.name"),
    v.one_of("model.param_dtype", ("float32", "bfloat16")), v.one_of("model.compute_dtype", ("float32", "bfloat16")),
    v.integer("model.vocab_size", 1, optional=True),
    v.string("data.trajectories_dir"), v.number("data.heldout_fraction", 0.0, maximum=0.9),
    v.string("data.name"), v.integer("data.seed"), v.integer("data.num_items", 0), v.integer("data.eval_items", 0),
    v.int_or_range("data.num_responses", 1, synthetic.MAX_RESPONSES), v.subset_of("data.kinds", synthetic.KINDS),
    v.one_of("data.difficulty", synthetic.DIFFICULTIES),
    v.string("fresh.grm"), v.integer("fresh.num_items", 0), v.integer("fresh.k", 1), v.integer("fresh.batch_size", 1),
    v.integer("fresh.num_shards", 1), v.number("fresh.error_rate", 0.0, maximum=1.0),
    v.integer("grm.max_new_tokens", 1), v.integer("grm.num_demonstrations", 0), v.integer("grm.demo_seed"),
    v.number("grm.temperature", 0.0), v.integer("grm.top_k", 1, optional=True),
    v.number("grm.top_p", 0.0, strict=True, maximum=1.0, optional=True),
    v.one_of("grm.chat_style", ("raw", "gemma")), v.boolean("grm.stop_after_scores"),
    v.one_of("meta_rm.chat_style", tuple(templates.CHAT_STYLES)), v.integer("meta_rm.max_length", 2, optional=True),
    v.one_of("meta_rm.balance", mx.BALANCE_CHOICES), v.boolean("meta_rm.valid_only"),
    v.integer("meta_rm.length_multiple", 1),
    v.number("optimizer.learning_rate", 0.0, strict=True), v.integer("optimizer.warmup_steps", 0),
    v.one_of("optimizer.schedule", ("constant", "cosine")), v.integer("optimizer.grad_accum_steps", 1),
    v.number("optimizer.grad_clip_norm", 0.0, strict=True, optional=True), v.string("optimizer.trainable"),
)
PROGRESS_KEYS = ("loss", "accuracy", "heldout/auc")


def trajectory_dataset(path: str):
  """The finished trajectory dataset at `path` (an rft_generate workdir or its `trajectories/` folder)."""
  root = files.as_path(path)
  for candidate in (root, root / "trajectories"):
    if (candidate / "dataset_info.json").is_file():
      return candidate
  raise FileNotFoundError(f"config.data.trajectories_dir={path!r}: no finished trajectory dataset there or in its "
                          "trajectories/ folder (dataset_info.json); run rft_generate first, or set it to '' and "
                          "use fresh samples (config.fresh.grm)")


def load_examples(config, fresh_dir: str | None) -> tuple[list[mx.MetaRMExample], dict[str, int]]:
  """Examples of every non-hinted trajectory (the RFT dataset's, then the fresh ones) and counts per origin."""
  from spct_jax.data import trajectories  # pylint: disable=g-import-not-at-top  (TF: only this experiment's data)

  origins = []
  if config.data.trajectories_dir:
    origins.append(("rft", trajectory_dataset(config.data.trajectories_dir)))
  if fresh_dir:
    origins.append(("fresh", files.as_path(fresh_dir)))
  examples, counts = [], {}
  for name, directory in origins:
    records = trajectories.read_trajectories(directory, hinted=False)
    selection.check_disjoint([t.item() for t in records], [])  # no trajectory of a held-out benchmark's item
    part = mx.examples_from_trajectories(records, chat_style=config.meta_rm.chat_style,
                                         valid_only=config.meta_rm.valid_only)
    counts[name] = len(part)
    examples += part
  if not examples:
    raise ValueError(f"no non-hinted trajectories to train on (read: {counts})")
  return examples, counts


def _balance_metrics(prefix: str, balance: dict[str, Any]) -> dict[str, float]:
  return {f"{prefix}_examples": float(balance["examples"]), f"{prefix}_items": float(balance["items"]),
          f"{prefix}_positive_fraction": float(balance["positive_fraction"])}


class MetaRMBody:
  """One BCE step of the meta RM for `loop.train` (state: the TrainState of the MetaRM)."""

  def __init__(self, state, step_fn, tokenizer, examples, *, batch_size: int, seed: int, balance: str,
               max_length: int, length_multiple: int, data_metrics: dict[str, float]):
    self.state, self.step_fn, self.tokenizer = state, step_fn, tokenizer
    self.texts = [e.text for e in examples]
    self.labels = np.asarray([e.label for e in examples], np.int32)
    self.batch_size, self.seed, self.balance = batch_size, seed, balance
    self.max_length, self.length_multiple = max_length, length_multiple
    self.data_metrics = data_metrics  # constant per run (label balance): logged with every step

  def batch(self, step: int) -> dict[str, np.ndarray]:
    idx = mx.batch_indices(self.labels, self.batch_size, step, seed=self.seed, balance=self.balance)
    return meta_rm.make_batch(self.tokenizer, [self.texts[i] for i in idx], self.labels[idx],
                              max_length=self.max_length, length_multiple=self.length_multiple)

  def __call__(self, step: int) -> dict[str, float]:
    batch = self.batch(step)
    metrics = {k: float(np.asarray(x)) for k, x in multihost.to_host(self.step_fn(self.state, None, batch)).items()}
    metrics.update(batch_positive_fraction=float(batch["labels"].mean()), **self.data_metrics)
    return metrics


def _check_batch(batch_size: int, mesh) -> None:
  if mesh is None:
    return
  devices = math.prod(mesh.shape[a] for a in shd.mesh_axes_for("batch", mesh))
  if batch_size % devices:
    raise validation.ConfigError(f"config.batch_size={batch_size} must be a multiple of the {devices} devices the "
                                 "batch is sharded over (config.mesh)")


def run(config, workdir) -> dict[str, Any]:
  validation.check(config, RULES + validation.evals(config, types=("binary",)))
  if not config.data.trajectories_dir and not config.fresh.grm:
    raise validation.ConfigError("config.data.trajectories_dir and config.fresh.grm are both empty: no trajectories "
                                 "to train on; set either")
  specs = {name: evaluators_lib.spec_from_config(spec, name) for name, spec in config.evals.items()}
  if config.data.heldout_fraction == 0 and any(spec.every for spec in specs.values()):
    raise validation.ConfigError("config.data.heldout_fraction=0 leaves no held-out trajectories for config.evals "
                                 f"{sorted(n for n, s in specs.items() if s.every)}; set their every=0")
  if config.data.trajectories_dir:
    trajectory_dataset(config.data.trajectories_dir)  # fail before any model loads
  with workdir_lib.locked(workdir) as workdir:
    mesh = common.build_mesh(config)
    _check_batch(config.batch_size, mesh)
    fresh = fresh_samples.run_stage(config, workdir, mesh)
    examples, origins = load_examples(config, fresh and fresh["directory"])
    train, heldout = mx.split_by_uid(examples, config.data.heldout_fraction, seed=config.data.seed)
    balance = {"all": mx.label_balance(examples), "train": mx.label_balance(train),
               "heldout": mx.label_balance(heldout)}
    pos_weight = mx.pos_weight_for([e.label for e in train], config.meta_rm.balance)
    log.info("meta RM data: examples by origin %s; train %d (%d items, %.1f%% correct), held-out %d (%d items, "
             "%.1f%% correct); correct fraction per source %s; pos_weight %s", origins, len(train),
             balance["train"]["items"], 100 * balance["train"]["positive_fraction"], len(heldout),
             balance["heldout"]["items"], 100 * balance["heldout"]["positive_fraction"],
             {s: round(c["positive_fraction"], 3) for s, c in balance["all"]["by_source"].items()}, pos_weight)
    if multihost.is_main_process():
      files.write_json(metrics_lib.jsonable({"origins": origins, "balance": balance, "pos_weight": pos_weight,
                                             "fresh": fresh}), workdir / "data.json")

    backbone, tokenizer = common.build_model(config.model, mesh)
    model = meta_rm.from_backbone(backbone, meta_rm.MetaRMConfig(chat_style=config.meta_rm.chat_style,
                                                                 max_length=config.meta_rm.max_length),
                                  seed=config.model.seed, mesh=mesh)
    optimizer = make_optimizer(OptimizerConfig(**config.optimizer))
    state = init_train_state(model, optimizer, config.optimizer.trainable, mesh=mesh)
    step_fn = make_train_step(meta_rm.bce_objective(pos_weight=pos_weight), optimizer, state, mesh=mesh)
    data_metrics = {**_balance_metrics("train", balance["train"]), "heldout_examples": float(len(heldout)),
                    "pos_weight": float(pos_weight or 1.0)}
    body = MetaRMBody(state, step_fn, tokenizer, train, batch_size=config.batch_size, seed=config.seed,
                      balance=config.meta_rm.balance, max_length=model.max_length,
                      length_multiple=config.meta_rm.length_multiple, data_metrics=data_metrics)
    evaluators = {name: evaluators_lib.from_config(spec, name=name, examples=heldout, tokenizer=tokenizer,
                                                   mesh=mesh, length_multiple=config.meta_rm.length_multiple)
                  for name, spec in config.evals.items() if specs[name].every}
    meta = {"seed": config.seed, "balance": config.meta_rm.balance, "train_examples": len(train),
            "trainable": config.optimizer.trainable}
    summary = loop.train(body, workdir=workdir, evaluators=evaluators, meta=meta,
                         config=loop.LoopConfig.from_config(config, name="meta_rm", progress_keys=PROGRESS_KEYS))
    folder = workdir / MODEL_DIR
    if not summary.get("preempted") and summary["step"] >= config.total_steps:
      # Written (replaced) by every run that ends at total_steps, so a run extended to more steps updates it.
      if multihost.is_main_process():
        meta_rm.save_meta_rm(body.state.model(), folder, tokenizer=tokenizer)
      summary["meta_rm"] = str(folder)
  return summary
