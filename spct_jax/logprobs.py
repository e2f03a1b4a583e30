"""Vocab-parallel token log-probs and entropies (the memory-critical path of GRPO / SFT losses).

Gemma's 262k vocabulary makes the `[B, T, V]` logits the peak activation. With a mesh, `token_logprobs` never
builds them whole: inside `jax.shard_map` each device multiplies its batch shard by its vocab slice of the tied
embedding (`[B/dp, T, V/tp]`), then the softmax statistics are combined across the vocab axes with `pmax` (max,
gradient-free), `psum` (sum of exps) and a masked local gather + `psum` (the target logit: a target outside the
local slice contributes 0). `chunk_size` additionally bounds the peak along T (each chunk is rematerialised in the
backward pass, so the gradient does not keep all chunks' logits alive either).

Mesh axes come from the logical rules: the embedding's "vocab" dim and the hidden's "batch" dim (whatever mesh axes
"vocab" took are not reused for batch). The vocab size must be divisible by the vocab axes' product (ValueError
otherwise: silently replicating a 262k x D matmul would defeat the point; real Gemma vocabularies, 256000 and
262144, divide any power-of-two tensor size up to 2048). A batch not divisible by its axes falls back to
replicated along them, as in `sharding.spec_for`.

Logits convention: `softcap(h @ E^T) / temperature`, with `softcap(x) = cap * tanh(x / cap)` (Gemma 2's final
soft-cap is 30). The matmul casts to `compute_dtype` and accumulates in f32; everything after is f32.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from spct_jax import sharding as shd


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _head_logits(h: jax.Array, emb: jax.Array, compute_dtype: Any, vocab_axes: tuple[str, ...],
                 batch_axes: tuple[str, ...]) -> jax.Array:
  """f32 `[b, c, Vl]` logits of `h` `[b, c, D]` against `emb` `[Vl, D]`: compute-dtype inputs, f32 accumulation.

  Its backward multiplies in the compute dtype too: the f32 cotangent of the logits is rounded to it first. Plain
  autodiff would pair that f32 cotangent with the bf16 table, and XLA then converts the 262k x D table to f32 and
  runs both backward matmuls in f32 (a GRPO update on the CPU: ~35 s -> ~30 s for Gemma 3 270M).
  Inside `shard_map`, `h` is split over `batch_axes` and `emb` over `vocab_axes`: each gradient is a partial sum
  over the other split and is summed here, as autodiff would.
  """
  return jnp.einsum("btd,vd->btv", h.astype(compute_dtype), emb.astype(compute_dtype),
                    preferred_element_type=jnp.float32)


def _head_logits_fwd(h, emb, compute_dtype, vocab_axes, batch_axes):
  return _head_logits(h, emb, compute_dtype, vocab_axes, batch_axes), (h, emb)


def _head_logits_bwd(compute_dtype, vocab_axes, batch_axes, residuals, g):
  h, emb = residuals
  g = g.astype(compute_dtype)
  dh = jnp.einsum("btv,vd->btd", g, emb.astype(compute_dtype), preferred_element_type=jnp.float32)
  demb = jnp.einsum("btv,btd->vd", g, h.astype(compute_dtype), preferred_element_type=jnp.float32)
  if vocab_axes:
    dh = lax.psum(dh, vocab_axes)
  if batch_axes:
    demb = lax.psum(demb, batch_axes)
  return dh.astype(h.dtype), demb.astype(emb.dtype)


_head_logits.defvjp(_head_logits_fwd, _head_logits_bwd)


def _chunk_stats(h: jax.Array, t: jax.Array, emb: jax.Array, *, axes: tuple[str, ...], batch_axes: tuple[str, ...],
                 softcap: float | None, temperature: Any, compute_dtype: Any,
                 entropy: bool) -> tuple[jax.Array, jax.Array | None]:
  """Log-prob of `t` and (optionally) entropy for one chunk, against this device's vocab slice.

  Args:
    h: `[b, c, D]` hidden states.
    t: int32 `[b, c]` global target ids.
    emb: `[Vl, D]` local vocab slice (rows `offset .. offset + Vl` of the full embedding).
    axes: mesh axes the vocab is split over (empty: the whole vocab is local).
    batch_axes: mesh axes the batch is split over (empty outside `shard_map`).

  Returns:
    (f32 `[b, c]` log-probs, f32 `[b, c]` entropies or None).
  """
  vl = emb.shape[0]
  logits = _head_logits(h, emb, compute_dtype, axes, batch_axes)
  if softcap is not None:
    logits = softcap * jnp.tanh(logits / softcap)
  if not (isinstance(temperature, (int, float)) and temperature == 1):
    logits = logits / temperature
  # The max only stabilises exp(); logsumexp's gradient does not depend on it, so keep it out of autodiff
  # (pmax has no transpose rule).
  m = lax.stop_gradient(jnp.max(logits, axis=-1))
  if axes:
    m = lax.stop_gradient(lax.pmax(m, axes))
  e = jnp.exp(logits - m[..., None])
  s = jnp.sum(e, axis=-1)
  offset = lax.axis_index(axes) * vl if axes else 0
  local = t - offset
  inside = (local >= 0) & (local < vl)
  tl = jnp.take_along_axis(logits, jnp.clip(local, 0, vl - 1)[..., None], axis=-1)[..., 0]
  tl = jnp.where(inside, tl, 0.0)
  if axes:
    s, tl = lax.psum((s, tl), axes)
  lse = m + jnp.log(s)
  ent = None
  if entropy:
    # H = lse - E_p[logit]; E_p[logit] = sum(exp(l - m) * l) / s.
    el = jnp.sum(e * logits, axis=-1)
    if axes:
      el = lax.psum(el, axes)
    ent = lse - el / s
  return tl - lse, ent


def _local(h: jax.Array, t: jax.Array, emb: jax.Array, *, chunk_size: int | None, **kw) -> tuple[jax.Array, ...]:
  """Runs `_chunk_stats` over T, whole or in `chunk_size` pieces. `h`: `[b, T, D]`, `t`: `[b, T]`."""
  entropy = kw["entropy"]
  b, tlen, _ = h.shape
  if chunk_size is None or chunk_size >= tlen:
    lp, ent = _chunk_stats(h, t, emb, **kw)
    return (lp, ent) if entropy else (lp,)
  n = -(-tlen // chunk_size)
  pad = n * chunk_size - tlen
  # Padded positions (hidden 0, target 0) are computed and sliced off; cheaper than a ragged last chunk.
  h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
  t = jnp.pad(t, ((0, 0), (0, pad)))
  hc = jnp.moveaxis(h.reshape(b, n, chunk_size, -1), 1, 0)  # [n, b, c, D]
  tc = jnp.moveaxis(t.reshape(b, n, chunk_size), 1, 0)  # [n, b, c]

  @jax.checkpoint  # Recompute a chunk's logits in the backward pass instead of storing all of them.
  def body(args):
    lp, ent = _chunk_stats(args[0], args[1], emb, **kw)
    return (lp, ent) if entropy else (lp,)

  outs = lax.map(body, (hc, tc))
  return tuple(jnp.moveaxis(o, 0, 1).reshape(b, n * chunk_size)[:, :tlen] for o in outs)


def _compute(hidden: jax.Array, embedding: jax.Array, targets: jax.Array, *, mesh: Mesh | None, rules: shd.Rules,
             final_softcap: float | None, temperature: Any, compute_dtype: Any, chunk_size: int | None,
             entropy: bool) -> tuple[jax.Array, ...]:
  if hidden.ndim != 3 or embedding.ndim != 2 or targets.shape != hidden.shape[:2]:
    raise ValueError(f"expected hidden [B, T, D], embedding [V, D], targets [B, T]; got {hidden.shape}, "
                     f"{embedding.shape}, {targets.shape}")
  if hidden.shape[-1] != embedding.shape[-1]:
    raise ValueError(f"hidden width {hidden.shape[-1]} != embedding width {embedding.shape[-1]}")
  if chunk_size is not None and chunk_size < 1:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}")
  targets = targets.astype(jnp.int32)
  kw = dict(softcap=final_softcap, temperature=temperature, compute_dtype=compute_dtype, entropy=entropy,
            chunk_size=chunk_size)
  if mesh is None:
    return _local(hidden, targets, embedding, axes=(), batch_axes=(), **kw)

  vocab_axes = shd.mesh_axes_for("vocab", mesh, rules)
  tp = 1
  for ax in vocab_axes:
    tp *= mesh.shape[ax]
  if embedding.shape[0] % tp:
    raise ValueError(f"vocab size {embedding.shape[0]} is not divisible by the vocab mesh axes {vocab_axes} "
                     f"(size {tp}); choose a tensor size that divides it")
  batch_axes = shd.mesh_axes_for("batch", mesh, rules, size=hidden.shape[0], exclude=vocab_axes)
  vocab_entry, batch_entry = (vocab_axes or None), (batch_axes or None)

  fn = functools.partial(_local, axes=vocab_axes, batch_axes=batch_axes, **kw)
  n_out = 2 if entropy else 1
  return jax.shard_map(
      fn, mesh=mesh,
      in_specs=(P(batch_entry, None, None), P(batch_entry, None), P(vocab_entry, None)),
      out_specs=(P(batch_entry, None),) * n_out,
  )(hidden, targets, embedding)


def token_logprobs(hidden: jax.Array, embedding: jax.Array, targets: jax.Array, *, mesh: Mesh | None = None,
                   rules: shd.Rules = shd.DEFAULT_RULES, final_softcap: float | None = None,
                   temperature: Any = 1.0, compute_dtype: Any = jnp.float32,
                   chunk_size: int | None = None) -> jax.Array:
  """log softmax(softcap(hidden @ embedding.T) / temperature)[targets], without materialising full logits.

  Args:
    hidden: f32/bf16 `[B, T, D]` final hidden states (after the final norm).
    embedding: `[V, D]` tied output embedding.
    targets: int `[B, T]` token ids in `[0, V)`.
    mesh: device mesh; None runs the single-device version.
    rules: logical rules ("vocab" and "batch" are read).
    final_softcap: logit soft-cap (`cap * tanh(x / cap)`), None for none.
    temperature: divides the (capped) logits.
    compute_dtype: matmul input dtype (accumulation is f32).
    chunk_size: process T in chunks of this many positions (bounds the logits peak; None: all at once).

  Returns:
    f32 `[B, T]` log-probs (sharded over batch when a mesh is given). Differentiable w.r.t. hidden and embedding.
  """
  return _compute(hidden, embedding, targets, mesh=mesh, rules=rules, final_softcap=final_softcap,
                  temperature=temperature, compute_dtype=compute_dtype, chunk_size=chunk_size, entropy=False)[0]


def token_logprobs_and_entropy(hidden: jax.Array, embedding: jax.Array, targets: jax.Array, *,
                               mesh: Mesh | None = None, rules: shd.Rules = shd.DEFAULT_RULES,
                               final_softcap: float | None = None, temperature: Any = 1.0,
                               compute_dtype: Any = jnp.float32,
                               chunk_size: int | None = None) -> tuple[jax.Array, jax.Array]:
  """`token_logprobs` plus the per-position entropy of the same distribution, from one pass over the logits.

  Returns:
    (f32 `[B, T]` log-probs, f32 `[B, T]` entropies in nats).
  """
  return _compute(hidden, embedding, targets, mesh=mesh, rules=rules, final_softcap=final_softcap,
                  temperature=temperature, compute_dtype=compute_dtype, chunk_size=chunk_size,
                  entropy=True)  # type: ignore[return-value]


def token_entropy(hidden: jax.Array, embedding: jax.Array, **kwargs) -> jax.Array:
  """Per-position entropy f32 `[B, T]` of softmax(softcap(hidden @ embedding.T) / temperature).

  Takes the keyword arguments of `token_logprobs`.
  """
  targets = jnp.zeros(hidden.shape[:2], jnp.int32)
  return token_logprobs_and_entropy(hidden, embedding, targets, **kwargs)[1]
