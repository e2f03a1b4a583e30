"""Tests for spct_jax.configref: docs/CONFIGS.md is what the configs generate, and where each meaning comes from."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from spct_jax import configref

REPO = pathlib.Path(__file__).resolve().parents[1]

COMMON = '''
import os
import pathlib

import ml_collections

ROOT = os.environ.get("SPCT_DATA_ROOT") or str(pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data")


def piece(**overrides):
  p = ml_collections.ConfigDict()
  p.size = 3  # how many
  # Two lines that
  # explain the rate.
  p.rate = 0.5
  p.root = ROOT  # where the data lives
  p.update(overrides)
  return p
'''

EXPERIMENT = '''
"""A toy experiment.

More words.
"""
import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("toy_common", pathlib.Path(__file__).with_name("common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

VARIANTS = ("big",)


def get_config(arg=None):
  c = common.ml_collections.ConfigDict()
  c.steps = 10  # updates of the run
  c.piece = common.piece(size=4)
  c.other = common.piece(rate=0.1)
  c.other.size = 7  # the other piece is bigger
  c.linked = c.get_ref("steps")  # same as steps
  if arg == "big":
    c.steps = 99
  return c
'''


def write_configs(tmp_path, experiment=EXPERIMENT):
  configs = tmp_path / "repo" / "configs"
  configs.mkdir(parents=True)
  (configs / "common.py").write_text(COMMON)
  (configs / "toy.py").write_text(textwrap.dedent(experiment))
  return configs


def test_committed_reference_is_what_the_configs_generate():
  """The documented command: a config change without a regenerated docs/CONFIGS.md fails here."""
  result = subprocess.run([sys.executable, "-m", "spct_jax.configref", "--check"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
  assert result.returncode == 0, result.stderr
  text = (REPO / "docs" / "CONFIGS.md").read_text()
  assert text == configref.render()


def test_every_experiment_config_is_in_the_reference_with_every_field():
  text = configref.render()
  for path in configref.config_files():
    experiment = configref.describe(path)
    assert f"## {path.stem}" in text
    assert experiment.fields and all(field.meaning for field in experiment.fields)
    for field in experiment.fields:
      assert f"| `{field.key}` |" in text
  grpo = {f.key: f for f in configref.describe(REPO / "configs" / "grpo.py").fields}
  assert grpo["grpo.beta"].default == 0.08 and grpo["grpo.beta"].meaning.startswith("KL weight")
  # Set in common.model(), overridden by nothing: the comment on common.py's line.
  assert grpo["model.max_seq_len"].meaning.startswith("bounds the KV cache")
  assert "common.py" not in {p.name for p in configref.config_files()}


def test_meanings_come_from_the_setting_line_or_the_block_above(tmp_path):
  configs = write_configs(tmp_path)
  experiment = configref.describe(configs / "toy.py", configs)
  fields = {f.key: f for f in experiment.fields}
  assert [f.key for f in experiment.fields] == sorted(fields)
  assert (fields["piece.size"].default, fields["piece.size"].meaning) == (4, "how many")  # update() keeps it
  assert fields["piece.rate"].meaning == "Two lines that explain the rate."
  assert (fields["other.size"].default, fields["other.size"].meaning) == (7, "the other piece is bigger")
  assert fields["other.rate"].default == 0.1
  assert fields["steps"].meaning == "updates of the run"  # get_ref("steps") is not a setting line
  assert (fields["linked"].default, fields["linked"].meaning) == (10, "same as steps")
  assert experiment.summary == "A toy experiment."
  assert experiment.variants == {"big": {"steps": 99, "linked": 99}}


def test_rendered_paths_do_not_depend_on_the_machine(tmp_path, monkeypatch):
  configs = write_configs(tmp_path)
  monkeypatch.setenv("SPCT_DATA_ROOT", "/somewhere/else")
  text = configref.render(configs)
  assert "`'<repo>/../shared/data'`" in text and str(tmp_path) not in text
  assert "Variant `configs/toy.py:big` changes:" in text and "| `steps` | `99` |" in text
  assert os.environ["SPCT_DATA_ROOT"] == "/somewhere/else"  # restored after the build


def test_a_field_without_a_comment_fails_naming_it_and_its_line(tmp_path):
  configs = write_configs(tmp_path, EXPERIMENT.replace("  # updates of the run", ""))
  line = 1 + EXPERIMENT.splitlines().index("  c.steps = 10  # updates of the run")
  with pytest.raises(configref.UndocumentedFields, match=rf"toy\.py: .*: steps \(set at configs/toy\.py:{line}\)"):
    configref.render(configs)
  out = tmp_path / "CONFIGS.md"
  result = subprocess.run([sys.executable, "-m", "spct_jax.configref", "--configs", str(configs), "--out", str(out)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
  assert result.returncode == 1 and "steps (set at" in result.stderr and not out.exists()
  # An override without a comment keeps the meaning of the commented line it overrides.
  configs = write_configs(tmp_path / "b", EXPERIMENT.replace("  # the other piece is bigger", ""))
  assert {f.key: f.meaning for f in configref.describe(configs / "toy.py", configs).fields}["other.size"] == "how many"


def test_check_fails_on_a_stale_file_and_a_new_config_is_discovered(tmp_path):
  configs = write_configs(tmp_path)
  out = tmp_path / "CONFIGS.md"
  assert configref.main(["--configs", str(configs), "--out", str(out)]) == 0
  assert configref.main(["--configs", str(configs), "--out", str(out), "--check"]) == 0
  (configs / "second.py").write_text(EXPERIMENT.replace("A toy experiment.", "Another one."))
  assert configref.main(["--configs", str(configs), "--out", str(out), "--check"]) == 1
  assert configref.main(["--configs", str(configs), "--out", str(out)]) == 0
  assert "## second" in out.read_text() and "Another one." in out.read_text()


def test_a_pipeline_lists_only_the_fields_it_sets_and_points_at_its_stages():
  spct = configref.describe(REPO / "configs" / "spct.py")
  keys = {f.key for f in spct.fields}
  assert "stages.grpo.model.name" in keys and "run_stages" in keys
  assert "stages.grpo.grpo.beta" not in keys  # grpo.py's own field: documented in the grpo section
  assert spct.inherited["stages.grpo"] == "grpo" and spct.inherited["stages.eval_final"] == "eval"
  text = configref.render()
  assert "`stages.grpo.*` is as [grpo](#grpo)" in text
