"""Test set-up: 8 host CPU devices so sharding is exercised for real, the shared data root, and no silent skips.

A skipped test is a failure unless `SPCT_ALLOW_SKIPS=1` is set (a local run without the shared data, say): in CI
(`.ci/run`, which does not set it) every test must run, so a missing dependency or data folder cannot turn the
suite green. Deselecting with `-m "not slow"` is not a skip.
"""

import os
import pathlib

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA_ROOT = pathlib.Path(os.environ.get("SPCT_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))
ALLOW_SKIPS_VAR = "SPCT_ALLOW_SKIPS"
SKIP_IS_FAILURE = "skipped, and skips fail the suite (set SPCT_ALLOW_SKIPS=1 to allow them locally)"


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: uses the real Gemma 3 270M model or takes minutes (runs in CI)")


def _skips_allowed() -> bool:
  return os.environ.get(ALLOW_SKIPS_VAR, "") == "1"


def _as_failure(report):
  """Turns a skip report (test or collection) into a failure that names the skip's reason."""
  reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
  report.outcome = "failed"
  report.longrepr = f"{report.nodeid}: {SKIP_IS_FAILURE}: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  report = outcome.get_result()
  if report.skipped and not hasattr(report, "wasxfail") and not _skips_allowed():
    _as_failure(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
  outcome = yield
  report = outcome.get_result()
  if report.skipped and not _skips_allowed():  # e.g. a module-level pytest.importorskip
    _as_failure(report)


@pytest.fixture(scope="session")
def data_root() -> pathlib.Path:
  if not DATA_ROOT.is_dir():
    pytest.skip(f"shared data folder {DATA_ROOT} is absent (set SPCT_DATA_ROOT to run these tests)")
  return DATA_ROOT
