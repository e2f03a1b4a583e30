"""The smoke form of `python benchmarks/attention_memory.py` (tiny model, one length) runs and reports every case."""

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_quick_run_reports_every_case(tmp_path):
  out = tmp_path / "results.json"
  run = subprocess.run([sys.executable, "benchmarks/attention_memory.py", "--quick", "--limit-gib", "4",
                        "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=1200)
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads(out.read_text())
  assert [(r["kind"], r["impl"]) for r in results] == [
      ("prefill", "paired"), ("grpo", "dense"), ("grpo", "blockwise"), ("sample", "blockwise")]
  assert not any(r["oom"] or r.get("failed") for r in results)
  assert set(results[0]["time_s"]) == {"dense", "blockwise"} and min(results[0]["time_s"].values()) > 0
  assert all(r["time_s"] > 0 and r["child_max_rss_mib"] > 100 for r in results[1:])
  assert "| prefill 2 rows x 64 (paired) |" in run.stdout and "time blockwise / dense" in run.stdout
