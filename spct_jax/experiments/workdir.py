"""The run's workdir: an `epath.Path`, created, and locked by process 0 for the whole run.

Two runs on one workdir would interleave metrics.jsonl and race for checkpoints, so the second one fails at once
with a message naming the holder (pid, host, start time, command). The lock is `<workdir>/run.lock`:
  * local (and NFS) workdirs: an exclusive `flock` on the file, which the kernel drops when the holder dies, so a
    lock left behind by a killed run is taken over (with a warning naming the dead holder);
  * object stores (gs://...): the file's content; a lock of a dead pid on this host is taken over, any other
    holder blocks (the check and the write are not atomic there: a best-effort guard).
Other processes of a multi-process job do not lock: process 0 speaks for the job, and tells the others whether it
got the lock (one all-gather), so a refused run stops on every process instead of leaving them waiting.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator

import jax
from etils import epath

from spct_jax import files, multihost

log = logging.getLogger(__name__)
LOCK_NAME = "run.lock"
_HELD: set[str] = set()  # locks this process holds (a second run in the same process is refused too)


class WorkdirLocked(RuntimeError):
  """Another run holds the workdir."""


def _describe(holder: dict) -> str:
  return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (started {holder.get('started', '?')}; "
          f"command: {holder.get('command', '?')})")


def _parse(text: str) -> dict:
  try:
    holder = json.loads(text)
    return holder if isinstance(holder, dict) else {}
  except json.JSONDecodeError:
    return {}


def _me() -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
          "command": " ".join(sys.argv)[:300]}


def _alive(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, TypeError, ValueError):
    return True  # someone else's process, or an unreadable pid: assume it is alive
  return True


def _locked_error(workdir, lock, holder: dict) -> WorkdirLocked:
  return WorkdirLocked(f"workdir {workdir} is in use by {_describe(holder)}; lock file {lock}. Wait for that run "
                       "to finish or pass another --workdir (delete the lock file only if that run is gone).")


def _acquire_local(workdir: epath.Path, lock: epath.Path):
  """Returns the open, flock-ed file object; raises WorkdirLocked when another process holds it."""
  while True:
    f = open(lock, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      f.seek(0)
      holder = _parse(f.read())
      f.close()
      if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise _locked_error(workdir, lock, holder) from None
      raise
    try:
      linked = os.stat(lock).st_ino == os.fstat(f.fileno()).st_ino
    except FileNotFoundError:
      linked = False
    if not linked:  # the previous holder removed the file between our open and our flock: start again
      f.close()
      continue
    f.seek(0)
    previous = _parse(f.read())
    if previous:
      log.warning("workdir %s: taking over the lock left by %s (that run is gone: its lock was released)",
                  workdir, _describe(previous))
    f.seek(0)
    f.truncate()
    f.write(json.dumps(_me()) + "\n")
    f.flush()
    return f


def _acquire_remote(workdir: epath.Path, lock: epath.Path) -> None:
  if lock.exists():
    holder = _parse(lock.read_text())
    if holder.get("host") == socket.gethostname() and not _alive(holder.get("pid")):
      log.warning("workdir %s: taking over the lock of %s, which is no longer running", workdir, _describe(holder))
    else:
      raise _locked_error(workdir, lock, holder)
  lock.write_text(json.dumps(_me()) + "\n")


@contextlib.contextmanager
def locked(workdir: files.PathLike) -> Iterator[epath.Path]:
  """Creates `workdir` and holds its lock (process 0) for the block; yields the workdir as an epath.Path."""
  path = files.as_path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  lock = path / LOCK_NAME
  if jax.process_index() != 0:
    if not multihost.all_processes(True):
      raise WorkdirLocked(f"workdir {path}: process 0 could not take the run lock {lock} (its log says why)")
    yield path
    return
  try:
    if str(lock) in _HELD:
      raise _locked_error(path, lock, _parse(lock.read_text()))
    handle = _acquire_local(path, lock) if files.is_local(lock) else _acquire_remote(path, lock)
  except BaseException:
    multihost.all_processes(False)
    raise
  multihost.all_processes(True)
  _HELD.add(str(lock))
  try:
    yield path
  finally:
    _HELD.discard(str(lock))
    with contextlib.suppress(FileNotFoundError):
      lock.unlink()  # while still holding the flock, so nobody takes over a file that is going away
    if handle is not None:
      handle.close()
