"""Paths that survive a pod (`etils.epath`: local or `gs://...`) and the one atomic-write helper.

Workdirs and data roots are `epath.Path` end to end: `pathlib` would turn `gs://bucket/run` into a local folder
`gs:/bucket/run` on every host. Everything the project writes goes through `atomic_path` / `atomic_write`: the
content is written to a temporary sibling and renamed onto the target only when complete, so a reader (or a run
resumed after a crash) never sees half a file. On object stores the rename is a copy of a finished object, which
is atomic per object too.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import uuid
from collections.abc import Iterable, Iterator
from typing import IO, Any

from etils import epath

PathLike = str | os.PathLike


def as_path(path: PathLike) -> epath.Path:
  """`path` as an `epath.Path`: local paths absolute with `~` expanded (orbax wants them absolute), URLs such as
  gs://... unchanged."""
  text = os.fspath(path)
  return epath.Path(text if "://" in text else os.path.abspath(os.path.expanduser(text)))


def is_local(path: PathLike) -> bool:
  return "://" not in os.fspath(path)


@contextlib.contextmanager
def atomic_path(path: PathLike, *, folder: bool = False, replace: bool = True) -> Iterator[epath.Path]:
  """Yields a temporary sibling of `path` that is renamed onto `path` when the block succeeds.

  On an exception the temporary file (or folder) is removed and `path` is untouched.

  Args:
    path: the file (or folder) to produce.
    folder: yield an empty temporary folder instead of a path to write a file at.
    replace: an existing `path` is replaced; False: the final rename fails (OSError) when `path` exists, so a
      concurrent writer of the same content wins harmlessly.
  """
  path = as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
  if folder:
    tmp.mkdir()
  try:
    yield tmp
    if folder:
      if is_local(tmp):  # some writers (safetensors, mkstemp) use owner-only modes; caches are shared
        local = pathlib.Path(tmp)
        for sub in [local, *local.rglob("*")]:
          os.chmod(sub, 0o755 if sub.is_dir() else 0o644)
      if path.exists():
        if not replace:
          raise FileExistsError(f"{path} exists")
        path.rmtree()
      tmp.rename(path)
    elif replace:
      tmp.replace(path)
    else:
      if path.exists():
        raise FileExistsError(f"{path} exists")
      tmp.rename(path)
  finally:
    if tmp.exists():
      if folder:
        tmp.rmtree()
      else:
        tmp.unlink()


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "w") -> Iterator[IO[Any]]:
  """`open(path, mode)` whose content appears at `path` only when the block succeeds (mode "w" or "wb")."""
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
  with atomic_path(path) as tmp:
    with tmp.open(mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
      yield f


def write_json(obj: Any, path: PathLike) -> None:
  with atomic_write(path) as f:
    json.dump(obj, f, indent=1, ensure_ascii=False, allow_nan=False)
    f.write("\n")


def write_lines(lines: Iterable[str], path: PathLike) -> int:
  """Writes one line per string (newline added); returns the count."""
  count = 0
  with atomic_write(path) as f:
    for line in lines:
      f.write(line + "\n")
      count += 1
  return count


def write_jsonl(records: Iterable[dict], path: PathLike) -> int:
  return write_lines((json.dumps(r, ensure_ascii=False, allow_nan=False) for r in records), path)
