"""The entry point: both absl flag forms, the unknown-key error, the experiment registry, the default workdir."""

import os
import pathlib
import subprocess
import sys

from spct_jax import main

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*args):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "spct_jax.main", *args], cwd=REPO, env=env, capture_output=True,
                        timeout=300)


def test_space_form_reaches_the_experiment(tmp_path):
  """`--config configs/grpo.py:smoke` (space form) parses, applies overrides and reaches the experiment's checks
  (an invalid value proves the override was applied; the full run is in test_experiments_grpo)."""
  result = _run("--config", "configs/grpo.py:smoke", f"--workdir={tmp_path}", "--config.batch_size=0")
  assert result.returncode == 1
  assert "config.batch_size=0; expected an integer >= 1" in result.stderr.decode()


def test_unknown_override_key_lists_valid_keys():
  result = _run("--config=configs/grpo.py:smoke", "--config.grpo.bogus=1")
  message = result.stderr.decode()
  assert result.returncode != 0 and "Traceback" not in message
  assert "unknown config key config.grpo.bogus" in message and "'group_size'" in message
  result = _run("--config", "configs/eval.py", "--config.evals.voting.kk=(1,2)")
  assert "unknown config key config.evals.voting.kk" in result.stderr.decode()


def test_missing_config_flag_is_a_usage_error():
  result = _run()
  assert result.returncode != 0 and "--config" in result.stderr.decode()


def test_default_workdir():
  assert main.default_workdir("configs/grpo.py:smoke") == os.path.join("runs", "grpo-smoke")
  assert main.default_workdir("/abs/configs/eval.py") == os.path.join("runs", "eval")


def test_distributed_flags_are_checked_before_jax_starts():
  """`--num_processes` / `--process_id` come together (a coordinator alone is a valid auto-detect form); a bad pair
  stops with one line (the full 2-process start is tests/test_multihost.py)."""
  result = _run("--config=configs/grpo.py:smoke", "--num_processes=2")
  assert result.returncode == 1 and "pass both --num_processes and --process_id" in result.stderr.decode()
  result = _run("--config=configs/grpo.py:smoke", "--num_processes=2", "--process_id=2")
  assert result.returncode == 1 and "--process_id=2 must be < --num_processes=2" in result.stderr.decode()
