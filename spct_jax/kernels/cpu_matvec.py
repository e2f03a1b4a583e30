"""Skinny bf16 matmul on XLA:CPU through a C++ FFI kernel (`cpu_matvec.cc`), for decoding a few rows.

A decode step of one sequence streams every weight once for one activation row. XLA:CPU's bf16 dot moves such a
weight at about half the bandwidth a plain read reaches (12 ms vs ~7 ms for Gemma 3's 262k x 640 LM head on the
2-core development machine; benchmarks/README.md), which made the batch-1 decode step matmul-bound. The kernel reads
each weight row once and takes the dot products with all activation rows, accumulating in f32.

The source is compiled on first use with the system C++ compiler (`$CXX`, else `c++`), `-O3 -march=native`, into a
per-user cache (`$SPCT_KERNEL_CACHE`, else `~/.cache/spct_jax/kernels`) keyed by the source, the compiler, jax's
version and the CPU's feature flags, then registered as the XLA FFI target `spct_skinny_matmul` for the CPU platform.

`enabled()` says whether decoding should use it: on the CPU backend, unless `SPCT_CPU_KERNELS=off`. When it is
wanted but cannot be built (no compiler, a compile error), `enabled()` logs why once and returns False: decoding
then runs XLA's dot, slower but equal up to f32 rounding.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess

import jax
import jax.numpy as jnp

from spct_jax import files

MAX_ROWS = 2  # one decode step's weights: 2.2x faster than XLA's dot at 1 row, 1.4x at 2, even at 3, slower from 4
TARGET = "spct_skinny_matmul"
SOURCE = pathlib.Path(__file__).with_name("cpu_matvec.cc")
ENV_SWITCH = "SPCT_CPU_KERNELS"  # "off" disables the kernel (A/B runs, debugging); anything else: use it on CPU

_log = logging.getLogger(__name__)


class KernelBuildError(RuntimeError):
  """The C++ kernel could not be compiled or loaded; the message says why."""


def _cpu_flags() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith(("flags", "Features")):
        return line
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("SPCT_KERNEL_CACHE") or pathlib.Path.home() / ".cache" / "spct_jax" / "kernels")


def _compile(compiler: str, out: pathlib.Path) -> None:
  flags = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-Wno-psabi", f"-I{jax.ffi.include_dir()}"]
  # Compile next to the target and rename: concurrent processes (several hosts' workers) never see half a file.
  with files.atomic_path(out) as tmp:
    result = subprocess.run([compiler, *flags, str(SOURCE), "-o", os.fspath(tmp)], capture_output=True, text=True,
                            timeout=300, check=False)
    if result.returncode != 0:
      raise KernelBuildError(f"{compiler} failed on {SOURCE} (exit {result.returncode}):\n{result.stderr[-2000:]}")


@functools.cache
def load() -> pathlib.Path:
  """Builds (or finds in the cache) and registers the kernel; returns the shared library's path.

  Raises KernelBuildError with the reason when there is no compiler or the build fails.
  """
  compiler = os.environ.get("CXX") or "c++"
  if shutil.which(compiler) is None:
    raise KernelBuildError(f"no C++ compiler: {compiler!r} is not on PATH (set $CXX)")
  key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), compiler.encode(), jax.__version__.encode(),
                                   _cpu_flags().encode()])).hexdigest()[:16]
  path = _cache_dir() / f"cpu_matvec-{key}.so"
  if not path.exists():
    _log.info("compiling %s -> %s", SOURCE.name, path)
    _compile(compiler, path)
  try:
    library = ctypes.cdll.LoadLibrary(str(path))
  except OSError as e:
    raise KernelBuildError(f"cannot load {path}: {e}") from e
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.SpctSkinnyMatmul), platform="cpu")
  return path


@functools.cache
def _warn_unavailable(reason: str) -> None:
  _log.warning("spct_jax's CPU decoding kernel is unavailable, decoding uses XLA's bf16 dot (about 1.6x slower for "
               "one sequence): %s", reason)


def enabled() -> bool:
  """Whether decoding on this process's default backend should use the kernel (building it on first call)."""
  if jax.default_backend() != "cpu" or os.environ.get(ENV_SWITCH, "").lower() == "off":
    return False
  try:
    load()
  except KernelBuildError as e:
    _warn_unavailable(str(e))
    return False
  return True


def skinny_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x bf16[M, K] @ w bf16[N, K]^T -> f32[M, N] (w is [out, in]); call `load()` first. CPU backend only."""
  if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
    raise ValueError(f"skinny_matmul wants x [M, K] and w [N, K], got {x.shape} and {w.shape}")
  if x.dtype != jnp.bfloat16 or w.dtype != jnp.bfloat16:
    raise ValueError(f"skinny_matmul takes bfloat16 operands, got {x.dtype} and {w.dtype}")
  return jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((x.shape[0], w.shape[0]), jnp.float32))(x, w)
