"""Test helpers: random tiny HF Gemma 2 / 3 checkpoints (written by transformers itself), tiny GGUF files."""

from __future__ import annotations

import os
import pathlib

import numpy as np

from spct_jax.model.config import ModelConfig
from spct_jax.weights.gguf import flat_shapes, layer_shapes, to_torch_linear

# Every feature that differs between the families is switched on and small enough to matter:
# sliding window 8 < the test sequences, soft-caps that actually bite, query_pre_attn_scalar != head_dim (Gemma 2),
# a linear RoPE scale on Gemma 3's global layers.
TINY_HF = {
    "gemma2": dict(num_hidden_layers=3, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, vocab_size=512, sliding_window=8, query_pre_attn_scalar=24,
                   attn_logit_softcapping=2.0, final_logit_softcapping=5.0, max_position_embeddings=256),
    "gemma3": dict(num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                   num_key_value_heads=1, head_dim=16, vocab_size=512, sliding_window=8, query_pre_attn_scalar=16,
                   sliding_window_pattern=2, rope_theta=100_000.0, rope_local_base_freq=10_000.0,
                   rope_scaling={"rope_type": "linear", "factor": 2.0}, max_position_embeddings=256),
}


def write_tiny_hf(folder: str | os.PathLike, family: str, *, seed: int = 0, **overrides) -> pathlib.Path:
  """Saves a randomly initialised `Gemma{2,3}ForCausalLM` (float32, every weight random, norms too)."""
  import torch
  import transformers

  kw = {**TINY_HF[family], **overrides}
  if family == "gemma2":
    config, cls = transformers.Gemma2Config(**kw), transformers.Gemma2ForCausalLM
  else:
    config, cls = transformers.Gemma3TextConfig(**kw), transformers.Gemma3ForCausalLM
  torch.manual_seed(seed)
  model = cls(config).to(torch.float32)
  with torch.no_grad():
    for name, p in model.named_parameters():
      # Random norms exercise the +1 folding; HF initialises them to 0 (scale 1), which would hide it.
      p.normal_(0.0, 0.3 if "norm" in name else 0.08)
  folder = pathlib.Path(folder)
  model.save_pretrained(folder, safe_serialization=True)
  return folder


def load_hf(folder: str | os.PathLike, **kwargs):
  """transformers model in float32 eval mode, eager attention (the reference implementation of soft-capping)."""
  import torch
  import transformers

  model = transformers.AutoModelForCausalLM.from_pretrained(
      os.fspath(folder), dtype=torch.float32, attn_implementation="eager", **kwargs)
  return model.eval()


def load_hf_gguf(path: str | os.PathLike):
  """transformers' own GGUF reading (config, tensor names, norm handling, dequantization) into its model class.

  Equivalent to `from_pretrained(dir, gguf_file=...)`, which in transformers 5 insists on `accelerate` (absent here).
  """
  import torch
  import transformers
  from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

  path = pathlib.Path(path)
  config = transformers.AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
  tensors = load_gguf_checkpoint(os.fspath(path), return_tensors=True, model_to_load=model)["tensors"]
  missing, unexpected = model.load_state_dict(tensors, strict=False)
  assert missing == ["lm_head.weight"] and not unexpected, (missing, unexpected)
  model.tie_weights()
  return model.eval()


def hf_logits(model, tokens: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
  """f32 logits [B, T, V]; with a mask, positions count real tokens only (as ours do for left padding)."""
  import torch

  tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
  kwargs = {}
  if mask is not None:
    m = torch.as_tensor(np.asarray(mask), dtype=torch.long)
    kwargs = dict(attention_mask=m, position_ids=(m.cumsum(-1) - 1).clamp(min=0))
  with torch.no_grad():
    return model(input_ids=tokens, **kwargs).logits.float().numpy()


def left_padded_batch(rng: np.random.Generator, vocab: int, length: int, pads: list[int]):
  """tokens int32[B, T] and mask int32[B, T]; row b has pads[b] leading pad (id 0) slots."""
  tokens = rng.integers(1, vocab, size=(len(pads), length)).astype(np.int32)
  mask = np.ones_like(tokens)
  for b, p in enumerate(pads):
    tokens[b, :p], mask[b, :p] = 0, 0
  return tokens, mask


def random_flat(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
  """Random flat parameters in the DESIGN.md layout (norms around 1, as folded scales are)."""
  rng = np.random.default_rng(seed)
  flat = {}
  for key, shape in flat_shapes(cfg).items():
    base = 1.0 if key.endswith("norm") else 0.0
    flat[key] = (base + 0.1 * rng.standard_normal(shape)).astype(np.float32)
  return flat


def toy_tokenizer_meta() -> dict:
  """A small GGUF-style sentencepiece vocabulary with Gemma's quirks (unk marked CONTROL, a literal-space piece)."""
  control, user, normal, byte = 3, 4, 1, 6
  pieces = [("<pad>", control), ("<eos>", control), ("<bos>", control), ("<unk>", control),
            ("<start_of_turn>", control), ("<end_of_turn>", control)]
  pieces += [(f"<0x{b:02X}>", byte) for b in range(256)]
  pieces += [("\n", user), ("  ", user)]
  pieces += [(p, normal) for p in ("\u2581", "a", "b", "c", "\u2581a", "ab", "\u2581ab", "1", "2")]
  return {"tokens": [p for p, _ in pieces], "types": np.array([t for _, t in pieces], np.int32),
          "scores": -np.arange(len(pieces), dtype=np.float32), "bos_id": 2, "eos_id": 1, "unk_id": 3, "pad_id": 0}


_GGUF_NAMES = {
    "attn_norm": "attn_norm", "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
    "q_norm": "attn_q_norm", "k_norm": "attn_k_norm", "post_attn_norm": "post_attention_norm",
    "ffw_norm": "ffn_norm", "post_ffw_norm": "post_ffw_norm", "gate_proj": "ffn_gate", "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}


def write_gguf(path: str | os.PathLike, cfg: ModelConfig, flat: dict[str, np.ndarray], *, arch: str | None = None,
               skip: tuple[str, ...] = (), tokenizer_meta: dict | None = None) -> pathlib.Path:
  """Writes an F32 GGUF the way llama.cpp's converter lays Gemma out (torch Linear shapes, folded norms).

  Args:
    arch: architecture to declare (default: the config's family); e.g. "llama" to test rejection.
    skip: GGUF tensor names to leave out (to test the missing-tensor error).
    tokenizer_meta: vocabulary to store as `tokenizer.ggml.*` (e.g. `toy_tokenizer_meta()`).
  """
  import gguf

  arch = arch or cfg.family
  writer = gguf.GGUFWriter(os.fspath(path), arch)
  writer.add_context_length(cfg.max_seq_len)
  writer.add_embedding_length(cfg.embed_dim)
  writer.add_block_count(cfg.num_layers)
  writer.add_feed_forward_length(cfg.mlp_dim)
  writer.add_head_count(cfg.num_heads)
  writer.add_head_count_kv(cfg.num_kv_heads)
  writer.add_key_length(cfg.head_dim)
  writer.add_value_length(cfg.head_dim)
  writer.add_layer_norm_rms_eps(cfg.rms_eps)
  writer.add_sliding_window(cfg.sliding_window)
  writer.add_rope_freq_base(cfg.rope_global_base)
  if cfg.attn_logit_softcap is not None:
    writer.add_attn_logit_softcapping(cfg.attn_logit_softcap)
    writer.add_final_logit_softcapping(cfg.final_logit_softcap)
  if tokenizer_meta is not None:
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokenizer_meta["tokens"])
    writer.add_token_scores(list(map(float, tokenizer_meta["scores"])))
    writer.add_token_types(list(map(int, tokenizer_meta["types"])))
    for key in ("bos", "eos", "unk", "pad"):
      getattr(writer, f"add_{key}_token_id")(tokenizer_meta[f"{key}_id"])
  tensors = {"token_embd.weight": flat["embedding"], "output_norm.weight": flat["final_norm"]}
  for key in layer_shapes(cfg):
    for i in range(cfg.num_layers):
      tensors[f"blk.{i}.{_GGUF_NAMES[key]}.weight"] = to_torch_linear(cfg, key, flat[f"blocks/{key}"][i])
  for name, value in tensors.items():
    if name not in skip:
      writer.add_tensor(name, np.ascontiguousarray(value, np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return pathlib.Path(path)
