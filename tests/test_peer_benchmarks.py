"""The smoke forms of `python benchmarks/sampler.py` and `benchmarks/eval_voting.py` run ours beside HF `generate`
on the real Gemma 3 270M and report each row with a ratio that follows from the two columns (grpo_step.py's peer,
TRL, is not in the lock file; its own run is in benchmarks/README.md)."""

import os
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(script: str) -> str:
  # One torch thread: torch's OpenMP pool stalls whenever one of its threads loses its core (to the other pytest
  # worker), which made HF 4-35x slower on a loaded 2-core machine; the numbers here are not the point.
  run = subprocess.run([sys.executable, f"benchmarks/{script}", "--quick", "--systems", "ours-bfloat16,hf-float32"],
                       cwd=REPO, capture_output=True, text=True, timeout=1800,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
  assert run.returncode == 0, run.stderr[-3000:]
  assert "FAILED" not in run.stdout, run.stdout[-3000:]
  return run.stdout


def _close(ratio: str, ours: str, peer: str) -> bool:
  return abs(float(ratio) - float(ours) / float(peer)) < 0.01 + 0.01 * float(ratio)


def test_sampler_quick_run_reports_ours_beside_hf():
  out = _run("sampler.py")
  rows = re.findall(r"^\| ([12])\. [^|]+ \(tok/s\) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \(target", out, re.M)
  assert [r[0] for r in rows] == ["1", "2"], out
  for _, ours, hf, ratio in rows:
    assert min(float(ours), float(hf)) > 0 and _close(ratio, ours, hf)
  sharing = re.search(r"^\|    ratio time\(k=8\) / time\(k=1\), target <= 2\.5 \| ([\d.]+) \| ([\d.]+) \|", out, re.M)
  assert sharing and min(float(sharing[1]), float(sharing[2])) > 0, out


def test_eval_voting_quick_run_reports_ours_beside_an_hf_judge():
  out = _run("eval_voting.py")
  items = re.search(r"^\| items/s \(voting@8, 16 new tokens\) \| ([\d.]+) \| ([\d.]+) \|$", out, re.M)
  ratio = re.search(r"^- ours bf16 vs HF f32: ([\d.]+)x items/s$", out, re.M)
  assert items and ratio, out
  assert min(float(items[1]), float(items[2])) > 0
  # items/s are printed to 3 decimals, so the ratio of the printed columns is only that close.
  assert abs(float(ratio[1]) - float(items[1]) / float(items[2])) < 0.05 * float(ratio[1]), out
  fractions = re.search(r"^\| fraction of roofline \(roofline of measured s\) \| ([\d.]+) \(.*?\) \| ([\d.]+) \(", out,
                        re.M)
  assert fractions and all(0 < float(f) <= 1.5 for f in fractions.groups()), out
