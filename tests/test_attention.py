"""Every attention implementation computes the dense reference's function (forward and gradients), in O(T) memory
where it claims to; the dispatch picks and logs as documented."""
# pylint: disable=protected-access

import logging
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx

from spct_jax.model import Transformer, attention, attention_kernels, decoding, get_config
from spct_jax.model.params import flat_from_model, model_from_flat
from spct_jax.model.transformer import default_positions

F32, BF16 = np.dtype(jnp.float32), np.dtype(jnp.bfloat16)


def _inputs(b=2, t=13, s=None, kv_heads=2, group=2, hd=8, seed=0, pad=(0, 4)):
  """Random q, keys, values; self-layout positions with left padding `pad` per row (s > t: an empty cache tail)."""
  s = s or t
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(b, t, kv_heads * group, hd)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(b, kv_heads, s, hd)), jnp.float32) for _ in range(2))
  mask = np.arange(t)[None, :] >= np.asarray(pad)[:, None]
  q_pos = default_positions(jnp.asarray(mask))
  k_pos = jnp.full((b, s), -1, jnp.int32).at[:, :t].set(jnp.where(mask, q_pos, -1))
  return q, k, v, q_pos, k_pos, mask


def _spec(block_q=4, block_k=3, cap=None, dtype=F32):
  return attention.Spec(block_q=block_q, block_k=block_k, softcap=cap, dtype=dtype)


CASES = [  # (window, soft-cap, kv heads, group, query length, key length)
    (None, None, 2, 2, 13, 13),
    (5, None, 2, 2, 13, 13),
    (None, 3.0, 1, 4, 13, 13),
    (4, 3.0, 2, 1, 13, 19),  # a KV cache with an empty tail
    (None, None, 2, 2, 4, 4),  # one block
]


@pytest.mark.parametrize("window,cap,kv_heads,group,t,s", CASES)
def test_blockwise_forward_and_gradients_equal_dense_in_f32(window, cap, kv_heads, group, t, s):
  q, k, v, q_pos, k_pos, mask = _inputs(t=t, s=s, kv_heads=kv_heads, group=group)
  w = jnp.int32(attention.NO_WINDOW if window is None else window)
  cot = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32) * mask[:, :, None, None]

  def run(fn, spec):
    loss = lambda q, k, v: jnp.sum(fn(spec, q, k, v, q_pos, k_pos, w) * cot)
    return fn(spec, q, k, v, q_pos, k_pos, w), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  (ref, ref_grads), (out, grads) = run(attention.dense, _spec(cap=cap)), run(attention.blockwise, _spec(cap=cap))
  real = np.asarray(mask)
  np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref)[real], atol=2e-6, rtol=1e-6)
  for got, want in zip(grads, ref_grads):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  assert float(jnp.abs(ref_grads[1]).max()) > 1e-2  # the gradients are not trivially zero


def test_blockwise_in_bf16_stays_within_the_dense_bf16_error():
  q, k, v, q_pos, k_pos, mask = _inputs(t=32, hd=16, pad=(0, 7))
  w = jnp.int32(attention.NO_WINDOW)
  cot = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32) * mask[:, :, None, None]

  def run(fn, dtype):
    fn = jax.jit(fn, static_argnums=0)  # XLA:CPU runs some bf16 dots only once compiled with their neighbours
    spec = _spec(block_q=8, block_k=8, cap=3.0, dtype=dtype)
    loss = lambda q, k, v: jnp.sum(fn(spec, q, k, v, q_pos, k_pos, w) * cot)
    return (fn(spec, q, k, v, q_pos, k_pos, w), *jax.grad(loss, argnums=(0, 1, 2))(q, k, v))

  reference = run(attention.dense, F32)
  real = np.asarray(mask)
  for ref, dense_bf16, block_bf16 in zip(reference, run(attention.dense, BF16), run(attention.blockwise, BF16)):
    if ref.shape == q.shape:
      ref, dense_bf16, block_bf16 = (np.asarray(a)[real] for a in (ref, dense_bf16, block_bf16))
    dense_err, block_err = (float(np.abs(np.asarray(a) - np.asarray(ref)).max()) for a in (dense_bf16, block_bf16))
    assert 0 < dense_err < 0.1 * float(np.abs(ref).max())
    assert block_err <= 2 * dense_err


def test_blockwise_skips_key_blocks_outside_the_window_and_the_empty_cache_tail():
  t, s, bq, bk = 64, 96, 8, 8
  _, _, _, q_pos, k_pos, _ = _inputs(t=t, s=s, pad=(0, 0))
  tq, tk = attention._Tiling(t, bq), attention._Tiling(s, bk)
  local = np.asarray(attention._visited(tq, tk, q_pos, k_pos, 8))
  causal = np.asarray(attention._visited(tq, tk, q_pos, k_pos, attention.NO_WINDOW))
  i, j = np.arange(8)[:, None], np.arange(12)[None, :]
  np.testing.assert_array_equal(causal, j <= i)  # and never the 4 empty blocks past t
  np.testing.assert_array_equal(local, (j <= i) & (j >= i - 1))  # window 8: this block and the one before
  # 576 keys in blocks of at most 512: 2 x 288, the second (only empty slots) never visited.
  tiling = attention._Tiling.balanced(576, 512)
  _, _, _, q_pos, k_pos, _ = _inputs(b=1, t=288, s=576, pad=(0,))
  assert tiling.size == 288
  visit = attention._visited(attention._Tiling.balanced(288, 512), tiling, q_pos, k_pos, 8)
  np.testing.assert_array_equal(visit, [[True, False]])


def _peak_temp_bytes(fn, spec, t):
  q, k, v, q_pos, k_pos, _ = _inputs(b=1, t=t, kv_heads=1, group=4, hd=16, pad=(0,))
  w = jnp.int32(attention.NO_WINDOW)
  step = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(spec, q, k, v, q_pos, k_pos, w) ** 2), argnums=(0, 1, 2)))
  return step.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes


def test_blockwise_backward_does_not_store_the_score_matrix():
  t = 2048
  scores = 4 * t * t * 4  # one f32 [G=4, T, T] score matrix
  spec = _spec(block_q=256, block_k=256)
  dense, blockwise = _peak_temp_bytes(attention.dense, spec, t), _peak_temp_bytes(attention.blockwise, spec, t)
  assert dense > scores
  assert blockwise < scores / 10
  # O(T): doubling the length about doubles the working memory.
  assert _peak_temp_bytes(attention.blockwise, spec, 2 * t) < 3 * blockwise


def _model_cfg(**kw):
  return get_config("tiny-gemma3", attention_block_q=4, attention_block_k=4, **kw)


def _dense_and_blockwise(name, **kw):
  """The same random model with attention_impl "dense" and "blockwise" (blocks of 4: several per row)."""
  dense = Transformer(get_config(name, attention_block_q=4, attention_block_k=4, attention_impl="dense", **kw),
                      rngs=nnx.Rngs(0))
  return dense, model_from_flat(dense.cfg.replace(attention_impl="blockwise"), flat_from_model(dense))


def _batch(b=2, t=21, pad=(0, 6), seed=3):
  tokens = jnp.asarray(np.random.default_rng(seed).integers(3, 512, (b, t)), jnp.int32)
  return tokens, jnp.asarray(np.arange(t)[None, :] >= np.asarray(pad)[:, None])


def _assert_trees_close(a, b, rel):
  """Leaf by leaf, to `rel` of the leaf's largest magnitude (f32 sums of many terms, in another order)."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, atol=rel * float(np.abs(y).max()))


@pytest.mark.parametrize("name", ["tiny-gemma2", "tiny-gemma3"])  # soft-cap + GQA; window (8) + qk-norm + GQA
def test_model_logits_and_parameter_gradients_equal_dense_with_left_padding(name):
  tokens, mask = _batch()
  weights = jnp.asarray(np.random.default_rng(4).normal(size=(*tokens.shape, 512)), jnp.float32)
  loss = lambda m: jnp.sum(m(tokens, attention_mask=mask) * weights * mask[..., None])
  (ref, ref_grads), (got, grads) = (nnx.value_and_grad(loss)(m) for m in _dense_and_blockwise(name))
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  _assert_trees_close(grads, ref_grads, rel=1e-5)


def test_shared_prefix_rows_equal_dense_with_gradients():
  """GRPO's layout: completions attend to their prompt's keys (gathered by row_source) and their own."""
  prompts, prompt_mask = _batch(t=18, pad=(0, 5))
  row_source = jnp.array([0, 0, 1, 1, 1])
  suffix, _ = _batch(b=5, t=7, pad=(0,) * 5, seed=5)
  suffix_mask = jnp.arange(7)[None, :] < jnp.array([7, 3, 5, 7, 1])[:, None]

  def loss(m):
    hp, hs = m.shared_prefix_hidden_states(prompts, prompt_mask, row_source, suffix, suffix_mask)
    return jnp.sum(jnp.sin(hp) * prompt_mask[..., None]) + jnp.sum(jnp.cos(hs) * suffix_mask[..., None])

  (ref, ref_grads), (got, grads) = (nnx.value_and_grad(loss)(m) for m in _dense_and_blockwise("tiny-gemma2"))
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  _assert_trees_close(grads, ref_grads, rel=1e-5)


def test_decoding_prefill_into_a_longer_cache_equals_dense():
  tokens, mask = _batch(t=19)
  outs = []
  for model in _dense_and_blockwise("tiny-gemma3"):
    cfg = model.cfg
    cache = decoding.init_cache(cfg, 2, 32)  # 13 empty slots past the prompt
    hidden, cache = decoding.forward(cfg, decoding.decoding_params(model), tokens, default_positions(mask), cache,
                                     mask)
    outs.append((hidden, cache.k, cache.v))
  _assert_trees_close(outs[1], outs[0], rel=1e-6)


def test_bf16_attention_model_stays_within_the_dense_bf16_error():
  tokens, mask = _batch()
  reference, _ = _dense_and_blockwise("tiny-gemma3")
  dense, blockwise = _dense_and_blockwise("tiny-gemma3", compute_dtype="bfloat16", float32_attention=False)
  ref = reference(tokens, attention_mask=mask)
  dense_err, block_err = (float(jnp.abs(m(tokens, attention_mask=mask) - ref).max()) for m in (dense, blockwise))
  assert 0 < dense_err < 0.1 * float(jnp.abs(ref).max())
  assert block_err <= 2 * dense_err


def test_fused_kernel_wiring_equals_dense_on_real_rows():
  """The cuDNN call through jax.nn.dot_product_attention's XLA implementation, and the splash kernel in interpret
  mode: the compaction of left-padded rows, GQA, windows and soft-cap as the fused paths pass them."""
  q, k, v, q_pos, k_pos, mask = _inputs(t=128, kv_heads=2, group=2, hd=128, pad=(0, 37))
  real = np.asarray(mask)
  for window in (None, 16):
    w = jnp.int32(attention.NO_WINDOW if window is None else window)
    ref = attention.dense(_spec(), q, k, v, q_pos, k_pos, w)
    via_cudnn_call = attention_kernels.cudnn(_spec(), q, k, v, k_pos, window=window, implementation="xla")
    np.testing.assert_allclose(np.asarray(via_cudnn_call)[real], np.asarray(ref)[real], atol=2e-5)
  ref = attention.dense(_spec(cap=5.0), q, k, v, q_pos, k_pos, jnp.int32(16))
  splash = attention_kernels.pallas(_spec(cap=5.0), q, k, v, k_pos, window=16)
  np.testing.assert_allclose(np.asarray(splash)[real], np.asarray(ref)[real], atol=2e-5)


def test_dispatch_picks_the_backend_kernel_where_it_applies_and_logs_once(caplog):
  bf16 = _model_cfg(compute_dtype="bfloat16", float32_attention=False, head_dim=128)
  resolve = lambda cfg, backend, t=256, s=256, self_layout=True: attention.resolve_impl(
      cfg, t, s, self_layout=self_layout, backend=backend)
  attention._LOGGED.clear()
  with caplog.at_level(logging.INFO, logger="spct_jax.model.attention"):
    assert resolve(bf16, "cpu") == "blockwise"
    assert resolve(bf16, "gpu") == "cudnn"
    assert resolve(bf16, "gpu") == "cudnn"
    assert resolve(bf16, "tpu") == "pallas"
    assert resolve(bf16, "gpu", s=300, self_layout=False) == "blockwise"  # a KV cache
    assert resolve(bf16.replace(float32_attention=True), "gpu") == "blockwise"  # cuDNN has no f32 flash
    assert resolve(bf16.replace(attn_logit_softcap=50.0), "gpu") == "blockwise"
    assert resolve(bf16, "tpu", t=200, s=200) == "blockwise"  # not a multiple of 128
  messages = [r.getMessage() for r in caplog.records]
  assert len(messages) == len(set(messages)) == 7
  assert any("cudnn does not apply" in m and "soft-cap" in m for m in messages)
  assert resolve(bf16.replace(attention_impl="dense"), "gpu") == "dense"
  explicit = bf16.replace(attention_impl="cudnn")
  assert resolve(explicit, "gpu") == "cudnn"
  assert resolve(explicit, "gpu", s=300, self_layout=False) == "blockwise"  # a KV cache: the layout, not the config
  with pytest.raises(ValueError, match="cannot run this call: .*soft-cap"):
    resolve(explicit.replace(attn_logit_softcap=50.0), "gpu")
  with pytest.raises(ValueError, match="cannot run this call: cudnn needs a GPU"):
    resolve(explicit, "tpu")
  with pytest.raises(ValueError, match="attention_impl='flash'; valid"):
    _model_cfg(attention_impl="flash")


_LIMITED_PREFILL = textwrap.dedent("""
    import resource, sys
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from spct_jax import sampler
    from spct_jax.model import Transformer, get_config
    impl, length, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    cfg = get_config("tiny-gemma3", max_seq_len=length + 8, attention_impl=impl)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    prompts = [list(np.random.default_rng(i).integers(3, 500, length - 5 * i)) for i in range(2)]
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # No row budget: one prefill of both rows, so the address-space limit alone decides.
    out, *_ = sampler.sample_from_tokens(model, prompts, max_new_tokens=2, length_multiple=64,
                                         memory_budget_bytes=1 << 40)
    print("tokens", np.asarray(out.tokens).tolist())
""")


def test_a_prefill_whose_score_matrix_exceeds_the_memory_limit_runs_blockwise():
  length, limit = 12_288, 3 << 30
  cfg = get_config("tiny-gemma3")
  score_bytes = 2 * cfg.num_heads * length * length * 4  # 2 rows' f32 [N, T, S] scores of one layer
  assert score_bytes > limit
  env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]), XLA_FLAGS="")
  run = lambda impl: subprocess.run([sys.executable, "-c", _LIMITED_PREFILL, impl, str(length), str(limit)],
                                    capture_output=True, text=True, env=env, timeout=600)
  blockwise = run("blockwise")
  assert blockwise.returncode == 0, blockwise.stderr[-2000:]
  assert blockwise.stdout.startswith("tokens")
  dense = run("dense")  # the same call with the score matrix: the limit binds
  assert dense.returncode != 0 and "out of memory" in dense.stderr.lower(), dense.stderr[-2000:]
