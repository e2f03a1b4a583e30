"""The machine a benchmark runs on, measured, and the rooflines its rows are reported against.

Every benchmark measures the machine before and after its systems, in worker subprocesses of their own
(`worker_machine`), like each system:
CPU model, cores, ISA flags, read bandwidth (an XLA reduction over a 1 GiB bf16 buffer, our kernels' streaming read
over the same buffer where they are built, and one numpy thread), and the bf16 / f32 GEMM peak (a jitted square
`jnp.dot`, f32 accumulation). A row's roofline is the least time its work can take on that machine,
max(bytes / bandwidth, flops / peak) (a bf16 system's peak: the larger of the bf16 and f32 ones,
`Machine.compute_peak`), with bandwidth and peak the best of the measurements (`best_of`); rows
report the roofline's fraction of the measured time (1.0 = at the limit). On a VM shared with other work both
limits move (10-24 GB/s read bandwidth seen on one 2-core Xeon VM within an hour), which is why it is measured in
every run.

What a Gemma decode step must move and compute (`decode_step_cost`): every matmul weight once (the 18 layers' q/k/v,
o, gate/up, down and the 262k x 640 LM head: 268.1M parameters for Gemma 3 270M, 536 MB in bf16) plus the KV cache
read by attention; 2 FLOPs per weight per row plus attention's. Logits are not counted (a fused sampler need not
write them), nor the embedding lookup (one row per token).

  python benchmarks/machine.py           # prints the machine table (about 30 s)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import common  # pylint: disable=g-bad-import-order  (also puts the repo root on sys.path)

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "asimd", "sve")
READ_BYTES = 1 << 30  # past any last-level cache a VM reports (this one's claims 480 MB)


@dataclasses.dataclass(frozen=True)
class Machine:
  """Measured limits. bandwidth: bytes/s per method; peak: FLOP/s per dtype ("bfloat16", "float32")."""

  cpu: str
  cores: int
  isa: tuple[str, ...]
  device: str
  bandwidth: dict
  peak: dict
  load: tuple[float, ...]

  @property
  def read_bandwidth(self) -> float:
    return max(self.bandwidth.values())

  def compute_peak(self, dtype: str = "bfloat16") -> float:
    """FLOP/s a `dtype` system is held to. bf16 inputs can always be widened and run at the f32 peak, so a bf16
    system gets the larger of the two: on a CPU without bf16 arithmetic (AVX2 only, e.g. AMD Zen 3) XLA's bf16 GEMM
    is slower than its f32 one (92-104 vs 126-156 GFLOP/s on 2 Zen 3 cores), and its own peak would flatter it."""
    return max(self.peak["bfloat16"], self.peak["float32"]) if dtype == "bfloat16" else self.peak[dtype]

  def roofline_s(self, bytes_moved: float, flops: float, dtype: str = "bfloat16") -> float:
    """The least time for work that moves `bytes_moved` and computes `flops` with `dtype` matmul inputs."""
    return max(bytes_moved / self.read_bandwidth, flops / self.compute_peak(dtype))

  def describe(self) -> str:
    """One line for a report: the machine and its measured limits."""
    bw = ", ".join(f"{name} {value / 1e9:.1f}" for name, value in self.bandwidth.items())
    return (f"{self.cpu}, {self.cores} cores ({' '.join(self.isa) or 'no listed ISA flags'}; {self.device}); "
            f"read bandwidth GB/s: {bw} (roofline uses {self.read_bandwidth / 1e9:.1f}); GEMM peak GFLOP/s: bf16 "
            f"{self.peak['bfloat16'] / 1e9:.0f}, f32 {self.peak['float32'] / 1e9:.0f}; load at measurement "
            f"{'/'.join(f'{x:.1f}' for x in self.load)}")

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> Machine:
    """From `to_json` output (other keys, e.g. a worker's peak RSS, are ignored)."""
    fields = {k: d[k] for k in cls.__dataclass_fields__}
    return cls(**dict(fields, isa=tuple(d["isa"]), load=tuple(d["load"])))


def cpu_identity() -> tuple[str, int, tuple[str, ...]]:
  """(model name, usable cores, the ISA flags of ISA_FLAGS the CPU reports)."""
  model, flags = platform.processor() or platform.machine(), set()
  with contextlib.suppress(OSError):
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name") and ":" in line:
        model = line.split(":", 1)[1].strip()
      elif line.startswith(("flags", "Features")) and ":" in line:
        flags = set(line.split(":", 1)[1].split())
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return model, cores, tuple(f for f in ISA_FLAGS if f in flags)


def _best_s(fn, reps: int) -> float:
  fn()
  return min(common.timed(fn)[1] for _ in range(reps))


def read_bandwidth(reps: int = 5, n_bytes: int = READ_BYTES) -> dict[str, float]:
  """Bytes/s reading a bf16 buffer: XLA's fused convert + sum, our kernels' stream read, one numpy thread."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  # Distinct values: a hypervisor that merges identical pages would make a constant buffer read from one page.
  data = jax.jit(lambda: jax.lax.iota(jnp.int32, n_bytes // 2).astype(jnp.bfloat16))()
  reduce = jax.jit(lambda x: jnp.sum(x.astype(jnp.float32)))
  out = {"xla_reduce": n_bytes / _best_s(lambda: reduce(data).block_until_ready(), reps)}
  if jax.default_backend() == "cpu":
    from spct_jax.kernels import cpu_matvec  # pylint: disable=g-import-not-at-top
    if cpu_matvec.enabled():
      stream = jax.jit(cpu_matvec.stream_read)
      out["kernel_stream"] = n_bytes / _best_s(lambda: stream(data).block_until_ready(), reps)
    del data
    host = np.arange(n_bytes // 4, dtype=np.float32)
    out["numpy_1_thread"] = n_bytes / _best_s(lambda: float(host.sum()), reps)
  return out


def gemm_peak(n: int = 4096, reps: int = 5) -> dict[str, float]:
  """FLOP/s of a jitted [n, n] @ [n, n] dot on JAX's default device, bf16 and f32 inputs, f32 accumulation."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  out = {}
  for name, dtype in (("bfloat16", jnp.bfloat16), ("float32", jnp.float32)):
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    out[name] = 2 * n**3 / _best_s(lambda f=dot, x=a, y=b: f(x, y).block_until_ready(), reps)
  return out


def measure(quick: bool = False, gemm_n: int = 4096) -> Machine:
  """Measures this process's default JAX device (a CPU unless a GPU backend is the default)."""
  import jax  # pylint: disable=g-import-not-at-top

  load = os.getloadavg()
  cpu, cores, isa = cpu_identity()
  reps = 2 if quick else 5
  return Machine(cpu=cpu, cores=cores, isa=isa, device=str(jax.devices()[0].device_kind), peak=gemm_peak(gemm_n, reps),
                 bandwidth=read_bandwidth(reps), load=load)


def spread(machines: list[Machine]) -> str:
  """'best of 2 measurements; read bandwidth 12.1-23.7 GB/s' for a report."""
  bw = [m.read_bandwidth / 1e9 for m in machines]
  return f"best of {len(machines)} measurements; read bandwidth {min(bw):.1f}-{max(bw):.1f} GB/s"


def best_of(machines: list[Machine]) -> Machine:
  """One machine with the best bandwidth and peak of several measurements (a shared machine's limits vary with its
  other tenants: the roofline takes the best seen in the run, so fractions are not flattered)."""
  first = machines[0]
  best = lambda field: {k: max(getattr(m, field)[k] for m in machines) for k in getattr(first, field)}
  return dataclasses.replace(first, bandwidth=best("bandwidth"), peak=best("peak"),
                             load=tuple(max(m.load[i] for m in machines) for i in range(len(first.load))))


def run_systems(script: str, spec: dict, systems, *, timeout_s: float | None = None,
                env: dict | None = None) -> tuple[dict, list[str], Machine | None, list[Machine]]:
  """Measures the machine, runs each system, measures the machine again, each in its own worker of `script`
  (`--system S --spec FILE`). A failed system is logged and listed; the others still run.

  Returns (results per system, failed systems, the best machine measurement or None, all of them).
  """
  results, failed, machines = {}, [], []
  with tempfile.TemporaryDirectory() as tmp:
    spec_path = pathlib.Path(tmp) / "spec.json"
    spec_path.write_text(json.dumps(spec))
    for system in ["machine", *systems, "machine"]:
      common.log("measuring the machine ..." if system == "machine" else f"{system} ...")
      try:
        result = common.run_worker(script, ["--system", system, "--spec", str(spec_path)], timeout_s=timeout_s,
                                   env=env)
      except RuntimeError as e:  # report the systems that did run
        common.log(f"{system} FAILED: {e}")
        failed.append(system)
        continue
      if system == "machine":
        machines.append(Machine.from_json(result))
        common.log(f"  {machines[-1].describe()}")
      else:
        results[system] = result
  return results, failed, (best_of(machines) if machines else None), machines


def worker_machine(spec: dict) -> dict:
  """A benchmark's machine worker: the measurement as a JSON-able dict."""
  return measure(spec.get("quick", False), spec.get("peak_n", 4096)).to_json()


# ---------------------------------------------------------------------------------------------------------------
# What the work needs.


def matmul_params(cfg) -> tuple[int, int]:
  """(layer matmul parameters, LM-head parameters V x D) of a `ModelConfig`."""
  d, h = cfg.embed_dim, cfg.head_dim
  per_layer = d * (cfg.num_heads + 2 * cfg.num_kv_heads) * h + cfg.num_heads * h * d + 3 * d * cfg.mlp_dim
  return cfg.num_layers * per_layer, cfg.vocab_size * d


def decode_step_cost(cfg, rows: int, cache_length: int, weight_bytes: int = 2,
                     cache_bytes: int = 4) -> tuple[float, float]:
  """(bytes, FLOPs) of one decode step of `rows` sequences attending over `cache_length` slots."""
  layers, head = matmul_params(cfg)
  kv = 2 * cfg.num_layers * rows * cfg.num_kv_heads * cache_length * cfg.head_dim
  attention_flops = 4 * cfg.num_layers * rows * cfg.num_heads * cache_length * cfg.head_dim
  return (layers + head) * weight_bytes + kv * cache_bytes, 2 * (layers + head) * rows + attention_flops


def decode_roofline_s(machine: Machine, cfg, rows: int, cache_length: int, dtype: str = "bfloat16",
                      cache_bytes: int = 4) -> float:
  """Roofline of one decode step with `dtype` weights (2 or 4 bytes each) and matmul inputs."""
  bytes_moved, flops = decode_step_cost(cfg, rows, cache_length, 2 if dtype == "bfloat16" else 4, cache_bytes)
  return machine.roofline_s(bytes_moved, flops, dtype)


def prefill_flops(cfg, tokens: int, length: int) -> float:
  """FLOPs of prefilling `tokens` tokens of prompts of `length` (layers, causal attention, one head row each)."""
  layers, head = matmul_params(cfg)
  return 2 * layers * tokens + 2 * cfg.num_layers * tokens * cfg.num_heads * length * cfg.head_dim + 2 * head


def fraction_cell(measured_s: float | None, roofline_s: float | None) -> str:
  """'0.62 (41.0 of 66.1 ms)': roofline time / measured time."""
  if not measured_s or not roofline_s:
    return "n/a"
  return f"{roofline_s / measured_s:.2f} ({roofline_s * 1e3:.1f} of {measured_s * 1e3:.1f} ms)"


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="2 repeats instead of 5")
  parser.add_argument("--json", help="also write the measurement here")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  machine = measure(args.quick)
  print(machine.describe())
  print(f"(measured in {time.perf_counter() - start:.0f} s)")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(machine.to_json(), indent=1))


if __name__ == "__main__":
  sys.exit(main())
