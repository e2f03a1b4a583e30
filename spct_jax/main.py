"""Entry point: `python -m spct_jax.main --config=configs/<experiment>.py[:variant] [--config.key=value ...]`.

Flags -> distributed start-up (before any other JAX call) -> compile cache -> `EXPERIMENTS[config.experiment]
.run(config, workdir)`. The logic lives in `spct_jax.experiments`, so a notebook can call the same `run`.
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


def main(argv):
  del argv
  from spct_jax import sharding  # pylint: disable=g-import-not-at-top
  sharding.maybe_initialize_distributed(force=os.environ.get("SPCT_DISTRIBUTED") == "1")
  # pylint: disable-next=g-import-not-at-top
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
  logging.info("experiment %s, workdir %s", config.experiment, workdir)
  try:
    summary = EXPERIMENTS[config.experiment].run(config, workdir)
  except (validation.ConfigError, workdir_lib.WorkdirLocked) as e:  # the message says it all: no traceback
    raise SystemExit(str(e)) from None
  print(json.dumps({k: v for k, v in (summary or {}).items() if isinstance(v, (int, float, str, bool))},
                   indent=1, sort_keys=True))


def run():
  app.run(main)


if __name__ == "__main__":
  run()
