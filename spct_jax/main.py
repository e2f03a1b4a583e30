"""Entry point: `python -m spct_jax.main --config=configs/<experiment>.py[:variant] [--config.key=value ...]`.

Flags -> distributed start-up (before any other JAX call) -> compile cache -> `EXPERIMENTS[config.experiment]
.run(config, workdir)`. The logic lives in `spct_jax.experiments`, so a notebook can call the same `run`.

A multi-process job passes `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` to every process
(what `spct_jax.launch` does); left empty they are auto-detected: SLURM's environment, or the TPU metadata server
when `SPCT_DISTRIBUTED=1` (launch/tpu_pod.sh sets it). On the CPU, N processes talk through gloo.
"""

from __future__ import annotations

import json
import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

# accept_new_attributes: an unknown --config.a.b key reaches `check_overrides`, whose error names the valid keys.
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config: path/to/config.py[:variant].",
                                          accept_new_attributes=True, lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go "
                               "(default: runs/<config name>[-<variant>]). An existing workdir is resumed.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process: HOST:PORT of process 0's "
                                   "coordinator (empty: auto-detect from SLURM, or the TPU metadata server with "
                                   "SPCT_DISTRIBUTED=1).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes (empty: "
                                      "auto-detect).", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index in [0, num_processes) "
                                   "(empty: auto-detect).", lower_bound=0)
flags.mark_flag_as_required("config")


def check_overrides(pristine, overrides) -> None:
  """Fails on an unknown `--config.a.b` key, naming the valid keys at that level."""
  for key in overrides:
    node, walked = pristine, "config"
    for part in key.split("."):
      if not hasattr(node, "keys") or part not in node:
        valid = sorted(node.keys()) if hasattr(node, "keys") else []
        raise SystemExit(f"unknown config key {walked}.{part} in --config.{key}; valid keys of {walked}: {valid}")
      node, walked = node[part], f"{walked}.{part}"


def default_workdir(spec: str) -> str:
  path, _, arg = spec.partition(":")
  return os.path.join("runs", os.path.splitext(os.path.basename(path))[0] + (f"-{arg}" if arg else ""))


def start_distributed() -> bool:
  """`jax.distributed` from the flags (or auto-detected); must run before any other JAX call. Whether it started."""
  from spct_jax import sharding  # pylint: disable=g-import-not-at-top
  if (_NUM_PROCESSES.value is None) != (_PROCESS_ID.value is None):
    raise SystemExit("pass both --num_processes and --process_id, or neither (auto-detect)")
  if _PROCESS_ID.value is not None and _PROCESS_ID.value >= _NUM_PROCESSES.value:
    raise SystemExit(f"--process_id={_PROCESS_ID.value} must be < --num_processes={_NUM_PROCESSES.value}")
  return sharding.maybe_initialize_distributed(
      coordinator_address=_COORDINATOR.value or None, num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value, force=os.environ.get("SPCT_DISTRIBUTED") == "1")


def main(argv):
  del argv
  start_distributed()
  # pylint: disable-next=g-import-not-at-top
  import jax
  from spct_jax import multihost
  from spct_jax.experiments import EXPERIMENTS, common, validation, workdir as workdir_lib

  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src", "orbax", "tensorflow"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  spec = config_flags.get_config_filename(flags.FLAGS["config"])
  check_overrides(flags.FLAGS["config"].parser.parse(spec), config_flags.get_override_values(flags.FLAGS["config"]))
  config = _CONFIG.value
  if config.get("experiment") not in EXPERIMENTS:
    raise SystemExit(f"config.experiment={config.get('experiment')!r}; valid: {sorted(EXPERIMENTS)}")
  workdir = _WORKDIR.value or default_workdir(spec)
  common.setup_compile_cache(config.get("compile_cache"))
  logging.info("experiment %s, workdir %s, process %d of %d", config.experiment, workdir,
               jax.process_index(), jax.process_count())
  try:
    summary = EXPERIMENTS[config.experiment].run(config, workdir)
  except (validation.ConfigError, workdir_lib.WorkdirLocked) as e:  # the message says it all: no traceback
    raise SystemExit(str(e)) from None
  if multihost.is_main_process():
    print(json.dumps({k: v for k, v in (summary or {}).items() if isinstance(v, (int, float, str, bool))},
                     indent=1, sort_keys=True))


def run():
  app.run(main)


if __name__ == "__main__":
  run()
