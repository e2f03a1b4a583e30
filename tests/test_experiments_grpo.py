"""The GRPO experiment end to end (smoke config): preemption by a real SIGTERM, resume, identical metrics."""

import json
import os
import pathlib
import runpy
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# The space form `--config configs/grpo.py:smoke` (what absl accepts besides `--config=...`).
OVERRIDES = ["--config.total_steps=5", "--config.evals.heldout.every=0", "--config.grm.max_new_tokens=6",
             "--config.checkpoint.async_save=False", "--config.optimizer.learning_rate=3e-2"]
TIMING = {"step_time_s", "tokens_per_s"}


def _command(workdir):
  return [sys.executable, "-m", "spct_jax.main", "--config", "configs/grpo.py:smoke", f"--workdir={workdir}",
          *OVERRIDES]


def _env():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # one device, like a user's laptop run
  return env


def _metrics(workdir):
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line]


def _comparable(line):
  return {k: v for k, v in line.items() if k not in TIMING}


@pytest.mark.slow
def test_sigterm_then_resume_continues_identically(tmp_path):
  straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
  subprocess.run(_command(straight), cwd=REPO, env=_env(), check=True, capture_output=True, timeout=900)

  proc = subprocess.Popen(_command(interrupted), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  deadline = time.time() + 600
  while len(_metrics(interrupted)) < 2 and proc.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=300)[0].decode()
  assert proc.returncode == 0, output[-3000:]
  stopped_at = len(_metrics(interrupted))
  assert 2 <= stopped_at < 5, f"the run was not preempted mid-way (stopped at {stopped_at})"
  assert "SIGTERM: saved step" in output

  resumed = subprocess.run(_command(interrupted), cwd=REPO, env=_env(), capture_output=True, timeout=900)
  assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
  a, b = _metrics(straight), _metrics(interrupted)
  assert [line["step"] for line in b] == [1, 2, 3, 4, 5]
  assert [_comparable(x) for x in a] == [_comparable(x) for x in b]
  # The run learned something visible in its metrics (it is not a constant function of the step).
  assert len({line["loss"] for line in a}) > 1
  assert a[0]["train_items"] == 16 and a[0]["skipped_too_long/synthetic"] == 0


@pytest.mark.slow  # the whole loop in-process with the 262k vocabulary
def test_non_finite_weights_stop_before_a_bad_checkpoint(tmp_path):
  from spct_jax import checkpoint
  from spct_jax.experiments import grpo
  config = runpy.run_path(str(REPO / "configs" / "grpo.py"))["get_config"]("smoke")
  config.mesh = None  # one device: the fault is the point, not the sharding
  config.total_steps, config.evals.heldout.every = 4, 0
  config.grm.max_new_tokens, config.checkpoint.async_save = 4, False
  # AdamW decay moves every weight by lr * wd * w even with zero advantages: step 1 leaves huge weights, step 2's
  # forward may overflow (loss nan; whether it does depends on the step's prompts) and its update leaves inf
  # weights. The message names what is non-finite.
  config.optimizer.learning_rate, config.optimizer.weight_decay, config.optimizer.grad_clip_norm = 1e38, 1.0, None
  config.optimizer.warmup_steps = 0
  says = r"non-finite (loss nan and )?weights at step 2; no checkpoint written for it \(last good: 1\)"
  with pytest.raises(FloatingPointError, match=says):
    grpo.run(config, tmp_path)
  assert checkpoint.Checkpointer(tmp_path / "checkpoints").latest_step() == 1
  assert [line["step"] for line in _metrics(tmp_path)] == [1]
  assert not (tmp_path / "run.lock").exists()  # the lock goes with the run, however it ends
