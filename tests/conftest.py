"""Test set-up: 8 host CPU devices so sharding is exercised for real, and the shared data root."""

import os
import pathlib

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA_ROOT = pathlib.Path(os.environ.get("SPCT_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: uses the real Gemma 3 270M model (runs in CI)")


@pytest.fixture(scope="session")
def data_root() -> pathlib.Path:
  if not DATA_ROOT.is_dir():
    pytest.skip(f"shared data folder {DATA_ROOT} is absent (set SPCT_DATA_ROOT to run these tests)")
  return DATA_ROOT
