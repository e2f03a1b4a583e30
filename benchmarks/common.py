"""Shared helpers of the benchmarks: worker subprocesses, timing, peak memory, machine load, markdown tables.

Each system under test runs in its own worker subprocess (`python benchmarks/X.py --worker ...`), so one system's
memory, threads and allocator state never leak into another's numbers. A worker prints one `RESULT {json}` line;
`run_worker` parses it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))  # Benchmarks run from a checkout, without installing the package.

_RESULT_PREFIX = "RESULT "


# ---------------------------------------------------------------------------------------------------------------
# Machine and load.


def load_average() -> tuple[float, float, float]:
  return os.getloadavg()


def cpu_description() -> str:
  """e.g. '2 cores, AMD EPYC, AMX' (from /proc/cpuinfo; AMX = amx_bf16 flag)."""
  model, flags = platform.processor() or "cpu", set()
  with contextlib.suppress(OSError):
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
      elif line.startswith("flags"):
        flags = set(line.split(":", 1)[1].split())
  extras = [name for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if flag in flags]
  return ", ".join([f"{os.cpu_count()} cores", model, *extras])


def machine_header(title: str) -> str:
  """Markdown lines naming the date, machine and load average at the start of a run."""
  load = "/".join(f"{x:.2f}" for x in load_average())
  now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  return f"## {title}\n\n{now}; {cpu_description()}; load average (1/5/15 min) at start: {load}\n"


def busy_processes(limit: int = 5, min_cpu: float = 20.0) -> list[str]:
  """Other processes using CPU now (to name contention in the report); never touches them."""
  import psutil  # pylint: disable=g-import-not-at-top

  procs = list(psutil.process_iter(["pid", "name", "cmdline"]))
  for p in procs:
    with contextlib.suppress(psutil.Error):
      p.cpu_percent(None)
  time.sleep(1.0)
  me = os.getpid()
  busy = []
  for p in procs:
    with contextlib.suppress(psutil.Error):
      pct = p.cpu_percent(None)
      if pct >= min_cpu and p.pid != me:
        cmd = " ".join(p.info["cmdline"] or [p.info["name"] or "?"])
        busy.append((pct, f"{pct:.0f}% {cmd[:90]}"))
  return [line for _, line in sorted(busy, reverse=True)[:limit]]


# ---------------------------------------------------------------------------------------------------------------
# Timing and memory.


def timed(fn: Callable[..., Any], *args, **kwargs) -> tuple[Any, float]:
  """(result, wall seconds). `fn` must block until its work is done (e.g. device_get / block_until_ready)."""
  start = time.perf_counter()
  result = fn(*args, **kwargs)
  return result, time.perf_counter() - start


def max_rss_mib() -> float:
  """High-water mark of this process's resident set (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakRSS:
  """Samples this process's RSS in a thread while the block runs; `.peak_mib` is the phase's high-water mark.

  ru_maxrss only grows over the process's life; sampling gives a per-phase peak (it can miss spikes shorter than
  the interval, so the process-wide ru_maxrss is reported as well).
  """

  def __init__(self, interval_s: float = 0.005):
    self.interval_s = interval_s
    self.peak_mib = 0.0
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _run(self):
    import psutil  # pylint: disable=g-import-not-at-top

    proc = psutil.Process()
    while not self._stop.is_set():
      self.peak_mib = max(self.peak_mib, proc.memory_info().rss / 2**20)
      self._stop.wait(self.interval_s)

  def __enter__(self):
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self._run_once()

  def _run_once(self):
    import psutil  # pylint: disable=g-import-not-at-top

    self.peak_mib = max(self.peak_mib, psutil.Process().memory_info().rss / 2**20)


# ---------------------------------------------------------------------------------------------------------------
# Worker subprocesses.


def emit_result(result: dict[str, Any]) -> None:
  """A worker's last act: one JSON line on stdout, with its process-wide peak RSS added."""
  result = dict(result, max_rss_mib=max_rss_mib())
  print(_RESULT_PREFIX + json.dumps(result), flush=True)


def run_worker(script: str | os.PathLike, args: Sequence[str], *, timeout_s: float | None = None,
               log_prefix: str = "", env: dict[str, str] | None = None) -> dict[str, Any]:
  """Runs `python script --worker args...`; returns its RESULT dict plus `wall_s` and the child's `ru_maxrss`.

  The worker's other output is echoed with `log_prefix` (progress lines), stderr goes to our stderr. `env` adds
  to (or overrides) this process's environment.
  """
  cmd = [sys.executable, os.fspath(script), "--worker", *args]
  env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
  result = None
  # A timer, not a check per output line: a hung worker may print nothing.
  fired = threading.Event()
  killer = None if timeout_s is None else threading.Timer(timeout_s, lambda: (fired.set(), proc.kill()))
  if killer is not None:
    killer.start()
  try:
    for line in proc.stdout:
      if line.startswith(_RESULT_PREFIX):
        result = json.loads(line[len(_RESULT_PREFIX):])
      else:
        print(log_prefix + line, end="", flush=True)
  finally:
    if killer is not None:
      killer.cancel()
  # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the max over all children so far).
  _, status, usage = os.wait4(proc.pid, 0)
  proc.returncode = os.waitstatus_to_exitcode(status)
  if result is None:
    why = f" (killed after the {timeout_s:.0f} s timeout)" if fired.is_set() else ""
    raise RuntimeError(f"worker {' '.join(cmd)} exited with {proc.returncode}{why} and printed no result")
  result["wall_s"] = time.perf_counter() - start
  result["child_max_rss_mib"] = usage.ru_maxrss / 1024
  return result


def log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Models of the peers.


def hf_gemma3_270m(dtype: str = "float32", attn_implementation: str = "sdpa"):
  """Gemma 3 270M as transformers reads the same GGUF (its own config, names, dequantization), in eval mode.

  The same steps as `from_pretrained(dir, gguf_file=...)`, which in transformers 5 needs `accelerate`; sdpa is
  transformers' default (fastest stock) attention on CPU.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint  # pylint: disable=g-import-not-at-top

  from spct_jax.weights.gguf import resolve_gemma3_270m  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(resolve_gemma3_270m())
  config = transformers.AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                                        attn_implementation=attn_implementation)
  tensors = load_gguf_checkpoint(os.fspath(path), return_tensors=True, model_to_load=model)["tensors"]
  missing, unexpected = model.load_state_dict(tensors, strict=False)
  if missing != ["lm_head.weight"] or unexpected:
    raise RuntimeError(f"unexpected GGUF tensors: missing {missing}, unexpected {unexpected}")
  model.tie_weights()
  return model.to(getattr(torch, dtype)).eval()


def torch_left_padded(prompts, pad_id: int):
  """(input_ids, attention_mask) torch int64 [B, T] of token-id prompts, left-padded as HF `generate` expects."""
  import torch  # pylint: disable=g-import-not-at-top

  length = max(len(p) for p in prompts)
  ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
  mask = torch.zeros_like(ids)
  for i, p in enumerate(prompts):
    ids[i, length - len(p):] = torch.tensor(p)
    mask[i, length - len(p):] = 1
  return ids, mask


# ---------------------------------------------------------------------------------------------------------------
# Tables.


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  cells = [[str(c) for c in row] for row in rows]
  lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in cells]
  return "\n".join(lines)


def fmt(x: float | None, digits: int = 1) -> str:
  return "n/a" if x is None else f"{x:,.{digits}f}"


def ratio_cell(ours: float | None, peer: float | None, target: float | None = None, *,
               lower_is_better: bool = False) -> str:
  """'3.4x (target >= 3x: met)'; for lower-is-better quantities the ratio is peer/ours."""
  if ours is None or peer is None or ours <= 0 or peer <= 0:
    return "n/a"
  r = peer / ours if lower_is_better else ours / peer
  text = f"{r:.2f}x"
  if target is not None:
    text += f" (target >= {target:g}x: {'met' if r >= target else 'NOT met'})"
  return text


def print_report(lines: list[str], *, failed: Sequence[str], targets: str, markdown: str | None) -> None:
  """Prints the final report (and writes it to `markdown` if given): the lines, failures, end load, targets."""
  lines = list(lines)
  if failed:
    lines.append(f"\nFAILED (see the log): {', '.join(failed)}")
  lines.append(f"\nload average at end: {'/'.join(f'{x:.2f}' for x in load_average())}; {targets}")
  print()
  print("\n".join(lines))
  if markdown:
    pathlib.Path(markdown).write_text("\n".join(lines) + "\n")


def add_worker_args(parser: argparse.ArgumentParser) -> None:
  """--worker-timeout, and the hidden flags a benchmark's parent passes to its per-system worker processes."""
  parser.add_argument("--worker-timeout", type=float, help="seconds before a system's worker is killed (skipped)")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--system", help=argparse.SUPPRESS)
  parser.add_argument("--spec", help=argparse.SUPPRESS)


def parse_systems(parser, text: str, valid) -> list[str]:
  """The comma list of `--systems`; unknown names stop the run with the valid ones."""
  systems = [s for s in text.split(",") if s]
  unknown = sorted(set(systems) - set(valid))
  if unknown:
    parser.error(f"unknown systems {unknown}; valid: {list(valid)}")
  return systems
