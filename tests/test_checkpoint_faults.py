"""Checkpoint and storage faults, each with the behaviour a user sees (spct_jax/checkpoint.py,
checkpoint_storage.py, checksums.py).

  - altered array bytes in a committed step (restored silently before): `restore` raises DamagedCheckpointError
    naming the step and the leaf;
  - a damaged newest step (garbage or missing orbax metadata, an empty step folder, truncated or altered data):
    `restore_latest_valid` warns naming the step and why, moves it to `quarantine/` and resumes from the newest
    step that verifies; with none valid it fails listing every step; a changed model is an error, not a damage;
  - a checkpoint that cannot fit is refused before anything is written; a write that fails on a real full disk
    is one OSError line (no orbax tracebacks, no "Event loop is closed" flood);
  - a GRPO run whose newest checkpoint and last metrics line were damaged resumes with identical metrics.
Faults of runs, data, metrics and caches are in test_run_faults.py.
"""

import glob
import logging
import os
import pathlib
import shutil
import subprocess
import sys
from collections import namedtuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from spct_jax import checkpoint_storage
from spct_jax.checkpoint import Checkpointer, DamagedCheckpointError
from spct_jax.experiments import grpo
from spct_jax.train.metrics import read_metrics
from test_run_faults import _config

REPO = pathlib.Path(__file__).resolve().parents[1]


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


# ---- full disk (issue 12 item 9) ----------------------------------------------------------------------------------
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
