"""Model invariants on tiny configs (HF parity lives in test_hf_parity.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spct_jax.model import Transformer, decoding, get_config, param_logical_axes
from spct_jax.model.params import expected_shapes, flat_from_model, model_from_flat


@pytest.fixture(scope="module", params=["tiny-gemma2", "tiny-gemma3"])
def model(request):
  return Transformer(get_config(request.param), rngs=nnx.Rngs(0))


def _tokens(shape, seed=0, vocab=512):
  return jnp.asarray(np.random.default_rng(seed).integers(3, vocab, shape), jnp.int32)


def test_left_padding_does_not_change_real_positions(model):
  seq = _tokens((1, 10), seed=1)
  alone = model(seq)
  padded = jnp.concatenate([jnp.zeros((1, 5), jnp.int32), seq], axis=1)
  mask = jnp.concatenate([jnp.zeros((1, 5), bool), jnp.ones((1, 10), bool)], axis=1)
  batched = model(padded, attention_mask=mask)
  np.testing.assert_allclose(batched[:, 5:], alone, atol=2e-5)


def test_sliding_window_hides_tokens_beyond_the_window():
  cfg = get_config("tiny-gemma3", num_layers=1, global_every=1000)  # one local layer: receptive field = window
  model = Transformer(cfg, rngs=nnx.Rngs(1))
  tokens = _tokens((1, 20), seed=2)
  changed = tokens.at[0, 3].set((tokens[0, 3] + 1) % 512)
  a, b = model(tokens), model(changed)
  last_affected = 3 + cfg.sliding_window - 1
  assert float(jnp.abs(a[0, last_affected] - b[0, last_affected]).max()) > 1e-4
  np.testing.assert_allclose(a[0, last_affected + 1:], b[0, last_affected + 1:], atol=1e-6)


def test_global_layers_see_everything():
  cfg = get_config("tiny-gemma3", num_layers=1, global_every=1)
  model = Transformer(cfg, rngs=nnx.Rngs(1))
  tokens = _tokens((1, 20), seed=2)
  changed = tokens.at[0, 0].set((tokens[0, 0] + 1) % 512)
  assert float(jnp.abs(model(tokens)[0, -1] - model(changed)[0, -1]).max()) > 1e-4


def test_bf16_compute_stays_close_to_f32():
  cfg = get_config("tiny-gemma3")
  f32 = Transformer(cfg, rngs=nnx.Rngs(3))
  bf16 = model_from_flat(cfg.replace(compute_dtype="bfloat16"), flat_from_model(f32))
  tokens = _tokens((2, 16), seed=4)
  a, b = f32(tokens), bf16(tokens)
  assert b.dtype == jnp.float32
  assert float(jnp.abs(a - b).max()) < 0.1 * float(jnp.abs(a).max())


def test_every_parameter_has_logical_axes_matching_its_rank(model):
  shapes = expected_shapes(model.cfg)
  axes = param_logical_axes(model.cfg)
  assert set(shapes) == set(axes)
  for key, shape in shapes.items():
    assert len(axes[key]) == len(shape), key


def test_flat_round_trip_and_errors(model):
  flat = flat_from_model(model)
  tokens = _tokens((1, 6))
  np.testing.assert_array_equal(model_from_flat(model.cfg, flat)(tokens), model(tokens))
  broken = dict(flat)
  del broken["blocks/q_proj"]
  with pytest.raises(ValueError, match=r"ckpt\.bin: missing tensor\(s\) \['blocks/q_proj'\]"):
    model_from_flat(model.cfg, broken, source="ckpt.bin")
  broken = dict(flat, embedding=flat["embedding"][:, :3])
  with pytest.raises(ValueError, match="'embedding' has shape"):
    model_from_flat(model.cfg, broken)


def test_config_errors():
  with pytest.raises(ValueError, match="unknown model preset"):
    get_config("gemma9-1t")
  with pytest.raises(ValueError, match="compute_dtype"):
    get_config("tiny-gemma3", compute_dtype="float8")
  with pytest.raises(ValueError, match="cache length"):
    decoding.init_cache(get_config("tiny-gemma3"), 1, 10_000)


def test_forward_jits_and_matches_eager(model):
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, t: nnx.merge(graphdef, state)(t))
  tokens = _tokens((2, 8))
  np.testing.assert_allclose(forward(state, tokens), model(tokens), atol=1e-5)
