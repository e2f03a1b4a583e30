"""Faults the system survives, each with the behaviour a user sees. One section per kind of fault.

Checkpoints (spct_jax/checkpoint.py, checkpoint_storage.py, checksums.py)
  - altered array bytes in a committed step (restored silently before): `restore` raises DamagedCheckpointError
    naming the step and the leaf;
  - a damaged newest step (garbage or missing orbax metadata, an empty step folder, truncated or altered data):
    `restore_latest_valid` warns naming the step and why, moves it to `quarantine/` and resumes from the newest
    step that verifies; with none valid it fails listing every step; a changed model is an error, not a damage;
  - a GRPO run whose newest checkpoint and last metrics line were damaged resumes with identical metrics.
Metrics (spct_jax/train/metrics.py)
  - a torn last line of metrics.jsonl is dropped with a warning; a corrupt line elsewhere names file and line.
Data (spct_jax/data/reader_base.py and the readers)
  - bytes that are not UTF-8, truncated gzip files and files whose every record is skipped are errors naming the
    file, the line and column where known, and the skip counts by reason.
Storage (full disk) and caches
  - a checkpoint that cannot fit is refused before anything is written; a write that fails on a real full disk
    is one OSError line (no orbax tracebacks, no "Event loop is closed" flood); a metrics write names the file;
  - a damaged cached tokenizer is rebuilt from the GGUF with a warning naming the file (as cached weights are).
Runs (spct_jax/experiments/, spct_jax/train/loop.py)
  - a second run on a locked workdir fails at once naming the holder; a lock left by a killed run is taken over;
  - invalid config values fail before the model loads, naming key, value and rule (all problems at once);
  - items longer than the context (a 10 MB row included) are skipped and counted per source; item-level errors
    name the item; the NaN stop says which of loss and weights is non-finite.
"""

import glob
import gzip
import json
import logging
import os
import pathlib
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import namedtuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from spct_jax import checkpoint_storage
from spct_jax.checkpoint import Checkpointer, DamagedCheckpointError
from spct_jax.data import readers, schema
from spct_jax.experiments import common, grpo, validation, workdir
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


# ------------------------------------------------------------------------------------------------------------
# Items longer than the context.


# ---- checkpoints: verification and fallback (issue 12 items 4, 5) ------------------------------------------------
def _incompressible(seed, shape=(256, 256)):
  # Random bits with the top exponent bit cleared: finite floats that zstd stores raw, so altered bytes decode.
  bits = np.random.default_rng(seed).integers(0, 2**32, shape, dtype=np.uint32) & np.uint32(0xBFFFFFFF)
  return jnp.asarray(bits.view(np.float32))


def _state(seed):
  params = {"w": _incompressible(seed), "b": jnp.full((3,), float(seed))}
  return params, optax.adam(1e-2).init(params)


def _save_steps(directory, steps):
  with Checkpointer(directory, async_save=False) as ck:
    for step in steps:
      params, opt_state = _state(step)
      ck.save(step, params=params, opt_state=opt_state, meta={"step": step})


def _largest_file(folder):
  files = [f for f in glob.glob(os.path.join(folder, "**"), recursive=True) if os.path.isfile(f)]
  return max(files, key=os.path.getsize)


def _overwrite_4k(step_dir):
  path = _largest_file(os.path.join(step_dir, "params"))
  data = bytearray(pathlib.Path(path).read_bytes())
  data[len(data) // 3:len(data) // 3 + 4096] = np.random.default_rng(0).bytes(4096)
  pathlib.Path(path).write_bytes(bytes(data))


def _empty(step_dir):
  shutil.rmtree(step_dir)
  os.mkdir(step_dir)


def _truncate(step_dir):
  os.truncate(_largest_file(os.path.join(step_dir, "params")), 1000)


DAMAGES = {  # name -> (damage function, words the warning must contain)
    "altered_bytes": (_overwrite_4k, "params ['w']: values differ from what was saved"),
    "garbage_metadata": (lambda d: pathlib.Path(d, "params", "_METADATA").write_text("{garbage"),
                         "params/_METADATA is not readable JSON"),
    "missing_metadata": (lambda d: os.remove(os.path.join(d, "params", "_METADATA")), "params/_METADATA is missing"),
    "empty_step": (_empty, "/2 is empty"),
    "truncated_data": (_truncate, "orbax cannot restore it"),
}


def test_altered_bytes_are_not_restored_silently(tmp_path):
  _save_steps(tmp_path, [1])
  _overwrite_4k(tmp_path / "1")
  params, opt_state = _state(1)
  with Checkpointer(tmp_path) as ck:
    with pytest.raises(DamagedCheckpointError, match=r"step 1 in .* is damaged: params \['w'\]: values differ"):
      ck.restore(params_target=params, opt_state_target=opt_state)
    # The unverified path still exists, and shows what verification caught: different values.
    restored, _, _ = ck.restore(params_target=params, opt_state_target=opt_state, verify=False)
  assert int(jnp.sum(restored["w"] != params["w"])) > 0


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_newest_step_falls_back_with_a_warning(tmp_path, caplog, damage):
  _save_steps(tmp_path, [1, 2])
  hurt, words = DAMAGES[damage]
  hurt(str(tmp_path / "2"))
  params1, opt1 = _state(1)
  target = jax.tree.map(jnp.zeros_like, (params1, opt1))
  with caplog.at_level(logging.WARNING, logger="spct_jax.checkpoint"), Checkpointer(tmp_path) as ck:
    step, params, opt_state, meta = ck.restore_latest_valid(params_target=target[0], opt_state_target=target[1])
    assert (step, meta) == (1, {"step": 1})
    np.testing.assert_array_equal(params["w"], params1["w"])
    assert int(opt_state[0].count) == 0
    assert ck.all_steps() == [1]
    # The damaged step is kept for inspection, out of orbax's sight, and its number can be written again.
    assert os.listdir(tmp_path / "quarantine") == ["2"]
    assert ck.save(2, params=params, opt_state=opt_state, meta={"step": 2})
  warning = "\n".join(r.getMessage() for r in caplog.records)
  assert f"checkpoint step 2 in {tmp_path} is damaged" in warning and words in warning
  assert "resumed from checkpoint step 1" in warning


def test_no_valid_step_fails_listing_each(tmp_path):
  _save_steps(tmp_path, [1, 2])
  _overwrite_4k(tmp_path / "1")
  _empty(tmp_path / "2")
  params, opt_state = _state(1)
  with Checkpointer(tmp_path) as ck:
    with pytest.raises(DamagedCheckpointError, match=r"(?s)no checkpoint in .* verifies.*step 2 .* is empty.*step 1 "):
      ck.restore_latest_valid(params_target=params, opt_state_target=opt_state)
    assert ck.all_steps() == [1, 2]  # nothing moved: a re-run must not silently start from scratch
  assert not (tmp_path / "quarantine").exists()
  with Checkpointer(tmp_path / "fresh") as ck:
    assert ck.restore_latest_valid(params_target=params, opt_state_target=opt_state) is None


def test_changed_model_is_an_error_not_a_damage(tmp_path):
  _save_steps(tmp_path, [1])
  params, _ = _state(1)
  bigger = {**params, "extra": jnp.zeros(2)}
  with Checkpointer(tmp_path) as ck:
    with pytest.raises(ValueError, match=r"params target does not match what was saved \(target-only leaves "
                                         r"\[\"\['extra'\]\"\]") as e:
      ck.restore_latest_valid(params_target=bigger, opt_state_target=optax.adam(1e-2).init(bigger))
    assert not isinstance(e.value, DamagedCheckpointError)
    assert ck.all_steps() == [1]


def test_checkpoint_without_checksums_needs_verify_false(tmp_path):
  _save_steps(tmp_path, [1])
  shutil.rmtree(tmp_path / "1" / "checksums")
  params, opt_state = _state(1)
  with Checkpointer(tmp_path) as ck:
    with pytest.raises(DamagedCheckpointError, match=r"step 1 .* has no checksums .* verify=False"):
      ck.restore(1, params_target=params, opt_state_target=opt_state)
    restored, _, meta = ck.restore(1, params_target=params, opt_state_target=opt_state, verify=False)
  np.testing.assert_array_equal(restored["w"], params["w"])


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
def test_checkpoint_that_cannot_fit_is_refused_before_writing(tmp_path, monkeypatch):
  _save_steps(tmp_path, [1])
  usage = namedtuple("usage", "total used free")
  monkeypatch.setattr(checkpoint_storage.shutil, "disk_usage", lambda _: usage(10**9, 10**9 - 50_000, 50_000))
  params, opt_state = _state(2)
  with Checkpointer(tmp_path) as ck:
    with pytest.raises(OSError, match=r"\[Errno 28\] checkpoint step 2 needs about 0\.8 MiB in .* only 0\.0 MiB "
                                      r"are free: nothing was written \(newest complete step: 1\)"):
      ck.save(2, params=params, opt_state=opt_state, meta={})
    assert ck.all_steps() == [1]
  assert sorted(os.listdir(tmp_path)) == ["1"]


_FULL_DISK_SCRIPT = """
import sys
import jax, optax
from spct_jax import checkpoint, checkpoint_storage
if sys.argv[1] == "during-write":  # the disk fills after the free-space check: the write itself fails
  checkpoint_storage.check_free_space = lambda *args: None
params = {f"w{i}": jax.random.normal(jax.random.key(i), (256, 256)) for i in range(300)}  # 75 MiB, many chunks
ck = checkpoint.Checkpointer(sys.argv[2], async_save=True)
try:
  ck.save(1, params=params, opt_state=optax.sgd(0.1).init(params), meta={})
  ck.wait()
except OSError as e:
  print("RAISED", e)
ck.close()
"""


def _unshare_available():
  if shutil.which("unshare") is None:
    return False
  probe = subprocess.run(["unshare", "-r", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                         capture_output=True)
  return probe.returncode == 0


@pytest.mark.skipif(not _unshare_available(), reason="needs `unshare -r -m` to mount a small tmpfs")
@pytest.mark.parametrize("when", ["before-write", "during-write"])
def test_real_full_disk_is_one_clear_error(tmp_path, when):
  script = tmp_path / "fill.py"
  script.write_text(_FULL_DISK_SCRIPT)
  mount = tmp_path / "small"
  mount.mkdir()
  shell = f"mount -t tmpfs -o size=8m tmpfs {mount} && {sys.executable} {script} {when} {mount}/ckpt"
  env = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": ""}
  out = subprocess.run(["unshare", "-r", "-m", "sh", "-c", shell], capture_output=True, text=True, env=env,
                       timeout=300)
  text = out.stdout + out.stderr
  assert out.returncode == 0, text[-3000:]
  assert "Event loop is closed" not in text and "Traceback" not in text, text[:3000]
  raised = [line for line in text.splitlines() if line.startswith("RAISED")]
  assert len(raised) == 1, text[:3000]
  if when == "before-write":
    assert "checkpoint step 1 needs about 75.0 MiB" in raised[0] and "nothing was written" in raised[0]
  else:
    assert "[Errno 28] checkpoint step 1 could not be written" in raised[0]
    assert "no space left on device" in raised[0] and "RESOURCE_EXHAUSTED" in raised[0]
  assert len(text.splitlines()) < 10, text[:3000]


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


# ---- end to end: a GRPO run resumes past a damaged checkpoint and a torn metrics line ----------------------------
@pytest.mark.slow
def test_grpo_resumes_past_damage_with_identical_metrics(tmp_path, caplog):
  config = _config()
  config.total_steps, config.evals.heldout.every = 3, 0
  config.grm.max_new_tokens, config.checkpoint.async_save = 4, False
  config.optimizer.learning_rate = 3e-2
  grpo.run(config, tmp_path)
  straight = read_metrics(tmp_path)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]
  _overwrite_4k(str(tmp_path / "checkpoints" / "3"))
  metrics = tmp_path / "metrics.jsonl"
  metrics.write_text(metrics.read_text()[:-25])  # the line of step 3 torn
  with caplog.at_level(logging.WARNING):
    grpo.run(config, tmp_path)
  assert "checkpoint step 3" in caplog.text and "resumed from checkpoint step 2" in caplog.text
  timing = {"step_time_s", "tokens_per_s"}
  strip = lambda lines: [{k: v for k, v in line.items() if k not in timing} for line in lines]
  assert strip(read_metrics(tmp_path)) == strip(straight)
  assert os.listdir(tmp_path / "checkpoints" / "quarantine") == ["3"]


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
