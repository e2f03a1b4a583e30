"""`python -m spct_jax.main --config=configs/grpo.py`: rule-based online RL of the GRM itself (spec sec. 4).

data -> prompts (responses shuffled per item, seeded) -> G rollouts per item sharing one prefill -> parse ->
Eq. 11 reward -> group advantages -> jitted step. Everything a step draws is a function of (seed, step), so a run
resumed from a checkpoint continues exactly like an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from spct_jax import checkpoint, experiment
from spct_jax.data import readers, synthetic
from spct_jax.grm import scorer, voting
from spct_jax.grm.reward import is_correct, rule_reward
from spct_jax.train.grpo_trainer import GRPOConfig, GRPOTrainer
from spct_jax.train.metrics import MetricsWriter
from spct_jax.train.step import OptimizerConfig

log = logging.getLogger(__name__)
_HELDOUT_START = 10**9  # synthetic held-out items come from a disjoint index range of the same stream


def load_items(data_cfg):
  """(train items, held-out items) for `config.data`."""
  if data_cfg.name == "synthetic":
    kw = dict(seed=data_cfg.seed, num_responses=tuple(data_cfg.num_responses), kinds=tuple(data_cfg.kinds),
              difficulty=data_cfg.difficulty)
    return (synthetic.generate_items(data_cfg.num_items, **kw),
            synthetic.generate_items(data_cfg.eval_items, start=_HELDOUT_START, **kw))
  items = readers.read_dataset(data_cfg.name, pathlib.Path(data_cfg.root)).items
  if len(items) <= data_cfg.eval_items:
    raise ValueError(f"config.data.eval_items={data_cfg.eval_items} leaves no training items of "
                     f"{data_cfg.name!r} ({len(items)} items)")
  order = np.random.default_rng(data_cfg.seed).permutation(len(items))
  items = [items[i] for i in order]
  return items[data_cfg.eval_items:][:data_cfg.num_items or None], items[:data_cfg.eval_items]


def grm_options(config, demos) -> scorer.GRMOptions:
  g = config.grm
  return scorer.GRMOptions(template=g.template, chat_style=g.chat_style, max_new_tokens=config.grpo.max_new_tokens,
                           num_distinct_orders=1, demonstrations=demos, output_prefix=g.output_prefix,
                           seed=config.seed, stop_after_scores=g.stop_after_scores,
                           memory_budget_bytes=g.get("memory_budget_bytes"))


def items_for_step(items, step: int, batch_size: int, seed: int):
  """Epoch-wise seeded shuffles: the batch of a step depends only on (seed, step)."""
  per_epoch = max(1, len(items) // batch_size)
  epoch, index = divmod(step, per_epoch)
  order = np.random.default_rng([seed, epoch]).permutation(len(items))
  return [items[i] for i in order[index * batch_size:(index + 1) * batch_size]]


def ratings_array(items, n_max: int) -> np.ndarray:
  ratings = np.full((len(items), n_max), -np.inf, np.float32)
  for b, item in enumerate(items):
    ratings[b, :item.num_responses] = item.ratings
  return ratings


def score_rollouts(texts, items, perms, group_size: int, template: str):
  """Eq. 11 rewards f32[B*G] (+1 correct, -1 wrong or unparseable) and the parse mask."""
  n_max = perms.shape[-1]
  num_responses = np.repeat([item.num_responses for item in items], group_size)
  shown, valid, _ = scorer.parse_texts(texts, num_responses, n_max, template)
  row_perms = np.repeat(perms[:, 0], group_size, axis=0)  # one order per item, shared by its G samples
  original = voting.unshuffle(jnp.asarray(shown), jnp.asarray(row_perms))
  mask = np.arange(n_max)[None, :] < num_responses[:, None]
  ratings = np.repeat(ratings_array(items, n_max), group_size, axis=0)
  rewards = rule_reward(original, jnp.asarray(np.where(mask, ratings, 0)), valid=jnp.asarray(valid),
                        response_mask=jnp.asarray(mask))
  return np.asarray(rewards, np.float32), valid


def evaluate_heldout(model, tokenizer, items, options, batch_size: int, mesh) -> dict[str, float]:
  greedy = dataclasses.replace(options, temperature=0.0)
  grm = scorer.GRM(model, tokenizer, mesh=mesh, **dataclasses.asdict(greedy))
  correct, parsed = [], []
  for start in range(0, len(items), batch_size):
    chunk = items[start:start + batch_size]
    result = grm.score_batch(chunk, k=1)
    n_max = result.voted.shape[1]
    ratings = np.where(result.response_mask, ratings_array(chunk, n_max), 0)
    correct.extend(np.asarray(is_correct(result.voted, ratings, valid=result.valid[:, 0],
                                         response_mask=result.response_mask)))
    parsed.extend(result.valid[:, 0])
  return {"eval_accuracy": float(np.mean(correct)), "eval_parse_rate": float(np.mean(parsed))}


class _Preemption:
  """SIGTERM sets a flag; the loop saves at the end of the current step and exits cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def run(config, workdir: str) -> dict:
  workdir = pathlib.Path(workdir)
  mesh = experiment.build_mesh(config)
  model, tokenizer = experiment.build_model(config.model, mesh)
  train_items, heldout = load_items(config.data)
  options = grm_options(config, experiment.demonstrations(config.grm.num_demonstrations, config.grm.demo_seed,
                                                         config.grm.template, start=2 * _HELDOUT_START))
  grpo_cfg = GRPOConfig(**config.grpo)
  opt_cfg = OptimizerConfig(**config.optimizer)
  trainer = GRPOTrainer(model, grpo_cfg, opt_cfg, mesh=mesh)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", max_to_keep=config.checkpoint.keep,
                                 async_save=config.checkpoint.async_save)
  writer = MetricsWriter(workdir)
  start = ckpt.latest_step() or 0
  if start:
    trainable, opt_state, meta = ckpt.restore(start, params_target=trainer.state.trainable,
                                              opt_state_target=trainer.state.opt_state)
    trainer.state.trainable, trainer.state.opt_state, trainer.state.step = trainable, opt_state, meta["step"]
    log.info("resumed from %s at step %d", ckpt.directory, start)
  writer.truncate_after(start)
  eos_ids = (tokenizer.eos_id,) + ((tokenizer.end_of_turn_id,) if config.grm.chat_style == "gemma" else ())
  stop = scorer.stop_after_scores(tokenizer) if options.stop_after_scores else None
  preemption = _Preemption()
  zero_signal_steps, summary = 0, {}
  bar = tqdm(range(start, config.total_steps), initial=start, total=config.total_steps, desc="grpo",
             disable=jax.process_index() != 0)
  try:
    for step in bar:
      t0 = time.perf_counter()
      items = items_for_step(train_items, step, config.batch_size, config.seed)
      prompts, perms, _ = scorer.build_prompts(items, 1, options, np.random.default_rng([config.seed, step]))
      encoded = [tokenizer.encode(p, add_bos=True) for p in prompts]
      batch, out = trainer.rollout(encoded, seed=jax.random.fold_in(jax.random.key(config.seed), step),
                                   eos_ids=eos_ids, pad_id=tokenizer.pad_id, stop=stop)
      texts = [options.output_prefix + tokenizer.decode([t for t in row[:n] if t not in eos_ids])
               for row, n in zip(out.tokens, out.lengths)]
      rewards, valid = score_rollouts(texts, items, perms, grpo_cfg.group_size, options.template)
      log.info("step %d sample (reward %+.0f): %r", step + 1, rewards[0], texts[0][-400:])
      metrics = trainer.update(batch, rewards)
      if not (np.isfinite(metrics["loss"]) and metrics["params_finite"]):
        raise FloatingPointError(f"non-finite loss {metrics['loss']} or weights (finite: "
                                 f"{bool(metrics['params_finite'])}) at step {step + 1}; no checkpoint written for "
                                 f"it (last good: {ckpt.latest_step()})")
      elapsed = time.perf_counter() - t0
      metrics.update(parse_rate=float(valid.mean()), accuracy=float((rewards > 0).mean()),
                     tokens_per_s=metrics["completion_tokens"] / elapsed, step_time_s=elapsed)
      zero_signal_steps = zero_signal_steps + 1 if metrics["nonzero_advantage_groups"] == 0 else 0
      if zero_signal_steps == config.warn_zero_signal_after:
        log.warning("no group had a reward spread for %d steps: every advantage is 0 and nothing is learned "
                    "(parse rate %.2f). Use demonstrations / an output prefix / an RFT checkpoint.",
                    zero_signal_steps, metrics["parse_rate"])
      if config.eval_every and ((step + 1) % config.eval_every == 0 or step + 1 == config.total_steps):
        metrics.update(evaluate_heldout(trainer.model, tokenizer, heldout, options, config.batch_size, mesh))
      writer.write(step + 1, metrics)
      bar.set_postfix(reward=f"{metrics['reward_mean']:+.2f}", acc=f"{metrics['accuracy']:.2f}",
                      kl=f"{metrics['kl']:.4f}", parse=f"{metrics['parse_rate']:.2f}",
                      tok_s=f"{metrics['tokens_per_s']:.0f}")
      summary = metrics
      last = step + 1 == config.total_steps
      if preemption.requested or last or (step + 1) % config.checkpoint.every == 0:
        ckpt.save(step + 1, params=trainer.state.trainable, opt_state=trainer.state.opt_state,
                  meta={"step": step + 1, "seed": config.seed}, force=True)
      if preemption.requested:
        log.warning("SIGTERM: saved step %d, exiting", step + 1)
        summary = dict(summary, preempted=True)
        break
  finally:
    preemption.restore()
    ckpt.wait()
    ckpt.close()
    writer.close()
  return summary
