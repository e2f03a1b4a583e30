"""Attention under a mask defined by positions, in four implementations chosen by `ModelConfig.attention_impl`.

Query t at position p sees the key slot s holding position k iff 0 <= k <= p and p - k < window (k = -1: an empty
cache slot or padding; no window on global layers). Every implementation computes that function of
(q, keys, values, positions); they differ in memory and speed:
- "dense": the f32 scores [B, K, G, T, S], their softmax and the [B, T, S] mask. The reference (tests), O(T*S).
- "blockwise": query blocks x key blocks with an online softmax (running max, sum and weighted values per query
  row); a custom VJP recomputes each block's probabilities from the saved log-sum-exp, so the forward and the
  backward hold one [B, K, G*bq, bk] block at a time: O(T) memory. A query block visits only the key blocks that
  some query of the block could see (decided from the positions of the whole batch: causality, the sliding window,
  empty slots), so local layers cost O(T * window) and the empty tail of a prefill cache costs nothing. Portable
  XLA; the CPU path and the fallback everywhere.
- "cudnn" (GPU) / "pallas" (TPU, splash attention): fused flash kernels (`attention_kernels.py`). They apply only
  where the keys are the queries' own sequence with default positions (`self_layout`), the case of training and
  scoring rows: the real tokens are gathered to the front of each row, the kernel runs causal (or local) attention
  with the padding masked by lengths / segment ids, and the rows are scattered back (padding query rows, which
  nothing reads, get other values than dense gives them). Calls of another layout (the sampler's KV cache, the
  completions of a shared prompt) run blockwise whatever the setting (logged).
- "auto": cudnn on GPUs and pallas on TPUs where they apply, blockwise otherwise; the choice and the reason are
  logged once per distinct case.
Query rows that see no key at all (only possible for garbage rows: padding of an empty sequence) get an output
that is finite but implementation-specific.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

MASKED = -1e30  # finite, so a query row that sees nothing in a block gives no NaN
NO_WINDOW = 1 << 30  # the window of global layers: larger than any position difference
_FAR = 1 << 29  # stands in for +-infinity in the block bounds (differences stay inside int32)

log = logging.getLogger(__name__)
_LOGGED: set[str] = set()


def _log_once(message: str) -> None:
  if message not in _LOGGED:
    _LOGGED.add(message)
    log.info(message)


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
  return x if cap is None else cap * jnp.tanh(x / cap)


def visible(query_positions: jax.Array, key_positions: jax.Array, window: int | jax.Array | None,
            query_segments: jax.Array | None = None, key_segments: jax.Array | None = None) -> jax.Array:
  """bool[B, T, S]: key filled (position >= 0), causal by position, inside the window if any, and (packed rows,
  segments int[B, T] / int[B, S]) in the query's segment. Positions restart per segment, so within a segment
  position order is token order; across segments the segment test alone decides."""
  q = query_positions[:, :, None]
  k = key_positions[:, None, :]
  allowed = (k >= 0) & (k <= q)
  if window is not None:
    allowed &= q - k < window
  if query_segments is not None:
    allowed &= query_segments[:, :, None] == key_segments[:, None, :]
  return allowed


@dataclasses.dataclass(frozen=True)
class Spec:
  """Static parameters of one attention call (from the model config)."""

  block_q: int
  block_k: int
  softcap: float | None
  dtype: np.dtype  # of the q.k and p.v matmul inputs (accumulation is f32)

  @classmethod
  def of(cls, cfg) -> Spec:
    dtype = jnp.float32 if cfg.float32_attention else cfg.compute_jnp_dtype
    return cls(cfg.attention_block_q, cfg.attention_block_k, cfg.attn_logit_softcap, np.dtype(dtype))


def _einsum(equation: str, a: jax.Array, b: jax.Array, dtype) -> jax.Array:
  precision = jax.lax.Precision.HIGHEST if dtype == np.float32 else None
  return jnp.einsum(equation, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32,
                    precision=precision)


# ---------------------------------------------------------------------------------------------------------------
# Dispatch.


def attend(cfg, q: jax.Array, keys: jax.Array, values: jax.Array, query_positions: jax.Array,
           key_positions: jax.Array, *, local: bool | jax.Array, self_layout: bool = False,
           segment_ids: jax.Array | None = None) -> jax.Array:
  """GQA attention of `cfg.attention_impl`.

  Args:
    cfg: the model config (heads, window, soft-cap, dtypes, implementation, block sizes).
    q: f32[B, T, N, H] queries, already scaled.
    keys, values: [B, K, S, H].
    query_positions: int32[B, T]; key_positions: int32[B, S], -1 = no key in that slot.
    local: the layer's sliding window applies (a Python bool, or a traced bool[] inside the layer scan).
    self_layout: keys are the queries' own sequence (S == T) with default positions (`default_positions` of the
      mask): the only case the fused kernels take.
    segment_ids: int32[B, T] of packed rows (keys are the queries' own sequence): a query sees only its segment.
      Packed rows run the dense path (packing is an SFT option for short sequences; logged once).

  Returns:
    f32[B, T, N, H].
  """
  spec = Spec.of(cfg)
  window = jnp.where(local, cfg.sliding_window, NO_WINDOW).astype(jnp.int32)
  if segment_ids is not None:
    _log_once("packed rows (segment ids): dense attention")
    return dense(spec, q, keys, values, query_positions, key_positions, window, segment_ids)
  impl = resolve_impl(cfg, q.shape[1], keys.shape[2], self_layout=self_layout)
  if impl in ("dense", "blockwise"):
    fn = dense if impl == "dense" else blockwise
    return fn(spec, q, keys, values, query_positions, key_positions, window)
  from spct_jax.model import attention_kernels  # pylint: disable=g-import-not-at-top  (GPU / TPU only)

  kernel = functools.partial(getattr(attention_kernels, impl), spec, q, keys, values, key_positions)
  try:
    if isinstance(local, bool):
      return kernel(window=cfg.sliding_window if local else None)
    return jax.lax.cond(local, lambda: kernel(window=cfg.sliding_window), lambda: kernel(window=None))
  except NotImplementedError as e:  # the kernel's own checks (e.g. cuDNN's head_dim limit before Hopper)
    if cfg.attention_impl != "auto":
      raise
    _log_once(f"attention_impl='auto': blockwise, since {impl} refused the call ({e})")
    return blockwise(spec, q, keys, values, query_positions, key_positions, window)


def resolve_impl(cfg, query_length: int, key_length: int, *, self_layout: bool, backend: str | None = None) -> str:
  """The implementation a call runs: `cfg.attention_impl`, with "auto" resolved for `backend` (default: JAX's).

  The fused kernels take the self layout only: other calls (a KV cache, a shared prompt) run blockwise, logged.
  Otherwise an explicit "cudnn" / "pallas" that cannot take the call is an error; "auto" falls back to blockwise
  and logs why.
  """
  requested = cfg.attention_impl
  backend = backend or jax.default_backend()
  if requested in ("dense", "blockwise"):
    return requested
  kernel = requested if requested != "auto" else {"gpu": "cudnn", "tpu": "pallas"}.get(backend)
  if kernel is None:
    _log_once(f"attention_impl='auto' on {backend}: blockwise")
    return "blockwise"
  if not self_layout or query_length != key_length:
    _log_once(f"attention_impl={requested!r} on {backend}: blockwise where keys are not the queries' own sequence "
              "(a KV cache or a shared prompt)")
    return "blockwise"
  reason = kernel_unsupported(cfg, kernel, query_length, backend=backend)
  if reason is None:
    _log_once(f"attention_impl={requested!r} on {backend}: {kernel} (T={query_length})")
    return kernel
  if requested != "auto":
    raise ValueError(f"attention_impl={requested!r} cannot run this call: {reason}")
  _log_once(f"attention_impl='auto' on {backend}: blockwise, since {kernel} does not apply ({reason})")
  return "blockwise"


def kernel_unsupported(cfg, kernel: str, query_length: int, *, backend: str) -> str | None:
  """Why the fused `kernel` cannot take a self-layout call of `query_length` tokens (None: it can)."""
  if kernel == "cudnn":
    if backend != "gpu":
      return f"cudnn needs a GPU (backend {backend})"
    if cfg.attn_logit_softcap is not None:
      return "cuDNN flash attention has no logit soft-cap"
    if Spec.of(cfg).dtype not in (np.dtype(jnp.bfloat16), np.dtype(jnp.float16)):
      return "cuDNN flash attention needs bf16/fp16 inputs (set float32_attention=False, compute_dtype='bfloat16')"
    if cfg.head_dim % 8 or cfg.head_dim > 256:
      return f"head_dim={cfg.head_dim} (cuDNN: a multiple of 8, at most 256)"
    return None
  if backend != "tpu" and backend != "cpu":  # the CPU runs the kernel in interpret mode (tests)
    return f"pallas splash attention needs a TPU (backend {backend})"
  if cfg.head_dim % 128 or query_length % 128:
    return f"head_dim={cfg.head_dim} and length {query_length} must be multiples of 128 for splash attention"
  return None


# ---------------------------------------------------------------------------------------------------------------
# Dense reference.


def dense(spec: Spec, q: jax.Array, keys: jax.Array, values: jax.Array, query_positions: jax.Array,
          key_positions: jax.Array, window: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
  """The full score matrix: q f32[B, T, N, H], keys/values [B, K, S, H] -> f32[B, T, N, H]; segment_ids int32[B, T]
  of packed self-attention rows (S == T)."""
  b, t, n, hd = q.shape
  q = q.reshape(b, t, keys.shape[1], -1, hd)
  scores = softcap(_einsum("btkgh,bksh->bkgts", q, keys, spec.dtype), spec.softcap)
  mask = visible(query_positions, key_positions, window, segment_ids, segment_ids)
  probs = jax.nn.softmax(jnp.where(mask[:, None, None], scores, MASKED), axis=-1)
  # (XLA:CPU has no bf16 dot writing [B, T, K, G, H] straight from these operands: transpose after.)
  out = _einsum("bkgts,bksh->bkgth", probs, values, spec.dtype)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, hd)


# ---------------------------------------------------------------------------------------------------------------
# Blockwise online softmax with a recomputing backward.


def blockwise(spec: Spec, q: jax.Array, keys: jax.Array, values: jax.Array, query_positions: jax.Array,
              key_positions: jax.Array, window: jax.Array) -> jax.Array:
  """`dense`'s function in O(T) memory (forward and backward): q f32[B, T, N, H] -> f32[B, T, N, H]."""
  b, t, n, hd = q.shape
  grouped = q.reshape(b, t, keys.shape[1], -1, hd).transpose(0, 2, 1, 3, 4)  # [B, K, T, G, H]
  out = _flash(grouped, keys, values, query_positions.astype(jnp.int32), key_positions.astype(jnp.int32), window,
               spec)
  return out.transpose(0, 2, 1, 3, 4).reshape(b, t, n, hd)


@dataclasses.dataclass(frozen=True)
class _Tiling:
  """Blocks of a length-`length` axis: `count` blocks of `size`; the last starts at length - size (it overlaps
  its predecessor when size does not divide length, and its overlapped rows are `fresh`-masked where counting
  them twice would be wrong)."""

  length: int
  size: int

  @classmethod
  def balanced(cls, length: int, max_size: int) -> _Tiling:
    """The fewest blocks of at most `max_size`, of equal size: 576 keys by 512 -> 2 x 288 (overlap < count)."""
    count = -(-length // max_size)
    return cls(length, -(-length // count))

  @property
  def count(self) -> int:
    return -(-self.length // self.size)

  def start(self, i: jax.Array) -> jax.Array:
    return jnp.minimum(i * self.size, self.length - self.size)

  def fresh(self, i: jax.Array) -> jax.Array:
    """bool[size]: rows of block i not already covered by block i - 1."""
    return self.start(i) + jnp.arange(self.size) >= i * self.size

  def indices(self) -> tuple[np.ndarray, np.ndarray]:
    """int[count, size] the rows of every block, bool[count, size] which of them are fresh."""
    blocks = np.arange(self.count)[:, None]
    rows = np.minimum(blocks * self.size, self.length - self.size) + np.arange(self.size)
    return rows, rows >= blocks * self.size


def _visited(tq: _Tiling, tk: _Tiling, query_positions, key_positions, window) -> jax.Array:
  """bool[nq, nk]: some query of block i may see some key of block j, in some row (a conservative test on the
  blocks' position bounds: it never drops a visible pair)."""
  qp = query_positions[:, tq.indices()[0]]  # [B, nq, bq]
  k_rows, k_fresh = tk.indices()
  kp = jnp.where(k_fresh, key_positions[:, k_rows], -1)  # [B, nk, bk]; keys of a block's predecessor do not count
  q_max, q_min = qp.max(-1)[:, :, None], qp.min(-1)[:, :, None]
  filled = kp >= 0
  k_min = jnp.where(filled, kp, _FAR).min(-1)[:, None, :]
  k_max = jnp.where(filled, kp, -_FAR).max(-1)[:, None, :]
  return jnp.any((k_min <= q_max) & (q_min - k_max < window), axis=0)


def _ranges(visit: jax.Array) -> tuple[jax.Array, jax.Array]:
  """First and one-past-last visited column of each row of bool[n, m] (0, 0 for a row with none)."""
  m = visit.shape[1]
  seen = visit.any(-1)
  lo = jnp.argmax(visit, axis=-1)
  hi = m - jnp.argmax(visit[:, ::-1], axis=-1)
  return jnp.where(seen, lo, 0), jnp.where(seen, hi, 0)


def _block_scores(spec: Spec, qi, kj, qpi, kpj, window, rows_ok):
  """Scores of one block: q rows [B, K, bq*G, H] x keys [B, K, bk, H] -> (masked f32[B, K, bq*G, bk], the soft-capped
  scores before masking, the mask). rows_ok: bool[bq] or None, extra per-query-row mask (backward only)."""
  b, _, rows, _ = qi.shape
  bq = qpi.shape[1]
  capped = softcap(_einsum("bkqh,bksh->bkqs", qi, kj, spec.dtype), spec.softcap)
  allowed = visible(qpi, kpj, window)  # [B, bq, bk]
  if rows_ok is not None:
    allowed &= rows_ok[None, :, None]
  allowed = jnp.broadcast_to(allowed[:, None, :, None, :], (b, 1, bq, rows // bq, kpj.shape[1]))
  allowed = allowed.reshape(b, 1, rows, -1)
  return jnp.where(allowed, capped, MASKED), capped, allowed


def _zeros_after(anchor: jax.Array, *shapes) -> tuple[jax.Array, ...]:
  """f32 zeros of `shapes` that XLA cannot materialise before `anchor` exists.

  Plain zeros as a loop's initial output are one constant: XLA:CPU shared it between the loops of all the layers
  of the unrolled prefill and scheduled every layer's copy of it first, so all 18 output buffers lived at once.
  """
  # (An optimization_barrier does not do it: XLA:CPU drops it before it schedules.)
  dependency = jnp.isfinite(anchor.reshape(-1)[0]).astype(jnp.float32)  # 0 or 1: only the data dependency matters
  return tuple(jnp.zeros(shape) * dependency for shape in shapes)


def _slice(x, start, size, axis):
  return jax.lax.dynamic_slice_in_dim(x, start, size, axis)


def _flash_forward(q, k, v, q_pos, k_pos, window, spec: Spec):
  """q [B, K, T, G, H], k/v [B, K, S, H] -> (out f32[B, K, T, G, H], log-sum-exp f32[B, K, T, G])."""
  b, kh, t, g, hd = q.shape
  tq, tk = _Tiling.balanced(t, spec.block_q), _Tiling.balanced(k.shape[2], spec.block_k)
  bq, bk = tq.size, tk.size
  lo, hi = _ranges(_visited(tq, tk, q_pos, k_pos, window))
  kj_fresh = lambda j: tk.fresh(j)[None, None, :]  # keys of an overlapping last block counted once

  def query_block(i, carry):
    out, lse = carry
    start = tq.start(i)
    qi = _slice(q, start, bq, 2).reshape(b, kh, bq * g, hd)
    qpi = _slice(q_pos, start, bq, 1)

    def key_block(j, state):
      m, l, acc = state
      ks = tk.start(j)
      kpj = jnp.where(kj_fresh(j)[0], _slice(k_pos, ks, bk, 1), -1)
      scores, _, _ = _block_scores(spec, qi, _slice(k, ks, bk, 2), qpi, kpj, window, None)
      m_new = jnp.maximum(m, scores.max(-1))
      p = jnp.exp(scores - m_new[..., None])
      alpha = jnp.exp(m - m_new)
      acc = alpha[..., None] * acc + _einsum("bkqs,bksh->bkqh", p, _slice(v, ks, bk, 2), spec.dtype)
      return m_new, alpha * l + p.sum(-1), acc

    init = (jnp.full((b, kh, bq * g), -jnp.inf), jnp.zeros((b, kh, bq * g)), jnp.zeros((b, kh, bq * g, hd)))
    m, l, acc = jax.lax.fori_loop(lo[i], hi[i], key_block, init)
    seen = l > 0
    safe_l = jnp.where(seen, l, 1.0)
    oi = jnp.where(seen[..., None], acc / safe_l[..., None], 0.0).reshape(b, kh, bq, g, hd)
    lse_i = jnp.where(seen, m + jnp.log(safe_l), jnp.inf).reshape(b, kh, bq, g)
    # An overlapping last block recomputes rows of its predecessor with the same keys: writing them again is safe.
    return (jax.lax.dynamic_update_slice_in_dim(out, oi, start, 2),
            jax.lax.dynamic_update_slice_in_dim(lse, lse_i, start, 2))

  return jax.lax.fori_loop(0, tq.count, query_block, _zeros_after(q, (b, kh, t, g, hd), (b, kh, t, g)))


def _flash_backward(spec: Spec, residuals, d_out):
  """Gradients w.r.t. q, k, v: one pass over key blocks, each over the query blocks that visited it.

  dK and dV contract over query rows; XLA:CPU runs that form of bf16 matmul (lhs transposed) ~4x slower than the
  plain one, so q and dO are transposed once ([B, K, H, T*G]) and the blocks accumulate dK^T, dV^T.
  """
  q, k, v, q_pos, k_pos, window, out, lse = residuals
  b, kh, t, g, hd = q.shape
  tq, tk = _Tiling.balanced(t, spec.block_q), _Tiling.balanced(k.shape[2], spec.block_k)
  bq, bk = tq.size, tk.size
  lo, hi = _ranges(_visited(tq, tk, q_pos, k_pos, window).T)
  delta = jnp.sum(d_out * out, axis=-1).reshape(b, kh, t * g)  # rowsum(dO * O) = sum_s P dP
  lse = lse.reshape(b, kh, t * g)
  cast = lambda x: x.astype(spec.dtype)
  q_rows, do_rows = cast(q).reshape(b, kh, t * g, hd), cast(d_out).reshape(b, kh, t * g, hd)
  q_t, do_t = q_rows.swapaxes(2, 3), do_rows.swapaxes(2, 3)  # [B, K, H, T*G]

  def key_block(j, carry):
    dq, dk_t, dv_t = carry
    ks = tk.start(j)
    kj, vj = _slice(k, ks, bk, 2), _slice(v, ks, bk, 2)
    kpj = jnp.where(tk.fresh(j), _slice(k_pos, ks, bk, 1), -1)

    def query_block(i, state):
      dq, dkj_t, dvj_t = state
      start = tq.start(i)
      rows = lambda x, axis=2: _slice(x, start * g, bq * g, axis)
      qi, doi = rows(q_rows), rows(do_rows)
      scores, capped, allowed = _block_scores(spec, qi, kj, _slice(q_pos, start, bq, 1), kpj, window, tq.fresh(i))
      p = jnp.where(allowed, jnp.exp(scores - rows(lse)[..., None]), 0.0)
      dvj_t = dvj_t + _einsum("bkhq,bkqs->bkhs", rows(do_t, 3), p, spec.dtype)
      ds = p * (_einsum("bkqh,bksh->bkqs", doi, vj, spec.dtype) - rows(delta)[..., None])
      if spec.softcap is not None:
        ds = ds * (1 - jnp.square(capped / spec.softcap))
      dqi = _einsum("bkqs,bksh->bkqh", ds, kj, spec.dtype)
      dq = jax.lax.dynamic_update_slice_in_dim(dq, rows(dq) + dqi, start * g, 2)
      return dq, dkj_t + _einsum("bkhq,bkqs->bkhs", rows(q_t, 3), ds, spec.dtype), dvj_t

    zeros = jnp.zeros((b, kh, hd, bk))
    dq, dkj_t, dvj_t = jax.lax.fori_loop(lo[j], hi[j], query_block, (dq, zeros, zeros))
    add = lambda buf, block: jax.lax.dynamic_update_slice_in_dim(buf, _slice(buf, ks, bk, 3) + block, ks, 3)
    return dq, add(dk_t, dkj_t), add(dv_t, dvj_t)

  init = _zeros_after(d_out, (b, kh, t * g, hd), (b, kh, hd, k.shape[2]), (b, kh, hd, k.shape[2]))
  dq, dk_t, dv_t = jax.lax.fori_loop(0, tk.count, key_block, init)
  return (dq.reshape(q.shape).astype(q.dtype), dk_t.swapaxes(2, 3).astype(k.dtype),
          dv_t.swapaxes(2, 3).astype(v.dtype), None, None, None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _flash(q, k, v, q_pos, k_pos, window, spec):
  return _flash_forward(q, k, v, q_pos, k_pos, window, spec)[0]


def _flash_fwd(q, k, v, q_pos, k_pos, window, spec):
  out, lse = _flash_forward(q, k, v, q_pos, k_pos, window, spec)
  return out, (q, k, v, q_pos, k_pos, window, out, lse)


_flash.defvjp(_flash_fwd, _flash_backward)
