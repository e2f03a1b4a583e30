"""Entry point: `python -m spct_jax.main --config=configs/<experiment>.py[:variant] [--config.key=value ...]`.

The config's `experiment` field picks the job: grpo, eval (rft_generate, rft and meta_rm come next).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config: path/to/config.py[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go "
                               "(default: runs/<config name>[-<variant>]). An existing workdir is resumed.")

EXPERIMENTS = {
    "grpo": "spct_jax.train.grpo_loop",
    "eval": "spct_jax.evaluate",
}


def _load_config_file(spec: str):
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_spct_config", path)
  if module_spec is None or not os.path.exists(path):
    raise SystemExit(f"--config: no config file at {path!r}")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def check_overrides(argv: list[str]) -> None:
  """Fails on an unknown `--config.a.b=...` key, naming the valid keys at that level (absl's error does not)."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return
  config = _load_config_file(spec)
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    node, walked = config, "config"
    for key in arg[len("--config."):].split("=", 1)[0].split("."):
      if not hasattr(node, "keys") or key not in node:
        valid = sorted(node.keys()) if hasattr(node, "keys") else []
        raise SystemExit(f"unknown config key {walked}.{key} in {arg!r}; valid keys of {walked}: {valid}")
      node, walked = node[key], f"{walked}.{key}"


def default_workdir(spec: str) -> str:
  path, _, arg = spec.partition(":")
  return str(pathlib.Path("runs") / (pathlib.Path(path).stem + (f"-{arg}" if arg else "")))


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src", "orbax", "tensorflow"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  config = _CONFIG.value
  if config.experiment not in EXPERIMENTS:
    raise SystemExit(f"config.experiment={config.experiment!r}; valid: {sorted(EXPERIMENTS)}")
  spec = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--config="))
  workdir = _WORKDIR.value or default_workdir(spec)
  pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
  logging.info("experiment %s, workdir %s", config.experiment, workdir)
  summary = importlib.import_module(EXPERIMENTS[config.experiment]).run(config, workdir)
  print(json.dumps({k: v for k, v in (summary or {}).items() if isinstance(v, (int, float, str, bool))},
                   indent=1, sort_keys=True))


def run():
  argv = [a for a in sys.argv]
  if not any(a.startswith("--config=") or a == "--config" for a in argv):
    raise SystemExit("usage: python -m spct_jax.main --config=configs/grpo.py[:variant] [--config.key=value]")
  check_overrides(argv)
  app.run(main)


if __name__ == "__main__":
  run()
