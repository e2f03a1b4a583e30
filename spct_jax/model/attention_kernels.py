"""The fused attention kernels behind `attention_impl` "cudnn" (GPU) and "pallas" (TPU splash attention).

Both take the self layout only (keys are the queries' own rows, default positions; `attention.attend` decides):
each row's real tokens are gathered to its front in position order, the kernel runs causal or local attention with
the padding masked by lengths / segment ids, and the rows are scattered back. Not verified on hardware here; the
tests run the cuDNN call through `jax.nn.dot_product_attention`'s XLA implementation and splash in interpret mode.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from spct_jax.model.attention import Spec


def _compaction(key_positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per row, the order that puts the real tokens first (in position order, then the padding), its inverse and
  the real-token count: int32[B, T], int32[B, T], int32[B]. With default positions, index = position afterwards."""
  t = key_positions.shape[1]
  filled = key_positions >= 0
  order = jnp.argsort(jnp.where(filled, key_positions, t + jnp.arange(t)), axis=1)
  return order, jnp.argsort(order, axis=1), filled.sum(axis=1).astype(jnp.int32)


def _take_rows(x: jax.Array, order: jax.Array, axis: int) -> jax.Array:
  shape = [1] * x.ndim
  shape[0], shape[axis] = order.shape
  return jnp.take_along_axis(x, order.reshape(shape), axis=axis)


def cudnn(spec: Spec, q, keys, values, key_positions, *, window: int | None,
          implementation: str = "cudnn") -> jax.Array:
  """`jax.nn.dot_product_attention` on the compacted rows (implementation="xla" runs the same call on any backend:
  the tests check the wiring with it)."""
  order, inverse, lengths = _compaction(key_positions)
  rows = lambda x: _take_rows(x.swapaxes(1, 2), order, 1).astype(spec.dtype)  # [B, K, S, H] -> [B, S, K, H]
  out = jax.nn.dot_product_attention(
      _take_rows(q, order, 1).astype(spec.dtype), rows(keys), rows(values), scale=1.0, is_causal=True,
      query_seq_lengths=lengths, key_value_seq_lengths=lengths,
      local_window_size=None if window is None else (window - 1, 0), implementation=implementation)
  return _take_rows(out.astype(jnp.float32), inverse, 1)


def pallas(spec: Spec, q, keys, values, key_positions, *, window: int | None) -> jax.Array:
  """Pallas splash attention (MQA kernel per kv head, its G query heads), padding as segment 0."""
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # pylint: disable=g-import-not-at-top
      splash_attention_kernel as splash, splash_attention_mask as masks)

  b, t, n, hd = q.shape
  kh = keys.shape[1]
  order, inverse, lengths = _compaction(key_positions)
  shape = (t, t)
  mask = masks.CausalMask(shape) if window is None else masks.LocalMask(shape, (window - 1, 0), offset=0)
  block = math.gcd(t, 512)
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                            block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  kernel = splash.make_splash_mqa_single_device(
      masks.MultiHeadMask([mask] * (n // kh)), block_sizes=sizes, attn_logits_soft_cap=spec.softcap,
      interpret=jax.default_backend() != "tpu")
  segments = (jnp.arange(t)[None, :] < lengths[:, None]).astype(jnp.int32)  # 1 = real token, 0 = padding
  qc = _take_rows(q, order, 1).reshape(b, t, kh, n // kh, hd).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]
  kc, vc = (_take_rows(x, order, 2) for x in (keys, values))  # [B, K, T, H]

  def one_row(qr, kr, vr, seg):
    ids = splash.SegmentIds(q=seg, kv=seg)
    return jax.vmap(lambda qh, kk, vv: kernel(qh, kk, vv, segment_ids=ids))(qr, kr, vr)

  cast = lambda x: x.astype(spec.dtype)
  out = jax.vmap(one_row)(cast(qc), cast(kc), cast(vc), segments)  # [B, K, G, T, H]
  out = out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, hd).astype(jnp.float32)
  return _take_rows(out, inverse, 1)
