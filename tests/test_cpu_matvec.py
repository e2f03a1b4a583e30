"""The C++ decoding kernels (skinny and AMX): exact-enough products and summaries, their use by the decoder, the
choice by CPU feature, and clear build errors.

Nothing here skips: on a CPU with AMX the AMX tests run its kernels; on one without (AMD Zen 4, say) the same tests
check that the decoder takes the skinny / XLA path, that it matches the reference, and that AMX requests raise.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spct_jax import sampler, strategies
from spct_jax.kernels import cpu_matvec
from spct_jax.model import Transformer, decoding, get_config


HAS_AMX = cpu_matvec.cpu_has_amx()  # from /proc/cpuinfo, independently of the build
THIS_CPU = "amx" if HAS_AMX else "skinny"  # the kernel the decoder must pick here
BF16_CFG = get_config("tiny-gemma3", compute_dtype="bfloat16")


@pytest.fixture(scope="module", autouse=True)
def built():
  return cpu_matvec.load()


def _operands(m, k, n, seed=0):
  x = jax.random.normal(jax.random.key(seed), (m, k)).astype(jnp.bfloat16)
  w = jax.random.normal(jax.random.key(seed + 1), (n, k)).astype(jnp.bfloat16)
  return x, w


# K past a multiple of the vector step, N past a multiple of the row block, M odd and even; M past a multiple of
# the blocked kernel's activation block (4 or 6 rows) and N past several L2 tiles of weight rows (96 KiB each).
@pytest.mark.parametrize("m,k,n", [(1, 640, 1000), (2, 640, 1537), (3, 37, 101), (2, 1, 1), (1, 70, 9), (5, 96, 7),
                                   (8, 2048, 640), (13, 33, 5), (32, 640, 4099), (33, 1024, 77), (128, 64, 300)])
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
  cfg, params = model.cfg, decoding.decoding_params(model, tiled=matmul.cpu_kernel == "amx")

  def step(tokens, positions):
    cache = decoding.init_cache(cfg, tokens.shape[0], 8)
    hidden, _ = decoding.forward(cfg, params, tokens, positions, cache, matmul=matmul)
    return decoding.logits(cfg, params, hidden, matmul=matmul)
  return jax.jit(step)


def test_decoder_runs_the_skinny_kernel_up_to_this_cpus_row_limit_and_xla_past_it(bf16_model):
  kernel = decoding.Matmul(cpu_kernel="skinny")
  one, many = jnp.array([[5]]), jnp.arange(cpu_matvec.max_rows() + 1)[:, None] + 3
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


def test_sampler_picks_the_kernel_for_unsharded_bf16_decoding(bf16_model, monkeypatch):
  def matmuls():
    return {dict(key[-1])["matmul"] for key in sampler._COMPILED}  # pylint: disable=protected-access

  runs = {}
  for switch, kernel in (("on", THIS_CPU), ("no-amx", "skinny"), ("off", None)):
    monkeypatch.setenv(cpu_matvec.ENV_SWITCH, switch)
    sampler._COMPILED.clear()  # pylint: disable=protected-access
    runs[switch] = sampler.sample_from_tokens(bf16_model, [[2, 5, 9]], max_new_tokens=6, eos_ids=(-1,))[0]
    assert matmuls() == {decoding.Matmul(cpu_kernel=kernel, live_rows=1)}
  assert runs["on"].tokens.shape == (1, 6) and runs["on"].lengths.tolist() == [6]
  for switch in ("on", "no-amx"):
    np.testing.assert_array_equal(runs[switch].tokens, runs["off"].tokens)
    np.testing.assert_allclose(runs[switch].model_logps, runs["off"].model_logps, atol=5e-2)


def test_batched_sampling_with_the_kernels_draws_the_xla_paths_tokens(bf16_model, monkeypatch):
  """Same seed, same draws: the kernels' logits and summaries differ from XLA's by rounding only."""
  runs = {}
  for switch in ("on", "off"):
    monkeypatch.setenv(cpu_matvec.ENV_SWITCH, switch)
    runs[switch] = sampler.sample_from_tokens(bf16_model, [[2, 5, 9], [2, 7]], max_new_tokens=6, num_samples=4,
                                              strategy=strategies.Sampling(0.8), seed=5, eos_ids=(-1,))[0]
  np.testing.assert_array_equal(runs["on"].tokens, runs["off"].tokens)
  np.testing.assert_allclose(runs["on"].logps, runs["off"].logps, atol=5e-2)
  np.testing.assert_allclose(runs["on"].model_logps, runs["off"].model_logps, atol=5e-2)


@pytest.mark.slow
def test_real_model_greedy_with_the_kernel_follows_the_xla_path_up_to_near_ties(monkeypatch):
  from spct_jax.weights import load_model  # pylint: disable=g-import-not-at-top
  model, tokenizer = load_model("gemma3-270m", compute_dtype="bfloat16")
  prompts = [tokenizer.encode(text) for text in ("The capital of France is", "def fibonacci(n):\n")]
  runs = {}
  for switch in ("on", "off"):
    monkeypatch.setenv(cpu_matvec.ENV_SWITCH, switch)
    runs[switch] = [sampler.sample_from_tokens(model, [prompt], max_new_tokens=24, eos_ids=(tokenizer.eos_id,))[0]
                    for prompt in prompts]
  for prompt, on, off in zip(prompts, runs["on"], runs["off"]):
    on_tokens, off_tokens = np.asarray(on.tokens[0]), np.asarray(off.tokens[0])
    same = int(np.argmax(on_tokens != off_tokens)) if (on_tokens != off_tokens).any() else len(on_tokens)
    np.testing.assert_allclose(on.model_logps[0, :same], off.model_logps[0, :same], atol=0.1)
    if same < len(on_tokens):
      # Greedy paths whose f32 sums differ in order may part at a near-tie, never elsewhere: where they part, a
      # full forward over the shared prefix gives both choices log-probs within bf16 rounding of each other.
      prefix = prompt + [int(t) for t in on_tokens[:same]]
      logps = jax.nn.log_softmax(model(jnp.asarray([prefix], jnp.int32))[0, -1].astype(jnp.float32))
      assert abs(float(logps[on_tokens[same]] - logps[off_tokens[same]])) < 0.1, (prompt, same)


# ---------------------------------------------------------------------------------------------------------------
# Choice by CPU feature, and the AMX kernels where the CPU has them (their stand-in path where it does not).


def test_the_dispatcher_picks_amx_exactly_where_the_cpu_has_it(monkeypatch):
  monkeypatch.delenv(cpu_matvec.ENV_SWITCH, raising=False)
  assert cpu_matvec.amx() == HAS_AMX
  assert decoding.cpu_kernel_for(BF16_CFG) == THIS_CPU
  assert decoding.cpu_kernel_for(get_config("tiny-gemma3")) is None  # f32 compute: XLA's dot
  if HAS_AMX:  # the build has the kernels and Linux granted the tile state: a forced request is met
    monkeypatch.setenv(cpu_matvec.ENV_SWITCH, "amx")
    assert cpu_matvec.amx()


def _without_amx(monkeypatch):
  """This process as on a CPU without AMX (the real state there): no cpuinfo flags, no AMX targets in the build."""
  monkeypatch.setattr(cpu_matvec, "cpu_has_amx", lambda: False)
  monkeypatch.setattr(cpu_matvec, "_AMX", set())


def test_without_amx_the_skinny_path_is_chosen_and_a_forced_amx_request_raises(monkeypatch, bf16_model):
  _without_amx(monkeypatch)
  monkeypatch.delenv(cpu_matvec.ENV_SWITCH, raising=False)
  assert not cpu_matvec.amx()
  assert decoding.cpu_kernel_for(BF16_CFG) == "skinny"
  x, w, _ = _amx_operands(2, 64, 64)
  with pytest.raises(cpu_matvec.KernelBuildError, match="AMX kernels are not available"):
    cpu_matvec.amx_matmul(x, cpu_matvec.tile(w))
  monkeypatch.setenv(cpu_matvec.ENV_SWITCH, "amx")
  with pytest.raises(cpu_matvec.KernelBuildError, match="SPCT_CPU_KERNELS=amx: .* has no AMX bf16 tiles"):
    decoding.cpu_kernel_for(BF16_CFG)
  with pytest.raises(cpu_matvec.KernelBuildError, match="SPCT_CPU_KERNELS=amx"):
    sampler.sample_from_tokens(bf16_model, [[2, 5, 9]], max_new_tokens=2)


def test_the_row_limit_follows_the_cpus_bf16_dot_products(monkeypatch):
  monkeypatch.setattr(cpu_matvec, "_cpu_flags", lambda: "flags\t\t: avx2 fma avx512f avx512_bf16")
  assert cpu_matvec.cpu_has_bf16_dot() and cpu_matvec.max_rows() == cpu_matvec.MAX_ROWS == 64
  monkeypatch.setattr(cpu_matvec, "_cpu_flags", lambda: "flags\t\t: avx2 fma")
  assert not cpu_matvec.cpu_has_bf16_dot() and cpu_matvec.max_rows() == cpu_matvec.BLOCKED_MAX_ROWS == 128


def test_an_unknown_kernel_mode_is_an_error(monkeypatch):
  monkeypatch.setenv(cpu_matvec.ENV_SWITCH, "fast")
  with pytest.raises(ValueError, match="SPCT_CPU_KERNELS='fast': expected one of auto, amx, no-amx, off"):
    cpu_matvec.enabled()


def test_tile_is_the_documented_block_layout():
  w = jnp.arange(64 * 96, dtype=jnp.float32).reshape(64, 96)
  tiles = cpu_matvec.tile(w)
  assert tiles.shape == (2, 3, 32, 32)
  assert tiles[1, 2, 5, 7] == w[32 + 5, 64 + 7]
  np.testing.assert_array_equal(cpu_matvec.untile(tiles), w)
  assert not cpu_matvec.tileable((64, 100))
  with pytest.raises(ValueError, match="multiples of 32"):
    cpu_matvec.tile(w[:, :50])


def _amx_operands(m, k, n, seed=0):
  x = jax.random.normal(jax.random.key(seed), (m, k)) * 3  # f32: the kernel rounds it to bf16 itself
  w = jax.random.normal(jax.random.key(seed + 1), (n, k)).astype(jnp.bfloat16)
  expected = np.asarray(x.astype(jnp.bfloat16), np.float64) @ np.asarray(w, np.float64).T
  return x, w, expected


def _close(got, expected, k):
  np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5 * np.sqrt(k) * np.abs(expected).max() + 1e-6)


def _this_cpus_batched_matmul(x, w):
  """x @ w^T as this CPU decodes it: `amx_matmul` where it has AMX, else the decoder's own matmul with the kernel
  it picks here (the skinny kernel for 1-2 rows, XLA's bf16 dot for more)."""
  if HAS_AMX:
    return cpu_matvec.amx_matmul(x, cpu_matvec.tile(w))
  matmul = decoding.Matmul(cpu_kernel=decoding.cpu_kernel_for(BF16_CFG))
  return decoding._linear(BF16_CFG, x[None], {"w": w}, "w", matmul)[0]  # pylint: disable=protected-access


# M of 1, 16 (one activation tile), 17 and 40 (a pair plus a single one), 130 (above AMX_MAX_ROWS: still exact).
@pytest.mark.parametrize("m,k,n", [(1, 640, 1024), (16, 32, 32), (17, 96, 4096), (40, 640, 160), (130, 64, 96)])
def test_this_cpus_batched_matmul_equals_a_float64_reference(m, k, n):
  x, w, expected = _amx_operands(m, k, n)
  got = np.asarray(jax.jit(_this_cpus_batched_matmul)(x, w))
  assert got.dtype == np.float32 and got.shape == (m, n)
  _close(got, expected, k)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_this_cpus_head_gives_the_logits_and_their_block_summaries(temperature):
  """AMX: `amx_head` writes the summaries in its pass; elsewhere `next_token_logits` summarizes XLA's logits."""
  x, w, expected = _amx_operands(3, 64, 1056)  # 2 full summary blocks of 512 and a partial one of 32
  if HAS_AMX:
    values, *summaries = jax.jit(lambda x, w: cpu_matvec.amx_head(x, w, temperature))(x, cpu_matvec.tile(w))
  else:
    head = jax.jit(lambda x, w: decoding.next_token_logits(BF16_CFG, {"head": w}, x, temperature,
                                                           matmul=decoding.Matmul(cpu_kernel="skinny")))
    got = head(x, w)
    values, summaries = got.values, (got.block_max, got.block_sum, got.tempered_sum)
  _close(np.asarray(values), expected, 64)
  reference = strategies.summarize(jnp.asarray(values), temperature)
  assert all(s.shape == (3, 3) for s in summaries)
  np.testing.assert_array_equal(summaries[0], reference.block_max)
  np.testing.assert_allclose(summaries[1], reference.block_sum, rtol=2e-6)
  np.testing.assert_allclose(summaries[2], reference.tempered_sum, rtol=2e-6)


def test_amx_kernels_reject_untiled_weights():
  x, w, _ = _amx_operands(2, 64, 64)
  error = ValueError if HAS_AMX else cpu_matvec.KernelBuildError  # without AMX any call is refused first
  with pytest.raises(error, match=r"tiled w \[N/32" if HAS_AMX else "not available"):
    cpu_matvec.amx_matmul(x, w)
  with pytest.raises(error, match="bf16 w" if HAS_AMX else "not available"):
    cpu_matvec.amx_head(x, cpu_matvec.tile(w.astype(jnp.float32)))


def test_decoder_runs_this_cpus_kernel_for_every_row_count_and_equals_xla(bf16_model):
  kernel = decoding.Matmul(cpu_kernel=THIS_CPU)
  for tokens in (jnp.array([[5]]), jnp.arange(6)[:, None] + 3):
    hlo = _step_fn(bf16_model, kernel).lower(tokens, jnp.zeros_like(tokens)).as_text()
    assert (cpu_matvec.AMX_TARGETS["matmul"] in hlo) == HAS_AMX
    assert (cpu_matvec.TARGET in hlo) == (not HAS_AMX and tokens.shape[0] <= cpu_matvec.max_rows())
    got = _step_fn(bf16_model, kernel)(tokens, jnp.zeros_like(tokens))
    expected = _step_fn(bf16_model, decoding.Matmul())(tokens, jnp.zeros_like(tokens))
    np.testing.assert_allclose(got, expected, rtol=2e-2, atol=2e-2 * float(jnp.abs(expected).max()))
    np.testing.assert_array_equal(jnp.argmax(got, -1), jnp.argmax(expected, -1))


@pytest.mark.parametrize("name", ["tiny-gemma3", "tiny-gemma2"])  # Gemma 2's final softcap: amx_matmul + summarize
def test_next_token_logits_on_this_cpu_equal_the_summarized_xla_logits(name):
  bf16_model = Transformer(get_config(name, compute_dtype="bfloat16"), rngs=nnx.Rngs(0))
  cfg = bf16_model.cfg
  hidden = jax.random.normal(jax.random.key(3), (4, cfg.embed_dim))
  kernel = decoding.Matmul(cpu_kernel=decoding.cpu_kernel_for(cfg), live_rows=3)  # the fourth row is filler
  params = decoding.decoding_params(bf16_model, tiled=kernel.cpu_kernel == "amx")
  assert (params["head"].ndim == 4) == HAS_AMX
  got = decoding.next_token_logits(cfg, params, hidden, 0.7, matmul=kernel)
  hlo = jax.jit(lambda p, h: decoding.next_token_logits(cfg, p, h, 0.7, matmul=kernel).values).lower(
      params, hidden).as_text()
  head_target = cpu_matvec.AMX_TARGETS["head" if cfg.final_logit_softcap is None else "matmul"]
  assert (head_target in hlo) == HAS_AMX
  expected = decoding.next_token_logits(cfg, decoding.decoding_params(bf16_model), hidden, 0.7)
  np.testing.assert_allclose(got.values[:3], expected.values[:3], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got.values[3], 0.0)
  for name in ("block_max", "block_sum", "tempered_sum"):
    np.testing.assert_allclose(getattr(got, name)[:3], getattr(expected, name)[:3], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got.log_normalizer()[:3], expected.log_normalizer()[:3], rtol=1e-6)
