"""The smoke form of `python benchmarks/cpu_matmul.py` runs and reports the kernel beside XLA's dots per row count."""

import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_quick_run_reports_every_row_count():
  run = subprocess.run([sys.executable, "benchmarks/cpu_matmul.py", "--quick"], cwd=REPO, capture_output=True,
                       text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|$", run.stdout, re.M)
  assert [int(r[0]) for r in rows] == [1, 8], run.stdout
  for _, kernel, bf16, f32, ratio in rows:
    assert min(float(kernel), float(bf16), float(f32)) > 0
    assert abs(float(ratio) - float(bf16) / float(kernel)) < 0.01 + 0.01 * float(ratio)
