"""Decode-step benchmark: how close one spct-jax decode step is to the machine's roofline, and where its time goes.

Usage:
  python benchmarks/decode_step.py                      # rows 1, 8, 16, 32; kernel modes on / no-amx / off
  python benchmarks/decode_step.py --rows 32 --profile  # + per-op breakdown of a 32-row step (jax.profiler)
  python benchmarks/decode_step.py --quick              # rows 1 and 32, kernels on, 2 repeats

For each row count and kernel mode (`SPCT_CPU_KERNELS`: on = AMX where present, else the skinny kernel; no-amx =
the skinny kernel for up to `cpu_matvec.max_rows()` rows (64 with AVX-512 BF16, 128 without), XLA's dot otherwise;
off = XLA's dot), a step's time is that of the sampler's compiled decode loop for 40 new tokens divided by its 39
model steps (the first token's draw is counted with them), best of the interleaved repeats; prefill runs untimed
before each call. Rows sample at temperature 1 (batch 1: greedy), 4 distinct prompts of `--prompt-len` tokens (1
for fewer than 8 rows), EOS disabled. The roofline is
`machine.decode_roofline_s` at the mean cache length; the machine is measured in this process before the timings
(`machine.measure`), so both see the same load.
Everything runs in one process: it is a development tool, the peers are in sampler.py.
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import os
import re
import sys
import tempfile
import time

import common  # pylint: disable=g-bad-import-order  (also puts the repo root on sys.path)
import machine as machine_lib  # pylint: disable=g-bad-import-order

MODES = ("on", "no-amx", "off")


def _prompts(rows: int, length: int) -> tuple[list[list[int]], int]:
  distinct = 4 if rows >= 8 else 1
  return [[2] + list(range(1000 + length * i, 999 + length * (i + 1))) for i in range(distinct)], rows // distinct


def _decoder(model, rows: int, steps: int, prompt_len: int):
  """(decode, args): the sampler's jitted decode loop for `steps` new tokens of `rows` rows, with the kernel mode
  of this process's `SPCT_CPU_KERNELS`, and a function making fresh arguments (prefill; the cache is donated)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from spct_jax import sampler, strategies  # pylint: disable=g-import-not-at-top
  from spct_jax.model import decoding  # pylint: disable=g-import-not-at-top
  from spct_jax.stop_rules import NEVER_STOP  # pylint: disable=g-import-not-at-top

  cfg = model.cfg
  prompts, k = _prompts(rows, prompt_len)
  tokens, mask = sampler.left_pad(prompts, 0)
  kernel = decoding.cpu_kernel_for(cfg)
  params = decoding.decoding_params(model, tiled=kernel == "amx")
  matmul = decoding.Matmul(cpu_kernel=kernel, live_rows=1 if rows == 1 else None)  # batch 1 decodes a filler row
  row_source = np.repeat(np.arange(len(prompts), dtype=np.int32), 2 if rows == 1 else k)
  prefill = jax.jit(functools.partial(sampler.prefill, cfg, cache_length=tokens.shape[1] + steps, matmul=matmul))
  strategy = strategies.Sampling(1.0) if rows > 1 else strategies.Greedy()
  decode = jax.jit(functools.partial(sampler.decode, cfg, max_new_tokens=steps, strategy=strategy, eos_ids=(-1,),
                                     pad_id=0, matmul=matmul), donate_argnums=(1,))
  row_ids, stop_table = np.arange(len(row_source), dtype=np.int32), NEVER_STOP.table(cfg.vocab_size)

  def args():
    cache, logits, position = jax.block_until_ready(prefill(params, tokens, mask, row_source))
    return params, cache, logits, position, jax.random.key(0), row_ids, stop_table

  return decode, args


def step_times(model, rows: int, modes, steps: int, reps: int, prompt_len: int) -> dict[str, float]:
  """Seconds per decode step for each kernel mode: a decode loop of `steps` tokens (steps - 1 model steps and
  the first token's draw) / (steps - 1), best of `reps`, modes interleaved."""
  import jax  # pylint: disable=g-import-not-at-top

  runs = {}
  for mode in modes:
    os.environ["SPCT_CPU_KERNELS"] = mode
    runs[mode] = _decoder(model, rows, steps, prompt_len)
    jax.block_until_ready(runs[mode][0](*runs[mode][1]()))  # compile
  best = collections.defaultdict(lambda: float("inf"))
  for _ in range(reps):
    for mode, (decode, args) in runs.items():
      os.environ["SPCT_CPU_KERNELS"] = mode
      call_args = args()
      start = time.perf_counter()
      jax.block_until_ready(decode(*call_args))
      best[mode] = min(best[mode], (time.perf_counter() - start) / (steps - 1))
  os.environ.pop("SPCT_CPU_KERNELS", None)
  return dict(best)


def profile_step(model, rows: int, prompt_len: int, steps: int = 16, top: int = 14) -> list[tuple[str, float]]:
  """(op, ms per step) of a decode call's largest ops, from a jax.profiler trace of the compiled decode loop.

  Custom calls are named by their FFI target and output shape, other ops by the JAX op that made them.
  """
  import jax  # pylint: disable=g-import-not-at-top

  decode, args = _decoder(model, rows, steps, prompt_len)
  hlo = decode.lower(*args()).compile().as_text()
  jax.block_until_ready(decode(*args()))
  names = {}
  for line in hlo.splitlines():
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ", line)
    if m:
      target, op = re.search(r'custom_call_target="([^"]+)"', line), re.search(r'op_name="([^"]+)"', line)
      names[m.group(1)] = (f"{target.group(1)} -> {m.group(2)}" if target else
                           re.sub(r"jit\(\w+\)/", "", op.group(1)) if op else m.group(1))
  with tempfile.TemporaryDirectory() as trace_dir:
    run_args = args()
    jax.profiler.start_trace(trace_dir)
    jax.block_until_ready(decode(*run_args))
    jax.profiler.stop_trace()
    data = jax.profiler.ProfileData.from_file(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0])
  per_op = collections.defaultdict(float)
  for plane in data.planes:
    for line in plane.lines:
      if line.name.startswith("tf_XLAEigen"):  # XLA:CPU's threads; their events are thunks
        for event in line.events:
          if not event.name.startswith(("ThunkExecutor", "Slinky")):
            per_op[names.get(event.name, event.name)] += event.duration_ns / 1e6 / (steps - 1)
  ranked = sorted(per_op.items(), key=lambda kv: -kv[1])
  return ranked[:top] + [("(everything else)", sum(ms for _, ms in ranked[top:]))]


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", default="1,8,16,32", help="comma list of decode row counts")
  parser.add_argument("--modes", default=",".join(MODES), help=f"comma list from {MODES}")
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--profile", action="store_true", help="per-op breakdown of the largest row count")
  parser.add_argument("--prompt-len", type=int, default=20, help="tokens per prompt (a GRM prompt is ~900)")
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args(argv)
  rows_list = [int(r) for r in args.rows.split(",")] if not args.quick else [1, 32]
  modes = args.modes.split(",") if not args.quick else ["on"]
  steps, reps = (12, 2) if args.quick else (40, args.reps)

  from spct_jax.weights import load_model  # pylint: disable=g-import-not-at-top

  print(common.machine_header("Decode-step benchmark"))
  model, _ = load_model("gemma3-270m", compute_dtype="bfloat16")
  print(f"model: gemma3-270m, param_dtype {model.cfg.param_dtype}, compute_dtype {model.cfg.compute_dtype}")
  machine = machine_lib.measure(quick=args.quick)
  print(f"machine: {machine.describe()}\n")
  headers = ["rows"] + [f"{mode}: step ms (fraction of roofline)" for mode in modes] + ["roofline ms", "load"]
  table = []
  for rows in rows_list:
    times = step_times(model, rows, modes, steps, reps, args.prompt_len)
    cache = args.prompt_len + steps // 2
    roof = machine_lib.decode_roofline_s(machine, model.cfg, rows, cache, cache_bytes=2)  # a bf16 cache suffices
    table.append([rows] + [f"{times[m] * 1e3:.1f} ({roof / times[m]:.2f})" for m in modes]
                 + [f"{roof * 1e3:.1f}", f"{os.getloadavg()[0]:.1f}"])
    common.log(f"rows {rows}: " + ", ".join(f"{m} {times[m] * 1e3:.1f} ms" for m in modes))
  print(common.markdown_table(headers, table))
  if args.profile:
    rows = max(rows_list)
    print(f"\nWhere a {rows}-row step's time goes ({args.prompt_len}-token prompts, kernels on; thunk time on "
          "XLA's threads, ms per step):\n")
    ops = profile_step(model, rows, args.prompt_len)
    print(common.markdown_table(["op", "ms"], [[op, f"{ms:.2f}"] for op, ms in ops]))
  print(f"\nload average at end: {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
  sys.exit(main())
