"""A run preempted by a real SIGTERM and resumed, beside the same run uninterrupted (experiment tests)."""

import json
import os
import pathlib
import signal
import subprocess
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMING = {"step_time_s", "tokens_per_s"}  # wall-clock metrics: the only ones a resumed run may change


def env():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # one device, like a user's laptop run
  return env


def metrics(workdir):
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line]


def comparable(lines):
  return [{k: v for k, v in line.items() if k not in TIMING} for line in lines]


def sigterm_then_resume(command, workdir, *, total_steps: int, after_lines: int = 2, when_stopped=None):
  """Runs command(straight) to the end; runs command(interrupted), SIGTERMs it once metrics.jsonl has
  `after_lines` lines, checks it saved and stopped mid-way (and `when_stopped(interrupted)`, if given), resumes
  it to the end. Returns (straight metrics, interrupted metrics, the interrupted run's output)."""
  straight, interrupted = pathlib.Path(workdir) / "straight", pathlib.Path(workdir) / "interrupted"
  subprocess.run(command(straight), cwd=REPO, env=env(), check=True, capture_output=True, timeout=900)
  proc = subprocess.Popen(command(interrupted), cwd=REPO, env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  deadline = time.time() + 600
  while len(metrics(interrupted)) < after_lines and proc.poll() is None and time.time() < deadline:
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=300)[0].decode()
  assert proc.returncode == 0, output[-3000:]
  stopped_at = len(metrics(interrupted))
  assert after_lines <= stopped_at < total_steps, f"the run was not preempted mid-way (stopped at {stopped_at})"
  assert "SIGTERM: saved step" in output
  if when_stopped is not None:
    when_stopped(interrupted)
  resumed = subprocess.run(command(interrupted), cwd=REPO, env=env(), capture_output=True, timeout=900)
  assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
  return metrics(straight), metrics(interrupted), output
