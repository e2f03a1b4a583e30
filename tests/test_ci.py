"""CI itself: `.ci/run` runs the README's test command, skips fail it, and setup.py agrees with requirements.lock."""

import ast
import importlib.metadata
import os
import pathlib
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from unittest import mock

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = pathlib.Path(__file__).resolve().parents[1]
CI = REPO / ".ci" / "run"


def _ci_commands() -> list[str]:
  lines = [line.strip() for line in CI.read_text().splitlines()]
  return [line for line in lines if line and not line.startswith("#")]


def _normalized(command: str) -> str:
  """`python -m pip install -q X` and `pip install X` are the same step."""
  words = [w for w in shlex.split(command) if w != "-q"]
  if words[:3] == ["python", "-m", "pip"]:
    words = words[2:]
  return " ".join(words)


def test_readme_test_command_is_what_ci_runs():
  readme = (REPO / "README.md").read_text()
  line = next(line for line in readme.splitlines() if "pytest" in line and line.startswith("python3 -m venv"))
  readme_steps = [step.strip() for step in line.split("&&")]
  ci_steps = [_normalized(c) for c in _ci_commands()]
  positions = [ci_steps.index(_normalized(step)) for step in readme_steps]  # ValueError: a step CI does not run
  assert positions == sorted(positions), "CI runs the README's steps in another order"
  test_command = "python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile tests"
  assert _ci_commands()[-1] == readme_steps[-1] == test_command


def _run_ci_pytest(tree: pathlib.Path, **env_overrides) -> subprocess.CompletedProcess:
  """The pytest command `.ci/run` ends with, run in `tree` (a copy of tests/conftest.py plus test files)."""
  env = {k: v for k, v in os.environ.items() if k != "SPCT_ALLOW_SKIPS"}
  env.update(env_overrides)
  command = shlex.split(_ci_commands()[-1])
  assert command[:2] == ["python", "-m"]
  return subprocess.run([sys.executable, *command[1:]], cwd=tree, env=env, capture_output=True, text=True,
                        timeout=300)


@pytest.fixture
def tree(tmp_path):
  (tmp_path / "tests").mkdir()
  shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "tests" / "conftest.py")
  (tmp_path / "tests" / "test_fine.py").write_text("def test_fine():\n  assert 1 + 1 == 2\n")
  return tmp_path


def test_a_deliberately_skipped_test_fails_ci(tree):
  (tree / "tests" / "test_skipping.py").write_text(
      "import pytest\n\n\ndef test_needs_data():\n  pytest.skip('deliberate: no data here')\n")
  result = _run_ci_pytest(tree)
  output = result.stdout + result.stderr
  assert result.returncode == 1, output
  assert "1 failed, 1 passed" in output
  assert "skips fail the suite" in output and "deliberate: no data here" in output
  # The explicit opt-out (never set by .ci/run) lets a local run without the data go green.
  allowed = _run_ci_pytest(tree, SPCT_ALLOW_SKIPS="1")
  assert allowed.returncode == 0 and "1 passed, 1 skipped" in allowed.stdout, allowed.stdout + allowed.stderr


def test_a_skip_in_a_fixture_or_at_import_fails_ci(tree):
  (tree / "tests" / "test_fixture_skip.py").write_text(
      "def test_uses_data(data_root):\n  assert data_root.is_dir()\n")
  (tree / "tests" / "test_import_skip.py").write_text(
      "import pytest\n\npytest.importorskip('no_such_module_spct')\n\n\ndef test_never():\n  pass\n")
  result = _run_ci_pytest(tree, SPCT_DATA_ROOT=str(tree / "absent"))
  output = result.stdout + result.stderr
  assert result.returncode != 0, output
  assert "no_such_module_spct" in output and "skips fail the suite" in output
  assert "skipped" not in output.splitlines()[-1], output  # nothing counted as a skip


def _setup_kwargs() -> dict:
  with mock.patch("setuptools.setup") as setup:
    runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
  return setup.call_args.kwargs


def _lock() -> dict[str, str]:
  pins = {}
  for line in (REPO / "requirements.lock").read_text().splitlines():
    if line.strip() and not line.startswith("#"):
      name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line.strip()).groups()
      pins[canonicalize_name(name)] = version
  return pins


@pytest.mark.parametrize("group", ["install_requires", "data", "test", "notebooks"])
def test_setup_requirements_are_locked_at_versions_they_admit(group):
  """requirements.lock is the environment CI installs; setup.py must name the same packages, at ranges the
  locked versions satisfy (so `pip install -e ".[test]"` and the lock describe one environment)."""
  kwargs = _setup_kwargs()
  requirements = kwargs["install_requires"] if group == "install_requires" else kwargs["extras_require"][group]
  pins = _lock()
  for text in requirements:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"platform_machine": "x86_64"}):
      continue
    name = canonicalize_name(req.name)
    assert name in pins, f"setup.py {group} names {req.name}, which requirements.lock does not pin"
    assert req.specifier.contains(pins[name], prereleases=True), (
        f"setup.py {group} wants {text}; requirements.lock pins {pins[name]}")


def _third_party_imports(folder: pathlib.Path) -> list[str]:
  """Top-level modules imported anywhere in folder's .py files (lazy imports too), minus the stdlib and ours."""
  # Ours: the package and the helper modules that sit beside the tests and benchmarks.
  local = {"spct_jax"} | {p.stem for d in ("tests", "benchmarks") for p in (REPO / d).glob("*.py")}
  imported = set()
  for path in folder.rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        imported |= {alias.name.split(".")[0] for alias in node.names}
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        imported.add(node.module.split(".")[0])
  return sorted(imported - local - set(sys.stdlib_module_names))


@pytest.mark.parametrize("folder, groups", [("spct_jax", ("data",)), ("tests", ("data", "test"))])
def test_every_imported_package_is_declared(folder, groups):
  """A third-party module the library imports comes from install_requires (or the `data` extra, for the data
  modules); one a test imports, from those or the `test` extra. A package that is only there transitively (a
  dependency of jax, say) can disappear with an upgrade."""
  kwargs = _setup_kwargs()
  requirements = kwargs["install_requires"] + [r for g in groups for r in kwargs["extras_require"][g]]
  declared = {canonicalize_name(Requirement(r).name) for r in requirements}
  distributions = importlib.metadata.packages_distributions()
  for module in _third_party_imports(REPO / folder):
    names = {canonicalize_name(d) for d in distributions.get(module, [])}
    assert names & declared, f"{folder}/ imports {module} (from {sorted(names)}), which setup.py does not declare"
