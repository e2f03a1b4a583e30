"""SFT objective: loss on target tokens only, packed rows equal to the same sequences unpacked, and the target
index (the LM head at the target positions only) equal to the full batch: loss, gradients, train steps, a mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sft_batches
from spct_jax import sharding as shd
from spct_jax.model.config import get_config
from spct_jax.model.params import flat_from_model, model_from_flat
from spct_jax.model.transformer import Transformer, make_attention_mask
from spct_jax.train import sft
from spct_jax.train.step import OptimizerConfig, init_train_state, make_optimizer, make_train_step

rng = np.random.default_rng(0)
# (inputs with BOS, targets): decoder lengths 11, 14, 8; tiny-gemma3's window is 8, so local layers clip.
EXAMPLES = [([2, *rng.integers(3, 500, 5)], list(rng.integers(3, 500, 6))),
            ([2, *rng.integers(3, 500, 8)], list(rng.integers(3, 500, 6))),
            ([2, *rng.integers(3, 500, 3)], list(rng.integers(3, 500, 5)))]


def loss_and_grads(model, batch, **objective_kw):
  loss_fn = sft.sft_objective(**objective_kw)
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


def test_target_index_lists_each_rows_targets_in_order_padded_to_a_multiple():
  weights = np.array([[0, 1, 1, 0, 1, 0, 0, 0],
                      [0, 0, 0, 0, 0, 0, 0, 0],   # no target
                      [1, 0, 0, 0, 0, 0, 0, 1]], np.int32)  # a target at position 0, like the padding
  batch = {"decoder_loss_weights": weights, "decoder_segment_ids": np.ones_like(weights)}
  out = sft.with_target_index(batch, multiple=2)
  np.testing.assert_array_equal(out["decoder_target_index"], [[1, 2, 4, 0], [0, 0, 0, 0], [0, 7, 0, 0]])
  np.testing.assert_array_equal(out["decoder_target_weights"], [[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]])
  assert out["decoder_target_index"].dtype == np.int32 and out["decoder_target_weights"].dtype == np.float32
  assert out["decoder_segment_ids"] is batch["decoder_segment_ids"]
  assert set(out) == set(batch) | set(sft.TARGET_KEYS) and "decoder_target_index" not in batch
  # M: the longest row's count (3) rounded up to the multiple, at least one multiple, never beyond L.
  assert [sft.with_target_index(batch, multiple=m)["decoder_target_index"].shape[1] for m in (1, 3, 5, 128)] == \
      [3, 3, 5, 8]
  assert sft.with_target_index({"decoder_loss_weights": np.zeros((2, 300))})["decoder_target_index"].shape == (2, 128)
  # No target is dropped, whatever the counts: the gathered weights sum to the row's weights.
  big = (np.random.default_rng(1).random((4, 600)) < np.array([[0.1], [0.3], [0.0], [0.45]])).astype(np.int32)
  out = sft.with_target_index({"decoder_loss_weights": big})
  assert out["decoder_target_index"].shape == (4, 384)  # the longest row holds 257..384 targets
  for r in range(4):
    n = int(big[r].sum())
    np.testing.assert_array_equal(out["decoder_target_index"][r, :n], np.flatnonzero(big[r]))
    np.testing.assert_array_equal(out["decoder_target_weights"][r], (np.arange(384) < n).astype(np.float32))
  with pytest.raises(ValueError, match="multiple"):
    sft.with_target_index(batch, multiple=0)
  # An agreed width (every process of a step pads to the largest): wider is padding, narrower an error.
  assert sft.target_width(weights, multiple=2) == 4
  np.testing.assert_array_equal(sft.with_target_index(batch, width=6)["decoder_target_index"][0], [1, 2, 4, 0, 0, 0])
  with pytest.raises(ValueError, match="width=2 would drop targets: a row has 3"):
    sft.with_target_index(batch, width=2)


def _max_differences(a, b):
  """(max abs, max rel) difference of two pytrees of arrays, rel against the largest |b| of each leaf."""
  pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  abs_ = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)
  rel = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / max(float(np.max(np.abs(y))), 1e-30))
            for x, y in pairs)
  return abs_, rel


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
def test_target_index_gives_the_loss_and_gradients_of_the_full_batch(model, packed):
  batch = (sft_batches.batch([EXAMPLES[:2], EXAMPLES[2:]], 26) if packed
           else sft_batches.batch([[e] for e in EXAMPLES], 16))
  indexed = sft.with_target_index(batch, multiple=4)
  assert indexed["decoder_target_index"].shape == (len(batch["decoder_loss_weights"]), 12 if packed else 8)
  for chunk_size in (None, 3):
    loss, metrics, grads = loss_and_grads(model, batch, chunk_size=chunk_size)
    loss_i, metrics_i, grads_i = loss_and_grads(model, indexed, chunk_size=chunk_size)
    assert float(metrics_i["tokens"]) == float(metrics["tokens"]) == 17
    np.testing.assert_allclose(loss_i, loss, rtol=1e-6)
    loss_abs, loss_rel = _max_differences(loss_i, loss)
    grad_abs, grad_rel = _max_differences(grads_i, grads)
    print(f"packed={packed} chunk_size={chunk_size}: loss |d| {loss_abs:.2e} rel {loss_rel:.2e}; "
          f"grads max |d| {grad_abs:.2e} rel (to the leaf's max) {grad_rel:.2e}")
    assert grad_rel < 1e-5, grad_rel
    for g, g_i in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_i)):
      np.testing.assert_allclose(g_i, g, rtol=1e-5, atol=1e-7)
  # The gathered log-probs are the full batch's at the target positions.
  full = np.asarray(sft.decoder_logps(model, batch))
  gathered = np.asarray(sft.decoder_logps(model, indexed))
  on = indexed["decoder_target_weights"] > 0
  np.testing.assert_allclose(gathered[on], full[batch["decoder_loss_weights"] > 0], rtol=1e-6, atol=1e-6)


def _one_step(model, batch, mesh=None):
  opt_cfg = OptimizerConfig(learning_rate=1e-2, eps=1e-3, grad_clip_norm=None)
  optimizer = make_optimizer(opt_cfg)
  state = init_train_state(model, optimizer, opt_cfg.trainable, mesh=mesh)
  metrics = make_train_step(sft.sft_objective(mesh=mesh, chunk_size=4), optimizer, state, mesh=mesh)(
      state, None, batch)
  return {k: float(v) for k, v in metrics.items()}, flat_from_model(state.model())


def test_target_index_train_step_equals_the_full_batch_step_on_one_device_and_a_mesh():
  """RFT's step (`make_train_step(sft_objective(...))`, the batch through `with_target_index` as SFTBody does):
  the same loss, gradient norm and updated parameters as the full batch, also sharded on a data x fsdp x tensor
  mesh (the gather is per row, over the sequence axis; the LM head vocab-parallel)."""
  cfg = get_config("tiny-gemma3")
  flat = flat_from_model(Transformer(cfg, rngs=nnx.Rngs(5)))
  batch = sft_batches.batch([EXAMPLES[:2], EXAMPLES[2:], [EXAMPLES[1]], [EXAMPLES[2], EXAMPLES[0]]], 26)
  indexed = sft.with_target_index(batch, multiple=8)
  mesh = shd.make_mesh(shd.MeshConfig(data=2, fsdp=2, tensor=2))
  ref_metrics, ref_params = _one_step(model_from_flat(cfg, flat), batch)
  assert ref_metrics["tokens"] == 17 + 6 + 11
  for name, run_mesh, b in (("index", None, indexed), ("mesh", mesh, batch), ("mesh+index", mesh, indexed)):
    metrics, params = _one_step(model_from_flat(cfg, flat, mesh=run_mesh), b, run_mesh)
    rtol = 1e-6 if run_mesh is None else 1e-5  # 8 devices reorder the f32 reductions
    for key in ("loss", "tokens", "grad_norm"):
      np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=rtol, err_msg=f"{name} {key}")
    for key in ref_params:
      np.testing.assert_allclose(params[key], ref_params[key], rtol=1e-4, atol=1e-6, err_msg=f"{name} {key}")
