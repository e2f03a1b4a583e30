"""One decode step's matmuls on the CPU: the skinny / blocked kernel vs XLA's bf16 and f32 dots, by row count.

Usage:
  python benchmarks/cpu_matmul.py                 # rows 1, 8, 16, 32, 64, 128 (~3 min on 2 cores)
  python benchmarks/cpu_matmul.py --rows 8,32 --reps 5
  python benchmarks/cpu_matmul.py --quick         # rows 1 and 8, one repeat, a small LM head (tests run it)

A development tool (one process, no peers): each of Gemma 3 270M's decode matmul shapes ([out, in] weights: qkv
1536 x 640, o 640 x 1024, gate/up 4096 x 640, down 640 x 2048, the LM head 262144 x 640) multiplied by `rows`
activation rows, seeded random bf16 operands, f32 results. A step's time is 18 x the four layer matmuls + the head,
each the best of `--reps` timed loops of jitted calls. Columns: `cpu_matvec.skinny_matmul` (what decoding runs
for up to `cpu_matvec.max_rows()` rows on this CPU), XLA's dot with bf16 inputs and f32 accumulation (what
decoding runs otherwise), XLA's f32 dot (an f32 model's decoding), and the kernel's speed-up over XLA's bf16 dot.
"""

from __future__ import annotations

import argparse
import time

import common  # pylint: disable=g-bad-import-order  (also puts the repo root on sys.path)

LAYER_SHAPES = ((1536, 640), (640, 1024), (4096, 640), (640, 2048))  # [out, in], 18 layers each
HEAD = (262144, 640)
LAYERS = 18


def _best_s(fn, args, calls: int, reps: int) -> float:
  fn(*args).block_until_ready()  # compile
  best = float("inf")
  for _ in range(reps):
    start = time.perf_counter()
    for _ in range(calls):
      out = fn(*args)
    out.block_until_ready()
    best = min(best, (time.perf_counter() - start) / calls)
  return best


def step_ms(rows: int, reps: int, head: tuple[int, int]) -> dict[str, float]:
  """Milliseconds of one decode step's matmuls at `rows` rows, per system."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from spct_jax.kernels import cpu_matvec  # pylint: disable=g-import-not-at-top

  cpu_matvec.load()
  systems = {
      "kernel": (jax.jit(cpu_matvec.skinny_matmul), jnp.bfloat16),
      "xla_bf16": (jax.jit(lambda x, w: jnp.einsum("xk,nk->xn", x, w, preferred_element_type=jnp.float32)),
                   jnp.bfloat16),
      "xla_f32": (jax.jit(lambda x, w: jnp.einsum("xk,nk->xn", x, w)), jnp.float32),
  }
  total = dict.fromkeys(systems, 0.0)
  for (n, k), count in [(shape, LAYERS) for shape in LAYER_SHAPES] + [(head, 1)]:
    x = jax.random.normal(jax.random.key(0), (rows, k)).astype(jnp.bfloat16)
    w = jax.random.normal(jax.random.key(1), (n, k)).astype(jnp.bfloat16)
    for name, (fn, dtype) in systems.items():
      total[name] += count * _best_s(fn, (x.astype(dtype), w.astype(dtype)), 3 if n > 100_000 else 20, reps)
  return {name: 1e3 * seconds for name, seconds in total.items()}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", default="1,8,16,32,64,128", help="comma list of activation row counts")
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args(argv)
  rows = [1, 8] if args.quick else [int(r) for r in args.rows.split(",")]
  head = (4096, 640) if args.quick else HEAD
  lines = [common.machine_header("Decode-step matmuls: CPU kernel vs XLA's dots")]
  if args.quick:
    lines.append(f"quick: LM head {head[0]} x {head[1]} instead of {HEAD[0]} x {HEAD[1]}")
  table = []
  for r in rows:
    ms = step_ms(r, 1 if args.quick else args.reps, head)
    common.log(f"rows {r}: " + ", ".join(f"{name} {value:.1f} ms" for name, value in ms.items()))
    table.append([r, f"{ms['kernel']:.1f}", f"{ms['xla_bf16']:.1f}", f"{ms['xla_f32']:.1f}",
                  f"{ms['xla_bf16'] / ms['kernel']:.2f}x"])
  lines.append(common.markdown_table(["rows", "kernel (ms)", "XLA bf16 dot (ms)", "XLA f32 dot (ms)",
                                      "kernel vs XLA bf16"], table))
  common.print_report(lines, failed=[], targets="none (a development tool)", markdown=None)


if __name__ == "__main__":
  main()
