"""`python -m spct_jax.main --config=configs/grpo.py`: rule-based online RL of the GRM itself (spec sec. 4).

The loop body only: the step's items -> prompts (responses shuffled per item, seeded) -> G rollouts per item
sharing one prefill -> parse -> Eq. 11 reward -> group advantages -> jitted update. Resume, preemption, metrics,
periodic held-out evaluation and the NaN stop are `spct_jax.train.loop`'s. Everything a step draws is a function
of (seed, step), so a run resumed from a checkpoint continues exactly like an uninterrupted one.

Multi-process: each process builds the prompts of its own items of the step (`multihost.process_rows` of the
batch) and scores their rollouts; prompts and rewards are then gathered in item order, so every process feeds
the same global batch to the sampler and the update, and an item's response order is drawn from its own stream
(seed, step, uid). N processes therefore compute what one process computes (tests/test_multihost.py).
"""

from __future__ import annotations

import collections
import logging
import time
import zlib

import jax
import numpy as np

from spct_jax import evaluators as evaluators_lib
from spct_jax import multihost
from spct_jax.experiments import common, selection, validation, workdir as workdir_lib
from spct_jax.grm import reward, scorer
from spct_jax.train import loop
from spct_jax.train.grpo_trainer import GRPOConfig, GRPOTrainer
from spct_jax.train.step import OptimizerConfig

log = logging.getLogger(__name__)
v = validation
RULES = (
    v.integer("seed"), v.integer("total_steps", 1), v.integer("batch_size", 1),
    v.integer("warn_zero_signal_after", 0), v.string("export"), *v.checkpoint_rules(), *v.model_rules(),
    v.string("data.name"), v.integer("data.seed"), v.integer("data.num_items", 0), v.integer("data.eval_items", 0),
    *v.synthetic_rules(),
    *v.grm_rules(v.number("grm.temperature", 0.0, strict=True,
                          why="rollouts at temperature 0 are identical: zero advantages")),
    v.integer("grpo.group_size", 2, why="G = 1 gives every rollout advantage 0: nothing is learned"),
    v.number("grpo.beta", 0.0), v.number("grpo.epsilon", 0.0, strict=True), v.integer("grpo.num_iterations", 1),
    v.one_of("grpo.kl_estimator", ("k1", "k2", "k3")),
    v.one_of("grpo.aggregation", ("sequence-mean-token-mean", "token-mean", "dr-grpo")),
    *v.optimizer_rules(),
)
PROGRESS_KEYS = ("reward_mean", "accuracy", "kl", "parse_rate", "tokens_per_s")


def items_for_step(items, step: int, batch_size: int, seed: int):
  """Epoch-wise seeded shuffles: the batch of a step depends only on (seed, step)."""
  per_epoch = max(1, len(items) // batch_size)
  epoch, index = divmod(step, per_epoch)
  order = np.random.default_rng([seed, epoch]).permutation(len(items))
  return [items[i] for i in order[index * batch_size:(index + 1) * batch_size]]


class GRPOBody:
  """One GRPO step for `loop.train` (state: the trainer's TrainState)."""

  def __init__(self, trainer: GRPOTrainer, tokenizer, options: scorer.GRMOptions, items, *, batch_size: int,
               seed: int, warn_zero_signal_after: int, data_metrics: dict[str, float]):
    self.trainer, self.tokenizer, self.options, self.items = trainer, tokenizer, options, items
    self.batch_size, self.seed, self.warn_after = batch_size, seed, warn_zero_signal_after
    self.data_metrics = data_metrics  # constant per run (train items, skips per source): logged with every step
    self.eos_ids = (tokenizer.eos_id,) + ((tokenizer.end_of_turn_id,) if options.chat_style == "gemma" else ())
    self.stop = scorer.stop_after_scores(tokenizer, options.output_prefix) if options.stop_after_scores else None
    self._zero_signal_steps = 0

  @property
  def state(self):
    return self.trainer.state

  def _prompts(self, items, step: int) -> tuple[list[str], np.ndarray]:
    """One prompt per item and its response order int32[B, 1, n_max] (padding maps to itself), each item's order
    drawn from its own stream (seed, step, uid): the same whichever process builds it."""
    width = max(item.num_responses for item in items)
    prompts, perms = [], np.tile(np.arange(width, dtype=np.int32), (len(items), 1, 1))
    for b, item in enumerate(items):
      rng = np.random.default_rng([self.seed, step, zlib.crc32(item.uid.encode("utf-8"))])
      prompt, perm, _ = scorer.build_prompts([item], 1, self.options, rng)
      prompts += prompt
      perms[b, :, :item.num_responses] = perm[0]
    return prompts, perms

  def __call__(self, step: int) -> dict[str, float]:
    t0 = time.perf_counter()
    tok, options, group, mesh = self.tokenizer, self.options, self.trainer.cfg.group_size, self.trainer.mesh
    step_items = items_for_step(self.items, step, self.batch_size, self.seed)
    # This process's items (its rows of the batch): it builds their prompts and scores their rollouts.
    rows = multihost.process_rows(len(step_items), mesh)
    items = step_items[rows]
    with selection.naming_items(items, f"GRPO step {step + 1}"):
      prompts, perms = self._prompts(items, step)
      encoded = multihost.gather_sequences([tok.encode(p, add_bos=True) for p in prompts], len(step_items), mesh)
      batch, out = self.trainer.rollout(encoded, seed=jax.random.fold_in(jax.random.key(self.seed), step),
                                        eos_ids=self.eos_ids, pad_id=tok.pad_id, stop=self.stop)
      mine = range(rows.start * group, rows.stop * group)  # the rollouts of this process's items
      decode = lambda r: tok.decode([t for t in out.tokens[r, :out.lengths[r]] if t not in self.eos_ids])
      texts = [options.output_prefix + decode(r) for r in mine]
      rewards, valid = reward.rollout_rewards(texts, items, perms, group, scorer.item_templates(items, options))
    rewards, valid = (multihost.gather_rows(x.reshape(len(items), group), len(step_items), mesh).reshape(-1)
                      for x in (rewards, valid))
    log.info("step %d sample (reward %+.0f): %r", step + 1, rewards[mine[0]], texts[0][-400:])
    metrics = self.trainer.update(batch, rewards)
    metrics.update(parse_rate=float(valid.mean()), accuracy=float((rewards > 0).mean()),
                   tokens_per_s=metrics["completion_tokens"] / (time.perf_counter() - t0), **self.data_metrics)
    self._zero_signal_steps = self._zero_signal_steps + 1 if metrics["nonzero_advantage_groups"] == 0 else 0
    if self._zero_signal_steps == self.warn_after:
      log.warning("no group had a reward spread for %d steps: every advantage is 0 and nothing is learned "
                  "(parse rate %.2f). Use demonstrations / an output prefix / an RFT checkpoint.",
                  self._zero_signal_steps, metrics["parse_rate"])
    return metrics


def run(config, workdir) -> dict:
  validation.check(config, RULES + validation.evals(config))
  selection.check_sources((config.data.name,), where="config.data.name")  # a held-out benchmark is never trained on
  specs = {name: evaluators_lib.spec_from_config(spec, name) for name, spec in config.evals.items()}
  if config.data.eval_items == 0 and any(spec.every for spec in specs.values()):
    raise validation.ConfigError("config.data.eval_items=0 leaves no held-out items for config.evals "
                                 f"{sorted(n for n, s in specs.items() if s.every)}; set their every=0 or "
                                 "data.eval_items >= 1")
  with workdir_lib.locked(workdir) as workdir:
    mesh, model, tokenizer, options, budget = common.build_run(config)
    loaded, heldout, dropped = selection.split_items(config.data)
    train_items, skipped = selection.drop_too_long(loaded, budget, f"training items of {config.data.name!r}")
    sources = collections.Counter(item.source for item in loaded)
    data_metrics = {"train_items": float(len(train_items)),
                    **{f"skipped_too_long/{s}": float(skipped.get(s, 0)) for s in sorted(sources)},
                    **{f"dropped_shared_prompt/{s}": float(n) for s, n in dropped.items()}}
    evaluators = {}
    for name, spec in config.evals.items():
      if not specs[name].every:
        continue
      items, held_skipped = selection.drop_too_long(heldout, budget, f"held-out items of {config.data.name!r}")
      evaluators[name] = evaluators_lib.from_config(spec, name=name, items=items, tokenizer=tokenizer,
                                                    options=options, mesh=mesh, seed=config.seed,
                                                    skipped={"too_long": sum(held_skipped.values())})
    grpo_cfg = GRPOConfig(**config.grpo, max_new_tokens=options.max_new_tokens, temperature=options.temperature,
                          top_k=options.top_k, top_p=options.top_p)
    trainer = GRPOTrainer(model, grpo_cfg, OptimizerConfig(**config.optimizer), mesh=mesh)
    body = GRPOBody(trainer, tokenizer, options, train_items, batch_size=config.batch_size, seed=config.seed,
                    warn_zero_signal_after=config.warn_zero_signal_after, data_metrics=data_metrics)
    summary = loop.train(body, workdir=workdir, evaluators=evaluators, meta={"seed": config.seed},
                         config=loop.LoopConfig.from_config(config, name="grpo", progress_keys=PROGRESS_KEYS))
    if config.export and summary["step"] == config.total_steps and not summary.get("preempted"):
      common.export_model(trainer.model, tokenizer, workdir / config.export)
      summary["model_path"] = str(workdir / config.export)
  return summary
