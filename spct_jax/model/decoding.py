"""The decoder for sampling: per-layer weight buffers in the compute dtype, layers unrolled, one KV buffer per layer.

Training runs the stacked parameters under `lax.scan` (one block compiled, remat per layer). Decoding is different:
each step reads every weight once for a few rows, so what dominates is bytes moved. Measured on XLA:CPU with
Gemma 3 270M (benchmarks/README.md):
- a bf16 matmul whose weight is a slice of a stacked bf16 array inside a scan ran ~8x slower than the same matmul
  on a separate weight buffer, and casting f32 weights to bf16 inside the step re-reads the f32 copy every token;
- the cache of all layers in one `[L, B, S, K, H]` array, updated inside the scan, was rewritten whole per layer.
So `decoding_params` casts the matmul weights once and splits them into one buffer per layer (outside the jitted
step), `forward` runs the layers as straight-line code with each layer's kind known statically, and `LayerCache`
keeps one K and one V buffer per layer, each updated in place. The math is `Transformer.hidden_states`' own: the
same `_project_qkv` / `_attend` / `_finish_block`.
"""

from __future__ import annotations

import functools
import math
import weakref

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from spct_jax.model import transformer as tfm
from spct_jax.model.config import ModelConfig

# params: {"embedding_t": [D, V], "final_norm": [D], "layers": ({name: array without the layer axis}, ...)}.
# The tied embedding is stored transposed: the LM-head matmul wants [D, V] (XLA:CPU otherwise transposed all 335 MB
# of Gemma 3 270M's bf16 table on every call), and the lookup of a few tokens reads columns just as well.
DecodingParams = dict


@flax.struct.dataclass
class LayerCache:
  """KV cache with one buffer per layer.

  Attributes:
    k, v: L-tuples of [B*K, S, H] keys (after RoPE) / values, in `cache_dtype(cfg)`; row b*K + j = kv head j of
      sequence b.
    key_positions: int32[B, S] position of the token in each slot; -1 = empty or padding.
    index: int32[] next slot to write (uniform across rows: batches are left-padded).
  """

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  key_positions: jax.Array
  index: jax.Array

  @property
  def length(self) -> int:
    return self.key_positions.shape[1]


def _cast(name: str, x: jax.Array, dtype) -> jax.Array:
  return x if name.endswith("norm") else x.astype(dtype)  # norm scales stay f32: they are applied in f32


@functools.partial(jax.jit, static_argnums=(0,))
def _split(graphdef, state) -> DecodingParams:
  model: tfm.Transformer = nnx.merge(graphdef, state)
  cfg, dtype = model.cfg, model.cfg.compute_jnp_dtype
  blocks = model.blocks.as_dict()
  blocks["o_proj"] = blocks["o_proj"].reshape(cfg.num_layers, -1, cfg.embed_dim)  # [N*H, D]: see forward
  layers = tuple({name: _cast(name, value[i], dtype) for name, value in blocks.items()}
                 for i in range(cfg.num_layers))
  return {"embedding_t": model.embedding[...].astype(dtype).T, "final_norm": model.final_norm[...], "layers": layers}


_LAST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (its parameter arrays, their split)


def decoding_params(model: tfm.Transformer) -> DecodingParams:
  """Per-layer weight buffers in the compute dtype (norm scales as stored), the embedding transposed.

  A jitted split: each output is its own buffer, sharded like the parameter it came from. It costs one read of the
  parameters (~165 ms for Gemma 3 270M on 2 CPU cores) and param_bytes * compute_bytes / param_bytes of memory.
  The last split of each live model object is kept while that object lives and its parameter arrays are the same
  objects, so repeated sampling calls (voting, evaluation) pay it once; a model whose parameters were replaced
  (a train step) is split again, and a merged-per-call model (`TrainState.model()`) keeps nothing.
  """
  graphdef, state = nnx.split(model)
  arrays = jax.tree.leaves(state)
  last = _LAST.get(model)
  if last is not None and len(last[0]) == len(arrays) and all(a is b for a, b in zip(last[0], arrays)):
    return last[1]
  params = _split(graphdef, state)
  _LAST[model] = (arrays, params)
  return params


def param_logical_axes(cfg: ModelConfig) -> DecodingParams:
  """Logical axes of every decoding parameter (those of `Transformer` without the `layers` axis)."""
  axes = tfm.param_logical_axes(cfg)
  layer = {key.split("/", 1)[1]: value[1:] for key, value in axes.items() if key.startswith("blocks/")}
  layer["o_proj"] = ("heads", "embed")  # [N*H, D], heads-major: shards like the heads axis
  return {"embedding_t": axes["embedding"][::-1], "final_norm": axes["final_norm"],
          "layers": tuple(dict(layer) for _ in range(cfg.num_layers))}


# One cache row per (sequence, kv head): a batch dimension that the attention matmuls take as is. With [B, S, K, H]
# or [B, K, S, H] and Gemma 3 270M's single kv head, XLA:CPU reshaped the updated buffer for the matmul, fused that
# reshape with the update, and so kept the old buffer alive: the whole cache was copied every step.
CACHE_AXES = ("batch", "cache_length", "head_dim")


def _kv_rows(x: jax.Array) -> jax.Array:
  """[B, T, K, H] -> [B*K, T, H], rows b-major (the cache layout)."""
  b, t, k, h = x.shape
  return x.swapaxes(1, 2).reshape(b * k, t, h)


def cache_dtype(cfg: ModelConfig):
  """f32 when attention runs in f32 (`float32_attention`): a bf16 cache would be converted whole every step."""
  return jnp.float32 if cfg.float32_attention else cfg.compute_jnp_dtype


def init_cache(cfg: ModelConfig, batch_size: int, length: int) -> LayerCache:
  """Empty cache; buffers are [B*K, S, H] (see CACHE_AXES)."""
  if length > cfg.max_seq_len:
    raise ValueError(f"cache length {length} exceeds max_seq_len={cfg.max_seq_len} of the model config")
  shape = (batch_size * cfg.num_kv_heads, length, cfg.head_dim)
  zeros = lambda: tuple(jnp.zeros(shape, cache_dtype(cfg)) for _ in range(cfg.num_layers))
  return LayerCache(k=zeros(), v=zeros(), key_positions=jnp.full((batch_size, length), -1, jnp.int32),
                    index=jnp.zeros((), jnp.int32))


def take_rows(cfg: ModelConfig, cache: LayerCache, rows: jax.Array) -> LayerCache:
  """The cache of sequences `rows` (e.g. k samples continuing one prefilled prompt)."""
  heads = cfg.num_kv_heads
  kv_rows = (rows[:, None] * heads + jnp.arange(heads)).reshape(-1)
  take = lambda buffers: tuple(jnp.take(b, kv_rows, axis=0) for b in buffers)
  return LayerCache(k=take(cache.k), v=take(cache.v), key_positions=jnp.take(cache.key_positions, rows, axis=0),
                    index=cache.index)


def forward(cfg: ModelConfig, params: DecodingParams, tokens: jax.Array, positions: jax.Array,
            cache: LayerCache, attention_mask: jax.Array | None = None) -> tuple[jax.Array, LayerCache]:
  """Writes T new tokens at `cache.index` and returns their hidden states f32[B, T, D] (after the final norm).

  tokens, positions: int32[B, T]; attention_mask: [B, T], 1 = real token (default all).
  """
  if attention_mask is None:
    attention_mask = jnp.ones(tokens.shape, jnp.bool_)
  new_key_positions = jnp.where(attention_mask.astype(jnp.bool_), positions, -1).astype(jnp.int32)
  key_positions = jax.lax.dynamic_update_slice(cache.key_positions, new_key_positions, (0, cache.index))
  windows = {"local": cfg.sliding_window, "global": None}
  masks = {kind: tfm.make_attention_mask(positions, key_positions, w) for kind, w in windows.items()}
  ropes = {"local": tfm.rope_tables(positions, cfg.head_dim, cfg.rope_local_base),
           "global": tfm.rope_tables(positions, cfg.head_dim, cfg.rope_global_base, cfg.rope_global_scale)}

  x = _lookup(params["embedding_t"], tokens).astype(jnp.float32) * math.sqrt(cfg.embed_dim)
  new_k, new_v = [], []
  for p, kind, k_cache, v_cache in zip(params["layers"], cfg.layer_kinds, cache.k, cache.v):
    q, k, v = tfm._project_qkv(cfg, p, x, ropes[kind])  # pylint: disable=protected-access
    write = lambda buf, new: jax.lax.dynamic_update_slice(buf, _kv_rows(new).astype(buf.dtype), (0, cache.index, 0))
    k_cache, v_cache = write(k_cache, k), write(v_cache, v)
    attended = _attend(cfg, q, k_cache, v_cache, masks[kind])
    # o_proj flattened to [N*H, D]: with [N, H, D] XLA:CPU transposed the weight every step.
    attn_out = tfm._dot("btf,fd->btd", attended.reshape(*attended.shape[:2], -1), p["o_proj"], cfg)  # pylint: disable=protected-access
    x = tfm._residual_mlp(cfg, p, x, attn_out)  # pylint: disable=protected-access
    new_k.append(k_cache)
    new_v.append(v_cache)
  hidden = tfm.rms_norm(x, params["final_norm"], cfg.rms_eps)
  return hidden, LayerCache(k=tuple(new_k), v=tuple(new_v), key_positions=key_positions,
                            index=cache.index + tokens.shape[1])


def _lookup(table_t: jax.Array, tokens: jax.Array) -> jax.Array:
  """Columns `tokens` of a [D, V] table -> [..., D] in the table's dtype.

  Gathered through an integer view: on a plain gather XLA moved the later f32 convert in front of it, converting
  the whole table (1 GB for 270M) on every sampling call.
  """
  as_int = {2: jnp.uint16, 4: jnp.uint32}[table_t.dtype.itemsize]
  cols = jnp.take(jax.lax.bitcast_convert_type(table_t, as_int), tokens, axis=1)
  return jnp.moveaxis(jax.lax.bitcast_convert_type(cols, table_t.dtype), 0, -1)


def _attend(cfg: ModelConfig, q: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array) -> jax.Array:
  """`transformer._attend` on [B*K, S, H] caches. q [B, T, N, H], mask bool[B, T, S] -> [B, T, N, H]."""
  b, t, n, hd = q.shape
  k, s = cfg.num_kv_heads, mask.shape[-1]
  g = n // k
  q = q.reshape(b, t, k, g, hd).transpose(0, 2, 3, 1, 4).reshape(b * k, g * t, hd)  # rows (b, k), queries (g, t)
  scores = tfm._dot("xqh,xsh->xqs", q, keys, cfg, attention=True)  # pylint: disable=protected-access
  scores = tfm.softcap(scores, cfg.attn_logit_softcap)
  mask = jnp.broadcast_to(mask[:, None, None], (b, k, g, t, s)).reshape(b * k, g * t, s)
  probs = jax.nn.softmax(jnp.where(mask, scores, tfm._MASKED), axis=-1)  # pylint: disable=protected-access
  out = tfm._dot("xqs,xsh->xqh", probs, values, cfg, attention=True)  # pylint: disable=protected-access
  return out.reshape(b, k, g, t, hd).transpose(0, 3, 1, 2, 4).reshape(b, t, n, hd)


def logits(cfg: ModelConfig, params: DecodingParams, hidden: jax.Array) -> jax.Array:
  """hidden f32[B, T, D] -> f32[B, T, V] through the tied embedding (as `Transformer.logits`)."""
  return tfm.softcap(tfm._dot("btd,dv->btv", hidden, params["embedding_t"], cfg), cfg.final_logit_softcap)  # pylint: disable=protected-access
