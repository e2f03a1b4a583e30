"""Multi-controller runs for real: 2 processes x 2 CPU devices on 127.0.0.1 (gloo), started by `spct_jax.launch`.

The helper run checks `spct_jax.multihost` (rows per process, global batches, gathers), the loop's agreed preemption
and the workdir lock across processes. The experiment runs check that the GRPO smoke experiment (1 step, a
checkpoint, a resume to step 2) and the eval smoke experiment give, with 2 processes, what ONE process with 4
devices gives on the same mesh: every metric (losses, KL, gradient norm, rewards, evaluator scores) at rtol 1e-5,
and the eval experiment's per-sample texts and scores exactly.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from spct_jax import launch
from spct_jax.experiments import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 600  # seconds per launch; the launcher stops every process past it (and on the first failure)
TIMING = {"step_time_s", "tokens_per_s"}
RTOL = 1e-5
ATOL = 1e-6  # step 1's gradient is float noise around 0 (every advantage is 0): 0 with 1 process, ~3e-8 with 2
# A random model never writes a parseable judgement: every reward is -1 and every advantage 0, so the update
# would only see float noise. Weight decay moves the policy off the reference, so from step 2 on the KL, loss and
# gradients are real values that depend on every rollout; Adam eps 1e-3 keeps near-zero (noise) gradients from
# turning into updates that depend on the reduction order (as in test_grpo_trainer). Synchronous saves. The
# held-out evaluator is off here (one compile less per launch): test_eval_two_processes checks it across processes.
GRPO = ["--config=configs/grpo.py:smoke", "--config.checkpoint.async_save=False", "--config.optimizer.eps=1e-3",
        "--config.evals.heldout.every=0",
        "--config.optimizer.weight_decay=2.0", "--config.optimizer.learning_rate=3e-2",
        "--config.optimizer.warmup_steps=0"]
EVAL = ["--config=configs/eval.py:smoke", "--config.progress=False"]


def _env():
  env = dict(os.environ, PYTHONPATH=str(REPO))
  env.pop("XLA_FLAGS", None)
  return env


def _launch(tmp_path, name, args, *, program=launch.MAIN):
  """2 processes x 2 devices; the exit code and both logs are in the assertion message."""
  logs = tmp_path / f"logs-{name}"
  result = launch.run_local(args, num_processes=2, devices_per_process=2, program=program, log_dir=logs,
                            timeout=TIMEOUT, grace=5)
  if result.exit_code:
    tails = "\n".join(f"--- {log}:\n{log.read_text(errors='replace')[-3000:]}" for log in result.logs)
    pytest.fail(f"{name}: exit code {result.exit_code} (codes {result.returncodes})\n{tails}")
  return result


def _one_process(args):
  """The same command as ONE process with 4 CPU devices (the same mesh: fsdp=4)."""
  env = dict(_env(), XLA_FLAGS=launch.xla_flags("", 4))
  done = subprocess.run([*launch.MAIN, *args], cwd=REPO, env=env, capture_output=True, timeout=TIMEOUT)
  assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]


def _metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _assert_close(actual, expected, where):
  """Equal structure; numbers within RTOL (exact for ints, bools and strings)."""
  if isinstance(expected, dict):
    assert sorted(actual) == sorted(expected), where
    for key in expected:
      _assert_close(actual[key], expected[key], f"{where}.{key}")
  elif isinstance(expected, list):
    assert len(actual) == len(expected), where
    for i, (a, e) in enumerate(zip(actual, expected)):
      _assert_close(a, e, f"{where}[{i}]")
  elif isinstance(expected, float):
    assert math.isclose(actual, expected, rel_tol=RTOL, abs_tol=ATOL), f"{where}: {actual} != {expected}"
  else:
    assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def test_helpers_preemption_and_lock_across_two_processes(tmp_path):
  out, held = tmp_path / "out", tmp_path / "held"
  out.mkdir()
  with workdir_lib.locked(held):  # another run holds this workdir
    _launch(tmp_path, "helpers", [f"--out={out}", f"--locked={held}"],
            program=(sys.executable, str(REPO / "tests" / "multihost_worker.py")))
  seen = [json.loads((out / f"process-{i}.json").read_text()) for i in range(2)]
  everything = [[2 * r * 2 + 2 * c + 3 for c in range(2)] for r in range(8)]  # x * 2 + sum(w) with x = arange
  for i, s in enumerate(seen):
    assert s["collectives"] == "gloo" and s["devices"] == 4
    assert s["rows_8"] == [4 * i, 4 * i + 4] and s["rows_6"] == [0, 6]  # 6 rows do not divide 4 shards
    assert s["spans_processes"] and s["doubled"] == everything and s["full_equals"]
    assert s["tree"] == {"a": [row[0] for row in everything], "b": float(sum(map(sum, everything)))}
    assert s["gathered"] == [100 + 2 * r for r in range(8)]
    assert s["sequences"] == [[0] * (1 + j) for j in range(4)] + [[1] * (3 + j) for j in range(4)]
    assert s["any"] is True and s["all"] is False and s["max"] == 11 and s["min"] == 10
    assert s["big_min"] == 4 << 33 and s["big_sum"] == 6 << 32
    assert f"process {i} holds rows [{4 * i}, {4 * i + 4}) of 8 (process_rows), got 3 rows" in s["wrong_rows"]
    assert s["stopped_at"] == 3, "SIGTERM reached process 1 in step 3: every process stops after step 3"
  assert "is in use by pid" in seen[0]["lock"] and "process 0 could not take the run lock" in seen[1]["lock"]


@pytest.mark.slow  # 3 GRPO launches, each compiling the sampler and the train step (minutes on 2 busy cores)
def test_grpo_two_processes_equal_one_process_through_a_checkpoint_and_resume(tmp_path):
  cache = f"--config.compile_cache={tmp_path / 'jax_cache'}"  # the resume loads the executables of the first run
  one, two = tmp_path / "one", tmp_path / "two"
  _one_process([*GRPO, f"--workdir={one}", "--config.total_steps=2", cache])
  _launch(tmp_path, "grpo-1-step", [*GRPO, f"--workdir={two}", "--config.total_steps=1", cache])
  assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["1"]  # written collectively
  assert [line["step"] for line in _metrics(two)] == [1]
  _launch(tmp_path, "grpo-resume", [*GRPO, f"--workdir={two}", "--config.total_steps=2", cache])
  expected, actual = _metrics(one), _metrics(two)
  assert [line["step"] for line in actual] == [1, 2]  # one line per step, from process 0 only
  for e, a in zip(expected, actual):
    _assert_close({k: v for k, v in a.items() if k not in TIMING}, {k: v for k, v in e.items() if k not in TIMING},
                  f"step {e['step']}")
  # The comparison has teeth: step 1's update (weight decay) moved the policy, so step 2 (the resumed one) has a
  # real KL, loss and gradient that depend on every rollout and on the restored parameters and optimizer state.
  assert expected[0]["kl"] == 0 and expected[1]["kl"] > 1e-4 and expected[1]["grad_norm"] > 1e-3
  assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["1", "2"]
  assert not (two / "run.lock").exists()


@pytest.mark.slow  # two eval launches (~1 min on 2 free cores)
def test_eval_two_processes_equal_one_process(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  _one_process([*EVAL, f"--workdir={one}"])
  _launch(tmp_path, "eval", [*EVAL, f"--workdir={two}"])
  expected, actual = (json.loads((w / "results.json").read_text()) for w in (one, two))
  assert actual["process_count"] == 2 and expected["process_count"] == 1
  _assert_close(actual["datasets"]["synthetic"]["runs"], expected["datasets"]["synthetic"]["runs"], "runs")
  assert actual["datasets"]["synthetic"]["uids"] == expected["datasets"]["synthetic"]["uids"]
  samples = [(w / "samples.jsonl").read_text().splitlines() for w in (one, two)]
  assert samples[0] == samples[1] and len(samples[0]) == 8  # texts, per-sample scores, validity: identical
  assert sorted(p.name for p in two.iterdir()) == ["accuracy_vs_k.png", "results.json", "samples.jsonl"]
