"""GRPO through the real loop (`experiments.grpo.GRPOBody` + `train.loop`) with a policy that writes judgements.

The policy (`judging_policy`) is a tiny Gemma 3 fine-tuned to write `\\boxed{..}` judgements with random scores,
so rollouts from the real sampler parse (mostly) and rewards of both signs reach the update. One seeded run
(12 steps, 4 items x G = 4 rollouts, the held-out evaluator every 4 steps) is shared by the tests:
  * every rollout's reward equals Eq. 11 recomputed here from its text and the order its prompt showed;
  * the update moves the policy toward what was rewarded: a model this small cannot read which response is
    right, so what the reward can teach it is what is right whatever the content. The training items are pairs
    and single responses labelled correct (1): on those the score 1 is always rewarded, 0 always punished, and
    the log-prob margin of `\\boxed{1}` over `\\boxed{0}` on held-out prompts must grow (a wrong-sign advantage
    shrinks it);
  * the `heldout/...` metrics appear at steps 4, 8, 12 with the values of a direct evaluator call on the weights
    of the checkpoint of that step.
"""

import re
import types

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import judging_policy as jp
from spct_jax import checkpoint, evaluators, sampler
from spct_jax.data import synthetic
from spct_jax.experiments import common, grpo as grpo_exp
from spct_jax.grm import scorer
from spct_jax.train import loop
from spct_jax.train.grpo_trainer import GRPOConfig, GRPOTrainer, assemble_batch, completion_logps
from spct_jax.train.metrics import read_metrics
from spct_jax.train.step import OptimizerConfig

pytestmark = pytest.mark.slow  # pre-training, 12 GRPO steps, 3 + 3 evaluations: ~2 min on 2 CPU cores

SEED, STEPS, BATCH, G, EVERY = 0, 12, 4, 4, 4
KINDS = ("arithmetic",)  # the shortest prompts
_BLOCK = re.compile(r"\[The Begin of Response(?: (\d+))?\]\s*(.*?)\s*\[The End of Response(?: \d+)?\]")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def _items(count, seed, num_responses, *, label=None):
  items = synthetic.generate_items(4 * count, seed=seed, num_responses=num_responses, kinds=KINDS)
  return [item for item in items if label is None or item.ratings[0] == label][:count]


def _margin_of_one(model, tokenizer, options, items):
  """f32[items] log p(judgement "\\boxed{1}") - log p("\\boxed{0}") after each item's prompt (T = 1)."""
  prompts = [tokenizer.encode(scorer.item_prompt(item, options), add_bos=True) for item in items]
  one, zero = (tokenizer.encode(jp.judgement([s]), add_bos=False) for s in (1, 0))
  assert len(one) == len(zero)
  tokens, mask = sampler.left_pad(prompts, tokenizer.pad_id, multiple=64)
  completions = np.array([one, zero] * len(items), np.int32)
  out = types.SimpleNamespace(tokens=completions, lengths=np.full(len(completions), completions.shape[1]))
  batch = assemble_batch(tokens, mask, np.repeat(np.arange(len(items)), 2), out)
  logps = np.asarray(completion_logps(model, {k: jnp.asarray(v) for k, v in batch.items()})).sum(1)
  return logps[0::2] - logps[1::2]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  with pytest.MonkeyPatch.context() as monkeypatch:
    jp.register(monkeypatch)
    tokenizer, options = common.synthetic_tokenizer(), jp.options()
    policy = jp.pretrain(tokenizer, synthetic.generate_items(64, seed=5, num_responses=(1, 2), kinds=KINDS),
                         options)
    train_items = _items(8, 7, 2) + _items(8, 7, 1, label=1.0)
    probes = _items(8, 8, 1, label=1.0)
    heldout = _items(4, 9, 2) + _items(4, 9, 1)
    trainer = GRPOTrainer(policy, GRPOConfig(group_size=G, beta=0.08, max_new_tokens=options.max_new_tokens,
                                             temperature=1.0), OptimizerConfig(learning_rate=2e-3))
    updates, update = [], trainer.update

    def update_spy(batch, rewards):  # what GRPOBody hands the update: the rollouts and their rewards
      updates.append((batch, np.asarray(rewards)))
      return update(batch, rewards)

    trainer.update = update_spy
    evaluator = evaluators.VotingEvaluator(evaluators.VotingSpec(every=EVERY, greedy=False, ks=(4,)), items=heldout,
                                           tokenizer=tokenizer, options=options, name="heldout", seed=SEED)
    margin_before = _margin_of_one(trainer.model, tokenizer, options, probes)
    body = grpo_exp.GRPOBody(trainer, tokenizer, options, train_items, batch_size=BATCH, seed=SEED,
                             warn_zero_signal_after=5, data_metrics={})
    workdir = tmp_path_factory.mktemp("grpo")
    loop.train(body, workdir=workdir, evaluators={"heldout": evaluator}, meta={"seed": SEED},
               config=loop.LoopConfig(total_steps=STEPS, checkpoint_every=EVERY, checkpoint_keep=5, async_save=False))
    margin_after = _margin_of_one(trainer.model, tokenizer, options, probes)
    yield types.SimpleNamespace(tokenizer=tokenizer, options=options, trainer=trainer, train_items=train_items,
                                updates=updates, evaluator=evaluator, workdir=workdir, lines=read_metrics(workdir),
                                margin_before=margin_before, margin_after=margin_after)


def _shown_order(prompt, item):
  """Original indices of the responses in the order the prompt text shows them."""
  blocks = _BLOCK.findall(prompt)
  assert [int(i or 1) for i, _ in blocks] == list(range(1, item.num_responses + 1)), prompt
  normalised = [" ".join(r.split()) for r in item.responses]  # the tokenizer's decode folds whitespace
  return [normalised.index(" ".join(text.split())) for _, text in blocks]


def _hand_reward(text, order, item):
  """(Eq. 11 reward, parsed) of one judgement: the last \\boxed{..} holds n integers in range, the best response
  (by rating) strictly above every other in the ORIGINAL order; n = 1: the score equals the label."""
  boxes = _BOXED.findall(text)
  pieces = [p.strip() for p in boxes[-1].split(",")] if boxes else []
  lo, hi = (0, 1) if item.num_responses == 1 else (1, 10)
  if len(pieces) != item.num_responses or not all(re.fullmatch(r"[+-]?[0-9]+", p) for p in pieces) or not all(
      lo <= int(p) <= hi for p in pieces):
    return -1.0, False
  original = [0] * item.num_responses
  for position, index in enumerate(order):
    original[index] = int(pieces[position])
  if item.num_responses == 1:
    return (1.0 if original[0] == item.ratings[0] else -1.0), True
  best = item.best_index
  return (1.0 if all(original[best] > s for i, s in enumerate(original) if i != best) else -1.0), True


def test_every_rollout_gets_the_eq11_reward_of_its_text(run):
  tok, seen = run.tokenizer, []
  assert len(run.updates) == STEPS
  for step, (batch, rewards) in enumerate(run.updates):
    items = grpo_exp.items_for_step(run.train_items, step, BATCH, SEED)
    for row, reward in enumerate(rewards):
      item, source = items[row // G], batch["row_source"][row]
      prompt = tok.decode([int(t) for t, m in zip(batch["prompt_tokens"][source], batch["prompt_mask"][source]) if m])
      length = int(batch["completion_mask"][row].sum())
      text = run.options.output_prefix + tok.decode([int(t) for t in batch["completion"][row, :length]])
      order = _shown_order(prompt, item)
      expected, parsed = _hand_reward(text, order, item)
      assert reward == expected, (step, row, text, order, item.ratings)
      seen.append((item.num_responses, order, expected, parsed))
  rewards = np.array([r for _, _, r, _ in seen])
  parsed = np.array([p for _, _, _, p in seen])
  # Real signal: both signs, mostly parseable, judgements wrong although they parse, and right ones on pairs
  # shown in the swapped order (read in the data's order they would be wrong: the unshuffle matters).
  stats = dict(parsed=parsed.mean(), right=(rewards == 1).mean(), parsed_wrong=(parsed & (rewards == -1)).mean(),
               swapped_right=sum(n == 2 and order == [1, 0] and r == 1 for n, order, r, _ in seen),
               spread=[line["nonzero_advantage_groups"] for line in run.lines])
  assert 0.8 < stats["parsed"] < 1.0 and stats["right"] >= 0.3 and stats["parsed_wrong"] >= 0.1, stats
  assert stats["swapped_right"] >= 5, stats
  assert np.mean(stats["spread"]) >= 0.4, stats  # groups with a reward spread: non-zero advantages


def test_the_update_moves_the_policy_toward_the_rewarded_judgements(run):
  before, after = run.margin_before, run.margin_after
  assert np.all(after > before + 1.0), (before, after)  # on every held-out prompt, by more than a nat
  assert after.mean() > before.mean() + 2.0, (before.mean(), after.mean())
  # The rollouts say the same: the reward of the n = 1 items' rollouts rises over the run.
  single = []
  for step, (_, rewards) in enumerate(run.updates):
    items = grpo_exp.items_for_step(run.train_items, step, BATCH, SEED)
    single.append([r for row, r in enumerate(rewards) if items[row // G].num_responses == 1])
  first, last = np.mean(sum(single[:4], [])), np.mean(sum(single[-4:], []))
  assert last > first + 0.3, (first, last, single)


def test_heldout_metrics_at_evaluation_steps_equal_a_direct_evaluation_of_that_checkpoint(run):
  evaluated = {line["step"]: {k[len("heldout/"):]: v for k, v in line.items() if k.startswith("heldout/")}
               for line in run.lines}
  assert [step for step, metrics in evaluated.items() if metrics] == [4, 8, 12]
  state = run.trainer.state
  ckpt = checkpoint.Checkpointer(run.workdir / "checkpoints")
  for step in (4, 8, 12):
    params, _, meta = ckpt.restore(step, params_target=state.trainable, opt_state_target=state.opt_state)
    assert meta["step"] == step
    direct = run.evaluator(nnx.merge(state.graphdef, params, state.frozen))
    assert evaluated[step] == direct, step
  assert {"voting@4/accuracy_strict", "voting@4/parse_rate", "items"} <= set(evaluated[4])
  # The weights changed between evaluations, and so did what the evaluator saw: the equality is not vacuous.
  assert len({tuple(sorted(evaluated[s].items())) for s in (4, 8, 12)}) > 1, evaluated
  ckpt.close()
