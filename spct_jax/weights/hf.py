"""HF transformers Gemma 2 / 3 safetensors checkpoints: read into the flat dict, and export back.

HF stores RMSNorm weights `w` and computes `x * (1 + w)`; we store the folded scale `1 + w` (DESIGN.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import ml_dtypes  # noqa: F401  Registers bfloat16 with numpy so safetensors can read bf16 checkpoints.
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from spct_jax import files
from spct_jax.model.config import ModelConfig
from spct_jax.weights.gguf import flat_shapes, from_torch_linear, layer_shapes, to_torch_linear, torch_linear_shape

# flat key -> HF tensor name suffix (per layer: "layers.{i}." prefix).
_LAYER_NAMES = {
    "attn_norm": "input_layernorm.weight",
    "q_proj": "self_attn.q_proj.weight",
    "k_proj": "self_attn.k_proj.weight",
    "v_proj": "self_attn.v_proj.weight",
    "o_proj": "self_attn.o_proj.weight",
    "q_norm": "self_attn.q_norm.weight",
    "k_norm": "self_attn.k_norm.weight",
    "post_attn_norm": "post_attention_layernorm.weight",
    "ffw_norm": "pre_feedforward_layernorm.weight",
    "post_ffw_norm": "post_feedforward_layernorm.weight",
    "gate_proj": "mlp.gate_proj.weight",
    "up_proj": "mlp.up_proj.weight",
    "down_proj": "mlp.down_proj.weight",
}
# Where the text decoder lives: Gemma2/3ForCausalLM, then Gemma3ForConditionalGeneration (transformers 4 / 5).
_PREFIXES = ("model.", "language_model.model.", "model.language_model.")
_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def _is_norm(key: str) -> bool:
  return key.endswith("norm")


def config_from_hf(d: dict[str, Any], path: str) -> ModelConfig:
  """ModelConfig from a transformers `config.json` dict (model_type gemma2, gemma3_text or gemma3)."""
  model_type = d.get("model_type")
  if model_type == "gemma3":
    d, model_type = d.get("text_config") or {}, "gemma3_text"
  if model_type not in ("gemma2", "gemma3_text"):
    raise ValueError(f"{path}: model_type {model_type!r} is not supported (gemma2, gemma3_text, gemma3)")
  gemma3 = model_type == "gemma3_text"
  act = d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh"
  if act != "gelu_pytorch_tanh" or d.get("attention_bias") or d.get("use_bidirectional_attention"):
    raise ValueError(f"{path}: unsupported variant (hidden_activation={act!r}, attention_bias="
                     f"{d.get('attention_bias')}, use_bidirectional_attention={d.get('use_bidirectional_attention')})")
  layers = int(d.get("num_hidden_layers", 26))
  heads = int(d.get("num_attention_heads", 8))
  local_base, global_base, scale = _rope(d, gemma3, path)
  return ModelConfig(
      num_layers=layers, embed_dim=int(d.get("hidden_size", 2304)), mlp_dim=int(d.get("intermediate_size", 9216)),
      num_heads=heads, num_kv_heads=int(d.get("num_key_value_heads", heads)), head_dim=int(d.get("head_dim", 256)),
      vocab_size=int(d.get("vocab_size", 262_208 if gemma3 else 256_000)),
      query_pre_attn_scalar=float(d.get("query_pre_attn_scalar", 256)),
      sliding_window=int(d.get("sliding_window") or 4096), global_every=_global_every(d, layers, gemma3, path),
      rope_local_base=local_base, rope_global_base=global_base, rope_global_scale=scale,
      attn_logit_softcap=_opt_float(d.get("attn_logit_softcapping", None if gemma3 else 50.0)),
      final_logit_softcap=_opt_float(d.get("final_logit_softcapping", None if gemma3 else 30.0)),
      use_qk_norm=gemma3, rms_eps=float(d.get("rms_norm_eps", 1e-6)),
      max_seq_len=int(d.get("max_position_embeddings", 8192)))


def _opt_float(x) -> float | None:
  return None if x is None else float(x)


def _global_every(d: dict[str, Any], layers: int, gemma3: bool, path: str) -> int:
  pattern = d.get("sliding_window_pattern") or d.get("_sliding_window_pattern") or (6 if gemma3 else 2)
  types = d.get("layer_types")
  if not types:
    return int(pattern)
  full = [i for i, t in enumerate(types) if t == "full_attention"]
  every = full[0] + 1 if full else max(int(pattern), layers + 1)
  expected = ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(layers)]
  if list(types) != expected:
    raise ValueError(f"{path}: layer_types {types} are not 'global every k-th layer' (our scan needs that)")
  return every


def _rope(d: dict[str, Any], gemma3: bool, path: str) -> tuple[float, float, float]:
  """(local base, global base, global linear scale) from transformers 5 `rope_parameters` or 4.x keys."""
  params = d.get("rope_parameters")
  if params and gemma3 and "full_attention" in params:
    local, full = params.get("sliding_attention", {}), params["full_attention"]
  elif params:
    local = full = params
  else:
    full = {"rope_theta": d.get("rope_theta", 1e6 if gemma3 else 1e4), **(d.get("rope_scaling") or {})}
    local = {"rope_theta": d.get("rope_local_base_freq", 1e4) if gemma3 else full["rope_theta"]}
  for name, p in (("sliding", local), ("full", full)):
    if p.get("rope_type", p.get("type", "default")) not in ("default", "linear"):
      raise ValueError(f"{path}: {name}-attention rope type {p.get('rope_type', p.get('type'))!r} is not supported")
  scale = float(full.get("factor", 1.0)) if full.get("rope_type", full.get("type")) == "linear" else 1.0
  return float(local.get("rope_theta", 1e4)), float(full.get("rope_theta", 1e6 if gemma3 else 1e4)), scale


class _Tensors:
  """Lazy name -> (file, shape) index over one or more safetensors files (sharded via the index json)."""

  def __init__(self, folder: pathlib.Path):
    index = folder / "model.safetensors.index.json"
    if index.is_file():
      weight_map = json.loads(index.read_text())["weight_map"]
      files = sorted(set(weight_map.values()))
    else:
      files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
      raise FileNotFoundError(f"{folder}: no *.safetensors files (or model.safetensors.index.json)")
    # What a "missing tensor" error names: the one file, or the index that lists the shards.
    self.source = index if index.is_file() else folder / files[0] if len(files) == 1 else folder
    self._handles, self._where = [], {}
    for name in files:
      path = folder / name
      if not path.is_file():
        raise FileNotFoundError(f"{index}: shard {name!r} does not exist in {folder}")
      handle = safe_open(os.fspath(path), framework="np")
      self._handles.append(handle)
      for key in handle.keys():
        self._where[key] = (path, handle)

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def keys(self):
    return self._where.keys()

  def file(self, name: str) -> pathlib.Path:
    return self._where[name][0]

  def get(self, name: str, expected: tuple[int, ...]) -> np.ndarray:
    """Reads one tensor as float32 after checking its shape (so a bad file fails before any large read)."""
    if name not in self._where:
      raise ValueError(f"{self.source}: tensor {name!r} is missing")
    path, handle = self._where[name]
    shape = tuple(handle.get_slice(name).get_shape())
    if shape != tuple(expected):
      raise ValueError(f"{path}: tensor {name!r} has shape {shape}, expected {tuple(expected)}")
    return np.asarray(handle.get_tensor(name), dtype=np.float32)


def read_hf(folder: str | os.PathLike) -> tuple[ModelConfig, dict[str, np.ndarray]]:
  """Reads a transformers Gemma 2 / 3 checkpoint folder (config.json + safetensors) into (config, flat f32)."""
  folder = pathlib.Path(folder)
  cfg_path = folder / "config.json"
  if not cfg_path.is_file():
    raise FileNotFoundError(f"{folder}: no config.json (expected a transformers checkpoint folder)")
  try:
    cfg = config_from_hf(json.loads(cfg_path.read_text()), os.fspath(cfg_path))
  except json.JSONDecodeError as e:
    raise ValueError(f"{cfg_path}: invalid JSON ({e})") from e
  tensors = _Tensors(folder)
  prefix = next((p for p in _PREFIXES if f"{p}embed_tokens.weight" in tensors), None)
  if prefix is None:
    raise ValueError(f"{tensors.source}: tensor 'model.embed_tokens.weight' is missing")

  embed_name = f"{prefix}embed_tokens.weight"
  flat = {"embedding": tensors.get(embed_name, (cfg.vocab_size, cfg.embed_dim)),
          "final_norm": tensors.get(f"{prefix}norm.weight", (cfg.embed_dim,)) + 1.0}
  for key, shape in layer_shapes(cfg).items():
    stacked = np.empty((cfg.num_layers, *shape), np.float32)
    for i in range(cfg.num_layers):
      w = tensors.get(f"{prefix}layers.{i}.{_LAYER_NAMES[key]}", torch_linear_shape(cfg, key))
      stacked[i] = from_torch_linear(cfg, key, w) + (1.0 if _is_norm(key) else 0.0)
    flat[f"blocks/{key}"] = stacked
  head = next((n for n in ("lm_head.weight", "language_model.lm_head.weight") if n in tensors), None)
  if head is not None and not np.array_equal(tensors.get(head, flat["embedding"].shape), flat["embedding"]):
    raise ValueError(f"{tensors.file(head)}: tensor {head!r} differs from {embed_name!r}; "
                     "only tied embeddings are supported")
  return cfg, flat


def hf_config_dict(cfg: ModelConfig) -> dict[str, Any]:
  """transformers `config.json` for `cfg` (transformers 5 keys plus the 4.x rope keys, which 5 also accepts)."""
  gemma3 = cfg.use_qk_norm
  layer_types = ["full_attention" if k == "global" else "sliding_attention" for k in cfg.layer_kinds]
  d = {
      "architectures": ["Gemma3ForCausalLM" if gemma3 else "Gemma2ForCausalLM"],
      "model_type": "gemma3_text" if gemma3 else "gemma2",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.embed_dim, "intermediate_size": cfg.mlp_dim,
      "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
      # transformers 5 validates this as an int.
      "query_pre_attn_scalar": int(q) if (q := cfg.query_pre_attn_scalar) == int(q) else q,
      "sliding_window": cfg.sliding_window,
      "layer_types": layer_types, "rms_norm_eps": cfg.rms_eps, "max_position_embeddings": cfg.max_seq_len,
      "attn_logit_softcapping": cfg.attn_logit_softcap, "final_logit_softcapping": cfg.final_logit_softcap,
      "hidden_activation": "gelu_pytorch_tanh", "attention_bias": False, "tie_word_embeddings": True,
      "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2, "torch_dtype": "float32",
  }
  full = {"rope_type": "default", "rope_theta": cfg.rope_global_base}
  if cfg.rope_global_scale != 1.0:
    full = {"rope_type": "linear", "rope_theta": cfg.rope_global_base, "factor": cfg.rope_global_scale}
  if gemma3:
    d["rope_parameters"] = {"full_attention": full,
                            "sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_local_base}}
    d.update(rope_theta=cfg.rope_global_base, rope_local_base_freq=cfg.rope_local_base,
             sliding_window_pattern=cfg.global_every,
             rope_scaling={"rope_type": "linear", "factor": cfg.rope_global_scale} if "factor" in full else None)
  else:
    if cfg.rope_local_base != cfg.rope_global_base or cfg.rope_global_scale != 1.0:
      raise ValueError(f"Gemma 2 export needs one unscaled RoPE base; got {dataclasses.asdict(cfg)}")
    d["rope_parameters"] = full
    d["rope_theta"] = cfg.rope_global_base
  return d


def hf_tensors(cfg: ModelConfig, flat: dict[str, np.ndarray], dtype: str = "float32") -> dict[str, np.ndarray]:
  """HF `Gemma{2,3}ForCausalLM` state dict (unfolded norms, torch Linear layouts) from a flat dict."""
  np_dtype = _DTYPES[dtype]
  shapes = flat_shapes(cfg)
  for key, shape in shapes.items():
    if key not in flat:
      raise ValueError(f"flat parameters lack {key!r}")
    if tuple(flat[key].shape) != shape:
      raise ValueError(f"flat parameter {key!r} has shape {tuple(flat[key].shape)}, expected {shape}")

  def conv(x, norm=False):
    x = np.asarray(x, np.float32)
    return np.ascontiguousarray((x - 1.0 if norm else x).astype(np_dtype))

  out = {"model.embed_tokens.weight": conv(flat["embedding"]),
         "model.norm.weight": conv(flat["final_norm"], norm=True)}
  for key in layer_shapes(cfg):
    stacked = flat[f"blocks/{key}"]
    for i in range(cfg.num_layers):
      w = to_torch_linear(cfg, key, np.asarray(stacked[i]))
      out[f"model.layers.{i}.{_LAYER_NAMES[key]}"] = conv(w, norm=_is_norm(key))
  return out


def export_hf(model_or_flat, cfg: ModelConfig, folder: str | os.PathLike, *, dtype: str = "float32",
              tokenizer=None) -> pathlib.Path:
  """Writes `config.json` + `model.safetensors` (+ `tokenizer.model`) that transformers loads.

  Written into a temporary sibling folder and renamed, so `folder` is either complete or absent.
  An existing `folder` is replaced.
  """
  if dtype not in _DTYPES:
    raise ValueError(f"export dtype {dtype!r}; valid: {sorted(_DTYPES)}")
  flat = model_or_flat
  if not isinstance(flat, dict):
    from spct_jax.model.params import flat_from_model  # Deferred: keeps this module importable without flax.
    flat = flat_from_model(model_or_flat)
  tensors = hf_tensors(cfg, flat, dtype)  # Validates before anything is written.
  with files.atomic_path(folder, folder=True) as tmp:
    config = hf_config_dict(cfg) | {"torch_dtype": dtype, "dtype": dtype}
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, os.fspath(tmp / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
      (tmp / "tokenizer.model").write_bytes(tokenizer.serialized_model)
  return pathlib.Path(folder)
