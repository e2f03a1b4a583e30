"""The shared experiment pieces: GRM options for every experiment, configs loaded as the flag loads them."""

import pathlib
import runpy

import pytest

from spct_jax.experiments import common

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def test_one_grm_options_reader_for_every_experiment():
  for name, arg in (("grpo.py", None), ("eval.py", None), ("grpo.py", "smoke"), ("eval.py", "smoke")):
    config = runpy.run_path(str(CONFIGS / name))["get_config"](arg)
    options = common.grm_options(config)
    assert options.max_new_tokens == config.grm.max_new_tokens and options.temperature == config.grm.temperature
    assert len(options.demonstrations) == config.grm.num_demonstrations


def test_load_config_builds_the_variant_like_the_flag_and_locks_it(tmp_path):
  from spct_jax import experiments
  config = experiments.load_config("configs/grpo.py:smoke")
  assert config.to_dict() == runpy.run_path(str(CONFIGS / "grpo.py"))["get_config"]("smoke").to_dict()
  assert experiments.load_config("configs/eval.py").experiment == "eval"
  config.total_steps = 3  # existing keys change
  with pytest.raises(AttributeError, match="total_step"):
    config.total_step = 3  # a typo cannot add a field
  with pytest.raises(FileNotFoundError, match="nope.py"):
    experiments.load_config("configs/nope.py:smoke")
  (tmp_path / "mine.py").write_text("import ml_collections\n\ndef get_config(arg=None):\n"
                                    "  return ml_collections.ConfigDict({'variant': arg})\n")
  assert experiments.load_config("mine.py:x", root=tmp_path).variant == "x"
