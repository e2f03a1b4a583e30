"""A model as an orbax folder: `params/` (orbax PyTree checkpoint), `spct_config.json`, optional `tokenizer.model`.

The parameters are saved in the flat-dict layout (nested as {"embedding", "final_norm", "blocks": {...}}), so the
folder is independent of the NNX module structure and readable by every loader path.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import ml_dtypes  # noqa: F401  bfloat16 numpy arrays round-trip through orbax.
import numpy as np

from spct_jax import files
from spct_jax.model.config import ModelConfig
from spct_jax.weights.cache import config_from_dict, config_to_dict

CONFIG_NAME = "spct_config.json"
PARAMS_DIR = "params"
TOKENIZER_NAME = "tokenizer.model"


def _nest(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for key, value in flat.items():
    *parents, leaf = key.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = np.asarray(value)
  return out


def _this_process_checkpointer():
  """An orbax checkpointer for host (numpy) data that this process writes alone: in a multi-process job only
  process 0 saves a model folder, and orbax's default would wait for the other processes at its barriers."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  if jax.process_count() == 1:
    return ocp.PyTreeCheckpointer()
  me = jax.process_index()
  alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
  return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=alone), multiprocessing_options=alone)


def save_model(model_or_flat, cfg: ModelConfig, folder: str | os.PathLike, *, tokenizer=None) -> pathlib.Path:
  """Saves parameters (in their current dtype), config and tokenizer; replaces an existing `folder`.

  Everything is written into a temporary sibling folder and renamed, so `folder` is complete or absent.
  Single-process helper (training checkpoints go through spct_jax.checkpoint).
  """
  import orbax.checkpoint as ocp  # Deferred: only saving / loading pays for the import.

  flat = model_or_flat
  if not isinstance(flat, dict):
    from spct_jax.model.params import flat_from_model
    flat = flat_from_model(model_or_flat)
  with files.atomic_path(folder, folder=True) as tmp:
    with _this_process_checkpointer() as ckptr:
      ckptr.save(tmp / PARAMS_DIR, _nest({k: np.asarray(v) for k, v in flat.items()}))
    (tmp / CONFIG_NAME).write_text(json.dumps(config_to_dict(cfg), indent=2) + "\n")
    if tokenizer is not None:
      (tmp / TOKENIZER_NAME).write_bytes(tokenizer.serialized_model)
  return pathlib.Path(folder)


def read_orbax(folder: str | os.PathLike) -> tuple[ModelConfig, dict[str, np.ndarray]]:
  """Reads (config, flat numpy dict in the saved dtype) from a `save_model` folder."""
  import orbax.checkpoint as ocp

  folder = pathlib.Path(folder).absolute()
  cfg_path = folder / CONFIG_NAME
  if not cfg_path.is_file():
    raise FileNotFoundError(f"{folder}: no {CONFIG_NAME} (expected a folder written by save_model)")
  try:
    cfg = config_from_dict(json.loads(cfg_path.read_text()), os.fspath(cfg_path))
  except json.JSONDecodeError as e:
    raise ValueError(f"{cfg_path}: invalid JSON ({e})") from e
  if not (folder / PARAMS_DIR).is_dir():
    raise FileNotFoundError(f"{folder}: no {PARAMS_DIR}/ orbax checkpoint beside {CONFIG_NAME}")
  with ocp.PyTreeCheckpointer() as ckptr:
    tree = ckptr.restore(folder / PARAMS_DIR)
  return cfg, _flatten(tree)


def orbax_tokenizer_bytes(folder: str | os.PathLike) -> bytes | None:
  path = pathlib.Path(folder) / TOKENIZER_NAME
  return path.read_bytes() if path.is_file() else None
