"""Value checksums of pytrees: what a checkpoint records at save and compares after restore.

A leaf's digest is two 32-bit sums over its elements, computed on device under `jit`:

  m_i = fmix32(word_i + i * 0x9E3779B9)        (i = row-major position, word = the element's bits as uint32)
  digest = (sum_i m_i, sum_i m_i * (2 i + 1))   mod 2^32

`fmix32` (MurmurHash3's finalizer) is a bijection, so changing any single element always changes the first sum;
several changed elements cancel in both sums with probability about 2^-64. The sums are order-independent, so
the digest is the same for any sharding of the array, on any mesh and process count (a checkpoint saved on one
mesh verifies when restored onto another), and it costs one fused pass over the arrays on whatever device holds
them. It is a corruption check, not a cryptographic hash.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_GOLDEN = 0x9E3779B9


def _fmix32(h: jax.Array) -> jax.Array:
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _words(x: jax.Array) -> jax.Array:
  """The bits of every element as uint32 (64-bit dtypes add a trailing axis of 2 words)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    x = jnp.stack([x.real, x.imag], axis=-1)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = x.dtype.itemsize
  if size >= 4:
    return lax.bitcast_convert_type(x, jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16}[size]
  return lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _digest(x: jax.Array) -> jax.Array:
  """uint32[2] digest of one array (see the module docstring)."""
  w = _words(x)
  # Row-major position from per-axis iotas: no reshape, so a sharded array stays sharded.
  position = jnp.zeros(w.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(w.ndim)):
    position = position + lax.broadcasted_iota(jnp.uint32, w.shape, axis) * jnp.uint32(stride % 2**32)
    stride *= w.shape[axis]
  m = _fmix32(w + position * jnp.uint32(_GOLDEN))
  return jnp.stack([jnp.sum(m, dtype=jnp.uint32), jnp.sum(m * (position * 2 + 1), dtype=jnp.uint32)])


@jax.jit
def _digests(leaves: list[jax.Array]) -> jax.Array:
  return jnp.stack([_digest(x) for x in leaves]) if leaves else jnp.zeros((0, 2), jnp.uint32)


def _host(x: jax.Array) -> np.ndarray:
  # A replicated result of a computation over arrays sharded across processes is read from a local copy.
  return np.asarray(x if x.is_fully_addressable else x.addressable_data(0))


def _leaf_spec(x: Any) -> str:
  x = jnp.asarray(x) if not hasattr(x, "dtype") else x
  return f"{jnp.dtype(x.dtype).name}{list(x.shape)}"


def tree_checksums(tree: Any) -> dict[str, dict[str, str]]:
  """{leaf path: {"spec": "float32[4, 2]", "digest": 16 hex digits}} for every leaf of `tree`.

  Args:
    tree: pytree of jax arrays (possibly sharded across processes; call on every process), numpy arrays or
      Python scalars.

  Returns:
    A JSON-serialisable dict, identical on every process; blocks until computed.
  """
  paths_leaves = jax.tree_util.tree_leaves_with_path(tree)
  leaves = [x if isinstance(x, jax.Array) else jnp.asarray(x) for _, x in paths_leaves]
  digests = _host(_digests(leaves)) if leaves else np.zeros((0, 2), np.uint32)
  return {
      jax.tree_util.keystr(path): {"spec": _leaf_spec(x), "digest": f"{int(a):08x}{int(b):08x}"}
      for (path, _), x, (a, b) in zip(paths_leaves, leaves, digests)
  }


def mismatches(recorded: dict[str, dict[str, str]], tree: Any) -> list[str]:
  """Leaves of `tree` whose checksums differ from `recorded` (from `tree_checksums` at save), described.

  Returns:
    [] when everything matches; else one line per differing, missing or unexpected leaf.
  """
  actual = tree_checksums(tree)
  problems = [f"{path}: missing" for path in recorded if path not in actual]
  problems += [f"{path}: not in the record" for path in actual if path not in recorded]
  for path, want in recorded.items():
    got = actual.get(path)
    if got is None:
      continue
    if got["spec"] != want["spec"]:
      problems.append(f"{path}: saved as {want['spec']}, restored as {got['spec']}")
    elif got["digest"] != want["digest"]:
      problems.append(f"{path}: values differ from what was saved (checksum {got['digest']} != {want['digest']})")
  return problems


RECORD_VERSION = 1


def _json_digest(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def checkpoint_record(params: Any, opt_state: Any, meta: dict) -> dict[str, Any]:
  """What a checkpoint step stores next to its items: per-leaf checksums of params / opt_state, sha256 of meta."""
  return {"version": RECORD_VERSION, "params": tree_checksums(params), "opt_state": tree_checksums(opt_state),
          "meta": _json_digest(meta)}


def structure_mismatch(recorded: dict[str, dict[str, str]], target: Any) -> str | None:
  """None if `target` has exactly the recorded leaf paths (in order), else which ones differ."""
  saved = list(recorded)
  wanted = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(target)]
  if saved == wanted:
    return None
  extra, lacking = sorted(set(wanted) - set(saved))[:5], sorted(set(saved) - set(wanted))[:5]
  return f"target-only leaves {extra}, saved-only leaves {lacking}"


def verify_checkpoint(record: dict[str, Any], params: Any, opt_state: Any, meta: dict) -> list[str]:
  """Every difference between a restored step and its `checkpoint_record` ([] when it is exactly what was saved)."""
  problems = [f"params {p}" for p in mismatches(record["params"], params)]
  problems += [f"opt_state {p}" for p in mismatches(record["opt_state"], opt_state)]
  if _json_digest(meta) != record["meta"]:
    problems.append("meta: content differs from what was saved")
  return problems


__all__ = ["checkpoint_record", "mismatches", "structure_mismatch", "tree_checksums", "verify_checkpoint"]
