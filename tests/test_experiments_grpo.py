"""The GRPO experiment: items per step, the reward path through the real loop with scripted rollouts (parse ->
unshuffle -> Eq. 11 -> advantages -> the real update), and end to end (smoke config): preemption by a real SIGTERM,
resume, identical metrics. The loop with a policy that writes its own judgements: test_experiments_grpo_learning.py.
"""

import pathlib
import re
import runpy
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import scripted_grm as sg
from spct_jax import grpo, sampler
from spct_jax.experiments import common, grpo as grpo_exp
from spct_jax.grm.scorer import GRMOptions
from spct_jax.model import Transformer, get_config
from spct_jax.train import loop
from spct_jax.train.grpo_trainer import GRPOConfig, GRPOTrainer, assemble_batch, completion_logps
from spct_jax.train.metrics import read_metrics
from spct_jax.train.step import OptimizerConfig

import preempted_runs

REPO = pathlib.Path(__file__).resolve().parents[1]
# The space form `--config configs/grpo.py:smoke` (what absl accepts besides `--config=...`).
OVERRIDES = ["--config.total_steps=5", "--config.evals.heldout.every=0", "--config.grm.max_new_tokens=6",
             "--config.checkpoint.async_save=False", "--config.optimizer.learning_rate=3e-2"]


def _command(workdir):
  return [sys.executable, "-m", "spct_jax.main", "--config", "configs/grpo.py:smoke", f"--workdir={workdir}",
          *OVERRIDES]


@pytest.mark.parametrize("num_items, batch_size", [(12, 4), (13, 4), (3, 5)])
def test_items_for_step_are_epoch_wise_shuffles_of_seed_and_step(num_items, batch_size):
  items = [f"item{i}" for i in range(num_items)]
  per_epoch = max(1, num_items // batch_size)
  steps = range(4 * per_epoch)
  batches = {s: grpo_exp.items_for_step(items, s, batch_size, seed=7) for s in steps}
  # A function of (seed, step) only: asked in another order (as a resumed run does), the same batches.
  assert {s: grpo_exp.items_for_step(items, s, batch_size, seed=7) for s in reversed(steps)} == batches
  assert [grpo_exp.items_for_step(items, s, batch_size, seed=8) for s in steps] != list(batches.values())
  epochs = [sum((batches[e * per_epoch + i] for i in range(per_epoch)), []) for e in range(4)]
  for epoch in epochs:  # every item at most once per epoch; all of them when batch_size divides the items
    assert len(epoch) == len(set(epoch)) == min(num_items, per_epoch * batch_size)
    assert all(len(batches[s]) == min(batch_size, num_items) for s in steps)
  assert len({tuple(e) for e in epochs}) > 1  # reshuffled, not one fixed order
  if num_items % batch_size:  # the items an epoch leaves out differ between epochs: none is starved
    assert set().union(*map(set, epochs)) == set(items)


# Scripted rollouts. The GRPO step is real (prompts, shuffles, parse, unshuffle, Eq. 11, advantages, the jitted
# update, the loop); only `GRPOTrainer.rollout`'s sampling is replaced: rollout j of an item is the judgement
# SCRIPTS[step][query][j] writes for the order its prompt shows the responses in (read off the prompt text).
# A behaviour: (order, item) -> (judgement, the Eq. 11 reward it must get, whether it parses).


def _scores(order, item, best, other):
  return [best if i == item.best_index else other for i in order]


def right(hi, lo):  # the best response scored highest wherever it is shown; n = 1: the label
  def judge(order, item):
    return sg.boxed([int(item.ratings[0])] if item.num_responses == 1 else _scores(order, item, hi, lo)), 1.0, True
  return judge


def wrong(hi, lo):  # the best response scored lowest; n = 1: the other 0/1 score
  def judge(order, item):
    if item.num_responses == 1:
      return sg.boxed([1 - int(item.ratings[0])]), -1.0, True
    return sg.boxed(_scores(order, item, lo, hi)), -1.0, True
  return judge


def first_wins(order, item):  # positional bias: right exactly when the best response is shown first
  return sg.boxed([9] + [2] * (item.num_responses - 1)), (1.0 if order[0] == item.best_index else -1.0), True


def tie(order, item):  # parses, but a tie with the best is wrong (Eq. 10)
  return sg.boxed([5] * item.num_responses), -1.0, True


def out_of_range(order, item):  # 2 on the 0/1 scale, 11 on the 1..10 scale: unparseable
  return sg.boxed([2] if item.num_responses == 1 else [11] + [1] * (item.num_responses - 1)), -1.0, False


def miscount(order, item):
  return sg.boxed([7] * (item.num_responses + 1)), -1.0, False


def garbage(order, item):
  return "I cannot decide.", -1.0, False


ITEMS = (sg.make_item(1), sg.make_item(4, n=3), sg.make_item(2, n=1, label=1), sg.make_item(3, n=1, label=0))
SCRIPTS = (
    # Step 1: every rollout of a group has the same token count, so the group's advantages (summing to 0) cancel
    # on the shared tokens and only the scores carry gradient: the +1 judgements must gain log-prob, the -1 lose.
    {"q1": (right(7, 2), wrong(7, 2), wrong(7, 2), right(7, 2)), "q4": (right(8, 3), wrong(8, 3)) * 2,
     "q2": (right(0, 0), wrong(0, 0), wrong(0, 0), right(0, 0)), "q3": (wrong(0, 0),) * 4},
    # Step 2: every way to be wrong, and a positional bias that is right or wrong by the order shown.
    {"q1": (right(9, 2), garbage, first_wins, miscount), "q4": (first_wins, tie, right(9, 2), out_of_range),
     "q2": (out_of_range, right(0, 0), garbage, wrong(0, 0)), "q3": (right(0, 0),) * 4},
)
REASONS = " reasons.\nScores: "  # what the scripted judgements say after the output prefix


class ScriptedRollout:
  """`GRPOTrainer.rollout` with scripted completions, assembled as the sampler's output (prompts left-padded the
  same way, completions padded with pad_id, lengths without EOS as `stop_after_scores` ends them)."""

  def __init__(self, tokenizer, max_new_tokens):
    self.tokenizer, self.max_new_tokens = tokenizer, max_new_tokens
    self.by_query = {item.query: item for item in ITEMS}
    self.calls = []  # per step: [(item, order shown, [(judgement, reward, parses)] * G)]

  def __call__(self, prompts, *, seed, eos_ids, pad_id, stop):
    del seed
    assert stop is not None and self.tokenizer.eos_id in eos_ids
    step, rows, record = len(self.calls), [], []
    for prompt in prompts:
      text = self.tokenizer.decode(list(prompt))
      item = self.by_query[re.search(r"User: (q\d+)", text).group(1)]
      order = sg.shown_order(text, item)
      judged = [behaviour(order, item) for behaviour in SCRIPTS[step][item.query]]
      record.append((item, order, judged))
      rows += [self.tokenizer.encode(REASONS + judgement, add_bos=False) for judgement, _, _ in judged]
    self.calls.append(record)
    tokens = np.full((len(rows), self.max_new_tokens), pad_id, np.int32)
    for r, row in enumerate(rows):
      tokens[r, :len(row)] = row
    lengths = np.array([len(row) for row in rows], np.int32)
    out = sampler.SampleOutput(tokens=tokens, logps=np.zeros(tokens.shape, np.float32),
                               model_logps=np.zeros(tokens.shape, np.float32), lengths=lengths,
                               done=np.zeros(len(rows), bool))
    prompt_tokens, prompt_mask = sampler.left_pad([list(p) for p in prompts], pad_id, multiple=64)
    group_size = len(rows) // len(prompts)
    return assemble_batch(prompt_tokens, prompt_mask, np.repeat(np.arange(len(prompts)), group_size), out), out


def _hand_advantages(rewards, group_size, eps=1e-4):
  out = []
  for group in np.asarray(rewards, np.float64).reshape(-1, group_size):
    spread = group.max() > group.min()
    out += list((group - group.mean()) / (group.std(ddof=1) + eps) if spread else np.zeros(group_size))
  return np.array(out)


def test_scripted_rollouts_get_their_eq11_rewards_and_the_update_follows_the_advantages(tmp_path):
  tokenizer, G, N = common.synthetic_tokenizer(), 4, 24
  cfg = get_config("tiny-gemma3", vocab_size=tokenizer.vocab_size, max_seq_len=1536, compute_dtype="float32")
  trainer = GRPOTrainer(Transformer(cfg, rngs=nnx.Rngs(0)), GRPOConfig(group_size=G, max_new_tokens=N),
                        OptimizerConfig(learning_rate=1e-3))
  trainer.rollout = scripted = ScriptedRollout(tokenizer, N)
  seen, train_step, update = [], trainer._step, trainer.update
  sequence_logps = jax.jit(lambda model, batch: (completion_logps(model, batch) * batch["completion_mask"]).sum(1))

  def step_spy(state, ref_state, batch):  # what the jitted update is given
    seen[-1]["advantages"] = np.asarray(batch["advantages"])
    return train_step(state, ref_state, batch)

  def update_spy(batch, rewards):  # the rewards GRPOBody computed, and each rollout's log-prob around the update
    device_batch = {k: jnp.asarray(v) for k, v in batch.items()}
    seen.append({"rewards": np.asarray(rewards), "before": np.asarray(sequence_logps(trainer.model, device_batch)),
                 "lengths": batch["completion_mask"].sum(1)})
    metrics = update(batch, rewards)
    seen[-1]["after"] = np.asarray(sequence_logps(trainer.model, device_batch))
    return metrics

  trainer._step, trainer.update = step_spy, update_spy
  options = GRMOptions(output_prefix=sg.PREFIX, max_new_tokens=N, temperature=1.0)
  # Seed 17: each item's response order is drawn from (seed, step, uid), and this seed shows what the checks
  # below need (a shuffled item scored right in both steps, a 3-cycle order in step 1).
  body = grpo_exp.GRPOBody(trainer, tokenizer, options, list(ITEMS), batch_size=len(ITEMS), seed=17,
                           warn_zero_signal_after=5, data_metrics={})
  loop.train(body, workdir=tmp_path, config=loop.LoopConfig(total_steps=2, checkpoint_every=2, async_save=False))

  lines = read_metrics(tmp_path)
  assert [line["step"] for line in lines] == [1, 2]
  for record, got, line in zip(scripted.calls, seen, lines):
    judged = [j for _, _, group in record for j in group]
    expected = np.array([reward for _, reward, _ in judged])
    np.testing.assert_array_equal(got["rewards"], expected)  # each rollout's Eq. 11 reward, from its text
    advantages = _hand_advantages(expected, G)
    np.testing.assert_allclose(got["advantages"], advantages, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grpo.group_advantages(jnp.asarray(expected), G), advantages, rtol=1e-5, atol=1e-6)
    groups = expected.reshape(-1, G)
    assert line["reward_mean"] == pytest.approx(expected.mean())
    assert line["accuracy"] == pytest.approx((expected > 0).mean())
    assert line["parse_rate"] == pytest.approx(np.mean([parses for _, _, parses in judged]))
    assert line["nonzero_advantage_groups"] == pytest.approx(np.mean(groups.max(1) > groups.min(1)))
    assert line["completion_tokens"] == got["lengths"].sum()
  # Both steps showed an n >= 2 item in an order other than the data's, and a rollout that scored it right there
  # got +1: read in the data's order (no unshuffle, or the inverse permutation) its scores would be wrong.
  for record in scripted.calls:
    assert any(item.num_responses > 1 and list(order) != sorted(order) and reward == 1.0
               for item, order, group in record for _, reward, _ in group)
  assert any(item.num_responses == 3 and list(order) not in ([0, 1, 2], [0, 2, 1], [2, 1, 0], [1, 0, 2])
             for item, order, _ in scripted.calls[0])  # a 3-cycle: a permutation that is not its own inverse

  # Step 1's update (fresh Adam, equal-length groups): +1 judgements gain log-prob, -1 lose it; a wrong-sign
  # advantage would flip every one of these.
  first = seen[0]
  assert np.all(first["lengths"].reshape(-1, G) == first["lengths"].reshape(-1, G)[:, :1]), "unequal group lengths"
  change = first["after"] - first["before"]
  assert np.all(change[first["advantages"] > 0] > 0.1), change
  assert np.all(change[first["advantages"] < 0] < -0.1), change


@pytest.mark.slow
def test_sigterm_then_resume_continues_identically(tmp_path):
  a, b, _ = preempted_runs.sigterm_then_resume(_command, tmp_path, total_steps=5)
  assert [line["step"] for line in b] == [1, 2, 3, 4, 5]
  assert preempted_runs.comparable(a) == preempted_runs.comparable(b)
  # The weights move between steps (the losses differ), so the resumed optimizer state is exercised. This random
  # policy never parses (reward -1, advantage 0): learning from rewards is test_experiments_grpo_learning's.
  assert len({line["loss"] for line in a}) > 1
  assert a[0]["train_items"] == 16 and a[0]["skipped_too_long/synthetic"] == 0


@pytest.mark.slow  # the whole loop in-process with the 262k vocabulary
def test_non_finite_weights_stop_before_a_bad_checkpoint(tmp_path):
  from spct_jax import checkpoint
  from spct_jax.experiments import grpo
  config = runpy.run_path(str(REPO / "configs" / "grpo.py"))["get_config"]("smoke")
  config.mesh = None  # one device: the fault is the point, not the sharding
  config.total_steps, config.evals.heldout.every = 4, 0
  config.grm.max_new_tokens, config.checkpoint.async_save = 4, False
  # AdamW decay moves every weight by lr * wd * w even with zero advantages: step 1 leaves huge weights, step 2's
  # forward may overflow (loss nan; whether it does depends on the step's prompts) and its update leaves inf
  # weights. The message names what is non-finite.
  config.optimizer.learning_rate, config.optimizer.weight_decay, config.optimizer.grad_clip_norm = 1e38, 1.0, None
  config.optimizer.warmup_steps = 0
  says = r"non-finite (loss nan and )?weights at step 2; no checkpoint written for it \(last good: 1\)"
  with pytest.raises(FloatingPointError, match=says):
    grpo.run(config, tmp_path)
  assert checkpoint.Checkpointer(tmp_path / "checkpoints").latest_step() == 1
  assert [line["step"] for line in preempted_runs.metrics(tmp_path)] == [1]
  assert not (tmp_path / "run.lock").exists()  # the lock goes with the run, however it ends
