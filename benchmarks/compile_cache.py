"""Time to first step with JAX's persistent compilation cache (`config.compile_cache`): cold vs warm.

Usage:
  python benchmarks/compile_cache.py            # the GRPO smoke config (tiny random model)
  python benchmarks/compile_cache.py --real     # also the default config (Gemma 3 270M) with total_steps=1

Each row is `python -m spct_jax.main --config=<config> --config.total_steps=1 --config.evals.heldout.every=0` in a
fresh workdir, its own process, one after the other:
  off    --config.compile_cache= (no persistent cache)
  cold   an empty cache folder: everything compiles, executables are written to the cache
  warm   the same folder again (what a resumed run or a second run sees): executables are loaded
Columns: the process's wall time (imports, model build, data, step 1, checkpoint), step 1's own time
(`step_time_s` in metrics.jsonl: rollout + update, their compiles included) and the XLA compile (or cache load)
seconds JAX reports (`JAX_LOG_COMPILES=1`: "Finished XLA compilation of ... in T sec", summed; tracing and lowering,
which the cache does not skip, are not in it). The real config's "off" row is left out (it is the cold row without
the cache write).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import common  # pylint: disable=g-bad-import-order  (also puts the repo root on sys.path)

CONFIGS = {"smoke": "configs/grpo.py:smoke", "real": "configs/grpo.py"}
FIXED = ["--config.total_steps=1", "--config.evals.heldout.every=0", "--config.checkpoint.async_save=False"]
COMPILED = re.compile(r"Finished XLA compilation of .* in ([0-9.eE+-]+) sec")


def run_once(config: str, cache: str, workdir: pathlib.Path) -> dict[str, float]:
  env = dict(os.environ, JAX_LOG_COMPILES="1")
  env.pop("XLA_FLAGS", None)
  start = time.perf_counter()
  done = subprocess.run([sys.executable, "-m", "spct_jax.main", f"--config={config}", f"--workdir={workdir}", *FIXED,
                         f"--config.compile_cache={cache}"], cwd=common.REPO, env=env, check=True,
                        capture_output=True, text=True)
  wall = time.perf_counter() - start
  first = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])
  compile_s = sum(float(t) for t in COMPILED.findall(done.stderr))
  return {"wall_s": wall, "step_s": first["step_time_s"], "compile_s": compile_s}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--real", action="store_true", help="also the Gemma 3 270M default config")
  parser.add_argument("--markdown", default=None, help="also write the table to this file")
  args = parser.parse_args()
  lines = [common.machine_header("Persistent compilation cache: time to first GRPO step"), ""]
  rows = []
  with tempfile.TemporaryDirectory() as scratch:
    scratch = pathlib.Path(scratch)
    for name in ["smoke"] + (["real"] if args.real else []):
      cache = scratch / f"cache-{name}"
      modes = (("off", ""),) if name == "smoke" else ()
      for mode, folder in modes + (("cold", str(cache)), ("warm", str(cache))):
        common.log(f"{name} {mode}")
        result = run_once(CONFIGS[name], folder, scratch / f"{name}-{mode}")
        rows.append([CONFIGS[name], mode, common.fmt(result["wall_s"]), common.fmt(result["step_s"]),
                     common.fmt(result["compile_s"])])
  lines.append(common.markdown_table(["config (total_steps=1)", "cache", "process wall (s)", "step 1 (s)",
                                      "XLA compile / load (s)"], rows))
  common.print_report(lines, failed=[], targets="warm < cold (no target)", markdown=args.markdown)


if __name__ == "__main__":
  main()
