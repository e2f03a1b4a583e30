"""The experiment registry: `config.experiment` -> a module with `RULES` (its config checks) and
`run(config, workdir)` (its loop body).

`load_config("configs/grpo.py:smoke")` builds a config as `--config=` does, for notebooks and scripts that call
`EXPERIMENTS[config.experiment].run(config, workdir)` themselves.
"""

from __future__ import annotations

import os
import pathlib
import runpy

from spct_jax.experiments import eval as eval_experiment  # pylint: disable=redefined-builtin
from spct_jax.experiments import grpo, meta_rm, rft, rft_generate, spct

EXPERIMENTS = {"grpo": grpo, "eval": eval_experiment, "rft_generate": rft_generate, "rft": rft, "meta_rm": meta_rm,
               "spct": spct}
# The repository holding this package (an editable install or a clone): where relative config paths start.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_config(spec: str | os.PathLike, *, root: str | os.PathLike = REPO_ROOT):
  """`path/to/config.py[:variant]` (relative to `root`) -> its `get_config(variant)`, locked: assigning a key the
  config does not have raises (a typo cannot add a field that nothing reads); existing keys can be changed."""
  path, _, variant = str(spec).partition(":")
  file = pathlib.Path(root) / path
  if not file.is_file():
    raise FileNotFoundError(f"config file {str(file)!r} (from {str(spec)!r}) does not exist")
  config = runpy.run_path(str(file))["get_config"](variant or None)
  config.lock()
  return config


__all__ = ["EXPERIMENTS", "REPO_ROOT", "load_config"]
