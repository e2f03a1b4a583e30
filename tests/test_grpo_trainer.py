"""GRPO train step: learning on an easy reward, and sharded == single-device on three meshes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spct_jax import grpo
from spct_jax import sharding as shd
from spct_jax.model import Transformer, get_config
from spct_jax.model.params import flat_from_model, model_from_flat
from spct_jax.train.grpo_trainer import GRPOConfig, GRPOTrainer, grpo_objective
from spct_jax.train.step import OptimizerConfig, split_params

PROMPTS = [[2, 10 + i, 20 + i, 30 + i] for i in range(8)]
MESHES = [(8, 1, 1), (2, 2, 2), (1, 2, 4)]


def _even_token_reward(tokens, lengths):
  """+1 for each completion whose first token is even, -1 otherwise: easy to learn, ~0 for a random model."""
  return np.where(np.asarray(tokens)[:, 0] % 2 == 0, 1.0, -1.0)


@pytest.mark.slow  # 40 rollouts and updates
def test_grpo_raises_mean_reward_on_an_easy_reward():
  model = Transformer(get_config("tiny-gemma3"), rngs=nnx.Rngs(0))
  trainer = GRPOTrainer(model, GRPOConfig(group_size=4, beta=0.01, max_new_tokens=3, temperature=1.0),
                        OptimizerConfig(learning_rate=3e-3, grad_clip_norm=1.0))
  rewards = []
  for step in range(40):
    batch, out = trainer.rollout(PROMPTS, seed=step, eos_ids=(1,), pad_id=0)
    r = _even_token_reward(out.tokens, out.lengths)
    metrics = trainer.update(batch, r)
    rewards.append(r.mean())
    assert np.isfinite(metrics["loss"])
  start, end = np.mean(rewards[:5]), np.mean(rewards[-5:])
  assert end > start + 0.5, (start, end)
  assert end > 0.6


def _one_step(model, mesh, batch, rewards):
  # Adam's first update is ~lr * sign(g): eps=1e-3 keeps near-zero gradients from flipping on reduction order.
  cfg = GRPOConfig(group_size=4, beta=0.08, max_new_tokens=4)
  trainer = GRPOTrainer(model, cfg, OptimizerConfig(learning_rate=1e-3, eps=1e-3, trainable="blocks/"), mesh=mesh)
  full_batch = dict(batch, advantages=grpo.group_advantages(jnp.asarray(rewards), 4))
  objective = grpo_objective(cfg, mesh=mesh)
  grads = jax.grad(lambda m: objective(m, trainer.ref_state, full_batch)[0])(trainer.model)
  grads = {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(grads, nnx.Param))}
  metrics = trainer.update(batch, rewards)
  return metrics, grads, flat_from_model(trainer.model)


@pytest.fixture(scope="module")
def single_device_step():
  cfg = get_config("tiny-gemma3")
  base = Transformer(cfg, rngs=nnx.Rngs(1))
  flat = flat_from_model(base)
  trainer = GRPOTrainer(base, GRPOConfig(group_size=4, max_new_tokens=4), OptimizerConfig())
  batch, _ = trainer.rollout(PROMPTS[:4], seed=0, eos_ids=(1,), pad_id=0)
  rewards = np.asarray([1, -1, -1, 1, 1, 1, -1, -1, 1, 1, 1, 1, -1, 1, -1, -1], np.float32)
  return cfg, flat, batch, rewards, _one_step(model_from_flat(cfg, flat), None, batch, rewards)


@pytest.mark.slow  # three meshes, each compiling the full train step: minutes on 2 CPU cores
@pytest.mark.parametrize("axes", MESHES, ids=lambda a: "x".join(map(str, a)))
def test_sharded_train_step_equals_single_device(single_device_step, axes):
  """Loss, gradients and the updated parameters on 8 devices equal one device's, on the three meshes the
  forward tests use: pure data parallel, data x fsdp x tensor, and fsdp x tensor (tensor 4 > the 2 kv heads,
  which stay replicated)."""
  cfg, flat, batch, rewards, (single_metrics, single_grads, single_params) = single_device_step
  mesh = shd.make_mesh(shd.MeshConfig(data=axes[0], fsdp=axes[1], tensor=axes[2]))
  sharded_model = model_from_flat(cfg, flat, mesh=mesh)
  assert len(sharded_model.blocks.q_proj[...].sharding.device_set) == 8
  if axes != (8, 1, 1):
    assert not sharded_model.blocks.q_proj[...].sharding.is_fully_replicated
  sharded_metrics, sharded_grads, sharded_params = _one_step(sharded_model, mesh, batch, rewards)
  # Tolerance: f32 reductions are reordered across 8 devices (rtol 1e-4, atol 1e-6 everywhere).
  for key in ("loss", "grad_norm", "kl", "policy_loss"):
    np.testing.assert_allclose(sharded_metrics[key], single_metrics[key], rtol=1e-4, atol=1e-6, err_msg=key)
  for key in single_grads:
    np.testing.assert_allclose(sharded_grads[key], single_grads[key], rtol=1e-4, atol=1e-6, err_msg=key)
  for key in single_params:
    np.testing.assert_allclose(sharded_params[key], single_params[key], rtol=1e-4, atol=1e-6, err_msg=key)
  assert not np.allclose(single_params["blocks/q_proj"], flat["blocks/q_proj"]), "the step changed nothing"
  np.testing.assert_array_equal(single_params["embedding"], flat["embedding"])  # frozen by the regex


def test_trainable_regex_that_matches_nothing_raises():
  model = Transformer(get_config("tiny-gemma3"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="matches no parameter"):
    split_params(model, "^nothing$")


@pytest.mark.parametrize("preset", ["tiny-gemma2", "tiny-gemma3"])
def test_shared_prompt_logps_equal_full_sequences_values_and_gradients(preset):
  """Running each prompt once and gathering its keys is the same function as the concatenated rows."""
  from spct_jax.model.transformer import default_positions
  from spct_jax.train.grpo_trainer import completion_logps
  model = Transformer(get_config(preset), rngs=nnx.Rngs(2))
  trainer = GRPOTrainer(model, GRPOConfig(group_size=3, max_new_tokens=12, temperature=1.0, beta=0.0),
                        OptimizerConfig())
  batch, _ = trainer.rollout([[2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [2, 40, 41]], seed=1, eos_ids=(1,),
                             pad_id=0)
  lengths = np.array([12, 5, 1, 12, 8, 3])  # rows that ended early: padding after their EOS
  batch["completion_mask"] = (np.arange(12)[None] < lengths[:, None]).astype(np.float32)
  batch["completion"] = np.where(batch["completion_mask"] > 0, batch["completion"], 0)
  batch = {k: jnp.asarray(v) for k, v in batch.items()}

  def full_logps(m):  # the plain reference: every row's prompt + completion through the model
    tokens = jnp.concatenate([batch["prompt_tokens"][batch["row_source"]], batch["completion"]], 1)
    mask = jnp.concatenate([batch["prompt_mask"][batch["row_source"]], batch["completion_mask"] > 0], 1)
    logits = m.logits(m.hidden_states(tokens[:, :-1], default_positions(mask)[:, :-1], mask[:, :-1]))
    n = batch["completion"].shape[1]
    return jnp.take_along_axis(jax.nn.log_softmax(logits[:, -n:]), batch["completion"][..., None], -1)[..., 0]

  weights = batch["completion_mask"]
  shared = completion_logps(model, batch)
  np.testing.assert_allclose(shared * weights, full_logps(model) * weights, atol=2e-5)
  g_shared = nnx.state(nnx.grad(lambda m: (completion_logps(m, batch) * weights).sum())(model), nnx.Param)
  g_full = nnx.state(nnx.grad(lambda m: (full_logps(m) * weights).sum())(model), nnx.Param)
  for (path, a), (_, b) in zip(nnx.to_flat_state(g_shared), nnx.to_flat_state(g_full)):
    np.testing.assert_allclose(np.asarray(a[...]), np.asarray(b[...]), atol=5e-5, rtol=1e-4, err_msg=str(path))


def test_loss_log_probs_are_taken_at_the_rollout_temperature():
  """At T = 0.5 the ratio's log-probs are those of the distribution the rollouts were drawn from, and the KL is
  between the tempered policy and the tempered reference (the k3 value by hand from tempered log-probs)."""
  from spct_jax.train.grpo_trainer import completion_logps
  model = Transformer(get_config("tiny-gemma3"), rngs=nnx.Rngs(3))
  cfg = GRPOConfig(group_size=2, beta=0.5, max_new_tokens=6, temperature=0.5, num_iterations=2)
  trainer = GRPOTrainer(model, cfg, OptimizerConfig(learning_rate=1e-3))
  batch, out = trainer.rollout(PROMPTS[:3], seed=4, eos_ids=(1,), pad_id=0)
  mask = batch["completion_mask"] > 0
  # The old-policy pass (mu > 1) reproduces the sampler's own log-probs at T = 0.5, not the raw T = 1 ones.
  old = np.asarray(trainer._old_logps(trainer.model, {k: jnp.asarray(v) for k, v in batch.items()}))
  np.testing.assert_allclose(old[mask], np.asarray(out.logps)[mask], atol=2e-5)
  assert not np.allclose(old[mask], np.asarray(out.model_logps)[mask], atol=1e-2)

  # A reference that differs from the policy: KL(pi_T || ref_T) from the objective equals k3 on tempered log-probs.
  ref_model = Transformer(get_config("tiny-gemma3"), rngs=nnx.Rngs(4))
  ref_state = nnx.state(ref_model, nnx.Param)
  full = {k: jnp.asarray(v) for k, v in dict(batch, advantages=np.zeros(6, np.float32), old_logps=old).items()}
  _, metrics = grpo_objective(cfg)(trainer.model, ref_state, full)
  policy_t = np.asarray(completion_logps(trainer.model, full, temperature=0.5))
  ref_t = np.asarray(completion_logps(ref_model, full, temperature=0.5))
  d = (ref_t - policy_t)[mask]
  np.testing.assert_allclose(float(metrics["kl"]), np.mean(np.exp(d) - d - 1), rtol=1e-4)
  # On the rollout policy the ratio is exactly 1: no clipping although the samples were drawn at T = 0.5.
  assert float(metrics["clip_fraction"]) == 0.0
  with pytest.raises(ValueError, match="temperature must be > 0"):
    GRPOConfig(temperature=0.0)
