"""Tests for spct_jax.logprobs: vocab-parallel log-probs equal the plain and the log_softmax reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spct_jax import logprobs as lp
from spct_jax import sharding as shd

B, T, D, V = 8, 12, 16, 64
MESHES = [(8, 1, 1), (2, 2, 2), (1, 2, 4)]
TOL = dict(rtol=1e-5, atol=1e-5)


@functools.lru_cache(maxsize=None)
def _mesh(sizes):
  return shd.make_mesh(shd.MeshConfig(*sizes))


def _inputs(b=B, t=T, v=V, seed=0):
  k = jax.random.split(jax.random.key(seed), 3)
  hidden = jax.random.normal(k[0], (b, t, D))
  embedding = 0.5 * jax.random.normal(k[1], (v, D))
  targets = jax.random.randint(k[2], (b, t), 0, v)
  return hidden, embedding, targets


def _reference(hidden, embedding, targets, softcap=None, temperature=1.0):
  logits = jnp.einsum("btd,vd->btv", hidden, embedding, precision="highest")
  if softcap is not None:
    logits = softcap * jnp.tanh(logits / softcap)
  logp = jax.nn.log_softmax(logits / temperature, axis=-1)
  return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0], logp


@pytest.mark.parametrize("sizes", MESHES)
@pytest.mark.parametrize("softcap, temperature", [(None, 1.0), (2.0, 0.7)])
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_sharded_matches_plain_and_reference(sizes, softcap, temperature, chunk_size):
  hidden, embedding, targets = _inputs()
  kw = dict(final_softcap=softcap, temperature=temperature, chunk_size=chunk_size)
  mesh = _mesh(sizes)
  sharded = jax.jit(functools.partial(lp.token_logprobs, mesh=mesh, **kw))(hidden, embedding, targets)
  plain = lp.token_logprobs(hidden, embedding, targets, final_softcap=softcap, temperature=temperature)
  ref, _ = _reference(hidden, embedding, targets, softcap, temperature)
  assert sharded.shape == (B, T) and sharded.dtype == jnp.float32
  np.testing.assert_allclose(sharded, plain, **TOL)
  np.testing.assert_allclose(sharded, ref, **TOL)
  np.testing.assert_allclose(plain, ref, **TOL)


@pytest.mark.parametrize("chunk_size", [1, 5, 12, 40])
def test_plain_chunked_matches_reference(chunk_size):
  hidden, embedding, targets = _inputs()
  got = lp.token_logprobs(hidden, embedding, targets, chunk_size=chunk_size, final_softcap=30.0)
  np.testing.assert_allclose(got, _reference(hidden, embedding, targets, 30.0)[0], **TOL)


def test_logits_are_vocab_sliced_inside_shard_map():
  # (2, 2, 2): batch 8 -> 2 rows per device, vocab 64 -> 32 per device; the full [8, 12, 64] never appears.
  hidden, embedding, targets = _inputs()
  jaxpr = str(jax.make_jaxpr(functools.partial(lp.token_logprobs, mesh=_mesh((2, 2, 2))))(
      hidden, embedding, targets))
  assert "shard_map" in jaxpr
  assert "f32[2,12,32]" in jaxpr
  assert "f32[8,12,64]" not in jaxpr and "f32[2,12,64]" not in jaxpr


@pytest.mark.parametrize("sizes", MESHES)
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_gradient_through_shard_map_matches_plain(sizes, chunk_size):
  hidden, embedding, targets = _inputs()
  weights = jax.random.normal(jax.random.key(7), (B, T))

  def loss(h, e, mesh, chunk):
    out = lp.token_logprobs(h, e, targets, mesh=mesh, final_softcap=30.0, temperature=0.8, chunk_size=chunk)
    return jnp.sum(out * weights)

  got = jax.jit(jax.grad(functools.partial(loss, mesh=_mesh(sizes), chunk=chunk_size), (0, 1)))(hidden, embedding)
  want = jax.grad(functools.partial(loss, mesh=None, chunk=None), (0, 1))(hidden, embedding)
  for g, w in zip(got, want):
    assert np.abs(np.asarray(w)).max() > 1e-3  # Non-trivial gradient.
    np.testing.assert_allclose(g, w, **TOL)


@pytest.mark.parametrize("sizes", [None, (2, 2, 2), (1, 2, 4)])
def test_entropy_matches_reference(sizes):
  hidden, embedding, targets = _inputs()
  mesh = None if sizes is None else _mesh(sizes)
  logp_t, ent = lp.token_logprobs_and_entropy(hidden, embedding, targets, mesh=mesh, final_softcap=30.0,
                                              temperature=0.9, chunk_size=5)
  ref_t, ref_logp = _reference(hidden, embedding, targets, 30.0, 0.9)
  ref_ent = -jnp.sum(jnp.exp(ref_logp) * ref_logp, axis=-1)
  np.testing.assert_allclose(logp_t, ref_t, **TOL)
  np.testing.assert_allclose(ent, ref_ent, **TOL)
  np.testing.assert_allclose(lp.token_entropy(hidden, embedding, mesh=mesh, final_softcap=30.0, temperature=0.9),
                             ref_ent, **TOL)


def test_vocab_over_two_mesh_axes():
  # Custom rules: vocab split 4-way over (fsdp, tensor); the combined axis_index must give the right offsets.
  rules = (("batch", "data"), ("vocab", ("fsdp", "tensor")))
  hidden, embedding, targets = _inputs()
  loss = lambda e, mesh: jnp.sum(lp.token_logprobs(hidden, e, targets, mesh=mesh, rules=rules))
  mesh = _mesh((2, 2, 2))
  np.testing.assert_allclose(lp.token_logprobs(hidden, embedding, targets, mesh=mesh, rules=rules),
                             _reference(hidden, embedding, targets)[0], **TOL)
  np.testing.assert_allclose(jax.grad(loss)(embedding, mesh), jax.grad(loss)(embedding, None), **TOL)


def test_batch_not_divisible_falls_back_to_replicated():
  hidden, embedding, targets = _inputs(b=3)
  got = lp.token_logprobs(hidden, embedding, targets, mesh=_mesh((2, 2, 2)))
  np.testing.assert_allclose(got, _reference(hidden, embedding, targets)[0], **TOL)


def test_bf16_compute_dtype_is_close():
  hidden, embedding, targets = _inputs()
  got = lp.token_logprobs(hidden.astype(jnp.bfloat16), embedding.astype(jnp.bfloat16), targets,
                          mesh=_mesh((1, 2, 4)), compute_dtype=jnp.bfloat16)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, _reference(hidden, embedding, targets)[0], rtol=0.05, atol=0.1)


def _dot_operand_dtypes(jaxpr) -> list[tuple[str, ...]]:
  """Operand dtypes of every dot_general in a jaxpr, nested ones (shard_map, lax.map, remat, custom_vjp) included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          found += _dot_operand_dtypes(inner)
  return found


@pytest.mark.parametrize("sizes", [None, (1, 2, 4)])
def test_bf16_backward_multiplies_in_bf16_and_stays_close(sizes):
  """The LM-head backward rounds the logits' cotangent to bf16: no f32 matmul (XLA would convert the whole table)."""
  hidden, embedding, targets = _inputs()
  mesh = None if sizes is None else _mesh(sizes)

  def loss(h, e, compute_dtype):
    return jnp.sum(lp.token_logprobs(h, e, targets, mesh=mesh, compute_dtype=compute_dtype, chunk_size=4))

  grad = jax.grad(loss, (0, 1))
  dtypes = _dot_operand_dtypes(jax.make_jaxpr(grad, static_argnums=2)(hidden, embedding, jnp.bfloat16).jaxpr)
  assert len(dtypes) >= 3 and all(d == ("bfloat16", "bfloat16") for d in dtypes), dtypes  # fwd, remat, 2 bwd
  assert ("float32", "float32") in _dot_operand_dtypes(
      jax.make_jaxpr(grad, static_argnums=2)(hidden, embedding, jnp.float32).jaxpr)
  got = grad(hidden, embedding, jnp.bfloat16)
  want = grad(hidden, embedding, jnp.float32)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=0.05, atol=0.05 * float(jnp.abs(w).max()))


def test_bad_inputs_raise():
  hidden, embedding, targets = _inputs(v=30)
  with pytest.raises(ValueError, match=r"vocab size 30 is not divisible .*\('tensor',\) \(size 4\)"):
    lp.token_logprobs(hidden, embedding, targets, mesh=_mesh((1, 2, 4)))
  with pytest.raises(ValueError, match="targets"):
    lp.token_logprobs(hidden, embedding, targets[:, :3])
  with pytest.raises(ValueError, match="hidden width"):
    lp.token_logprobs(hidden[..., :4], embedding, targets)
  with pytest.raises(ValueError, match="chunk_size"):
    lp.token_logprobs(hidden, embedding, targets, chunk_size=0)
