"""Cache of converted weights: slow sources (GGUF dequantization) are converted once, then loaded in ~1 s.

An entry is a folder `<cache dir>/<key>/` holding `params.safetensors` (the flat float32 dict), `config.json`
(the source's `ModelConfig`) and, when known, `tokenizer.model`. Entries are built in a temporary folder and
renamed into place, so a failed or interrupted conversion leaves nothing that a later load could pick up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from spct_jax import files
from spct_jax.model.config import ModelConfig

# Bump when the conversion changes, so stale entries are not reused.
FORMAT_VERSION = 1
_PARAMS, _CONFIG, _TOKENIZER = "params.safetensors", "config.json", "tokenizer.model"

Converted = tuple[ModelConfig, dict[str, np.ndarray], bytes | None]
log = logging.getLogger(__name__)


def cache_dir() -> pathlib.Path:
  """`$SPCT_CACHE_DIR`, else `~/.cache/spct_jax`."""
  return pathlib.Path(os.environ.get("SPCT_CACHE_DIR") or pathlib.Path.home() / ".cache" / "spct_jax")


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
  return dataclasses.asdict(cfg)


def config_from_dict(d: dict[str, Any], source: str) -> ModelConfig:
  """Inverse of `config_to_dict`; unknown or missing fields are an error naming `source`."""
  names = {f.name for f in dataclasses.fields(ModelConfig)}
  if unknown := set(d) - names:
    raise ValueError(f"{source}: unknown ModelConfig fields {sorted(unknown)}")
  try:
    return ModelConfig(**d)
  except TypeError as e:
    raise ValueError(f"{source}: invalid ModelConfig ({e})") from e


def file_key(path: str | os.PathLike, tag: str = "") -> str:
  """Key of a source file from its resolved path, size and mtime (cheap: no hashing of the content)."""
  path = pathlib.Path(path).resolve()
  st = path.stat()
  ident = f"{path}|{st.st_size}|{st.st_mtime_ns}|{tag}|v{FORMAT_VERSION}"
  return f"{path.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def content_key(name: str, sha256: str) -> str:
  """Key of a source known by content hash (e.g. a packaged model): valid wherever the file lives."""
  return f"{name}-{sha256[:16]}-v{FORMAT_VERSION}"


def entry_path(key: str) -> pathlib.Path:
  return cache_dir() / key


def read_entry(key: str) -> Converted | None:
  """The cached conversion under `key`, or None when absent."""
  entry = entry_path(key)
  if not (entry / _PARAMS).is_file():
    return None
  cfg = config_from_dict(json.loads((entry / _CONFIG).read_text()), os.fspath(entry / _CONFIG))
  flat = load_file(os.fspath(entry / _PARAMS))
  tok = (entry / _TOKENIZER).read_bytes() if (entry / _TOKENIZER).is_file() else None
  return cfg, flat, tok


def replace_tokenizer(key: str, tokenizer_model: bytes) -> None:
  """Rewrites the entry's `tokenizer.model` (temporary file + rename); a cache that cannot be written is a warning."""
  path = entry_path(key) / _TOKENIZER
  try:
    with files.atomic_write(path, "wb") as f:
      f.write(tokenizer_model)
  except OSError as e:
    log.warning("could not rewrite the cached tokenizer %s: %s", path, e)


def write_entry(key: str, cfg: ModelConfig, flat: dict[str, np.ndarray], tokenizer_model: bytes | None):
  """Writes an entry atomically; a concurrent writer of the same key wins harmlessly."""
  entry = entry_path(key)
  try:
    with files.atomic_path(entry, folder=True, replace=False) as tmp:
      save_file({k: np.ascontiguousarray(v, np.float32) for k, v in flat.items()}, os.fspath(tmp / _PARAMS))
      (tmp / _CONFIG).write_text(json.dumps(config_to_dict(cfg), indent=2) + "\n")
      if tokenizer_model is not None:
        (tmp / _TOKENIZER).write_bytes(tokenizer_model)
  except OSError:
    if not (entry / _PARAMS).is_file():  # Not "another process finished first": a real failure.
      raise


def cached_convert(key: str, convert: Callable[[], Converted], *, use_cache: bool = True) -> Converted:
  """Returns the cached conversion under `key`, else runs `convert()` and caches what it returns.

  `convert` raising leaves the cache untouched. A cache that cannot be read or written only costs time.
  """
  if not use_cache:
    return convert()
  try:
    hit = read_entry(key)
  except (OSError, ValueError, SafetensorError) as e:  # A damaged entry is rebuilt, not fatal.
    log.warning("ignoring damaged cache entry %s: %s", entry_path(key), e)
    shutil.rmtree(entry_path(key), ignore_errors=True)
    hit = None
  if hit is not None:
    return hit
  converted = convert()
  try:
    write_entry(key, *converted)
  except OSError as e:
    log.warning("could not cache converted weights at %s: %s", entry_path(key), e)
  return converted
