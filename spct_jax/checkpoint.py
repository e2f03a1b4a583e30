"""Checkpointing for every training loop: a thin, process-aware, verifying wrapper over orbax `CheckpointManager`.

One step directory holds four items: `params` and `opt_state` (orbax StandardSave, sharded arrays written by
every process for its own shards), `meta` (JsonSave: host-side state needed to resume exactly, e.g. data
position, numpy RNG state as a list, python RNG seed, metrics history, config dict) and `checksums` (JsonSave:
per-leaf value checksums of params and opt_state and a sha256 of meta, see `spct_jax/checksums.py`).

Atomicity: orbax writes a step into a temporary directory (`<step>.orbax-checkpoint-tmp-*`) and renames it to
`<step>` only when every item and process has finished (on object stores without atomic rename it writes a
commit marker instead). A half-written step is therefore never listed by `latest_step()` nor restorable, and
temporary leftovers from a crash are cleaned up at the next start. With `async_save=True` the rename happens in
the background; call `wait()` before reading the directory or exiting. The checksums are an item of the same
step, so they are committed in the same rename as what they describe.

Verification: `restore` checks the step folder's files, restores, recomputes the checksums on the restored arrays
and raises `DamagedCheckpointError` (naming the step and the file or leaf) on any difference. Checksums are of
values, not files: the same on any mesh or process count, computed where the arrays live in one memory-bound
pass, once at save and once at restore (on a CPU about as fast as sha256: docs/DESIGN.md#checkpoints).
`restore_latest_valid` falls back from a damaged newest step to the newest one that verifies, moving the damaged
ones to `<directory>/quarantine/`.

Multi-process: every process must call `save`/`restore`/`restore_latest_valid`/`wait`/`close` (orbax coordinates
them and writes shared files from the primary process only). Each process restores its own shards and checks
the folder; the processes agree on the outcome before the (collective) checksum pass, and process 0 moves
quarantined steps while the others wait at a barrier.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from spct_jax import checkpoint_storage as storage
from spct_jax import checksums, multihost

log = logging.getLogger(__name__)
_ITEMS = ("params", "opt_state", "meta", "checksums")


class DamagedCheckpointError(ValueError):
  """A checkpoint step that cannot be restored as it was saved (files missing, unreadable or altered)."""


class Restored(NamedTuple):
  """What `restore_latest_valid` returns; unpacks as `step, params, opt_state, meta = restored`."""

  step: int
  params: Any
  opt_state: Any
  meta: dict


@jax.jit
def _all_finite(leaves: list[jax.Array]) -> jax.Array:
  # One fused reduction per tree structure; under jit it also works on arrays sharded across processes.
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def is_finite_tree(tree: Any) -> bool:
  """True iff no floating-point leaf of `tree` holds NaN or +-inf (integer/bool leaves are ignored).

  Args:
    tree: pytree of jax arrays (possibly sharded), numpy arrays or Python scalars.

  Returns:
    A Python bool (blocks until the arrays are computed).
  """
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  if not leaves:
    return True
  return bool(_all_finite(leaves))


def _abstract(target: Any, saved: Optional[dict[str, dict[str, str]]] = None) -> Any:
  """Arrays -> jax.ShapeDtypeStruct with their sharding and (given the checksum record) the saved dtype.

  Restoring in the saved dtype lets the checksums be compared; `_cast_like` then casts to the target's dtype.
  """

  def leaf(path, x):
    if not isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
      return x
    dtype = saved[jax.tree_util.keystr(path)]["spec"].split("[", 1)[0] if saved else x.dtype
    return jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype), sharding=getattr(x, "sharding", None))

  return jax.tree_util.tree_map_with_path(leaf, target)


def _cast_like(restored: Any, target: Any) -> Any:
  return jax.tree.map(lambda r, t: r.astype(t.dtype) if hasattr(t, "dtype") and r.dtype != t.dtype else r,
                      restored, target)


def _normalise_dir(directory: str | os.PathLike) -> str:
  # orbax wants absolute paths; leave URLs (gs://...) alone.
  d = os.fspath(directory)
  return d if "://" in d else os.path.abspath(d)


class Checkpointer:
  """Saves and restores (params, opt_state, meta) by step, keeping the newest `max_to_keep`.

  Usage:
    ckpt = Checkpointer("/tmp/run/ckpt", max_to_keep=3, save_interval_steps=100)
    ckpt.save(step, params=params, opt_state=opt_state, meta={"data_position": 1234})
    ...
    restored = ckpt.restore_latest_valid(params_target=abstract_params, opt_state_target=abstract_opt)
    if restored is not None:
      step, params, opt_state, meta = restored
    ckpt.close()
  """

  def __init__(
      self,
      directory: str | os.PathLike,
      *,
      max_to_keep: Optional[int] = 3,
      save_interval_steps: int = 1,
      async_save: bool = True,
  ):
    """Opens (creating if needed) a checkpoint directory.

    Args:
      directory: root directory; step `s` lives in `directory/s`.
      max_to_keep: newest checkpoints to keep (older ones are deleted after a save); None keeps all.
      save_interval_steps: `save` without `force` writes when step % interval == 0, plus (orbax defaults) the
        first save into an empty directory and the step at which a preemption signal arrived.
      async_save: write in a background thread after the device->host copy; `save` returns early.
    """
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
    if save_interval_steps < 1:
      raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}")
    storage.silence_orbax_echoes()
    self.directory = _normalise_dir(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        save_interval_steps=save_interval_steps,
        enable_async_checkpointing=async_save,
        create=True,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)
    self._in_flight: Optional[int] = None  # step of a save that may still be writing
    self._failure: Optional[OSError] = None  # a write failure already raised to the caller

  def save(self, step: int, *, params: Any, opt_state: Any, meta: dict, force: bool = False) -> bool:
    """Saves one step (asynchronously if so configured). Call on every process.

    Args:
      step: training step (the directory name).
      params: pytree of jax arrays, possibly sharded.
      opt_state: optimizer state pytree (e.g. optax), possibly sharded.
      meta: JSON-serialisable host state.
      force: save even if `step` is not on the save interval (never overwrites an existing step).

    Returns:
      True if a save was started, False if skipped by the save policy (see `__init__`) or `step` <= the
      latest step.

    Raises:
      FloatingPointError: if this step would be saved and `params` hold NaN/inf; nothing is written, the last
        good checkpoint stays the latest.
      ValueError: if `meta` is not JSON-serialisable.
      OSError: the step does not fit on the disk (checked before writing), or this or the previous
        asynchronous save failed to write (ENOSPC for a full disk); one message naming the step and directory.
    """
    step = int(step)
    if self._failure is not None:
      raise OSError(self._failure.errno, f"not saving checkpoint step {step}: an earlier write failed: "
                    f"{self._failure.strerror}")
    if not force and not self._manager.should_save(step):
      return False
    # Checked before anything touches the disk, so a diverged run cannot overwrite good state on resume.
    if not is_finite_tree(params):
      raise FloatingPointError(f"refusing to save checkpoint step {step} in {self.directory}: params hold NaN/inf")
    try:
      json.dumps(meta)
    except (TypeError, ValueError) as e:
      raise ValueError(f"meta for checkpoint step {step} is not JSON-serialisable: {e}") from e
    self.wait()  # surfaces a failed previous write as its own step's error, before this one starts
    no_room = storage.check_free_space(self.directory, step, (params, opt_state), self._manager.latest_step())
    if not multihost.all_processes(no_room is None):
      raise OSError(errno.ENOSPC, no_room or f"checkpoint step {step}: another process has no room for its "
                    f"shards in {self.directory}; nothing was written")
    sums = checksums.checkpoint_record(params, opt_state, meta)
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(meta),
        checksums=ocp.args.JsonSave(sums),
    )
    last_good = self._manager.latest_step()
    try:
      started = bool(self._manager.save(step, args=args, force=force))
    except Exception as e:  # pylint: disable=broad-except
      self._raise_write_error(step, e, last_good)
    self._in_flight = step if started else None
    return started

  def _raise_write_error(self, step: Optional[int], err: Exception, last_good: Optional[int]):
    if not storage.is_io_error(err):
      raise err
    self._failure = storage.write_error(self.directory, step, err, last_good)
    self._in_flight = None
    raise self._failure from None

  def latest_step(self) -> Optional[int]:
    """Newest step, or None if there is none (not necessarily one that verifies: see `restore_latest_valid`).

    Includes a step whose async save this object started and that is still in flight (orbax tracks it in
    memory); a fresh `Checkpointer` on the directory sees committed steps only.
    """
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """All steps, ascending (same in-flight caveat as `latest_step`)."""
    return sorted(self._manager.all_steps())

  def restore(
      self,
      step: Optional[int] = None,
      *,
      params_target: Any,
      opt_state_target: Any,
      verify: bool = True,
  ) -> tuple[Any, Any, dict]:
    """Restores one step onto the given targets and verifies it against its checksums. Call on every process.

    Args:
      step: step to restore; None means `latest_step()`.
      params_target: pytree with the structure of the saved params whose leaves are jax arrays or
        `jax.ShapeDtypeStruct(shape, dtype, sharding=...)`: restored arrays get that shape, dtype and sharding
        (so a run can resume on a different mesh). E.g. `jax.eval_shape(init)` with shardings attached.
      opt_state_target: the same for the optimizer state.
      verify: compare with the recorded checksums (a step without them is then an error); False restores
        whatever orbax reads.

    Returns:
      (params, opt_state, meta).

    Raises:
      FileNotFoundError: if there is no checkpoint (or not `step`) in the directory.
      DamagedCheckpointError: the step's files are missing or unreadable, or restored values differ from the
        saved ones; the message names the step and the file or leaves.
      ValueError: the targets' tree structure differs from the saved one (e.g. the model config changed).
    """
    self.wait()  # a step this object is still writing must be committed before it is read
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no checkpoint in {self.directory}")
    elif step not in self._manager.all_steps():
      raise FileNotFoundError(f"no checkpoint step {step} in {self.directory} (have {self.all_steps()})")
    where = f"checkpoint step {step} in {self.directory}"
    # Phase 1, per process: files, record, arrays. Errors are held until every process has tried (no deadlock).
    error, sums, out = None, None, None
    try:
      sums, out = self._read(step, where, params_target, opt_state_target, verify)
    except Exception as e:  # pylint: disable=broad-except
      error = e
    if not multihost.all_processes(error is None):
      raise error if error is not None else DamagedCheckpointError(f"{where} failed to restore on another process")
    if sums is None:
      return out.params, out.opt_state, out.meta
    # Phase 2, collective: recompute the checksums of what was restored.
    problems = checksums.verify_checkpoint(sums, out.params, out.opt_state, out.meta)
    if problems:
      more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
      raise DamagedCheckpointError(f"{where} is damaged: {'; '.join(problems[:3])}{more}")
    return _cast_like(out.params, params_target), _cast_like(out.opt_state, opt_state_target), out.meta

  def _read(self, step, where, params_target, opt_state_target, verify):
    """(checksum record or None, restored Composite) of one step, with damage named."""
    problem = storage.damage(os.path.join(self.directory, str(step)))
    if problem:
      raise DamagedCheckpointError(f"{where} is damaged: {problem}")
    has_sums = "://" in self.directory or os.path.isdir(os.path.join(self.directory, str(step), "checksums"))
    if verify and not has_sums:
      raise DamagedCheckpointError(f"{where} has no checksums (saved by an older spct-jax?); "
                                   "restore(step, verify=False) loads it unverified")
    sums = None
    if verify:
      try:
        sums = self._manager.restore(step, args=ocp.args.Composite(checksums=ocp.args.JsonRestore())).checksums
      except Exception as e:  # pylint: disable=broad-except
        raise DamagedCheckpointError(f"{where} is damaged: its checksums cannot be read "
                                     f"({storage.first_line(e)})") from None
      for name, target in (("params", params_target), ("opt_state", opt_state_target)):
        if differs := checksums.structure_mismatch(sums[name], target):
          raise ValueError(f"{where}: the {name} target does not match what was saved ({differs}); did the "
                           "model or optimizer config change?")
    args = ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(params_target, sums and sums["params"])),
        opt_state=ocp.args.StandardRestore(_abstract(opt_state_target, sums and sums["opt_state"])),
        meta=ocp.args.JsonRestore(),
    )
    try:
      out = self._manager.restore(step, args=args)
    except Exception as e:  # pylint: disable=broad-except
      raise DamagedCheckpointError(f"{where} is damaged: orbax cannot restore it: {storage.first_line(e)}") from None
    return sums, out

  def restore_latest_valid(self, *, params_target: Any, opt_state_target: Any) -> Optional[Restored]:
    """Restores the newest step that verifies, falling back past damaged ones. Call on every process.

    Each damaged step newer than the one restored is logged (a warning naming the step and why) and moved to
    `<directory>/quarantine/<step>`, so the resumed run can write that step number again.

    Args:
      params_target, opt_state_target: as for `restore`.

    Returns:
      Restored(step, params, opt_state, meta), or None when the directory holds no checkpoint (a fresh run).

    Raises:
      DamagedCheckpointError: checkpoints exist but none verifies (nothing is moved); lists every step and why.
      ValueError: the targets do not match the saved tree structure (not a damage: no fallback).
    """
    self.wait()
    damaged = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        params, opt_state, meta = self.restore(step, params_target=params_target, opt_state_target=opt_state_target)
      except DamagedCheckpointError as e:
        log.warning("%s; trying an older step", e)
        damaged.append((step, e))
        continue
      self._quarantine([s for s, _ in damaged])
      if damaged:
        log.warning("resumed from checkpoint step %d in %s; damaged step(s) %s moved to %s", step, self.directory,
                    [s for s, _ in damaged], os.path.join(self.directory, storage.QUARANTINE))
      return Restored(step, params, opt_state, meta)
    if not damaged:
      return None
    reasons = "\n  ".join(str(e) for _, e in damaged)
    raise DamagedCheckpointError(f"no checkpoint in {self.directory} verifies; nothing was moved. Delete or move "
                                 f"the step folders to start afresh:\n  {reasons}")

  def _quarantine(self, steps: list[int]) -> None:
    if not steps:
      return
    if multihost.is_main_process():
      for step in steps:
        storage.quarantine(self.directory, step)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"spct_checkpoint_quarantine_{steps}")
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until any background save has been committed (renamed into place).

    Raises:
      OSError: the background write failed (raised once; later calls return).
    """
    if self._failure is not None:
      return
    step, self._in_flight = self._in_flight, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._raise_write_error(step, e, self._manager.latest_step())

  def close(self) -> None:
    """Waits for pending saves and releases the manager's resources (raises a write failure not yet raised)."""
    try:
      self.wait()
    finally:
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        if self._failure is None:  # orbax re-raises the failure that wait() already reported
          raise

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


__all__ = ["Checkpointer", "DamagedCheckpointError", "Restored", "is_finite_tree"]
