"""notebooks/: each runs top to bottom with nbclient under SPCT_SMOKE=1 (CPU, tiny random model, few items and
tokens), failing on any cell error; each is stored without outputs, opens with its Colab badge and has ONE install
cell, which SPCT_SMOKE=1 skips (CI installs requirements.lock, then `pip install -e .`).

The kernels see one CPU device, the path of a Colab v5e-1 / v6e-1 (no mesh): eight fake devices would triple the
compile time. `devices.auto_mesh` over eight devices (a Kaggle v5e-8) is tested in test_devices.py, and the
experiments' sharded runs in their own tests.
"""

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = {path.stem: path for path in sorted((REPO / "notebooks").glob("*.ipynb"))}
# The repository has no public remote yet: every notebook uses this one placeholder for it.
REPO_URL = "https://github.com/<org>/spct-jax"
COLAB = "https://colab.research.google.com/github/<org>/spct-jax/blob/main/notebooks/{name}.ipynb"
# What each smoke run must print (beyond running without an error).
EXPECTED = {
    "score_and_vote": ["tiny-gemma3: 3 layers", "--- sample 1: responses shown in the order", "principles:",
                       "voted scores (sum over valid samples)", "MetaRM@8 keeps samples",
                       "(same samples as above: True)"],
    "grpo_steps": ["2 steps x 2 items x G=4 rollouts", "held-out greedy/accuracy_strict     before",
                   "TensorBoard's notebook extension is not used here"],
    "inference_scaling": ["synthetic      greedy        4", "synthetic      voting@2", "paper-rule accuracy by run"],
}


def code_cells(nb):
  return [cell for cell in nb.cells if cell.cell_type == "code"]


def test_the_three_demos_are_there():
  assert sorted(NOTEBOOKS) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_stored_without_outputs_with_a_badge_and_one_install_cell(name):
  nb = nbformat.read(NOTEBOOKS[name], as_version=4)
  nbformat.validate(nb)
  for cell in code_cells(nb):
    assert cell.outputs == [] and cell.execution_count is None, f"{name}: a cell was saved with its outputs"
  assert nb.cells[0].cell_type == "markdown" and COLAB.format(name=name) in nb.cells[0].source
  installs = [cell for cell in code_cells(nb) if "pip" in cell.source]
  assert installs == [nb.cells[1]], f"{name}: the install cell must be the first code cell and the only one"
  install = installs[0].source
  assert f'REPO_URL = "{REPO_URL}"' in install and 'EXTRA = "tpu"' in install
  assert 'SMOKE = os.environ.get("SPCT_SMOKE") == "1"' in install and "if not SMOKE:" in install
  assert "devices.describe_devices()" in install and "devices.auto_mesh()" in install
  parameters = [cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])]
  assert len(parameters) == 1 and "if SMOKE:" in parameters[0].source


def _printed(nb) -> str:
  return "\n".join(output.get("text", "") for cell in code_cells(nb) for output in cell.outputs)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_runs_top_to_bottom_in_smoke_mode(name, tmp_path):
  nb = nbformat.read(NOTEBOOKS[name], as_version=4)
  env = {**os.environ, "SPCT_SMOKE": "1", "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
  client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
  client.execute(env=env)  # raises CellExecutionError, naming the cell, on any error
  printed = _printed(nb)
  assert "backend cpu: 1 x cpu; no mesh (one device)" in printed
  for text in EXPECTED[name]:
    assert text in printed, f"{name}: {text!r} not printed; got:\n{printed}"
  assert not (tmp_path / "spct-jax").exists()  # the install cell cloned nothing
  if name != "score_and_vote":
    images = [o for cell in code_cells(nb) for o in cell.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1, f"{name}: expected one figure"
