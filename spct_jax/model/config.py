"""Architecture config of the Gemma 2 / Gemma 3 text decoders and named presets."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

LayerKind = Literal["local", "global"]
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ATTENTION_IMPLS = ("auto", "blockwise", "dense", "cudnn", "pallas")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """One dataclass for both families; Gemma 2 vs 3 differ only in the flags below.

  Attributes:
    num_layers, embed_dim, mlp_dim, num_heads, num_kv_heads, head_dim, vocab_size: sizes.
    query_pre_attn_scalar: queries are scaled by its inverse square root.
    sliding_window: key window of "local" layers (query i sees key j iff 0 <= i - j < window).
    global_every: layer i is global iff (i + 1) % global_every == 0 (Gemma 2: 2, Gemma 3: 6).
    rope_local_base, rope_global_base: RoPE bases of local and global layers.
    rope_global_scale: linear position scaling on global layers (Gemma 3 >= 4B uses 8; 1 elsewhere).
    attn_logit_softcap, final_logit_softcap: Gemma 2's tanh soft-caps (None = off).
    use_qk_norm: Gemma 3's per-head RMSNorm of q and k before RoPE.
    rms_eps: RMSNorm epsilon.
    max_seq_len: longest sequence (prompt + generation) the model is used with.
    param_dtype: storage dtype of the parameters.
    compute_dtype: dtype of matmul inputs (accumulation, norms, softmax and residual stay float32).
    float32_attention: q.k and probs.v in float32 even when compute_dtype is bf16 (weights matmuls stay bf16): more
      faithful bf16 path for a small cost; set False for speed on long contexts.
    attention_impl: how prefill and training attend (`spct_jax/model/attention.py`): "blockwise" (online softmax,
      O(T) memory, any backend), "dense" (the full score matrix: the reference), "cudnn" (GPU) / "pallas" (TPU
      splash) fused kernels, or "auto": the backend's kernel where it applies, else blockwise (logged). Decode
      steps (one query row) always run dense.
    attention_block_q, attention_block_k: query / key block sizes of the blockwise path.
    remat: recompute each block in the backward pass instead of storing its activations (jax.checkpoint per
      scanned layer): training memory becomes one layer's attention, not all of them. No cost without autodiff.
  """

  num_layers: int
  embed_dim: int
  mlp_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  vocab_size: int
  query_pre_attn_scalar: float
  sliding_window: int
  global_every: int
  rope_local_base: float = 10_000.0
  rope_global_base: float = 10_000.0
  rope_global_scale: float = 1.0
  attn_logit_softcap: float | None = None
  final_logit_softcap: float | None = None
  use_qk_norm: bool = False
  rms_eps: float = 1e-6
  max_seq_len: int = 8192
  param_dtype: str = "float32"
  compute_dtype: str = "float32"
  float32_attention: bool = True
  attention_impl: str = "auto"
  attention_block_q: int = 512
  attention_block_k: int = 512
  remat: bool = True

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    for field in ("param_dtype", "compute_dtype"):
      if getattr(self, field) not in DTYPES:
        raise ValueError(f"ModelConfig.{field}={getattr(self, field)!r}; valid: {sorted(DTYPES)}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"ModelConfig.attention_impl={self.attention_impl!r}; valid: {list(ATTENTION_IMPLS)}")
    if min(self.attention_block_q, self.attention_block_k) < 1:
      raise ValueError(f"attention block sizes must be >= 1, got {self.attention_block_q}, {self.attention_block_k}")

  @property
  def layer_kinds(self) -> tuple[LayerKind, ...]:
    return tuple("global" if (i + 1) % self.global_every == 0 else "local" for i in range(self.num_layers))

  @property
  def param_jnp_dtype(self):
    return DTYPES[self.param_dtype]

  @property
  def compute_jnp_dtype(self):
    return DTYPES[self.compute_dtype]

  @property
  def family(self) -> str:
    return "gemma3" if self.use_qk_norm else "gemma2"

  def replace(self, **changes) -> ModelConfig:
    return dataclasses.replace(self, **changes)


def _gemma2(**kw) -> ModelConfig:
  defaults = dict(global_every=2, sliding_window=4096, attn_logit_softcap=50.0, final_logit_softcap=30.0,
                  vocab_size=256_000, max_seq_len=8192)
  return ModelConfig(**{**defaults, **kw})


def _gemma3(**kw) -> ModelConfig:
  defaults = dict(global_every=6, rope_global_base=1_000_000.0, use_qk_norm=True, vocab_size=262_144)
  return ModelConfig(**{**defaults, **kw})


PRESETS: dict[str, ModelConfig] = {
    "gemma3-270m": _gemma3(num_layers=18, embed_dim=640, mlp_dim=2048, num_heads=4, num_kv_heads=1, head_dim=256,
                           query_pre_attn_scalar=256, sliding_window=512, max_seq_len=32_768),
    "gemma3-1b": _gemma3(num_layers=26, embed_dim=1152, mlp_dim=6912, num_heads=4, num_kv_heads=1, head_dim=256,
                         query_pre_attn_scalar=256, sliding_window=512, max_seq_len=32_768),
    "gemma2-2b": _gemma2(num_layers=26, embed_dim=2304, mlp_dim=9216, num_heads=8, num_kv_heads=4, head_dim=256,
                         query_pre_attn_scalar=256),
    "gemma2-9b": _gemma2(num_layers=42, embed_dim=3584, mlp_dim=14336, num_heads=16, num_kv_heads=8, head_dim=256,
                         query_pre_attn_scalar=256),
    # The paper's base model (spec sec. 7).
    "gemma2-27b": _gemma2(num_layers=46, embed_dim=4608, mlp_dim=36864, num_heads=32, num_kv_heads=16, head_dim=128,
                          query_pre_attn_scalar=144),
    # Tiny configs for tests: every architectural feature on, small enough to compile in seconds.
    "tiny-gemma3": _gemma3(num_layers=3, embed_dim=64, mlp_dim=128, num_heads=4, num_kv_heads=2, head_dim=16,
                           query_pre_attn_scalar=16, sliding_window=8, global_every=3, vocab_size=512,
                           max_seq_len=256),
    "tiny-gemma2": _gemma2(num_layers=2, embed_dim=64, mlp_dim=128, num_heads=4, num_kv_heads=2, head_dim=16,
                           query_pre_attn_scalar=16, sliding_window=8, vocab_size=512, max_seq_len=256),
}


def get_config(name: str, **overrides) -> ModelConfig:
  """Returns preset `name` with field overrides (e.g. `compute_dtype="bfloat16"`)."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; valid: {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)
