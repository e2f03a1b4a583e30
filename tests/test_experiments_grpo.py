"""The GRPO experiment end to end (smoke config): preemption by a real SIGTERM, resume, identical metrics."""

import pathlib
import runpy
import sys

import pytest

import preempted_runs

REPO = pathlib.Path(__file__).resolve().parents[1]
# The space form `--config configs/grpo.py:smoke` (what absl accepts besides `--config=...`).
OVERRIDES = ["--config.total_steps=5", "--config.evals.heldout.every=0", "--config.grm.max_new_tokens=6",
             "--config.checkpoint.async_save=False", "--config.optimizer.learning_rate=3e-2"]


def _command(workdir):
  return [sys.executable, "-m", "spct_jax.main", "--config", "configs/grpo.py:smoke", f"--workdir={workdir}",
          *OVERRIDES]


@pytest.mark.slow
def test_sigterm_then_resume_continues_identically(tmp_path):
  a, b, _ = preempted_runs.sigterm_then_resume(_command, tmp_path, total_steps=5)
  assert [line["step"] for line in b] == [1, 2, 3, 4, 5]
  assert preempted_runs.comparable(a) == preempted_runs.comparable(b)
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
  # forward overflows (loss nan) and its update leaves inf weights. The message names both.
  config.optimizer.learning_rate, config.optimizer.weight_decay, config.optimizer.grad_clip_norm = 1e38, 1.0, None
  config.optimizer.warmup_steps = 0
  says = r"non-finite loss nan and weights at step 2; no checkpoint written for it \(last good: 1\)"
  with pytest.raises(FloatingPointError, match=says):
    grpo.run(config, tmp_path)
  assert checkpoint.Checkpointer(tmp_path / "checkpoints").latest_step() == 1
  assert [line["step"] for line in preempted_runs.metrics(tmp_path)] == [1]
  assert not (tmp_path / "run.lock").exists()  # the lock goes with the run, however it ends
