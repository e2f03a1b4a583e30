"""The sampling decoder (per-layer buffers, unrolled layers) computes `Transformer`'s function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spct_jax.model import Transformer, decoding, get_config


@pytest.fixture(scope="module", params=["tiny-gemma2", "tiny-gemma3"])
def model(request):
  return Transformer(get_config(request.param), rngs=nnx.Rngs(0))


def _tokens(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(3, 512, shape), jnp.int32)


def _decode_logits(model, tokens, mask, split_at):
  """Prefill tokens[:, :split_at], then one token per step; logits of every position."""
  cfg, params = model.cfg, decoding.decoding_params(model)
  positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
  cache = decoding.init_cache(cfg, tokens.shape[0], tokens.shape[1] + 2)
  hidden, cache = decoding.forward(cfg, params, tokens[:, :split_at], positions[:, :split_at], cache,
                                   mask[:, :split_at])
  steps = [decoding.logits(cfg, params, hidden)]
  for i in range(split_at, tokens.shape[1]):
    hidden, cache = decoding.forward(cfg, params, tokens[:, i:i + 1], positions[:, i:i + 1], cache)
    steps.append(decoding.logits(cfg, params, hidden))
  return jnp.concatenate(steps, axis=1), cache


def test_prefill_then_steps_equal_full_forward_with_left_padding(model):
  # Longer than the tiny sliding window (8), two kv heads (the [B*K, S, H] cache rows), a left-padded row.
  tokens = _tokens((2, 14))
  mask = jnp.ones((2, 14), jnp.int32).at[1, :4].set(0)
  full = model(tokens, attention_mask=mask)
  logits, cache = _decode_logits(model, tokens, mask, split_at=9)
  real = np.asarray(mask, bool)
  np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(full)[real], atol=3e-5)
  assert int(cache.index) == 14
  assert cache.k[0].shape == (2 * model.cfg.num_kv_heads, 16, model.cfg.head_dim)


def test_take_rows_gathers_each_sequence_with_all_its_kv_heads(model):
  cfg, params = model.cfg, decoding.decoding_params(model)
  tokens = _tokens((3, 6), seed=2)
  positions = jnp.broadcast_to(jnp.arange(6), (3, 6))
  _, cache = decoding.forward(cfg, params, tokens, positions, decoding.init_cache(cfg, 3, 8))
  rows = jnp.array([2, 2, 0])
  _, expected = decoding.forward(cfg, params, tokens[rows], positions[rows], decoding.init_cache(cfg, 3, 8))
  got = decoding.take_rows(cfg, cache, rows)
  for a, b in zip(got.k + got.v, expected.k + expected.v):
    np.testing.assert_allclose(a, b, atol=1e-6)
  np.testing.assert_array_equal(got.key_positions, expected.key_positions)


def test_decoding_params_cast_matmul_weights_once_and_keep_norms():
  model = Transformer(get_config("tiny-gemma3", compute_dtype="bfloat16"), rngs=nnx.Rngs(0))
  params = decoding.decoding_params(model)
  assert params["embedding"] is model.embedding[...]  # lookups read the model's own table: no copy
  np.testing.assert_array_equal(params["head"], model.embedding[...].astype(jnp.bfloat16))
  assert len(params["layers"]) == model.cfg.num_layers
  layer, cfg = params["layers"][1], model.cfg
  assert layer["qkv_proj"].dtype == jnp.bfloat16 and layer["attn_norm"].dtype == jnp.float32
  # [out, in] weights. q, k and v grouped by kv head: [K, G + 2, H, D], kv head j's query heads, then its key, then
  # its value (compared after moving D first, the `Transformer` layout).
  group = cfg.num_heads // cfg.num_kv_heads
  qkv = np.asarray(layer["qkv_proj"]).T.reshape(cfg.embed_dim, cfg.num_kv_heads, group + 2, cfg.head_dim)
  cast = lambda name: np.asarray(getattr(model.blocks, name)[...][1].astype(jnp.bfloat16))
  np.testing.assert_array_equal(qkv[:, :, :group].reshape(cfg.embed_dim, cfg.num_heads, -1), cast("q_proj"))
  np.testing.assert_array_equal(qkv[:, :, group], cast("k_proj"))
  np.testing.assert_array_equal(qkv[:, :, group + 1], cast("v_proj"))
  gate_up = np.asarray(layer["gate_up_proj"]).T.reshape(cfg.embed_dim, cfg.mlp_dim, 2)
  np.testing.assert_array_equal(gate_up[..., 0], cast("gate_proj"))
  np.testing.assert_array_equal(gate_up[..., 1], cast("up_proj"))
  np.testing.assert_array_equal(np.asarray(layer["o_proj"]).T, cast("o_proj").reshape(-1, cfg.embed_dim))
  np.testing.assert_array_equal(np.asarray(layer["down_proj"]).T, cast("down_proj"))
  # float32_attention (default on) keeps the cache in f32; without it, the compute dtype.
  assert decoding.init_cache(cfg, 1, 4).k[0].dtype == jnp.float32
  assert decoding.init_cache(cfg.replace(float32_attention=False), 1, 4).k[0].dtype == jnp.bfloat16


def test_f32_decoding_shares_the_embedding_with_the_head():
  model = Transformer(get_config("tiny-gemma3"), rngs=nnx.Rngs(0))
  params = decoding.decoding_params(model)
  assert params["head"] is params["embedding"] is model.embedding[...]


def test_bf16_decoding_stays_close_to_f32(model):
  tokens = _tokens((2, 10), seed=3)
  mask = jnp.ones((2, 10), jnp.int32)
  f32, _ = _decode_logits(model, tokens, mask, split_at=6)
  bf16_model = Transformer(model.cfg.replace(compute_dtype="bfloat16"), rngs=nnx.Rngs(0))
  bf16, _ = _decode_logits(bf16_model, tokens, mask, split_at=6)
  assert float(jnp.max(jnp.abs(bf16 - f32))) < 0.1 * float(jnp.max(jnp.abs(f32)))


def test_param_logical_axes_match_param_shapes(model):
  shapes = decoding.decoding_params(model)
  axes = decoding.param_logical_axes(model.cfg)
  pairs = jax.tree.leaves(jax.tree.map(lambda s, a: (s.shape, a), shapes, axes),
                          is_leaf=lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], tuple))
  assert pairs and all(len(shape) == len(a) for shape, a in pairs)


def test_decoding_params_are_reused_until_the_parameters_change():
  model = Transformer(get_config("tiny-gemma3"), rngs=nnx.Rngs(0))
  first = decoding.decoding_params(model)
  assert decoding.decoding_params(model) is first
  model.blocks.q_proj[...] = model.blocks.q_proj[...] * 2  # a new array: the cached split is stale
  second = decoding.decoding_params(model)
  assert second is not first
  group = model.cfg.num_heads // model.cfg.num_kv_heads
  q_rows = lambda p: np.asarray(p["layers"][0]["qkv_proj"]).reshape(-1, group + 2, model.cfg.head_dim,
                                                                   model.cfg.embed_dim)[:, :group]
  np.testing.assert_allclose(q_rows(second), 2 * q_rows(first))


def test_bf16_parameters_decode_like_the_full_forward():
  # bf16 master weights: lookups take the 2-byte path (an integer view of the table), the head is the table itself.
  model = Transformer(get_config("tiny-gemma3", param_dtype="bfloat16", compute_dtype="bfloat16"), rngs=nnx.Rngs(0))
  params = decoding.decoding_params(model)
  assert params["embedding"].dtype == jnp.bfloat16 and params["head"] is params["embedding"]
  tokens = _tokens((2, 10), seed=4)
  np.testing.assert_array_equal(decoding._lookup(params["embedding"], tokens),  # pylint: disable=protected-access
                                model.embedding[...][tokens])
  mask = jnp.ones((2, 10), jnp.int32)
  logits, _ = _decode_logits(model, tokens, mask, split_at=6)
  np.testing.assert_allclose(logits, model(tokens), atol=0.05 * float(jnp.max(jnp.abs(logits))))
