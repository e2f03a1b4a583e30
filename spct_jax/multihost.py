"""Process-aware helpers: host data in, device results out, agreement between processes, who writes files.

A multi-process job (one process per TPU VM / GPU node / group of CPU devices) runs the same program everywhere;
a jitted function's inputs must then be global `jax.Array`s and its outputs may span devices of other processes.
The rules the code base follows, each through one helper here:

- Host data in. `host_to_global(array, sharding)`: a host array that every process holds in full (the same
  values) becomes a global array, each process placing only its own shards (`make_array_from_process_local_data`
  with the full shape). `global_array` / `global_batch`: each process holds only ITS rows of a batch
  (`process_rows`: the contiguous block of rows its devices hold under the batch sharding; all rows where the
  batch dimension is replicated), and the global array is assembled from them: global row order = process order.
  Shapes other than the rows must agree across processes (pad to a fixed length, or to `agree_max`).
- Device results out. `to_host`: every host read of a device result; arrays that span other processes' devices
  are gathered (`process_allgather`), so every process gets the whole value. A collective: every process calls it.
- Agreement. `any_process` / `all_processes` / `agree_max` / `agree_min`: one small all-gather of host scalars.
- Files. `is_main_process`: process 0 writes metrics, results and the workdir lock; checkpoints are collective.

With one process every helper is the identity (or `jax.device_get`), so single-process code paths are unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from spct_jax import sharding as shd

Axes = Sequence[str | None]


def is_main_process() -> bool:
  """Process 0 writes metrics, results and locks; every process takes part in checkpoints."""
  return jax.process_index() == 0


# ----------------------------------------------------------------------------------------------------------------
# Device results out.


def _spans_processes(x: Any) -> bool:
  return isinstance(x, jax.Array) and not x.is_fully_addressable


def to_host(tree: Any) -> Any:
  """The pytree with every jax array copied to host numpy (blocks until computed).

  Arrays sharded across processes are gathered with `process_allgather` (every process receives the whole value);
  fully replicated ones are read from a local copy; the rest with `jax.device_get`. When any leaf spans other
  processes this is a collective: every process must call it with the same tree structure.
  """
  leaves, treedef = jax.tree.flatten(tree)
  gather = [i for i, x in enumerate(leaves) if _spans_processes(x) and not x.is_fully_replicated]
  if gather:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    gathered = multihost_utils.process_allgather([leaves[i] for i in gather], tiled=True)
    for i, value in zip(gather, gathered):
      leaves[i] = np.asarray(value)
  leaves = [np.asarray(x.addressable_data(0)) if _spans_processes(x) else x for x in leaves]
  return jax.device_get(jax.tree.unflatten(treedef, leaves))


# ----------------------------------------------------------------------------------------------------------------
# Agreement.


def _gathered(value, dtype) -> np.ndarray:
  """[process_count] `value` of every process (no collective with one process).

  Sent as int32 words: without jax_enable_x64 an int64 would reach the collective as int32 and wrap (byte counts
  and memory budgets pass 2**31).
  """
  if jax.process_count() == 1:
    return np.asarray([value], dtype)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  words = np.asarray([value], dtype).view(np.int32)
  return np.asarray(multihost_utils.process_allgather(words), np.int32).reshape(jax.process_count(), -1).view(
      dtype).reshape(-1)


def any_process(flag: bool) -> bool:
  """True iff `flag` is true on some process (a collective: every process must call it)."""
  return bool(_gathered(bool(flag), np.int32).any())


def all_processes(flag: bool) -> bool:
  """True iff `flag` is true on every process (a collective: every process must call it)."""
  return bool(_gathered(bool(flag), np.int32).all())


def agree_max(value: int) -> int:
  """The largest `value` over processes, e.g. a padding length every process must use (a collective)."""
  return int(_gathered(int(value), np.int64).max())


def agree_min(value: int) -> int:
  """The smallest `value` over processes, e.g. a memory budget every process must plan with (a collective)."""
  return int(_gathered(int(value), np.int64).min())


def sum_over_processes(value: int) -> int:
  """`value` summed over processes (a collective)."""
  return int(_gathered(int(value), np.int64).sum())


# ----------------------------------------------------------------------------------------------------------------
# Host data in.


def _default_axes(ndim: int) -> tuple[str | None, ...]:
  return ("batch",) + (None,) * (ndim - 1)


def host_to_global(array: Any, sharding: jax.sharding.Sharding) -> jax.Array:
  """A host array that every process holds in full (the same values) as a global array of that sharding.

  Each process places only its addressable shards; a fully addressable sharding is a plain `device_put`.
  """
  array = np.asarray(array)
  if sharding.is_fully_addressable:
    return jax.device_put(array, sharding)
  return jax.make_array_from_process_local_data(sharding, array, array.shape)


def process_rows(num_rows: int, mesh: Mesh | None, logical_axes: Axes = ("batch",),
                 rules: shd.Rules = shd.DEFAULT_RULES) -> slice:
  """The rows of a `[num_rows, ...]` batch that this process's devices hold, sharded by `logical_axes[0]`.

  A contiguous block (process order) when the rows are sharded across processes; all of them where the batch
  dimension is replicated (`num_rows` not divisible by its mesh axes, or no mesh). This is the share of items a
  process loads and turns into rows of `global_array` / `global_batch`.
  """
  if mesh is None:
    return slice(0, num_rows)
  spec = shd.spec_for((num_rows,), tuple(logical_axes[:1]), mesh, rules)
  spans = {index[0].indices(num_rows)[:2]
           for index in NamedSharding(mesh, spec).addressable_devices_indices_map((num_rows,)).values()}
  start, stop = min(s for s, _ in spans), max(e for _, e in spans)
  if sum(e - s for s, e in spans) != stop - start:
    raise ValueError(f"process {jax.process_index()} holds rows {sorted(spans)} of {num_rows}: not one contiguous "
                     f"block (mesh {dict(mesh.shape)}); order the mesh's devices by process along the batch axes")
  return slice(start, stop)


def global_array(local: Any, mesh: Mesh | None, logical_axes: Axes | None = None, *, global_rows: int | None = None,
                 rules: shd.Rules = shd.DEFAULT_RULES) -> jax.Array:
  """One global array from each process's rows of it.

  Args:
    local: host array `[n, ...]`: this process's rows `process_rows(global_rows, mesh)`, or all `global_rows`
      rows (the same on every process). A jax.Array is returned unchanged.
    mesh: the device mesh; None places `local` on the default device (it must then hold every row).
    logical_axes: per-dimension logical names (default: rows over "batch", the rest replicated).
    global_rows: rows of the global array; None: `local` holds all of them.
    rules: logical axis rules.

  Returns:
    A `jax.Array` of shape `[global_rows, ...]`, sharded by `logical_axes`.
  """
  if isinstance(local, jax.Array):
    return local
  local = np.asarray(local)
  total = local.shape[0] if global_rows is None else int(global_rows)
  if mesh is None:
    _check_all_rows(local.shape[0], total)
    return jnp.asarray(local)
  shape = (total, *local.shape[1:])
  sharding = NamedSharding(mesh, shd.spec_for(shape, tuple(logical_axes or _default_axes(local.ndim)), mesh, rules))
  if local.shape[0] == total:
    return host_to_global(local, sharding)
  rows = process_rows(total, mesh, tuple(logical_axes or ("batch",)), rules)
  if local.shape[0] != rows.stop - rows.start:
    raise ValueError(f"process {jax.process_index()} holds rows [{rows.start}, {rows.stop}) of {total} "
                     f"(process_rows), got {local.shape[0]} rows")
  return jax.make_array_from_process_local_data(sharding, local, shape)


def global_batch(local_arrays: Mapping[str, Any], mesh: Mesh | None,
                 logical_axes: Mapping[str, Axes] | None = None, *, global_rows: int | Mapping[str, int] | None = None,
                 rules: shd.Rules = shd.DEFAULT_RULES) -> dict[str, jax.Array]:
  """`global_array` of every entry of a batch dict (SFT / meta-RM batches: each process loads its own rows).

    rows = multihost.process_rows(global_batch_size, mesh)          # this process's examples
    batch = multihost.global_batch(load(examples[rows]), mesh, global_rows=global_batch_size)

  logical_axes: per-name logical axes (default rows over "batch"); global_rows: one count for every entry, or
  per name (None: each entry holds all its rows).
  """
  axes = dict(logical_axes or {})
  counts = global_rows if isinstance(global_rows, Mapping) else {name: global_rows for name in local_arrays}
  return {name: global_array(value, mesh, axes.get(name), global_rows=counts.get(name), rules=rules)
          for name, value in local_arrays.items()}


def _check_all_rows(rows: int, global_rows: int) -> None:
  if rows != global_rows:
    raise ValueError(f"expected all {global_rows} rows in a one-process (or mesh-less) run, got {rows}")


def gather_rows(local: Any, global_rows: int, mesh: Mesh | None) -> np.ndarray:
  """Every process's rows (`process_rows(global_rows, mesh)`) of a host batch, assembled on every process."""
  local = np.asarray(local)
  if mesh is None or jax.process_count() == 1:
    _check_all_rows(local.shape[0], global_rows)
    return local
  return to_host(global_array(local, mesh, global_rows=global_rows))


def gather_sequences(sequences: Sequence[Sequence[int]], global_rows: int, mesh: Mesh | None) -> list[list[int]]:
  """`gather_rows` for ragged int sequences (e.g. token lists): padded to `agree_max` length, then unpadded."""
  if mesh is None or jax.process_count() == 1:
    _check_all_rows(len(sequences), global_rows)
    return [list(s) for s in sequences]
  width = agree_max(max((len(s) for s in sequences), default=0))
  padded = np.zeros((len(sequences), width), np.int64)
  for i, s in enumerate(sequences):
    padded[i, :len(s)] = s
  lengths = gather_rows(np.asarray([len(s) for s in sequences], np.int64), global_rows, mesh)
  rows = gather_rows(padded, global_rows, mesh)
  return [row[:n].tolist() for row, n in zip(rows, lengths)]
