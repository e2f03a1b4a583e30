"""bf16 decoding matmuls on XLA:CPU through C++ FFI kernels: a skinny kernel for any CPU, AMX tiles where present.

A decode step streams every weight once for a few activation rows, so it should run at memory speed. XLA:CPU's
bf16 dot does not: for one row it moves a weight at about half the bandwidth a plain read reaches (12 ms vs ~7 ms for
Gemma 3's 262k x 640 LM head on the 2-core AMD development machine), and at 32 rows it took the head 3x as long as
reading it on an AMX Xeon (benchmarks/README.md). Two kernels:
- `skinny_matmul` (`cpu_matvec.cc`): x bf16[M, K] @ w bf16[N, K]^T for M <= `max_rows()`, each output a dot
  product over one contiguous weight row (AVX-512 BF16 instructions, or plain vector code on any other CPU), in
  blocks of weight rows x activation rows kept in registers over an L2-sized tile of weights.
- `amx_matmul` / `amx_head` (`cpu_amx.cc`, built only where the compiler targets AMX): any M, weights pre-tiled by
  `tile`; the head variant also returns the softmax summaries `strategies.Logits` wants, in the same pass.

The sources are compiled on first use with the system C++ compiler (`$CXX`, else `c++`), `-O3 -march=native`, into a
per-user cache (`$SPCT_KERNEL_CACHE`, else `~/.cache/spct_jax/kernels`) keyed by the sources, the compiler, jax's
version and the CPU's feature flags, then registered as XLA FFI targets for the CPU platform.

Which kernels run is picked by the CPU's features and `SPCT_CPU_KERNELS`:
- unset / `auto` / `on`: the kernels on the CPU backend, the AMX ones where /proc/cpuinfo lists `amx_tile` and
  `amx_bf16` (Intel Sapphire Rapids and later), the skinny kernel elsewhere (e.g. AMD Zen 4).
- `amx`: the AMX kernels are required: `amx()` raises `KernelBuildError` saying why when the CPU lacks AMX, the
  build lacks it, or Linux refuses the tile state.
- `no-amx`: the skinny kernel only (what a CPU without AMX runs; A/B runs). `off`: XLA's dot throughout.
`enabled()` says whether decoding should use the kernels, `amx()` whether the AMX ones too. In auto mode a kernel
that is wanted but cannot be built or used (no compiler, a compile error, an AMX CPU whose compiler does not target
AMX) is logged once as a warning and decoding runs the next path (skinny, else XLA's dot), slower but equal up to
f32 rounding; any other value of `SPCT_CPU_KERNELS` is a ValueError.
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
import numpy as np

from spct_jax import files

# Rows up to which decoding runs `skinny_matmul` instead of XLA's dot, by what was measured (one decode step's
# matmuls, Gemma 3 270M shapes, 2 cores):
MAX_ROWS = 64  # with AVX-512 BF16 (Zen 4): 1.5x XLA's dot at 8 and 16 rows, 1.1-1.4x at 32, 1.1x at 64, 1x at 128
BLOCKED_MAX_ROWS = 128  # without bf16 arithmetic (Zen 3, AVX2): 1.6x at 1 row, 2.1x at 8, 1.3x at 32, 1.2x at 128
AMX_MAX_ROWS = 128  # amx_matmul vs XLA's dot on an AMX Xeon: 1.6x faster at 32 rows, even at 128, 1.5x slower at 1024
TILE = 32  # amx_matmul weights: [N/TILE, K/TILE, TILE, TILE] blocks
HEAD_BLOCK = 512  # vocabulary entries per softmax summary of amx_head (strategies.BLOCK)
TARGET = "spct_skinny_matmul"
AMX_TARGETS = {"matmul": "spct_amx_matmul", "head": "spct_amx_head"}
STREAM_TARGET = "spct_stream_read"
_DIR = pathlib.Path(__file__).parent
SOURCES = (_DIR / "cpu_matvec.cc", _DIR / "cpu_amx.cc", _DIR / "cpu_common.h")
ENV_SWITCH = "SPCT_CPU_KERNELS"  # see the module docstring
MODES = ("auto", "amx", "no-amx", "off")  # "on" and "" mean "auto"

_log = logging.getLogger(__name__)


class KernelBuildError(RuntimeError):
  """The C++ kernel could not be compiled or loaded; the message says why."""


def _cpuinfo(*fields: str) -> str:
  """The first /proc/cpuinfo line starting with one of `fields` (else the platform's processor name)."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith(fields):
        return line
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _cpu_flags() -> str:
  return _cpuinfo("flags", "Features")


def _cpu_flag_set() -> set[str]:
  return set(_cpu_flags().split(":", 1)[-1].split())


def cpu_has_amx() -> bool:
  """Whether this CPU has AMX bf16 tiles (Linux /proc/cpuinfo flags `amx_tile` and `amx_bf16`)."""
  return {"amx_tile", "amx_bf16"} <= _cpu_flag_set()


def cpu_has_bf16_dot() -> bool:
  """Whether this CPU has bf16 dot-product instructions (`avx512_bf16`), which XLA's bf16 dot uses itself."""
  return "avx512_bf16" in _cpu_flag_set()


def max_rows() -> int:
  """The most rows a decode matmul hands to `skinny_matmul` on this CPU (more go to XLA's dot): where XLA's bf16
  dot has bf16 instructions it draws level near 128 rows, where it must widen bf16 itself the kernel wins up to
  the 128 measured."""
  return MAX_ROWS if cpu_has_bf16_dot() else BLOCKED_MAX_ROWS


def mode() -> str:
  """`SPCT_CPU_KERNELS` as one of MODES; raises ValueError naming the variable for any other value."""
  value = os.environ.get(ENV_SWITCH, "").strip().lower()
  value = "auto" if value in ("", "on") else value
  if value not in MODES:
    raise ValueError(f"{ENV_SWITCH}={os.environ[ENV_SWITCH]!r}: expected one of {', '.join(MODES)} (or on)")
  return value


def _cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("SPCT_KERNEL_CACHE") or pathlib.Path.home() / ".cache" / "spct_jax" / "kernels")


def _compile(compiler: str, out: pathlib.Path) -> None:
  flags = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-Wno-psabi", f"-I{jax.ffi.include_dir()}"]
  # Compile next to the target and rename: concurrent processes (several hosts' workers) never see half a file.
  sources = [str(p) for p in SOURCES if p.suffix == ".cc"]
  with files.atomic_path(out) as tmp:
    result = subprocess.run([compiler, *flags, *sources, "-o", os.fspath(tmp)], capture_output=True, text=True,
                            timeout=300, check=False)
    if result.returncode != 0:
      raise KernelBuildError(f"{compiler} failed on {', '.join(sources)} (exit {result.returncode}):\n"
                             f"{result.stderr[-2000:]}")


@functools.cache
def load() -> pathlib.Path:
  """Builds (or finds in the cache) and registers the kernel; returns the shared library's path.

  Raises KernelBuildError with the reason when there is no compiler or the build fails.
  """
  compiler = os.environ.get("CXX") or "c++"
  if shutil.which(compiler) is None:
    raise KernelBuildError(f"no C++ compiler: {compiler!r} is not on PATH (set $CXX)")
  key = hashlib.sha256(b"\0".join([*(p.read_bytes() for p in SOURCES), compiler.encode(), jax.__version__.encode(),
                                   _cpu_flags().encode()])).hexdigest()[:16]
  path = _cache_dir() / f"cpu_matvec-{key}.so"
  if not path.exists():
    _log.info("compiling %s -> %s", ", ".join(p.name for p in SOURCES), path)
    _compile(compiler, path)
  try:
    library = ctypes.cdll.LoadLibrary(str(path))
  except OSError as e:
    raise KernelBuildError(f"cannot load {path}: {e}") from e
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.SpctSkinnyMatmul), platform="cpu")
  jax.ffi.register_ffi_target(STREAM_TARGET, jax.ffi.pycapsule(library.SpctStreamRead), platform="cpu")
  if library.SpctAmxAvailable():
    for kind, target in AMX_TARGETS.items():
      symbol = getattr(library, "SpctAmx" + kind.capitalize())
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(symbol), platform="cpu")
    _AMX.add(path)
  return path


_AMX: set = set()  # libraries whose AMX targets are registered (the build has them and Linux granted tile state)


@functools.cache
def _warn_unavailable(reason: str) -> None:
  _log.warning("spct_jax's CPU decoding kernels are unavailable, decoding uses XLA's bf16 dot (about 1.6x slower "
               "for one sequence, 2x for 32): %s", reason)


@functools.cache
def _warn_no_amx(reason: str) -> None:
  _log.warning("this CPU has AMX but spct_jax's AMX kernels are unavailable, decoding uses the skinny kernel and "
               "XLA's dot (about 2x slower at 32 rows; set %s=amx to make this an error): %s", ENV_SWITCH, reason)


def enabled() -> bool:
  """Whether decoding on this process's default backend should use the kernels (building them on first call).

  Raises KernelBuildError when `SPCT_CPU_KERNELS=amx` and they cannot be built.
  """
  if jax.default_backend() != "cpu" or mode() == "off":
    return False
  try:
    load()
  except KernelBuildError as e:
    if mode() == "amx":
      raise
    _warn_unavailable(str(e))
    return False
  return True


def amx() -> bool:
  """Whether decoding should use the AMX kernels: `enabled()`, the CPU has AMX, the build has the kernels, Linux
  granted the tile state, and the mode is not `no-amx`. With `SPCT_CPU_KERNELS=amx`, any missing piece raises
  KernelBuildError instead of returning False."""
  forced = mode() == "amx"
  if not enabled() or mode() == "no-amx":
    if forced:  # enabled() is False only off the CPU backend here: a build failure has raised already
      raise KernelBuildError(f"{ENV_SWITCH}=amx, but the default backend is {jax.default_backend()!r}, not cpu")
    return False
  reason = None
  if not cpu_has_amx():
    reason = (f"this CPU ({_cpu_model()}) has no AMX bf16 tiles (/proc/cpuinfo lacks amx_tile / amx_bf16); "
              f"unset {ENV_SWITCH} to use the skinny kernel")
  elif load() not in _AMX:
    reason = (f"{load().name} was built without AMX or Linux refused the AMX tile state "
              f"(compiler {os.environ.get('CXX') or 'c++'} with -march=native must define __AMX_TILE__)")
  if reason is None:
    return True
  if forced:
    raise KernelBuildError(f"{ENV_SWITCH}=amx: {reason}")
  if cpu_has_amx():
    _warn_no_amx(reason)
  return False


def _cpu_model() -> str:
  return _cpuinfo("model name").split(":", 1)[-1].strip()


def tileable(shape: tuple[int, ...]) -> bool:
  """Whether a [N, K] weight can be tiled for `amx_matmul` (both dimensions multiples of TILE)."""
  return len(shape) == 2 and shape[0] % TILE == 0 and shape[1] % TILE == 0


def tile(w: jax.Array) -> jax.Array:
  """w [N, K] -> [N/32, K/32, 32, 32] with out[nb, kb, i, j] = w[32 nb + i, 32 kb + j] (`amx_matmul`'s weights)."""
  if not tileable(w.shape):
    raise ValueError(f"tile wants [N, K] with N and K multiples of {TILE}, got {w.shape}")
  n, k = w.shape
  return w.reshape(n // TILE, TILE, k // TILE, TILE).swapaxes(1, 2)


def untile(w: jax.Array) -> jax.Array:
  """Inverse of `tile`: [N/32, K/32, 32, 32] -> [N, K]."""
  nb, kb, _, _ = w.shape
  return w.swapaxes(1, 2).reshape(nb * TILE, kb * TILE)


def _check_amx(x: jax.Array, w: jax.Array) -> jax.Array:
  if load() not in _AMX:
    raise KernelBuildError(f"the AMX kernels are not available on this CPU ({_cpu_model()}; AMX bf16 tiles: "
                           f"{'yes' if cpu_has_amx() else 'no'}): decode with cpu_kernel='skinny' or None")
  if x.ndim != 2 or w.ndim != 4 or w.shape[2:] != (TILE, TILE) or x.shape[1] != w.shape[1] * TILE:
    raise ValueError(f"amx kernels want x [M, K] and tiled w [N/32, K/32, 32, 32], got {x.shape} and {w.shape}")
  if x.dtype not in (jnp.float32, jnp.bfloat16) or w.dtype != jnp.bfloat16:
    raise ValueError(f"amx kernels take f32 or bf16 x and bf16 w, got {x.dtype} and {w.dtype}")
  return x.astype(jnp.float32)  # the kernel rounds it to bf16 (exact for bf16 x)


def amx_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """bf16(x f32[M, K]) @ W^T -> f32[M, N], w = tile(W) bf16; needs `amx()`. CPU backend only.

  x is rounded to bf16 inside the kernel (as `x.astype(bfloat16)`), products accumulate in f32.
  """
  x = _check_amx(x, w)
  return jax.ffi.ffi_call(AMX_TARGETS["matmul"], jax.ShapeDtypeStruct((x.shape[0], w.shape[0] * TILE), jnp.float32))(
      x, w)


def amx_head(x: jax.Array, w: jax.Array, temperature: float = 1.0) -> tuple[jax.Array, ...]:
  """LM-head logits bf16(x) @ W^T f32[M, N] and their softmax summaries, per block of HEAD_BLOCK entries (see
  `strategies.Logits`): block_max, block_sum, tempered_sum f32[M, ceil(N / HEAD_BLOCK)]. w = tile(W)."""
  x = _check_amx(x, w)
  m, n = x.shape[0], w.shape[0] * TILE
  summary = jax.ShapeDtypeStruct((m, -(-n // HEAD_BLOCK)), jnp.float32)
  return tuple(jax.ffi.ffi_call(AMX_TARGETS["head"], (jax.ShapeDtypeStruct((m, n), jnp.float32),) + (summary,) * 3)(
      x, w, temperature=np.float32(temperature)))


def stream_read(data: jax.Array) -> jax.Array:
  """Reads a bf16 buffer once over the thread pool (a checksum f32[1]): what bandwidth the kernels can reach."""
  return jax.ffi.ffi_call(STREAM_TARGET, jax.ShapeDtypeStruct((1,), jnp.float32))(data.reshape(-1))


def skinny_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x bf16[M, K] @ w bf16[N, K]^T -> f32[M, N] (w is [out, in]); call `load()` first. CPU backend only."""
  if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
    raise ValueError(f"skinny_matmul wants x [M, K] and w [N, K], got {x.shape} and {w.shape}")
  if x.dtype != jnp.bfloat16 or w.dtype != jnp.bfloat16:
    raise ValueError(f"skinny_matmul takes bfloat16 operands, got {x.dtype} and {w.dtype}")
  return jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((x.shape[0], w.shape[0]), jnp.float32))(x, w)
