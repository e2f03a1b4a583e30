"""The flat parameter dict every loader produces and every exporter consumes, and its conversion to/from a model.

Keys and layouts are the table in docs/DESIGN.md (`embedding`, `final_norm`, `blocks/<name>` stacked over layers).
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spct_jax.model.config import ModelConfig
from spct_jax.model.transformer import Transformer, param_logical_axes


def abstract_model(cfg: ModelConfig) -> Transformer:
  """A model whose parameters are ShapeDtypeStructs: no memory is allocated."""
  return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  _, state = nnx.split(abstract_model(cfg))
  return {"/".join(map(str, path)): tuple(v.shape) for path, v in _flat_variables(state)}


def _flat_variables(state):
  for path, variable in nnx.to_flat_state(state):
    yield path, variable.get_value() if hasattr(variable, "get_value") else variable


def model_from_flat(cfg: ModelConfig, flat: Mapping[str, np.ndarray], *, mesh: jax.sharding.Mesh | None = None,
                    rules=None, source: str = "parameters") -> Transformer:
  """Builds a model from a flat dict, placing each tensor directly with its sharding when a mesh is given.

  Args:
    cfg: architecture; parameters are cast to `cfg.param_dtype`.
    flat: key -> array (numpy or memory-mapped; only each device's slice is read when sharded).
    mesh, rules: shard by the parameters' logical axes (see spct_jax.sharding); None = default device.
    source: name of the file/folder the tensors came from, for error messages.

  Raises:
    ValueError: a key is missing, unexpected, or has the wrong shape (names `source` and the tensor).
  """
  check_flat(cfg, flat, source)
  graphdef, state = nnx.split(abstract_model(cfg))
  dtype = cfg.param_jnp_dtype
  place = _placer(cfg, mesh, rules)

  def fill(path, variable):
    key = "/".join(map(str, path))
    return variable.replace(place(key, np.asarray(flat[key]).astype(dtype, copy=False)))

  filled = nnx.from_flat_state([(path, fill(path, v)) for path, v in nnx.to_flat_state(state)])
  return nnx.merge(graphdef, filled)


def _placer(cfg: ModelConfig, mesh, rules) -> Callable[[str, np.ndarray], jax.Array]:
  if mesh is None:
    return lambda key, value: jnp.asarray(value)
  from spct_jax import sharding  # pylint: disable=g-import-not-at-top

  axes = param_logical_axes(cfg)
  rules = sharding.DEFAULT_RULES if rules is None else rules
  return lambda key, value: sharding.put_sharded(
      value, jax.sharding.NamedSharding(mesh, sharding.spec_for(value.shape, axes[key], mesh, rules)))


def check_flat(cfg: ModelConfig, flat: Mapping[str, np.ndarray], source: str) -> None:
  expected = expected_shapes(cfg)
  missing = sorted(set(expected) - set(flat))
  if missing:
    raise ValueError(f"{source}: missing tensor(s) {missing}")
  unexpected = sorted(set(flat) - set(expected))
  if unexpected:
    raise ValueError(f"{source}: unexpected tensor(s) {unexpected} for a {cfg.family} config")
  for key, shape in expected.items():
    found = tuple(np.shape(flat[key]))
    if found != shape:
      raise ValueError(f"{source}: tensor {key!r} has shape {found}, expected {shape}")


def flat_from_model(model: Transformer) -> dict[str, np.ndarray]:
  """Gathers every parameter to host memory as numpy (sharded arrays too; with parameters sharded across
  processes this is a collective, `multihost.to_host`: every process must call it)."""
  from spct_jax import multihost  # pylint: disable=g-import-not-at-top

  _, state = nnx.split(model, nnx.Param)
  flat = {"/".join(map(str, path)): value for path, value in _flat_variables(state)}
  return {key: np.asarray(value) for key, value in multihost.to_host(flat).items()}
