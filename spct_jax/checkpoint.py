"""Checkpointing for every training loop: a thin, process-aware wrapper over orbax `CheckpointManager`.

One step directory holds three items: `params` and `opt_state` (orbax StandardSave, sharded arrays written by
every process for its own shards) and `meta` (JsonSave: host-side state needed to resume exactly, e.g. data
position, numpy RNG state as a list, python RNG seed, metrics history, config dict).

Atomicity: orbax writes a step into a temporary directory (`<step>.orbax-checkpoint-tmp-*`) and renames it to
`<step>` only when every item and process has finished (on object stores without atomic rename it writes a
commit marker instead). A half-written step is therefore never listed by `latest_step()` nor restorable, and
temporary leftovers from a crash are cleaned up at the next start. With `async_save=True` the rename happens in
the background; call `wait()` before reading the directory or exiting.

Multi-process: every process must call `save`/`restore`/`wait`/`close` (orbax coordinates them and writes
shared files from the primary process only). This wrapper writes no files of its own.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

_ITEMS = ("params", "opt_state", "meta")


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


def _abstract(target: Any) -> Any:
  """Arrays -> jax.ShapeDtypeStruct carrying their sharding; ShapeDtypeStructs and other leaves unchanged."""

  def leaf(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x

  return jax.tree.map(leaf, target)


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
    params, opt_state, meta = ckpt.restore(params_target=abstract_params, opt_state_target=abstract_opt)
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
    self.directory = _normalise_dir(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        save_interval_steps=save_interval_steps,
        enable_async_checkpointing=async_save,
        create=True,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

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
    """
    step = int(step)
    if not force and not self._manager.should_save(step):
      return False
    # Checked before anything touches the disk, so a diverged run cannot overwrite good state on resume.
    if not is_finite_tree(params):
      raise FloatingPointError(f"refusing to save checkpoint step {step} in {self.directory}: params hold NaN/inf")
    try:
      json.dumps(meta)
    except (TypeError, ValueError) as e:
      raise ValueError(f"meta for checkpoint step {step} is not JSON-serialisable: {e}") from e
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(meta),
    )
    return bool(self._manager.save(step, args=args, force=force))

  def latest_step(self) -> Optional[int]:
    """Newest step, or None if there is none.

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
  ) -> tuple[Any, Any, dict]:
    """Restores one step onto the given targets. Call on every process.

    Args:
      step: step to restore; None means `latest_step()`.
      params_target: pytree with the structure of the saved params whose leaves are jax arrays or
        `jax.ShapeDtypeStruct(shape, dtype, sharding=...)`: restored arrays get that shape, dtype and sharding
        (so a run can resume on a different mesh). E.g. `jax.eval_shape(init)` with shardings attached.
      opt_state_target: the same for the optimizer state.

    Returns:
      (params, opt_state, meta).

    Raises:
      FileNotFoundError: if there is no checkpoint (or not `step`) in the directory.
    """
    self.wait()  # a step this object is still writing must be committed before it is read
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no checkpoint in {self.directory}")
    elif step not in self._manager.all_steps():
      raise FileNotFoundError(f"no checkpoint step {step} in {self.directory} (have {self.all_steps()})")
    args = ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(params_target)),
        opt_state=ocp.args.StandardRestore(_abstract(opt_state_target)),
        meta=ocp.args.JsonRestore(),
    )
    out = self._manager.restore(step, args=args)
    return out.params, out.opt_state, out.meta

  def wait(self) -> None:
    """Blocks until any background save has been committed (renamed into place)."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager's resources."""
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


__all__ = ["Checkpointer", "is_finite_tree"]