"""Forward logits and greedy samples on 8 CPU devices equal the single-device results."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spct_jax import sampler
from spct_jax import sharding as shd
from spct_jax.model import Transformer, get_config
from spct_jax.model.params import flat_from_model, model_from_flat

MESHES = [(8, 1, 1), (2, 2, 2), (1, 2, 4)]
PROMPTS = [[2, 5, 6, 7, 8, 9, 10, 11], [2, 40, 41], [2, 99, 98, 97, 96], [2, 7]]


@pytest.fixture(scope="module")
def reference():
  cfg = get_config("tiny-gemma3", num_heads=4, num_kv_heads=4)  # 4 kv heads: tensor=4 really shards them
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, 512, (8, 12)), jnp.int32)
  greedy = sampler.sample_from_tokens(model, PROMPTS, max_new_tokens=8, num_samples=2)[0]
  return cfg, flat_from_model(model), tokens, np.asarray(model(tokens)), np.asarray(greedy.tokens)


@pytest.mark.parametrize("axes", MESHES, ids=lambda a: "x".join(map(str, a)))
def test_sharded_forward_and_greedy_equal_single_device(reference, axes):
  cfg, flat, tokens, logits, greedy = reference
  mesh = shd.make_mesh(shd.MeshConfig(data=axes[0], fsdp=axes[1], tensor=axes[2]))
  model = model_from_flat(cfg, flat, mesh=mesh)
  if axes[2] > 1:
    assert model.blocks.q_proj[...].sharding.spec[2] == "tensor"
  graphdef, state = nnx.split(model)
  batch_sharding = shd.activation_sharding(tokens.shape, ("batch", "length"), mesh)
  forward = jax.jit(lambda state, t: nnx.merge(graphdef, state)(t),
                    in_shardings=(shd.state_shardings(state, mesh), batch_sharding),
                    out_shardings=shd.activation_sharding(logits.shape, ("batch", "length", "vocab"), mesh))
  out = forward(state, jax.device_put(tokens, batch_sharding))
  assert len(out.sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(out), logits, atol=2e-5, rtol=1e-5)
  sharded_greedy = sampler.sample_from_tokens(model, PROMPTS, max_new_tokens=8, num_samples=2, mesh=mesh)[0]
  np.testing.assert_array_equal(np.asarray(sharded_greedy.tokens), greedy)
