"""Faults of runs, data, metrics and caches, each with the behaviour a user sees. One section per kind of fault.

Runs (spct_jax/experiments/, spct_jax/train/loop.py)
  - a second run on a locked workdir fails at once naming the holder; a lock left by a killed run is taken over;
  - invalid config values fail before the model loads, naming key, value and rule (all problems at once);
  - items longer than the context (a 10 MB row included) are skipped and counted per source; item-level errors
    name the item; the NaN stop says which of loss and weights is non-finite.
Metrics (spct_jax/train/metrics.py)
  - a torn last line of metrics.jsonl is dropped with a warning; a corrupt line elsewhere names file and line; a
    write on a full disk names the file.
Data (spct_jax/data/reader_base.py and the readers)
  - bytes that are not UTF-8, truncated gzip files and files whose every record is skipped are errors naming the
    file, the line and column where known, and the skip counts by reason.
Caches
  - a damaged cached tokenizer is rebuilt from the GGUF with a warning naming the file (as cached weights are).
Checkpoint and storage faults are in test_checkpoint_faults.py.
"""

import gzip
import json
import logging
import os
import pathlib
import runpy
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from spct_jax.data import readers, schema
from spct_jax.experiments import grpo, validation, workdir
from spct_jax.train import loop
from spct_jax.train.metrics import MetricsWriter, read_metrics
from test_train_loop import LinearBody

REPO = pathlib.Path(__file__).resolve().parents[1]
HOLD = ("import sys, time; from spct_jax.experiments import workdir\n"
        "with workdir.locked(sys.argv[1]):\n  print('locked', flush=True); time.sleep(120)\n")


def _config(name="grpo.py", arg="smoke"):
  return runpy.run_path(str(REPO / "configs" / name))["get_config"](arg)


def _env():
  env = dict(os.environ, PYTHONPATH=str(REPO))
  env.pop("XLA_FLAGS", None)
  return env


def _hold_lock(path):
  proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=REPO, env=_env(), stdout=subprocess.PIPE)
  assert proc.stdout.readline().decode().strip() == "locked"
  return proc


# ------------------------------------------------------------------------------------------------------------
# Workdir lock.


def test_second_run_on_a_locked_workdir_fails_at_once_naming_the_holder(tmp_path):
  holder = _hold_lock(tmp_path)
  try:
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "spct_jax.main", "--config=configs/eval.py:smoke",
                             f"--workdir={tmp_path}"], cwd=REPO, env=_env(), capture_output=True, timeout=300)
    message = result.stderr.decode()
    assert result.returncode != 0
    assert f"in use by pid {holder.pid} on host {socket.gethostname()}" in message, message[-2000:]
    assert "Traceback" not in message and time.time() - start < 120  # before any model is built
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.lock"]  # nothing written by the second run
  finally:
    holder.kill()
    holder.wait()


def test_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path, caplog):
  holder = _hold_lock(tmp_path)
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  assert json.loads((tmp_path / "run.lock").read_text())["pid"] == holder.pid  # left behind
  with caplog.at_level(logging.WARNING), workdir.locked(tmp_path):
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    with pytest.raises(workdir.WorkdirLocked, match=f"pid {os.getpid()}"):  # this process cannot take it twice
      with workdir.locked(tmp_path):
        pass
  assert f"taking over the lock left by pid {holder.pid}" in caplog.text
  assert not (tmp_path / "run.lock").exists()


def test_stale_lock_file_of_a_dead_pid_is_taken_over(tmp_path, caplog):
  gone = subprocess.Popen(["true"])
  gone.wait()
  (tmp_path / "run.lock").write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
  with caplog.at_level(logging.WARNING), workdir.locked(tmp_path) as path:
    assert path == tmp_path
  assert f"pid {gone.pid}" in caplog.text and "taking over" in caplog.text


# ------------------------------------------------------------------------------------------------------------
# Config validation (before any model is loaded).


@pytest.mark.parametrize("key, value, allowed", [
    ("checkpoint.every", 0, "an integer >= 1"),
    ("batch_size", 0, "an integer >= 1"),
    ("total_steps", -3, "an integer >= 1"),
    ("grpo.group_size", 1, "an integer >= 2 (G = 1 gives every rollout advantage 0"),
    ("data.num_responses", ("abc",), "an integer in [1, 4] or a (low, high) pair"),
    ("grm.temperature", 0.0, "a number > 0.0"),
    ("optimizer.schedule", "linear", "one of ['constant', 'cosine']"),
    ("data.kinds", ("algebra",), "a non-empty tuple of names from"),
    ("evals.heldout.every", -1, "an integer >= 0"),
])
def test_invalid_grpo_values_name_key_value_and_rule(key, value, allowed):
  config = _config()
  parent, _, leaf = key.rpartition(".")
  (config[parent] if parent else config)[leaf] = value
  with pytest.raises(validation.ConfigError, match="invalid config") as err:
    validation.check(config, grpo.RULES + validation.evals(config))
  assert f"config.{key}={value!r}; expected {allowed}" in str(err.value)


def test_invalid_eval_values_fail_before_the_model_loads(tmp_path):
  from spct_jax.experiments import eval as eval_experiment

  config = _config("eval.py")
  config.evals.voting.ks, config.data.sampling = (0, 2), "random"
  with pytest.raises(validation.ConfigError) as err:
    eval_experiment.run(config, tmp_path / "run")
  assert "config.evals.voting.ks=(0, 2); expected a tuple of integers >= 1" in str(err.value)
  assert "config.data.sampling='random'; expected one of ['stratified', 'uniform']" in str(err.value)
  assert not (tmp_path / "run").exists()


def test_every_problem_is_reported_at_once_and_missing_keys_too():
  config = _config()
  config.batch_size, config.checkpoint.every = 0, 0
  del config.grpo["beta"]
  with pytest.raises(validation.ConfigError) as err:
    validation.check(config, grpo.RULES)
  message = str(err.value)
  assert "config.batch_size=0" in message and "config.checkpoint.every=0" in message
  assert "config.grpo.beta is missing; expected a number >= 0.0" in message
  validation.check(_config(), grpo.RULES)  # the shipped configs pass
  validation.check(_config(arg=None), grpo.RULES)


def test_invalid_value_on_the_command_line_is_one_clear_line(tmp_path):
  result = subprocess.run([sys.executable, "-m", "spct_jax.main", "--config", "configs/grpo.py:smoke",
                           f"--workdir={tmp_path / 'run'}", "--config.data.num_responses=abc"],
                          cwd=REPO, env=_env(), capture_output=True, timeout=300)
  message = result.stderr.decode()
  assert result.returncode == 1 and "Traceback" not in message
  assert "config.data.num_responses=('abc',); expected an integer in [1, 4]" in message
  assert not (tmp_path / "run").exists()


# ---- metrics.jsonl (issue 12 item 6) -----------------------------------------------------------------------------
def _lines(*steps):
  return "".join(json.dumps({"step": s, "loss": 0.5 * s}, sort_keys=True) + "\n" for s in steps)


def test_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  path.write_text(_lines(1, 2, 3) + '{"loss": 0.2, "st')
  with caplog.at_level(logging.WARNING):
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    writer = MetricsWriter(tmp_path, tensorboard=False)
    writer.truncate_after(2)
  assert path.read_text() == _lines(1, 2)
  assert f"{path}: dropping its incomplete last line 4" in caplog.text


def test_corrupt_middle_metrics_line_names_file_and_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(_lines(1) + "{not json\n" + _lines(3))
  with pytest.raises(ValueError, match=rf"{path}: line 2: corrupt metrics record"):
    MetricsWriter(tmp_path, tensorboard=False).truncate_after(3)
  with pytest.raises(ValueError, match=rf"{path}: line 2"):
    read_metrics(tmp_path)
  assert path.read_text() == _lines(1) + "{not json\n" + _lines(3)  # left as found


# ---- data files (issue 12 item 8) ---------------------------------------------------------------------------------
AUTO_J = {"scenario": "s", "label": 0, "prompt": "q", "response 1": "a", "response 2": "b"}
HH = {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}


def _auto_j_file(root, data: bytes):
  path = root / "auto-j/data/test/testdata_pairwise.jsonl"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  return path


def test_non_utf8_byte_names_file_line_and_column(tmp_path):
  path = _auto_j_file(tmp_path, (json.dumps(AUTO_J) + "\n").encode() * 2 + b'{"prompt": "caf\xe9"}\n')
  with pytest.raises(ValueError, match=rf"{path}: line 3 column 16: not UTF-8 \(byte 0xe9"):
    readers.read_dataset("auto_j", tmp_path)
  listing = tmp_path / "llmbar/Dataset/X/dataset.json"
  listing.parent.mkdir(parents=True)
  listing.write_bytes(b'[\n {"input": "q",\n  "output_1": "\xff"}]')
  with pytest.raises(ValueError, match=rf"{listing}: line 3 column 16: not UTF-8 \(byte 0xff"):
    readers.read_dataset("llmbar", tmp_path)


def test_truncated_gzip_names_file_and_last_good_line(tmp_path):
  path = tmp_path / "hh-rlhf/helpful-base/test.jsonl.gz"
  path.parent.mkdir(parents=True)
  data = gzip.compress(((json.dumps(HH) + "\n") * 3000).encode())
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=rf"{path}: truncated or corrupt gzip data after line \d+ \(EOFError"):
    readers.read_dataset("hh_rlhf", tmp_path, subsets=("helpful-base",))
  listing = tmp_path / "rmb/Pairwise_set/Helpfulness/Chat.json.gz"
  listing.parent.mkdir(parents=True)
  listing.write_bytes(gzip.compress(b"[" + b'{"a": 1},' * 5000 + b"{}]")[:-20])
  with pytest.raises(ValueError, match=rf"{listing}: truncated or corrupt gzip data"):
    readers.read_dataset("rmb_pairwise", tmp_path)


def test_every_record_skipped_names_file_and_reasons(tmp_path):
  tie, dup = {**AUTO_J, "label": 2}, {**AUTO_J, "response 2": "a"}
  path = _auto_j_file(tmp_path, "".join(json.dumps(r) + "\n" for r in (tie, tie, dup)).encode())
  with pytest.raises(ValueError, match=rf"{path}: no items: all 3 records were skipped "
                                       r"\(duplicate_response: 1, tie: 2\)"):
    readers.read_dataset("auto_j", tmp_path)
  _auto_j_file(tmp_path, b"\n\n")
  with pytest.raises(ValueError, match=rf"{path}: no records"):
    readers.read_dataset("auto_j", tmp_path)


# ---- full disk and damaged caches (issue 12 item 9) --------------------------------------------------------------
def test_metrics_write_on_full_disk_names_the_file(tmp_path):
  if not os.path.exists("/dev/full"):
    pytest.skip("needs /dev/full")
  writer = MetricsWriter(tmp_path, tensorboard=False)
  os.symlink("/dev/full", tmp_path / "metrics.jsonl")  # every write to it fails with ENOSPC
  with pytest.raises(OSError, match=rf"cannot append step 7 to {tmp_path}/metrics.jsonl: No space left"):
    writer.write(7, {"loss": 1.0})


def test_damaged_cached_tokenizer_is_rebuilt(tmp_path, monkeypatch, caplog):
  from hf_fixtures import random_flat, toy_tokenizer_meta, write_gguf

  from spct_jax.model import get_config
  from spct_jax.weights import load_model, load_tokenizer

  monkeypatch.setenv("SPCT_CACHE_DIR", str(tmp_path / "cache"))
  cfg = get_config("tiny-gemma3")
  path = write_gguf(tmp_path / "m.gguf", cfg, random_flat(cfg), tokenizer_meta=toy_tokenizer_meta())
  _, tokenizer = load_model(path)
  (cached,) = (tmp_path / "cache").glob("*/tokenizer.model")
  good = cached.read_bytes()
  for load in (lambda: load_tokenizer(path), lambda: load_model(path)[1]):
    cached.write_bytes(good[:len(good) // 2])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      rebuilt = load()
    assert rebuilt.serialized_model == tokenizer.serialized_model
    assert f"rebuilding the damaged cached tokenizer {cached}" in caplog.text
    assert cached.read_bytes() == good  # repaired in place: the next load is a clean hit


# ---- runs: items, item errors, the NaN stop ------------------------------------------------------------------
def _item(i, response, source="mine"):
  return schema.PreferenceItem(conversation=(("user", f"What is {i} + {i}?"),), responses=(response, f"{2 * i + 1}"),
                               ratings=(1.0, 0.0), category="sums", source=source, uid=f"mine.jsonl:{i}")


def test_too_long_items_are_skipped_and_counted_per_source(tmp_path):
  """Training items and held-out items that do not fit are skipped before training, counted in the metrics and
  the log; a 10 MB held-out row costs nothing (no tokenization) and does not stop the run."""
  n, eval_items = 12, 3
  order = np.random.default_rng(0).permutation(n)  # the split train_and_heldout draws with data.seed = 0
  items = [_item(i, f"{2 * i}") for i in range(n)]
  items[order[0]] = _item(int(order[0]), "x" * 10_000_000)  # held out: a 10 MB row
  items[order[5]] = _item(int(order[5]), "word " * 3000)  # training: ~3k tokens > 2048
  readers.write_jsonl(items, tmp_path / "data" / "mine.jsonl")
  config = _config()
  config.mesh, config.total_steps, config.batch_size = None, 1, 2
  config.data.name, config.data.root, config.data.num_items, config.data.eval_items = "mine.jsonl", str(
      tmp_path / "data"), 0, eval_items
  config.evals.heldout.every, config.grm.max_new_tokens, config.checkpoint.async_save = 1, 4, False
  start = time.time()
  summary = grpo.run(config, tmp_path / "run")
  (line,) = read_metrics(tmp_path / "run")
  assert line["train_items"] == n - eval_items - 1 and line["skipped_too_long/mine"] == 1
  assert line["heldout/items"] == eval_items - 1 and line["heldout/skipped_too_long"] == 1
  assert "heldout/greedy/accuracy_strict" in line and summary["step"] == 1
  assert time.time() - start < 600


def test_item_level_errors_name_the_item():
  from spct_jax.evaluators import voting
  from spct_jax.grm.scorer import GRMOptions

  class Failing(voting.MeasuredGRM):
    def generate_texts(self, prompts, strategy, seed):
      raise ValueError("prompt 0 has 9999 tokens")

  grm = Failing(None, None, **vars(GRMOptions()))
  with pytest.raises(ValueError, match=r"scoring items \['mine.jsonl:3'\]: prompt 0 has 9999 tokens"):
    voting.score_items(grm, [_item(3, "6")], k=1, batch_size=4, seed=0)


# ------------------------------------------------------------------------------------------------------------
# Non-finite loss or weights: the message says which.


class Faulty(LinearBody):
  def __init__(self, fault, at):
    super().__init__()
    self.fault, self.at = fault, at

  def __call__(self, step):
    metrics = super().__call__(step)
    if step + 1 == self.at:
      metrics.update(self.fault)
    return metrics


@pytest.mark.parametrize("fault, says", [
    ({"loss": float("nan")}, "non-finite loss nan at step 2"),
    ({"params_finite": 0.0}, "non-finite weights at step 2"),
    ({"loss": float("inf"), "params_finite": 0.0}, "non-finite loss inf and weights at step 2"),
])
def test_nan_stop_says_which_of_loss_and_weights(tmp_path, fault, says):
  config = loop.LoopConfig(total_steps=4, checkpoint_every=1, async_save=False)
  with pytest.raises(FloatingPointError, match=f"^{says}; no checkpoint written for it \\(last good: 1\\)$"):
    loop.train(Faulty(fault, at=2), workdir=tmp_path, config=config)
  assert [line["step"] for line in read_metrics(tmp_path)] == [1]
