"""Attention memory benchmark: peak resident memory and time of prefill and of a GRPO update, dense vs blockwise.

Usage:
  python benchmarks/attention_memory.py            # full: Gemma 3 270M architecture, random weights (~1 h, 2 cores)
  python benchmarks/attention_memory.py --quick    # smoke: tiny-gemma3, short lengths (a test runs it)
  python benchmarks/attention_memory.py --limit-gib 8 --json /tmp/attention.json
  python benchmarks/attention_memory.py --only prefill:512,grpo:512  # the 512-token speed comparison alone

Cases (each in a fresh worker subprocess whose address space is capped with RLIMIT_AS, so a case that needs more
reports OOM instead of taking the machine down; the cap is `--limit-gib`, lowered to MemAvailable - 3 GiB when the
machine has less free; a worker is also stopped when the machine's free memory falls below 2 GiB):
- prefill: `sampler.prefill` (the sampler's and the GRM's) of 16 rows x 512 / 2k / 4k / 8k tokens (row r
  left-padded by 8 r tokens), cache length T + 64, one jitted call.
- sample (blockwise only): `sample_from_tokens` of 16 rows x 8k tokens, 1 new token, memory_budget_bytes = half
  the cap: the rows run in the chunks `sampling_memory` plans (the single 16-row prefill above may not fit).
- grpo: one `GRPOTrainer.update` (policy forward + backward, frozen reference forward, beta = 0.08, AdamW) on
  2 items x G = 4 completions of 64 tokens after 512- or 4k-token prompts (shared-prefix layout), the blocks
  trainable (the embedding frozen: it saves 2 GB of gradient and moments that have nothing to do with attention),
  log-probs in chunks of 16 completion tokens.
Model: the architecture of `--model` (default gemma3-270m) with seeded random weights, bf16 parameters and compute,
`float32_attention=False` (the long-context setting). `attention_impl` is "dense" (the full score matrix) or
"blockwise" (`spct_jax/model/attention.py`).
Reported: peak RSS of the worker (`ru_maxrss`: model, compilation and the call), its RSS before the first call (the
model and, for GRPO, the optimizer state), and the time of the call (best of `reps`; the first call's compile time,
from JAX's compile events, is subtracted). The 512-token cases run dense and blockwise in one worker, alternating
calls (so load changes on a shared machine hit both alike); they report times only. Targets: blockwise not slower
than dense by more than 10% at 512 tokens; no OOM for blockwise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading

import common  # pylint: disable=g-bad-import-order  (also puts the repo root on sys.path)

SCRIPT = os.path.abspath(__file__)
MARGIN_GIB = 3.0  # left to the rest of the machine when it caps the workers
STOP_BELOW_GIB = 2.0  # a worker is stopped when the machine's free memory falls below this (shared machines)


def cases(quick: bool) -> list[dict]:
  if quick:
    paired = [dict(kind="prefill", rows=2, length=64, reps=2)]
    prefill = []
    grpo = [dict(kind="grpo", items=2, group=2, new_tokens=8, length=64, reps=1)]
    sample = dict(kind="sample", rows=2, length=64, reps=1)
  else:
    # 512 tokens: the speed target, dense and blockwise alternating in one worker (4 calls each, the first compiles).
    paired = [dict(kind="prefill", rows=16, length=512, reps=4),
              dict(kind="grpo", items=2, group=4, new_tokens=64, length=512, reps=4)]
    prefill = [dict(kind="prefill", rows=16, length=t, reps=1) for t in (2048, 4096, 8192)]
    grpo = [dict(kind="grpo", items=2, group=4, new_tokens=64, length=4096, reps=1)]
    sample = dict(kind="sample", rows=16, length=8192, reps=1)
  separate = [dict(case, impl=impl) for case in prefill + grpo for impl in ("dense", "blockwise")]
  return [dict(case, impl="paired") for case in paired] + separate + [dict(sample, impl="blockwise")]


def mem_available_gib() -> float | None:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) / 2**20
  except OSError:
    pass
  return None


# ---------------------------------------------------------------------------------------------------------------
# Worker.


def worker(spec: dict) -> dict:
  """One case; impl "paired" builds dense and blockwise side by side and alternates their calls (a speed
  comparison that load changes on a shared machine hit equally)."""
  limit = int(spec["limit_bytes"])
  resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # before JAX allocates anything
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from spct_jax.model import Transformer, get_config  # pylint: disable=g-import-not-at-top

  compile_s = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, secs, **_: compile_s.append(secs) if event.startswith("/jax/core/compile/") else None)
  impls = ("dense", "blockwise") if spec["impl"] == "paired" else (spec["impl"],)
  calls = {"prefill": _prefill_call, "grpo": _grpo_call, "sample": _sample_call}
  runs = {}
  for impl in impls:
    cfg = get_config(spec["model"], param_dtype="bfloat16", compute_dtype="bfloat16", float32_attention=False,
                     attention_impl=impl, max_seq_len=max(spec["length"] + 128, 512))
    runs[impl] = calls[spec["kind"]](cfg, Transformer(cfg, rngs=nnx.Rngs(0)), np.random.default_rng(0), spec)
  with common.PeakRSS() as before:  # the model (and the trainer's state) resident, nothing compiled yet
    pass
  times = {impl: [] for impl in impls}
  try:
    for rep in range(spec["reps"]):
      for impl in impls if rep % 2 == 0 else impls[::-1]:
        compile_s.clear()
        elapsed = common.timed(runs[impl])[1]
        times[impl].append(elapsed - sum(compile_s))  # the first call compiles
  except jax.errors.JaxRuntimeError as e:
    if "memory" not in str(e).lower():
      raise
    return dict(spec, oom=True, error=str(e).splitlines()[0][:200])
  best = {impl: min(t) for impl, t in times.items()}
  return dict(spec, oom=False, time_s=best if len(impls) > 1 else best[impls[0]], times_s=times,
              rss_before_mib=before.peak_mib)


def _prefill_call(cfg, model, rng, spec):
  import functools  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from spct_jax import sampler  # pylint: disable=g-import-not-at-top
  from spct_jax.model import decoding  # pylint: disable=g-import-not-at-top

  rows, length = spec["rows"], spec["length"]
  params = decoding.decoding_params(model)
  tokens = rng.integers(3, cfg.vocab_size, (rows, length)).astype(np.int32)
  mask = np.arange(length)[None, :] >= 8 * np.arange(rows)[:, None]
  fn = jax.jit(functools.partial(sampler.prefill, cfg, cache_length=length + 64))
  args = (params, tokens, mask, np.arange(rows, dtype=np.int32))

  def run():
    jax.block_until_ready(fn(*args))

  return run


def _sample_call(cfg, model, rng, spec):
  import numpy as np  # pylint: disable=g-import-not-at-top

  from spct_jax import sampler, sampling_memory  # pylint: disable=g-import-not-at-top

  rows, length = spec["rows"], spec["length"]
  prompts = [list(rng.integers(3, cfg.vocab_size, length - 8 * r)) for r in range(rows)]
  # Half the cap: the rest is the model, the compiled program and what the estimate leaves out.
  budget = spec["limit_bytes"] // 2

  length_padded = sampler.left_pad(prompts, 0)[0].shape[1]
  spec["chunks"] = len(sampling_memory.row_chunks(cfg, np.arange(rows), [len(p) for p in prompts], length_padded,
                                                  1, budget))

  def run():
    out = sampler.sample_from_tokens(model, prompts, max_new_tokens=1, memory_budget_bytes=budget)[0]
    out.tokens.block_until_ready()

  return run


def _grpo_call(cfg, model, rng, spec):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from spct_jax.train.grpo_trainer import GRPOConfig, GRPOTrainer  # pylint: disable=g-import-not-at-top
  from spct_jax.train.step import OptimizerConfig  # pylint: disable=g-import-not-at-top

  items, group, new, length = spec["items"], spec["group"], spec["new_tokens"], spec["length"]
  trainer = GRPOTrainer(model, GRPOConfig(group_size=group, max_new_tokens=new, logprob_chunk_size=16),
                        OptimizerConfig(trainable="blocks/"))
  rows = items * group
  batch = {"prompt_tokens": rng.integers(3, cfg.vocab_size, (items, length)).astype(np.int32),
           "prompt_mask": np.arange(length)[None, :] >= 16 * np.arange(items)[:, None],
           "row_source": np.repeat(np.arange(items, dtype=np.int32), group),
           "completion": rng.integers(3, cfg.vocab_size, (rows, new)).astype(np.int32),
           "completion_mask": np.ones((rows, new), np.float32)}
  rewards = rng.random(rows).astype(np.float32)

  def run():
    jax.block_until_ready(trainer.update(batch, rewards))

  return run


# ---------------------------------------------------------------------------------------------------------------
# Driver.


class MemoryGuard:
  """While the block runs, kills this process's workers if MemAvailable falls below `STOP_BELOW_GIB` (other jobs
  share the machine: the cap alone cannot keep the total below its size)."""

  def __init__(self):
    self.tripped = False
    self._stop = threading.Event()

  def _watch(self):
    import psutil  # pylint: disable=g-import-not-at-top

    while not self._stop.wait(0.5):
      free = mem_available_gib()
      if free is not None and free < STOP_BELOW_GIB:
        self.tripped = True
        for child in psutil.Process().children():
          child.kill()

  def __enter__(self):
    self._thread = threading.Thread(target=self._watch, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()


def describe(case: dict) -> str:
  if case["kind"] == "prefill":
    return f"prefill {case['rows']} rows x {case['length']}"
  if case["kind"] == "sample":
    chunks = f"{case['chunks']} row chunk{'s' * (case['chunks'] != 1)}" if "chunks" in case else "row chunks"
    return f"sample_from_tokens {case['rows']} rows x {case['length']}, 1 new token, budget = cap / 2 ({chunks})"
  return f"GRPO update {case['items']} x G={case['group']}, {case['length']}-token prompts"


def report(results: list[dict], header: str, limit_gib: float, model: str) -> list[str]:
  lines = [header,
           f"model: {model} architecture, random bf16 weights, bf16 attention; worker address space capped at "
           f"{limit_gib:.1f} GiB\n"]
  rows, by_case = [], {}
  for r in results:
    if r["impl"] == "paired" and not r.get("failed") and not r["oom"]:  # one worker, both: times only
      for impl in ("dense", "blockwise"):
        by_case.setdefault(describe(r) + " (paired)", {})[impl] = dict(r, time_s=r["time_s"][impl], paired=True)
    else:
      by_case.setdefault(describe(r), {})[r["impl"]] = r
  ok = lambda r: r is not None and not r.get("failed") and not r["oom"]
  for name, impls in by_case.items():
    cells = []
    for impl in ("dense", "blockwise"):
      r = impls.get(impl)
      if r is None or r["impl"] == "paired" and not ok(r):
        cells += ["-" if r is None else "OOM" if r["oom"] else "crashed", "", ""]
      elif r.get("failed"):
        cells += ["stopped (machine low on memory)" if r.get("stopped") else "crashed", "", ""]
      elif r["oom"]:
        cells += ["OOM", "", ""]
      elif r.get("paired"):
        cells += ["(both in one worker)", "", f"{r['time_s']:.2f}"]
      else:
        cells += [common.fmt(r["child_max_rss_mib"], 0), common.fmt(r["rss_before_mib"], 0), f"{r['time_s']:.2f}"]
    d, b = impls.get("dense"), impls.get("blockwise")
    ratio = f"{b['time_s'] / d['time_s']:.2f}" if ok(d) and ok(b) else "n/a"
    rows.append([name, *cells, ratio])
  headers = ["case", "dense peak RSS MiB", "dense RSS of the model MiB", "dense s", "blockwise peak RSS MiB",
             "blockwise RSS of the model MiB", "blockwise s", "time blockwise / dense"]
  lines.append(common.markdown_table(headers, rows))
  return lines


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny model, short lengths (smoke)")
  parser.add_argument("--model", default=None, help="model preset (default gemma3-270m; --quick: tiny-gemma3)")
  parser.add_argument("--limit-gib", type=float, default=12.0, help="address-space cap of each worker")
  parser.add_argument("--only", default=None, help="run only these cases, e.g. prefill:512,grpo:512")
  parser.add_argument("--json", default=None, help="also write the raw results here")
  parser.add_argument("--markdown", default=None, help="also write the report here")
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    common.emit_result(worker(json.loads(args.worker)))
    return
  model = args.model or ("tiny-gemma3" if args.quick else "gemma3-270m")
  available = mem_available_gib()
  limit_gib = args.limit_gib if available is None else min(args.limit_gib, available - MARGIN_GIB)
  if limit_gib < 2:
    sys.exit(f"only {available:.1f} GiB available: not enough to run the benchmark without crowding the machine")
  header = common.machine_header("Attention memory: dense vs blockwise")
  results, failed = [], []
  selected = [c for c in cases(args.quick)
              if args.only is None or f"{c['kind']}:{c['length']}" in args.only.split(",")]
  for case in selected:
    spec = dict(case, model=model, limit_bytes=int(limit_gib * 2**30))
    common.log(f"{describe(case)}, {case['impl']}")
    try:
      with MemoryGuard() as guard:
        # Few malloc arenas: each reserves 64 MiB of address space per thread, which the cap would count.
        result = common.run_worker(SCRIPT, [json.dumps(spec)], log_prefix="  ", env={"MALLOC_ARENA_MAX": "2"})
    except RuntimeError as e:  # the worker died (e.g. an allocation outside XLA refused by the cap): see its log
      common.log(f"  {e}")
      failed.append(f"{describe(case)} {case['impl']}")
      result = dict(spec, failed=True, oom=False, error=str(e), stopped=guard.tripped)
    status = ("stopped: machine low on memory" if result.get("stopped") else "crashed" if result.get("failed") else
              "OOM" if result["oom"] else f"{result['time_s']} s, peak RSS {result['child_max_rss_mib']:.0f} MiB")
    common.log(f"  {status}")
    results.append(result)
    if args.json:  # after every case: a run stopped midway keeps what it measured
      with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
  common.print_report(report(results, header, limit_gib, model), failed=failed,
                      targets="target: blockwise / dense <= 1.10 at 512 tokens", markdown=args.markdown)


if __name__ == "__main__":
  main()
