"""Gemma 2 / Gemma 3 text decoder in Flax NNX.

Layers are stacked (leading `layers` axis) and run under `jax.lax.scan`, so one block is compiled whatever the depth.
The block is made of pure functions of its parameters (`_project_qkv`, `attention.attend`, `_finish_block`), which
keeps the math readable; the sampler's decoder (`decoding.py`, with its KV cache and fused projections) reuses the
norms, `_rotate_qk` and `_dot`. Attention is given positions, never a [B, T, S] mask (`attention.py`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from spct_jax.model import attention
from spct_jax.model.attention import softcap
from spct_jax.model.config import ModelConfig

_MASKED = attention.MASKED


# Stacked block parameters: name -> (shape builder, logical axes). Shapes exclude the leading layer axis.
def _block_param_specs(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
  d, n, k, h, f = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  specs = {
      "attn_norm": ((d,), ("embed",)),
      "q_proj": ((d, n, h), ("embed", "heads", "head_dim")),
      "k_proj": ((d, k, h), ("embed", "kv_heads", "head_dim")),
      "v_proj": ((d, k, h), ("embed", "kv_heads", "head_dim")),
      "o_proj": ((n, h, d), ("heads", "head_dim", "embed")),
      "post_attn_norm": ((d,), ("embed",)),
      "ffw_norm": ((d,), ("embed",)),
      "gate_proj": ((d, f), ("embed", "mlp")),
      "up_proj": ((d, f), ("embed", "mlp")),
      "down_proj": ((f, d), ("mlp", "embed")),
      "post_ffw_norm": ((d,), ("embed",)),
  }
  if cfg.use_qk_norm:
    specs["q_norm"] = ((h,), ("head_dim",))
    specs["k_norm"] = ((h,), ("head_dim",))
  return specs


def param_logical_axes(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
  """Flat parameter key -> logical axis names (the table in docs/DESIGN.md)."""
  axes = {"embedding": ("vocab", "embed"), "final_norm": ("embed",)}
  for name, (_, logical) in _block_param_specs(cfg).items():
    axes[f"blocks/{name}"] = ("layers", *logical)
  return axes


class Blocks(nnx.Module):
  """All decoder blocks' parameters, stacked along a leading `layers` axis."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    dtype = cfg.param_jnp_dtype
    for name, (shape, logical) in _block_param_specs(cfg).items():
      full_shape = (cfg.num_layers, *shape)
      if name.endswith("norm"):
        value = jnp.ones(full_shape, dtype)  # folded convention: scale multiplies directly
      else:
        fan_in = shape[0] if name != "o_proj" else shape[0] * shape[1]
        value = jax.random.normal(rngs.params(), full_shape, dtype) / math.sqrt(fan_in)
      setattr(self, name, nnx.Param(value, logical_axes=("layers", *logical)))

  def as_dict(self) -> dict[str, jax.Array]:
    return {name: getattr(self, name)[...] for name in vars(self) if isinstance(getattr(self, name), nnx.Param)}


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """RMSNorm in float32 with a folded scale (GGUF convention; HF's `1 + w` is added at load time)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * scale.astype(jnp.float32)


def rope_tables(positions: jax.Array, head_dim: int, base: float, scale: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """sin, cos: f32[B, T, H/2] for rotate-half RoPE."""
  fraction = 2 * jnp.arange(head_dim // 2, dtype=jnp.float32) / head_dim
  timescale = base**fraction
  angles = (positions.astype(jnp.float32) / scale)[..., None] / timescale
  return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
  """x: [B, T, heads, H]; rotate-half layout (first half pairs with second half)."""
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  sin, cos = sin[:, :, None, :], cos[:, :, None, :]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


make_attention_mask = attention.visible  # bool[B, T, S] (decode steps: T = 1)


def default_positions(attention_mask_: jax.Array) -> jax.Array:
  """Positions of a left-padded batch: 0 at the first real token; padding gets 0 (it is masked anyway)."""
  return jnp.maximum(jnp.cumsum(attention_mask_.astype(jnp.int32), axis=-1) - 1, 0)


class Transformer(nnx.Module):
  """Gemma 2 / 3 decoder. `model(tokens)` gives f32 logits; `hidden_states` + `logits` split trunk and head."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dtype = cfg.param_jnp_dtype
    self.embedding = nnx.Param(
        jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.embed_dim), dtype) / math.sqrt(cfg.embed_dim),
        logical_axes=("vocab", "embed"))
    self.blocks = Blocks(cfg, rngs=rngs)
    self.final_norm = nnx.Param(jnp.ones((cfg.embed_dim,), dtype), logical_axes=("embed",))

  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               attention_mask: jax.Array | None = None) -> jax.Array:
    """tokens: int32[B, T] -> logits f32[B, T, V]."""
    return self.logits(self.hidden_states(tokens, positions, attention_mask))

  def logits(self, hidden: jax.Array) -> jax.Array:
    """hidden f32[B, T, D] (after the final norm) -> f32[B, T, V] through the tied embedding."""
    logits = _dot("btd,vd->btv", hidden, self.embedding[...], self.cfg)
    return softcap(logits, self.cfg.final_logit_softcap)

  def hidden_states(self, tokens: jax.Array, positions: jax.Array | None = None,
                    attention_mask: jax.Array | None = None, segment_ids: jax.Array | None = None) -> jax.Array:
    """Runs embedding + blocks + final norm.

    Args:
      tokens: int32[B, T].
      positions: int32[B, T]; default from the mask (left padding). Packed rows restart them per segment.
      attention_mask: [B, T], 1 for real tokens; default all ones.
      segment_ids: int32[B, T] for packed rows: a token attends only to its own segment; None: one per row.

    Returns:
      hidden f32[B, T, D] after the final norm.
    """
    cfg = self.cfg
    if attention_mask is None:
      attention_mask = jnp.ones(tokens.shape, jnp.bool_)
    attention_mask = attention_mask.astype(jnp.bool_)
    self_layout = positions is None  # default positions: the fused kernels apply
    if positions is None:
      positions = default_positions(attention_mask)
    key_positions = jnp.where(attention_mask, positions, -1).astype(jnp.int32)

    x = self.embedding[...][tokens].astype(jnp.float32) * math.sqrt(cfg.embed_dim)
    ropes = {"local": rope_tables(positions, cfg.head_dim, cfg.rope_local_base),
             "global": rope_tables(positions, cfg.head_dim, cfg.rope_global_base, cfg.rope_global_scale)}
    is_global = jnp.array([kind == "global" for kind in cfg.layer_kinds])
    dtype = cfg.compute_jnp_dtype

    def layer(x, xs):
      params, layer_is_global = xs
      pick = lambda local, glob: jax.tree.map(lambda a, b: jnp.where(layer_is_global, b, a), local, glob)
      q, k, v = _project_qkv(cfg, params, x, pick(ropes["local"], ropes["global"]))
      attended = attention.attend(cfg, q, _kv_major(k, dtype), _kv_major(v, dtype), positions, key_positions,
                                  local=~layer_is_global, self_layout=self_layout, segment_ids=segment_ids)
      return _finish_block(cfg, params, x, attended), None

    if cfg.remat:
      layer = jax.checkpoint(layer)
    x, _ = jax.lax.scan(layer, x, (self.blocks.as_dict(), is_global))
    return rms_norm(x, self.final_norm[...], cfg.rms_eps)

  def shared_prefix_hidden_states(self, prefix_tokens: jax.Array, prefix_mask: jax.Array, row_source: jax.Array,
                                  suffix_tokens: jax.Array, suffix_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Hidden states of R sequences `prefix[row_source[r]] + suffix[r]`, each distinct prefix computed once.

    GRPO's G samples of an item share its (long) prompt: the prompt rows run once per item, and every completion
    row attends to its prompt's keys gathered by `row_source`. Gradients sum through the gather, so this is the
    same function as running the R concatenated rows, at 1/G of the prompt cost.

    Args:
      prefix_tokens, prefix_mask: [P, T] left-padded prompts.
      row_source: int32[R] prompt of each row.
      suffix_tokens, suffix_mask: [R, N] right-padded continuations (mask 1 = real token).

    Returns:
      (prefix hidden f32[P, T, D], suffix hidden f32[R, N, D]), after the final norm.
    """
    cfg = self.cfg
    prefix_mask, suffix_mask = prefix_mask.astype(jnp.bool_), suffix_mask.astype(jnp.bool_)
    prefix_pos = default_positions(prefix_mask)
    suffix_pos = jnp.take(prefix_pos[:, -1], row_source)[:, None] + 1 + jnp.arange(suffix_tokens.shape[1])
    prefix_keys = jnp.where(prefix_mask, prefix_pos, -1)
    joint_keys = jnp.concatenate([jnp.take(prefix_keys, row_source, axis=0),
                                  jnp.where(suffix_mask, suffix_pos, -1)], axis=1)
    bases = {"local": (cfg.rope_local_base, 1.0), "global": (cfg.rope_global_base, cfg.rope_global_scale)}
    ropes = {kind: (rope_tables(prefix_pos, cfg.head_dim, *b), rope_tables(suffix_pos, cfg.head_dim, *b))
             for kind, b in bases.items()}
    embed = lambda t: self.embedding[...][t].astype(jnp.float32) * math.sqrt(cfg.embed_dim)
    is_global = jnp.array([kind == "global" for kind in cfg.layer_kinds])
    dtype = cfg.compute_jnp_dtype

    def layer(carry, xs):
      xp, xs_ = carry
      params, layer_is_global = xs
      pick = lambda tree: jax.tree.map(lambda a, b: jnp.where(layer_is_global, b, a), tree["local"], tree["global"])
      rope_p, rope_s = pick(ropes)
      qp, kp, vp = _project_qkv(cfg, params, xp, rope_p)
      qs, ks, vs = _project_qkv(cfg, params, xs_, rope_s)
      kp, vp, ks, vs = (_kv_major(a, dtype) for a in (kp, vp, ks, vs))
      keys = jnp.concatenate([jnp.take(kp, row_source, axis=0), ks], axis=2)
      values = jnp.concatenate([jnp.take(vp, row_source, axis=0), vs], axis=2)
      local = ~layer_is_global
      attended_p = attention.attend(cfg, qp, kp, vp, prefix_pos, prefix_keys, local=local, self_layout=True)
      attended_s = attention.attend(cfg, qs, keys, values, suffix_pos, joint_keys, local=local)
      return (_finish_block(cfg, params, xp, attended_p), _finish_block(cfg, params, xs_, attended_s)), None

    if cfg.remat:
      layer = jax.checkpoint(layer)
    (xp, xs_), _ = jax.lax.scan(layer, (embed(prefix_tokens), embed(suffix_tokens)), (self.blocks.as_dict(), is_global))
    norm = lambda x: rms_norm(x, self.final_norm[...], cfg.rms_eps)
    return norm(xp), norm(xs_)


def _dot(equation: str, a: jax.Array, b: jax.Array, cfg: ModelConfig, *, attention: bool = False) -> jax.Array:
  """Matmul in the compute dtype with f32 accumulation (bf16 on AMX/TPU/GPU is the fast path)."""
  dtype = jnp.float32 if attention and cfg.float32_attention else cfg.compute_jnp_dtype
  precision = jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None
  dot = functools.partial(jnp.einsum, equation, preferred_element_type=jnp.float32, precision=precision)
  a, b = a.astype(dtype), b.astype(dtype)
  lhs, out = equation.split("->")[0].split(",")[0], equation.split("->")[1]
  rows = math.prod(size for size, letter in zip(a.shape, lhs) if letter in out)
  if dtype != jnp.float32 and rows == 1 and lhs[0] == out[0] and jax.default_backend() == "cpu":
    # XLA:CPU runs a one-row bf16 matmul (batch-1 decode, the LM head of one prompt) ~15x slower than two rows
    # (200 vs 12 ms for the 262k x 640 head here): compute a zero second row and drop it.
    return dot(jnp.concatenate([a, jnp.zeros_like(a)], axis=0), b)[:1]
  return dot(a, b)


def _project_qkv(cfg: ModelConfig, p: dict[str, jax.Array], x: jax.Array,
                 rope: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
  """q f32[B, T, N, H] (scaled), k f32[B, T, K, H] (after RoPE), v [B, T, K, H]."""
  h = rms_norm(x, p["attn_norm"], cfg.rms_eps)
  q = _dot("btd,dnh->btnh", h, p["q_proj"], cfg)
  k = _dot("btd,dkh->btkh", h, p["k_proj"], cfg)
  v = _dot("btd,dkh->btkh", h, p["v_proj"], cfg)
  return _rotate_qk(cfg, p, q, k, v, rope)


def _rotate_qk(cfg: ModelConfig, p: dict[str, jax.Array], q: jax.Array, k: jax.Array, v: jax.Array,
               rope: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
  """After the projections: qk-norm (Gemma 3), RoPE, and the query scale."""
  if cfg.use_qk_norm:
    q = rms_norm(q, p["q_norm"], cfg.rms_eps)
    k = rms_norm(k, p["k_norm"], cfg.rms_eps)
  sin, cos = rope
  return apply_rope(q, sin, cos) * cfg.query_pre_attn_scalar**-0.5, apply_rope(k, sin, cos), v


def _kv_major(x: jax.Array, dtype) -> jax.Array:
  """Keys or values [B, T, K, H] -> [B, K, T, H] in `dtype` (the layout `attention.attend` takes)."""
  return x.astype(dtype).swapaxes(1, 2)


def _finish_block(cfg: ModelConfig, p: dict[str, jax.Array], x: jax.Array, attended: jax.Array) -> jax.Array:
  """Output projection, post-attention norm, residual, then the GeGLU MLP with its norms and residual."""
  attn_out = _dot("btnh,nhd->btd", attended, p["o_proj"], cfg)
  x = x + rms_norm(attn_out, p["post_attn_norm"], cfg.rms_eps)
  h = rms_norm(x, p["ffw_norm"], cfg.rms_eps)
  gate = _dot("btd,df->btf", h, p["gate_proj"], cfg)
  up = _dot("btd,df->btf", h, p["up_proj"], cfg)
  mlp_out = _dot("btf,fd->btd", jax.nn.gelu(gate, approximate=True) * up, p["down_proj"], cfg)
  return x + rms_norm(mlp_out, p["post_ffw_norm"], cfg.rms_eps)
