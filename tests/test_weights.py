"""Loaders (GGUF, HF safetensors, orbax), the conversion cache, and their error messages."""

import json
import os

import ml_dtypes
import numpy as np
import pytest
from hf_fixtures import random_flat, toy_tokenizer_meta, write_gguf

import spct_jax.weights as weights
from spct_jax import files
from spct_jax.model import flat_from_model, get_config, model_from_flat
from spct_jax.weights import cache, export_hf, load_model, load_tokenizer, read_gguf, read_hf, read_orbax, save_model
from spct_jax.weights.hf import config_from_hf


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
  path = tmp_path / "cache"
  monkeypatch.setenv("SPCT_CACHE_DIR", str(path))
  return path


def _entries(path):
  return sorted(p.name for p in path.iterdir()) if path.exists() else []


def _assert_flat_equal(a, b):
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_array_equal(np.asarray(a[key], np.float32), np.asarray(b[key], np.float32), err_msg=key)


# ---- GGUF ----


@pytest.mark.parametrize("preset", ["tiny-gemma3", "tiny-gemma2"])
def test_gguf_layouts_and_config(preset, tmp_path):
  cfg = get_config(preset)
  flat = random_flat(cfg)
  path = write_gguf(tmp_path / "m.gguf", cfg, flat)
  got_cfg, got_flat, tok_meta = read_gguf(path)
  # GGUF does not store the global-layer period: llama.cpp fixes it per architecture (Gemma 3: 6, Gemma 2: 2).
  assert got_cfg == cfg.replace(global_every=6 if cfg.use_qk_norm else 2)
  _assert_flat_equal(got_flat, flat)
  assert tok_meta is None


def test_gguf_load_model_is_cached(tmp_path, cache_dir, monkeypatch):
  cfg = get_config("tiny-gemma3")
  flat = random_flat(cfg)
  path = write_gguf(tmp_path / "m.gguf", cfg, flat, tokenizer_meta=toy_tokenizer_meta())
  model, tok = load_model(path)
  _assert_flat_equal(flat_from_model(model), flat)
  assert tok.encode("ab abc") == [2, 269, 270, 267]
  assert len(_entries(cache_dir)) == 1 and not _entries(cache_dir)[0].startswith(".")

  def no_conversion(_):
    raise AssertionError("converted again")

  monkeypatch.setattr(weights, "read_gguf", no_conversion)
  model, tok = load_model(path, dtype="bfloat16", max_seq_len=64)
  assert model.cfg.param_dtype == model.cfg.compute_dtype == "bfloat16" and model.cfg.max_seq_len == 64
  assert model.embedding[...].dtype == ml_dtypes.bfloat16
  assert load_tokenizer(path).serialized_model == tok.serialized_model
  # A changed file is a new key: touching it forces a conversion.
  os.utime(path, ns=(1, 1))
  with pytest.raises(AssertionError, match="converted again"):
    load_model(path)


def test_gguf_tokenizer_without_cache(tmp_path, cache_dir):
  cfg = get_config("tiny-gemma2")
  path = write_gguf(tmp_path / "m.gguf", cfg, random_flat(cfg), tokenizer_meta=toy_tokenizer_meta())
  assert load_tokenizer(path).encode("ab", add_bos=False) == [269]
  assert _entries(cache_dir) == []  # Reading only the vocabulary caches nothing.


def test_gguf_unsupported_architecture(tmp_path, cache_dir):
  cfg = get_config("tiny-gemma3")
  path = write_gguf(tmp_path / "llama.gguf", cfg, random_flat(cfg), arch="llama")
  with pytest.raises(ValueError, match=r"llama\.gguf.*architecture 'llama'"):
    load_model(path)
  assert _entries(cache_dir) == []


def test_gguf_missing_tensor(tmp_path, cache_dir):
  cfg = get_config("tiny-gemma3")
  path = write_gguf(tmp_path / "m.gguf", cfg, random_flat(cfg), skip=("blk.1.ffn_up.weight",))
  with pytest.raises(ValueError, match=r"m\.gguf.*'blk\.1\.ffn_up\.weight' is missing"):
    load_model(path)
  assert _entries(cache_dir) == []


def test_gguf_damaged_file(tmp_path, cache_dir):
  path = tmp_path / "bad.gguf"
  path.write_bytes(b"not a gguf" * 10)
  with pytest.raises(ValueError, match=r"bad\.gguf.*not a readable GGUF"):
    load_model(path)
  assert _entries(cache_dir) == []


# ---- paths ----


def test_missing_and_unknown_paths(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.gguf"):
    load_model(tmp_path / "nope.gguf")
  with pytest.raises(FileNotFoundError, match=r"'gemma9-1t' does not exist; expected .*gemma3-270m.*config\.json"):
    load_model("gemma9-1t")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match=r"empty.*spct_config\.json"):
    load_model(tmp_path / "empty")


# ---- cache ----


def test_cache_failed_or_damaged(cache_dir):
  cfg = get_config("tiny-gemma2")
  flat = random_flat(cfg)
  calls = []

  def convert():
    calls.append(1)
    return cfg, flat, b"tok"

  def failing():
    raise ValueError("conversion failed")

  with pytest.raises(ValueError, match="conversion failed"):
    cache.cached_convert("k", failing)
  assert _entries(cache_dir) == []
  assert cache.cached_convert("k", convert)[2] == b"tok"
  got_cfg, got_flat, tok = cache.cached_convert("k", failing)  # Hit: convert is not called.
  assert got_cfg == cfg and tok == b"tok" and len(calls) == 1
  _assert_flat_equal(got_flat, flat)
  (cache_dir / "k" / "params.safetensors").write_bytes(b"truncated")
  cache.cached_convert("k", convert)  # A damaged entry is rebuilt.
  assert len(calls) == 2 and _entries(cache_dir) == ["k"]
  cache.cached_convert("k", convert, use_cache=False)
  assert len(calls) == 3


def test_config_json_rejects_unknown_fields():
  d = cache.config_to_dict(get_config("tiny-gemma3"))
  assert cache.config_from_dict(d, "x") == get_config("tiny-gemma3")
  with pytest.raises(ValueError, match="cfg.json.*bogus"):
    cache.config_from_dict({**d, "bogus": 1}, "cfg.json")


# ---- HF safetensors ----


def test_hf_config_variants():
  legacy = {"model_type": "gemma3_text", "num_hidden_layers": 12, "hidden_size": 64, "intermediate_size": 128,
            "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 512,
            "query_pre_attn_scalar": 16, "sliding_window": 8, "sliding_window_pattern": 6, "rope_theta": 1e6,
            "rope_local_base_freq": 1e4, "rope_scaling": {"rope_type": "linear", "factor": 8.0}}
  cfg = config_from_hf(legacy, "config.json")
  assert (cfg.global_every, cfg.rope_global_base, cfg.rope_local_base, cfg.rope_global_scale) == (6, 1e6, 1e4, 8.0)
  assert cfg.use_qk_norm and cfg.attn_logit_softcap is None
  assert config_from_hf({"model_type": "gemma3", "text_config": legacy}, "config.json") == cfg
  with pytest.raises(ValueError, match="c.json.*'llama'"):
    config_from_hf({"model_type": "llama"}, "c.json")
  with pytest.raises(ValueError, match="layer_types"):
    config_from_hf({**legacy, "num_hidden_layers": 3,
                    "layer_types": ["full_attention", "sliding_attention", "sliding_attention"]}, "c.json")
  with pytest.raises(ValueError, match="rope type 'yarn'"):
    config_from_hf({**legacy, "rope_scaling": {"rope_type": "yarn", "factor": 8.0}}, "c.json")
  gemma2 = config_from_hf({"model_type": "gemma2", "num_hidden_layers": 4}, "c.json")
  assert (gemma2.attn_logit_softcap, gemma2.final_logit_softcap, gemma2.global_every) == (50.0, 30.0, 2)


@pytest.fixture
def hf_folder(tmp_path):
  from hf_fixtures import write_tiny_hf
  return write_tiny_hf(tmp_path / "hf", "gemma3")


def _rewrite(folder, change):
  from safetensors.numpy import load_file, save_file
  path = folder / "model.safetensors"
  tensors = load_file(path)
  change(tensors)
  save_file(tensors, path)


def test_hf_missing_tensor(hf_folder):
  _rewrite(hf_folder, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  name = r"'model\.layers\.1\.mlp\.up_proj\.weight'"
  with pytest.raises(ValueError, match=rf"model\.safetensors: tensor {name} is missing"):
    load_model(hf_folder)


def test_hf_misshapen_tensor(hf_folder):
  def transpose(t):
    t["model.layers.0.self_attn.k_proj.weight"] = np.ascontiguousarray(t["model.layers.0.self_attn.k_proj.weight"].T)

  _rewrite(hf_folder, transpose)
  with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'model\.layers\.0\.self_attn\.k_proj\.weight' "
                                       r"has shape \(64, 16\), expected \(16, 64\)"):
    load_model(hf_folder)


def test_hf_sharded_checkpoint(hf_folder):
  from safetensors.numpy import load_file, save_file
  tensors = load_file(hf_folder / "model.safetensors")
  expected = read_hf(hf_folder)[1]
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
  for shard, keys in shards.items():
    save_file({k: tensors[k] for k in keys}, hf_folder / shard)
  (hf_folder / "model.safetensors").unlink()
  index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
  (hf_folder / "model.safetensors.index.json").write_text(json.dumps(index))
  _assert_flat_equal(read_hf(hf_folder)[1], expected)
  (hf_folder / "model-00002-of-00002.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
    read_hf(hf_folder)


def test_hf_bfloat16_checkpoint(tmp_path):
  cfg = get_config("tiny-gemma3")
  flat = random_flat(cfg)
  export_hf(flat, cfg, tmp_path / "bf16", dtype="bfloat16")
  got_cfg, got = read_hf(tmp_path / "bf16")
  assert got_cfg == cfg
  for key, value in flat.items():  # Norms travel as bf16(w - 1), hence the looser tolerance there.
    np.testing.assert_allclose(got[key], value, rtol=1e-2, atol=1e-2, err_msg=key)


# ---- orbax ----


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_orbax_round_trip(dtype, tmp_path):
  from spct_jax.tokenizer import Tokenizer
  cfg = get_config("tiny-gemma2", param_dtype=dtype, compute_dtype=dtype)
  model = model_from_flat(cfg, random_flat(cfg))
  tok = Tokenizer.from_gguf_metadata(toy_tokenizer_meta())
  folder = save_model(model, cfg, tmp_path / "ckpt", tokenizer=tok)
  assert sorted(p.name for p in folder.iterdir()) == ["params", "spct_config.json", "tokenizer.model"]
  assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # No temporary folder left.
  got_cfg, got_flat = read_orbax(folder)
  assert got_cfg == cfg
  assert {np.dtype(v.dtype) for v in got_flat.values()} == {np.dtype(cfg.param_jnp_dtype)}
  _assert_flat_equal(got_flat, flat_from_model(model))
  loaded, loaded_tok = load_model(folder, dtype=dtype)
  _assert_flat_equal(flat_from_model(loaded), got_flat)
  assert loaded.cfg.compute_dtype == dtype  # a saved model runs as saved unless told otherwise
  assert load_model(folder, dtype=dtype, compute_dtype="float32")[0].cfg.compute_dtype == "float32"
  assert loaded_tok.serialized_model == tok.serialized_model
  assert load_tokenizer(folder).serialized_model == tok.serialized_model
  save_model(random_flat(cfg, seed=1), cfg, folder)  # Replacing an existing folder.
  _assert_flat_equal(read_orbax(folder)[1], random_flat(cfg, seed=1))
  assert load_tokenizer(folder) is None


# ---- the packaged model (only the cheap parts; parity lives in test_hf_parity.py) ----


@pytest.mark.slow
def test_resolve_gemma3_270m_under_spct_cache_dir(cache_dir):
  path = weights.resolve_gemma3_270m()
  assert path.parent == cache_dir / "gguf" and path.stat().st_size > 200e6
  assert weights.resolve_gemma3_270m() == path  # Second call verifies, does not rewrite.
  assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_failed_writes_leave_nothing(tmp_path):
  cfg = get_config("tiny-gemma3")
  flat = random_flat(cfg)
  flat.pop("blocks/q_norm")
  with pytest.raises(ValueError, match="blocks/q_norm"):
    export_hf(flat, cfg, tmp_path / "out")
  with pytest.raises(RuntimeError, match="midway"):
    with files.atomic_path(tmp_path / "x", folder=True) as tmp:
      (tmp / "partial").write_text("half")
      raise RuntimeError("midway")
  assert list(tmp_path.iterdir()) == []
