"""SFT objective: loss on target tokens only, and packed rows equal to the same sequences unpacked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sft_batches
from spct_jax.model.config import get_config
from spct_jax.model.transformer import Transformer, make_attention_mask
from spct_jax.train import sft
from spct_jax.train.step import OptimizerConfig, init_train_state, make_optimizer, make_train_step

rng = np.random.default_rng(0)
# (inputs with BOS, targets): decoder lengths 11, 14, 8; tiny-gemma3's window is 8, so local layers clip.
EXAMPLES = [([2, *rng.integers(3, 500, 5)], list(rng.integers(3, 500, 6))),
            ([2, *rng.integers(3, 500, 8)], list(rng.integers(3, 500, 6))),
            ([2, *rng.integers(3, 500, 3)], list(rng.integers(3, 500, 5)))]


def loss_and_grads(model, batch):
  loss_fn = sft.sft_objective()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def of(params):
    return loss_fn(nnx.merge(graphdef, params, rest), None, {k: jnp.asarray(v) for k, v in batch.items()})

  (loss, metrics), grads = jax.value_and_grad(of, has_aux=True)(params)
  return loss, metrics, grads


@pytest.fixture(scope="module")
def model():
  return Transformer(get_config("tiny-gemma3"), rngs=nnx.Rngs(3))


def test_packed_rows_give_the_loss_and_gradients_of_unpacked_rows(model):
  unpacked = sft_batches.batch([[e] for e in EXAMPLES], 16)
  packed = sft_batches.batch([EXAMPLES[:2], EXAMPLES[2:]], 26)
  loss_u, metrics_u, grads_u = loss_and_grads(model, unpacked)
  loss_p, metrics_p, grads_p = loss_and_grads(model, packed)
  assert float(metrics_u["tokens"]) == float(metrics_p["tokens"]) == 6 + 6 + 5
  np.testing.assert_allclose(loss_p, loss_u, rtol=1e-5)
  for gu, gp in zip(jax.tree.leaves(grads_u), jax.tree.leaves(grads_p)):
    np.testing.assert_allclose(gp, gu, rtol=2e-4, atol=1e-6)
  # Per-token log-probs agree too (the segment mask and restarted positions reproduce each sequence's context).
  lp_u = np.asarray(sft.decoder_logps(model, unpacked))
  lp_p = np.asarray(sft.decoder_logps(model, packed))
  np.testing.assert_allclose(lp_p[0, 11:25], lp_u[1, :14], rtol=1e-5, atol=1e-5)
  # Without the segment mask the second packed sequence would see the first: the test can fail.
  leaky = dict(packed, decoder_segment_ids=(packed["decoder_segment_ids"] > 0).astype(np.int32))
  assert not np.allclose(np.asarray(sft.decoder_logps(model, leaky))[0, 11:25], lp_u[1, :14], atol=1e-3)


def test_loss_counts_target_tokens_only(model):
  batch = sft_batches.batch([[e] for e in EXAMPLES], 16)
  loss, _, grads = loss_and_grads(model, batch)
  prompt_label = dict(batch, decoder_target_tokens=batch["decoder_target_tokens"].copy())
  prompt_label["decoder_target_tokens"][1, 3] += 1  # a prompt position (weight 0)
  assert batch["decoder_loss_weights"][1, 3] == 0
  loss_2, _, grads_2 = loss_and_grads(model, prompt_label)
  assert float(loss_2) == float(loss)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_2)):
    np.testing.assert_array_equal(a, b)
  target_label = dict(batch, decoder_target_tokens=batch["decoder_target_tokens"].copy())
  target_label["decoder_target_tokens"][1, 9] += 1  # a target position (weight 1)
  assert batch["decoder_loss_weights"][1, 9] == 1
  assert float(loss_and_grads(model, target_label)[0]) != float(loss)
  # The loss is the token-mean NLL of the weighted positions.
  logps = np.asarray(sft.decoder_logps(model, batch))
  np.testing.assert_allclose(loss, -logps[batch["decoder_loss_weights"] > 0].mean(), rtol=1e-6)


def test_sft_objective_through_the_train_step():
  model = Transformer(get_config("tiny-gemma3"), rngs=nnx.Rngs(4))
  opt_cfg = OptimizerConfig(learning_rate=1e-2, grad_clip_norm=None)
  optimizer = make_optimizer(opt_cfg)
  state = init_train_state(model, optimizer, opt_cfg.trainable)
  step = make_train_step(sft.sft_objective(), optimizer, state)
  batch = sft_batches.batch([EXAMPLES[:2], EXAMPLES[2:]], 26)
  first = step(state, None, batch)
  for _ in range(5):
    last = step(state, None, batch)
  assert float(first["tokens"]) == 17 and float(last["loss"]) < float(first["loss"])
  with pytest.raises(ValueError, match="lacks"):
    sft.decoder_logps(model, {"decoder_input_tokens": batch["decoder_input_tokens"]})


def test_segment_mask_is_a_pure_function_of_positions_and_segments():
  positions = jnp.array([[0, 1, 2, 0, 1, 0]])
  segments = jnp.array([[1, 1, 1, 2, 2, 0]])
  keys = jnp.where(segments > 0, positions, -1)
  mask = np.asarray(make_attention_mask(positions, keys, None, segments, segments))[0]
  expected = np.array([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                       [0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(mask, expected)
  window = np.asarray(make_attention_mask(positions, keys, 2, segments, segments))[0]
  np.testing.assert_array_equal(window, expected & ~np.eye(6, k=-2, dtype=bool))
  # Without segments the old mask is unchanged: causal by position.
  np.testing.assert_array_equal(np.asarray(make_attention_mask(positions, keys, None))[0, 3], [1, 0, 0, 1, 0, 0])
