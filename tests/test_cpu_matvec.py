"""The C++ skinny-matmul kernel: exact-enough products, its use by the decoder, and clear build errors."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spct_jax import sampler
from spct_jax.kernels import cpu_matvec
from spct_jax.model import Transformer, decoding, get_config


@pytest.fixture(scope="module", autouse=True)
def built():
  return cpu_matvec.load()


def _operands(m, k, n, seed=0):
  x = jax.random.normal(jax.random.key(seed), (m, k)).astype(jnp.bfloat16)
  w = jax.random.normal(jax.random.key(seed + 1), (n, k)).astype(jnp.bfloat16)
  return x, w


# K past a multiple of the 32-element vector step, N past a multiple of the 4-row block, M odd and even.
@pytest.mark.parametrize("m,k,n", [(1, 640, 1000), (2, 640, 1537), (3, 37, 101), (2, 1, 1), (1, 70, 9), (5, 96, 7)])
def test_equals_a_float64_reference(m, k, n):
  x, w = _operands(m, k, n)
  expected = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
  got = np.asarray(jax.jit(cpu_matvec.skinny_matmul)(x, w))
  assert got.dtype == np.float32 and got.shape == (m, n)
  # f32 accumulation of exact bf16 products: error ~ sqrt(K) ulps of the partial sums.
  np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5 * np.sqrt(k) * np.abs(expected).max() + 1e-6)


def test_inside_a_while_loop_equals_xla_dot():
  """The decode loop calls it from XLA's loop body; the intra-op thread pool must serve it there too."""
  x, w = _operands(2, 256, 4099)

  def body(i, acc):
    return acc + cpu_matvec.skinny_matmul((x * (i + 1)).astype(jnp.bfloat16), w)

  got = jax.jit(lambda: jax.lax.fori_loop(0, 3, body, jnp.zeros((2, 4099), jnp.float32)))()
  xla = sum(jnp.einsum("xk,nk->xn", (x * (i + 1)).astype(jnp.bfloat16), w, preferred_element_type=jnp.float32,
                       precision="highest") for i in range(3))
  np.testing.assert_allclose(got, xla, rtol=1e-5, atol=1e-4)


def test_rejects_operands_it_does_not_compute():
  x, w = _operands(2, 64, 8)
  with pytest.raises(ValueError, match="bfloat16"):
    cpu_matvec.skinny_matmul(x.astype(jnp.float32), w)
  with pytest.raises(ValueError, match=r"\[M, K\] and w \[N, K\]"):
    cpu_matvec.skinny_matmul(x, w.T)


def test_a_missing_compiler_is_a_clear_error_and_disables_the_kernel(monkeypatch, tmp_path, caplog):
  monkeypatch.setenv("SPCT_KERNEL_CACHE", str(tmp_path))
  cpu_matvec.load.cache_clear()
  try:
    monkeypatch.setenv("CXX", "no-such-compiler-spct")
    with pytest.raises(cpu_matvec.KernelBuildError, match="no-such-compiler-spct"):
      cpu_matvec.load()
    with caplog.at_level(logging.WARNING):
      assert not cpu_matvec.enabled()
    assert "unavailable" in caplog.text
    monkeypatch.setenv("CXX", "false")  # runs, fails: the error names the source and nothing is left behind
    with pytest.raises(cpu_matvec.KernelBuildError, match="cpu_matvec.cc"):
      cpu_matvec.load()
    assert not list(tmp_path.iterdir())
  finally:
    monkeypatch.undo()
    cpu_matvec.load.cache_clear()
    cpu_matvec.load()


def test_switched_off_by_the_environment(monkeypatch):
  assert cpu_matvec.enabled()
  monkeypatch.setenv(cpu_matvec.ENV_SWITCH, "off")
  assert not cpu_matvec.enabled()


@pytest.fixture(scope="module")
def bf16_model():
  return Transformer(get_config("tiny-gemma3", compute_dtype="bfloat16"), rngs=nnx.Rngs(0))


def _step_fn(model, matmul):
  cfg, params = model.cfg, decoding.decoding_params(model)

  def step(tokens, positions):
    cache = decoding.init_cache(cfg, tokens.shape[0], 8)
    hidden, _ = decoding.forward(cfg, params, tokens, positions, cache, matmul=matmul)
    return decoding.logits(cfg, params, hidden, matmul=matmul)
  return jax.jit(step)


def test_decoder_runs_the_kernel_for_one_row_and_xla_for_many(bf16_model):
  kernel = decoding.Matmul(cpu_kernel=True)
  one, many = jnp.array([[5]]), jnp.arange(4)[:, None] + 3
  hlo = lambda matmul, tokens: _step_fn(bf16_model, matmul).lower(tokens, jnp.zeros_like(tokens)).as_text()
  assert cpu_matvec.TARGET in hlo(kernel, one)
  assert cpu_matvec.TARGET not in hlo(kernel, many)
  assert cpu_matvec.TARGET not in hlo(decoding.Matmul(), one)
  got = _step_fn(bf16_model, kernel)(one, jnp.zeros_like(one))
  expected = _step_fn(bf16_model, decoding.Matmul())(one, jnp.zeros_like(one))
  np.testing.assert_allclose(got, expected, rtol=2e-2, atol=2e-2 * float(jnp.abs(expected).max()))
  assert int(jnp.argmax(got)) == int(jnp.argmax(expected))


def test_filler_rows_are_zero_and_leave_the_live_rows_alone(bf16_model):
  tokens = jnp.array([[7], [7]])
  full = _step_fn(bf16_model, decoding.Matmul())(tokens, jnp.zeros_like(tokens))
  live = _step_fn(bf16_model, decoding.Matmul(live_rows=1))(tokens, jnp.zeros_like(tokens))
  np.testing.assert_allclose(live[0], full[0], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(live[1], 0.0)  # a zero hidden state gives zero logits (softcap(0) = 0)


def test_sampler_uses_the_kernel_for_one_unsharded_bf16_sequence(bf16_model, monkeypatch):
  def matmuls():
    return {dict(key[-1])["matmul"] for key in sampler._COMPILED}  # pylint: disable=protected-access

  sampler._COMPILED.clear()  # pylint: disable=protected-access
  out = sampler.sample_from_tokens(bf16_model, [[2, 5, 9]], max_new_tokens=6, eos_ids=(-1,))[0]
  assert matmuls() == {decoding.Matmul(cpu_kernel=True, live_rows=1)}
  sampler._COMPILED.clear()  # pylint: disable=protected-access
  monkeypatch.setenv(cpu_matvec.ENV_SWITCH, "off")
  xla = sampler.sample_from_tokens(bf16_model, [[2, 5, 9]], max_new_tokens=6, eos_ids=(-1,))[0]
  assert matmuls() == {decoding.Matmul(cpu_kernel=False, live_rows=1)}
  assert out.tokens.shape == (1, 6) and out.lengths.tolist() == [6]
  np.testing.assert_array_equal(out.tokens, xla.tokens)
  np.testing.assert_allclose(out.model_logps, xla.model_logps, atol=5e-2)


@pytest.mark.slow
def test_real_model_greedy_with_the_kernel_equals_the_xla_path(monkeypatch):
  from spct_jax.weights import load_model  # pylint: disable=g-import-not-at-top
  model, tokenizer = load_model("gemma3-270m", compute_dtype="bfloat16")
  runs = {}
  for switch in ("on", "off"):
    monkeypatch.setenv(cpu_matvec.ENV_SWITCH, switch)
    runs[switch] = [sampler.sample_from_tokens(model, [tokenizer.encode(text)], max_new_tokens=24,
                                               eos_ids=(tokenizer.eos_id,))[0]
                    for text in ("The capital of France is", "def fibonacci(n):\n")]
  for on, off in zip(runs["on"], runs["off"]):
    np.testing.assert_array_equal(on.tokens, off.tokens)
    np.testing.assert_allclose(on.model_logps, off.model_logps, atol=0.1)
