"""The decoder for sampling: per-layer weight buffers in the compute dtype, layers unrolled, one KV buffer per layer.

Training runs the stacked parameters under `lax.scan` (one block compiled, remat per layer). Decoding is different:
each step reads every weight once for a few rows, so what dominates is bytes moved. Measured on XLA:CPU with
Gemma 3 270M (benchmarks/README.md):
- a bf16 matmul whose weight is a slice of a stacked bf16 array inside a scan ran ~8x slower than the same matmul
  on a separate weight buffer, and casting f32 weights to bf16 inside the step re-reads the f32 copy every token;
- the cache of all layers in one `[L, B, S, K, H]` array, updated inside the scan, was rewritten whole per layer;
- YNNPACK's bf16 matmuls for a few rows cost ~30 us per call on top of streaming the weight, so fewer, larger
  matmuls win, and 2-D ones: a [B, T, D] operand ran ~1.5x slower in the loop and got the head's table transposed;
- XLA:CPU gathers bf16 through f32, and the convert of the whole table was hoisted out of the decode loop (125 ms
  per call for the 335 MB table).
So `decoding_params` casts the matmul weights once and splits them into one 2-D buffer per layer and projection
(outside the jitted step), with q, k and v in one matmul and gate and up in another; tokens are looked up in the
model's own embedding table and the LM head reads a compute-dtype copy. `forward` runs the layers as straight-line
code with each layer's kind known statically, and `LayerCache` keeps one K and one V buffer per layer, each
updated in place. The math is `Transformer.hidden_states`' own (tests/test_decoding.py holds them equal): the same
norms, `_rotate_qk` and `_attend`.

Weights are [out, in]. On the CPU, decode matmuls can run C++ kernels (`Matmul.cpu_kernel`,
`spct_jax.kernels.cpu_matvec`): XLA:CPU's bf16 dot reads the weights of a one-sequence step at about half the
bandwidth a plain read reaches, and of a 32-row step at a third (on an AMX Xeon). On CPUs without AMX, matmuls of
up to `cpu_matvec.max_rows()` rows stream each [out, in] weight row once ("skinny": up to 64 rows where the CPU
has bf16 dot products, up to 128 where it has none, e.g. AVX2 only); with AMX, every matmul of up to
`cpu_matvec.AMX_MAX_ROWS` rows runs on AMX tiles from a tiled copy of the weights (`params["layer_tiles"]`, the
head only tiled), and the LM head returns the logits' softmax summaries from the same pass (`next_token_logits`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import weakref

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from spct_jax import strategies
from spct_jax.kernels import cpu_matvec
from spct_jax.model import attention
from spct_jax.model import transformer as tfm
from spct_jax.model.config import ModelConfig

# params: {"embedding": [V, D] the model's table as stored (lookups), "head": [V, D] the same table in the compute
# dtype (the same array when the dtypes agree), "final_norm": [D], "layers": ({name: array, ...}, ...)}.
# Layer matmul weights are 2-D [out, in], like the head: qkv_proj [K*(G+2)*H, D] (per kv head: its G query heads,
# its key, its value), o_proj [D, N*H], gate_up_proj [F*2, D] (gate and up interleaved), down_proj [D, F]; G = N / K.
# Norm scales as in `Transformer`. With tiled=True (the AMX kernels), "head" is `cpu_matvec.tile`d and "layer_tiles"
# holds a tiled copy of each layer's tileable matmul weights ({name: [N/32, K/32, 32, 32]}, ...); the 2-D ones stay
# for prefill's many rows, where XLA's dot is faster than the kernel.
DecodingParams = dict
MATMULS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class Matmul:
  """How decoding multiplies activations by weights; static (part of the compiled function).

  Attributes:
    cpu_kernel: None: XLA's dot. "skinny": matmuls of at most `cpu_matvec.max_rows()` rows with bf16 weights run
      `cpu_matvec.skinny_matmul`. "amx": the params are tiled (`decoding_params(..., tiled=True)`) and matmuls of
      at most `cpu_matvec.AMX_MAX_ROWS` rows run `cpu_matvec.amx_matmul`, the head always (XLA:CPU only; see
      `cpu_kernel_for`).
    live_rows: batch rows past this many are filler (the sampler's duplicate batch-1 row, there for XLA's
      layouts): their matmul outputs are zeros instead of computed. None = every row is live.
  """

  cpu_kernel: str | None = None
  live_rows: int | None = None


def cpu_kernel_for(cfg: ModelConfig, mesh=None) -> str | None:
  """The `Matmul.cpu_kernel` this process should decode `cfg` with: unsharded bf16 compute on the CPU backend."""
  if mesh is not None or cfg.compute_jnp_dtype != jnp.bfloat16 or not cpu_matvec.enabled():
    return None
  return "amx" if cpu_matvec.amx() else "skinny"


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


def _decoding_layout(cfg: ModelConfig, blocks: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Stacked `Transformer` block weights -> 2-D [out, in] decoding weights (leading layer axis kept)."""
  blocks = dict(blocks)
  layers, d = cfg.num_layers, cfg.embed_dim
  q, k, v, gate, up = (blocks.pop(name) for name in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"))
  # One matmul for q, k and v, grouped by kv head: kv head j's G query heads, then its k, then its v.
  groups = q.reshape(layers, d, cfg.num_kv_heads, -1, cfg.head_dim)
  qkv = jnp.concatenate([groups, k[:, :, :, None], v[:, :, :, None]], axis=3)
  blocks["qkv_proj"] = qkv.reshape(layers, d, -1)  # [L, D, K*(G+2)*H]
  blocks["o_proj"] = blocks["o_proj"].reshape(layers, -1, d)  # [L, N*H, D]
  blocks["gate_up_proj"] = jnp.stack([gate, up], axis=3).reshape(layers, d, -1)  # [L, D, F*2]: gate, up interleaved
  # [out, in]: each output is a dot product over one contiguous weight row (what the CPU kernel streams).
  for name in MATMULS:
    blocks[name] = blocks[name].swapaxes(1, 2)
  return blocks


@functools.partial(jax.jit, static_argnums=(0, 2))
def _split(graphdef, state, tiled: bool) -> DecodingParams:
  model: tfm.Transformer = nnx.merge(graphdef, state)
  cfg, dtype = model.cfg, model.cfg.compute_jnp_dtype
  blocks = _decoding_layout(cfg, model.blocks.as_dict())
  layers = tuple({name: _cast(name, value[i], dtype) for name, value in blocks.items()}
                 for i in range(cfg.num_layers))
  params = {"final_norm": model.final_norm[...], "layers": layers}
  if model.embedding[...].dtype != dtype or tiled:
    params["head"] = model.embedding[...].astype(dtype)
  if tiled:
    tileable = lambda w: w.dtype == jnp.bfloat16 and cpu_matvec.tileable(w.shape)
    params["layer_tiles"] = tuple({name: cpu_matvec.tile(p[name]) for name in MATMULS if tileable(p[name])}
                                  for p in layers)
    if tileable(params["head"]):
      params["head"] = cpu_matvec.tile(params["head"])
  return params


_LAST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {tiled: (its parameter arrays, split)}


def decoding_params(model: tfm.Transformer, tiled: bool = False) -> DecodingParams:
  """Per-layer weight buffers in the compute dtype (norm scales as stored), see `DecodingParams`.

  A jitted split: each output is its own buffer, sharded like the parameter it came from. It costs one read of the
  parameters (~165 ms for Gemma 3 270M on 2 CPU cores) and the memory of a compute-dtype copy of them (lookups
  read the model's own embedding).
  The last split of each live model object is kept while that object lives and its parameter arrays are the same
  objects, so repeated sampling calls (voting, evaluation) pay it once; a model whose parameters were replaced
  (a train step) is split again, and a merged-per-call model (`TrainState.model()`) keeps nothing.
  tiled: also the AMX kernels' tiled weights (see `DecodingParams`; +40% memory for Gemma 3 270M's layers).
  """
  graphdef, state = nnx.split(model)
  arrays = jax.tree.leaves(state)
  last = _LAST.setdefault(model, {}).get(tiled)
  if last is not None and len(last[0]) == len(arrays) and all(a is b for a, b in zip(last[0], arrays)):
    return last[1]
  params, embedding = _split(graphdef, state, tiled), model.embedding[...]
  params = dict(params, embedding=embedding, head=params.get("head", embedding))
  _LAST[model] = {tiled: (arrays, params)}  # one split per model: a call with the other layout drops this one
  return params


def param_logical_axes(cfg: ModelConfig) -> DecodingParams:
  """Logical axes of every decoding parameter (those of `Transformer` without the `layers` axis)."""
  axes = tfm.param_logical_axes(cfg)
  layer = {key.split("/", 1)[1]: value[1:] for key, value in axes.items() if key.startswith("blocks/")}
  for name in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"):
    del layer[name]
  # Flattened dims are major-first (kv heads, heads, mlp), so they shard like that axis.
  layer.update(qkv_proj=("kv_heads", "embed"), o_proj=("embed", "heads"), gate_up_proj=("mlp", "embed"),
               down_proj=layer["down_proj"][::-1])
  return {"embedding": axes["embedding"], "head": axes["embedding"], "final_norm": axes["final_norm"],
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
            cache: LayerCache, attention_mask: jax.Array | None = None, *,
            matmul: Matmul = Matmul()) -> tuple[jax.Array, LayerCache]:
  """Writes T new tokens at `cache.index` and returns their hidden states f32[B, T, D] (after the final norm).

  tokens, positions: int32[B, T]; attention_mask: [B, T], 1 = real token (default all).
  """
  if attention_mask is None:
    attention_mask = jnp.ones(tokens.shape, jnp.bool_)
  new_key_positions = jnp.where(attention_mask.astype(jnp.bool_), positions, -1).astype(jnp.int32)
  key_positions = jax.lax.dynamic_update_slice(cache.key_positions, new_key_positions, (0, cache.index))
  # A decode step attends one row per sequence through a [B, 1, S] mask; a prefill goes through `attention.attend`
  # (blockwise by default), which takes positions: no [B, T, S] mask or score matrix.
  prefill = tokens.shape[1] > 1
  windows = {"local": cfg.sliding_window, "global": None}
  masks = {} if prefill else {kind: tfm.make_attention_mask(positions, key_positions, w) for kind, w in windows.items()}
  ropes = {"local": tfm.rope_tables(positions, cfg.head_dim, cfg.rope_local_base),
           "global": tfm.rope_tables(positions, cfg.head_dim, cfg.rope_global_base, cfg.rope_global_scale)}

  x = _lookup(params["embedding"], tokens).astype(jnp.float32) * math.sqrt(cfg.embed_dim)
  write = lambda buf, new: jax.lax.dynamic_update_slice(buf, _kv_rows(new).astype(buf.dtype), (0, cache.index, 0))
  new_k, new_v = [], []
  tiles = params.get("layer_tiles") or ({},) * cfg.num_layers
  for p, p_tiles, kind, k_cache, v_cache in zip(params["layers"], tiles, cfg.layer_kinds, cache.k, cache.v):
    p = dict(p, tiles=p_tiles)
    q, k, v = _project_qkv(cfg, p, x, ropes[kind], matmul)
    k_cache, v_cache = write(k_cache, k), write(v_cache, v)
    if prefill:
      as_heads = lambda buf: buf.reshape(-1, cfg.num_kv_heads, *buf.shape[1:])  # [B*K, S, H] -> [B, K, S, H]
      attended = attention.attend(cfg, q, as_heads(k_cache), as_heads(v_cache), positions, key_positions,
                                  local=kind == "local")
    else:
      attended = _attend(cfg, q, k_cache, v_cache, masks[kind])
    # o_proj flattened to [N*H, D]: with a separate heads axis XLA:CPU transposed the weight every step.
    attn_out = _linear(cfg, attended.reshape(*attended.shape[:2], -1), p, "o_proj", matmul)
    x = _residual_mlp(cfg, p, x, attn_out, matmul)
    new_k.append(k_cache)
    new_v.append(v_cache)
  hidden = tfm.rms_norm(x, params["final_norm"], cfg.rms_eps)
  return hidden, LayerCache(k=tuple(new_k), v=tuple(new_v), key_positions=key_positions,
                            index=cache.index + tokens.shape[1])


def _linear(cfg: ModelConfig, x: jax.Array, p: dict, name: str, matmul: Matmul) -> jax.Array:
  """x [B, T, in] @ p[name] [out, in]^T -> f32[B, T, out] as one 2-D matmul (rows past `matmul.live_rows`: zeros).

  p[name] may be `cpu_matvec.tile`d (the head), and p["tiles"] may hold a tiled copy of it (layers).
  With a batched [B, T, in] operand the same matmul ran ~1.5x slower inside the decode loop, and XLA:CPU copied
  weights into another layout on every call (the LM head's 335 MB table among them).
  """
  b, t, _ = x.shape
  live = b if matmul.live_rows is None else matmul.live_rows
  rows = x[:live].reshape(live * t, -1)
  w, tiles = p[name], p.get("tiles", {}).get(name)
  if w.ndim == 4 or (tiles is not None and live * t <= cpu_matvec.AMX_MAX_ROWS):
    out = cpu_matvec.amx_matmul(rows, w if w.ndim == 4 else tiles)  # rounds rows to bf16 itself
  elif matmul.cpu_kernel and live * t <= cpu_matvec.max_rows() and w.dtype == jnp.bfloat16:
    out = cpu_matvec.skinny_matmul(rows.astype(jnp.bfloat16), w)
  else:
    out = tfm._dot("xi,oi->xo", rows, w, cfg)  # pylint: disable=protected-access
  return _pad_rows(out.reshape(live, t, -1), b)


def _pad_rows(x: jax.Array, rows: int, value: float = 0.0) -> jax.Array:
  """Filler rows (`Matmul.live_rows`) appended as `value`."""
  return x if x.shape[0] == rows else jnp.pad(x, ((0, rows - x.shape[0]),) + ((0, 0),) * (x.ndim - 1),
                                              constant_values=value)


def _project_qkv(cfg: ModelConfig, p: dict[str, jax.Array], x: jax.Array, rope: tuple[jax.Array, jax.Array],
                 matmul: Matmul) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`transformer._project_qkv` with the decoding layout: q f32[B, T, N, H], k and v [B, T, K, H]."""
  b, t, _ = x.shape
  h = tfm.rms_norm(x, p["attn_norm"], cfg.rms_eps)
  k_heads, group = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads
  qkv = _linear(cfg, h, p, "qkv_proj", matmul).reshape(b, t, k_heads, group + 2, cfg.head_dim)
  q = qkv[..., :group, :].reshape(b, t, cfg.num_heads, cfg.head_dim)
  return tfm._rotate_qk(cfg, p, q, qkv[..., group, :], qkv[..., group + 1, :], rope)  # pylint: disable=protected-access


def _residual_mlp(cfg: ModelConfig, p: dict[str, jax.Array], x: jax.Array, attn_out: jax.Array,
                  matmul: Matmul) -> jax.Array:
  """`transformer._finish_block` after its output projection, with one matmul for gate and up."""
  x = x + tfm.rms_norm(attn_out, p["post_attn_norm"], cfg.rms_eps)
  h = tfm.rms_norm(x, p["ffw_norm"], cfg.rms_eps)
  gate_up = _linear(cfg, h, p, "gate_up_proj", matmul).reshape(*x.shape[:2], cfg.mlp_dim, 2)
  hidden = jax.nn.gelu(gate_up[..., 0], approximate=True) * gate_up[..., 1]
  return x + tfm.rms_norm(_linear(cfg, hidden, p, "down_proj", matmul), p["post_ffw_norm"], cfg.rms_eps)


def _lookup(table: jax.Array, tokens: jax.Array) -> jax.Array:
  """Rows `tokens` of a [V, D] table -> [..., D] in the table's dtype.

  XLA:CPU gathers bf16 by converting the operand to f32; inside the decode loop that convert of the whole table
  was hoisted and ran once per call (125 ms for 270M). An f32 table (the usual master weights) is gathered as is; a
  2-byte one through an integer view, which costs one copy of the table per call (~60 ms for 270M) on the CPU.
  """
  if table.dtype.itemsize != 2:
    return jnp.take(table, tokens, axis=0)
  rows = jnp.take(jax.lax.bitcast_convert_type(table, jnp.uint16), tokens, axis=0)
  return jax.lax.bitcast_convert_type(rows, table.dtype)


def _attend(cfg: ModelConfig, q: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array) -> jax.Array:
  """`attention.dense` on [B*K, S, H] caches (decode steps). q [B, T, N, H], mask bool[B, T, S] -> [B, T, N, H]."""
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


def logits(cfg: ModelConfig, params: DecodingParams, hidden: jax.Array, *, matmul: Matmul = Matmul()) -> jax.Array:
  """hidden f32[B, T, D] -> f32[B, T, V] through the tied embedding (as `Transformer.logits`)."""
  return tfm.softcap(_linear(cfg, hidden, params, "head", matmul), cfg.final_logit_softcap)


def next_token_logits(cfg: ModelConfig, params: DecodingParams, hidden: jax.Array, temperature: float = 1.0, *,
                      matmul: Matmul = Matmul()) -> strategies.Logits:
  """hidden f32[B, D] of a decode step -> `strategies.Logits` (raw logits f32[B, V] and their block summaries).

  A tiled head without a final softcap (Gemma 3) runs `cpu_matvec.amx_head`: logits and summaries in one pass;
  otherwise the logits are summarized in JAX (`strategies.summarize`). Filler rows get zero logits.
  """
  head = params["head"]
  if head.ndim != 4 or cfg.final_logit_softcap is not None:
    return strategies.summarize(logits(cfg, params, hidden[:, None], matmul=matmul)[:, 0], temperature)
  b = hidden.shape[0]
  live = b if matmul.live_rows is None else matmul.live_rows
  values, block_max, block_sum, tempered_sum = cpu_matvec.amx_head(hidden[:live], head, temperature)
  return strategies.Logits(values=_pad_rows(values, b), block_max=_pad_rows(block_max, b),
                           block_sum=_pad_rows(block_sum, b, 1.0), tempered_sum=_pad_rows(tempered_sum, b, 1.0),
                           temperature=temperature, block=cpu_matvec.HEAD_BLOCK)
