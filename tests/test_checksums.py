"""Value checksums: the formula against numpy, single-element sensitivity, sharding invariance, the record."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from spct_jax import checksums


def _fmix32(h):
  h = h ^ (h >> np.uint32(16))
  h = h * np.uint32(0x85EBCA6B)
  h = h ^ (h >> np.uint32(13))
  h = h * np.uint32(0xC2B2AE35)
  return h ^ (h >> np.uint32(16))


def reference_digest(x: np.ndarray) -> str:
  """The module docstring's formula in numpy (uint32 arithmetic wraps like mod 2^32)."""
  words = x.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]).astype(np.uint32).reshape(-1)
  i = np.arange(words.size, dtype=np.uint32)
  with np.errstate(over="ignore"):
    m = _fmix32(words + i * np.uint32(0x9E3779B9))
    a = np.sum(m, dtype=np.uint32)
    b = np.sum(m * (i * np.uint32(2) + np.uint32(1)), dtype=np.uint32)
  return f"{int(a):08x}{int(b):08x}"


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.int32, np.int8, np.uint16])
def test_digest_matches_the_formula(dtype):
  x = (np.random.default_rng(0).normal(size=(3, 5, 7)) * 50).astype(dtype)
  got = checksums.tree_checksums({"x": jnp.asarray(x)})
  assert got == {"['x']": {"spec": f"{jnp.dtype(dtype).name}[3, 5, 7]", "digest": reference_digest(x)}}


def test_every_single_element_change_is_seen():
  x = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
  base = checksums.tree_checksums({"x": x})
  for flat in range(x.size):
    y = x.copy().reshape(-1)
    y[flat] = np.nextafter(y[flat], np.inf)  # the smallest possible change: one ulp
    assert checksums.mismatches(base, {"x": y.reshape(x.shape)}), flat
  swapped = x.copy()
  swapped[[0, 1]] = swapped[[1, 0]]  # same values, other positions
  assert checksums.mismatches(base, {"x": swapped})
  assert checksums.mismatches(base, {"x": x}) == []


def test_bool_and_scalars():
  tree = {"mask": jnp.array([True, False, True]), "count": jnp.int32(3), "lr": 0.5}
  record = checksums.tree_checksums(tree)
  assert [record[k]["spec"] for k in ("['count']", "['lr']", "['mask']")] == ["int32[]", "float32[]", "bool[3]"]
  changed = {**tree, "mask": jnp.array([True, True, True])}
  want, got = record["['mask']"]["digest"], checksums.tree_checksums(changed)["['mask']"]["digest"]
  assert checksums.mismatches(record, changed) == [
      f"['mask']: values differ from what was saved (checksum {got} != {want})"]


def test_same_digest_on_any_sharding():
  x = jax.random.normal(jax.random.key(0), (8, 16))
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("a", "b"))
  variants = [x, jax.device_put(x, NamedSharding(mesh, P("a", "b"))), jax.device_put(x, NamedSharding(mesh, P("b")))]
  digests = {checksums.tree_checksums({"x": v})["['x']"]["digest"] for v in variants}
  assert digests == {reference_digest(np.asarray(x))}


def test_checkpoint_record_round_trip_and_differences():
  params, opt = {"w": jnp.ones((2, 2))}, {"mu": jnp.zeros(2)}
  record = checksums.checkpoint_record(params, opt, {"step": 3})
  assert checksums.verify_checkpoint(record, params, opt, {"step": 3}) == []
  problems = checksums.verify_checkpoint(record, {"w": jnp.ones((2, 2)).at[0, 0].set(2.0)}, opt, {"step": 4})
  assert problems[0].startswith("params ['w']: values differ")
  assert problems[1] == "meta: content differs from what was saved"
  assert checksums.verify_checkpoint(record, {"w": jnp.ones((2, 2), jnp.bfloat16)}, opt, {"step": 3}) == [
      "params ['w']: saved as float32[2, 2], restored as bfloat16[2, 2]"]
  assert checksums.structure_mismatch(record["params"], params) is None
  assert checksums.structure_mismatch(record["params"], {"v": 1}) == (
      "target-only leaves [\"['v']\"], saved-only leaves [\"['w']\"]")
