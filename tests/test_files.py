"""The one atomic-write helper and epath paths: nothing half-written is ever visible, gs:// stays a URL."""

import pytest

from spct_jax import files


def test_atomic_write_appears_only_when_complete(tmp_path):
  target = tmp_path / "sub" / "results.json"
  with pytest.raises(RuntimeError, match="midway"):
    with files.atomic_write(target) as f:
      f.write('{"half": ')
      raise RuntimeError("midway")
  assert list((tmp_path / "sub").iterdir()) == []  # neither the target nor a temporary file
  files.write_json({"a": 1}, target)
  assert target.read_text() == '{\n "a": 1\n}\n'
  with files.atomic_write(target, "wb") as f:  # replaces
    f.write(b"\x89PNG")
  assert target.read_bytes() == b"\x89PNG" and sorted(p.name for p in target.parent.iterdir()) == ["results.json"]
  assert files.write_lines(["x", "y"], tmp_path / "l.txt") == 2 and (tmp_path / "l.txt").read_text() == "x\ny\n"


def test_atomic_folder_and_no_replace(tmp_path):
  with files.atomic_path(tmp_path / "entry", folder=True) as tmp:
    (tmp / "params").write_text("p")
  assert (tmp_path / "entry" / "params").read_text() == "p"
  with pytest.raises(FileExistsError):
    with files.atomic_path(tmp_path / "entry", folder=True, replace=False) as tmp:
      (tmp / "params").write_text("q")
  assert (tmp_path / "entry" / "params").read_text() == "p"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]
  with pytest.raises(ValueError, match="mode"):
    with files.atomic_write(tmp_path / "x", "a"):
      pass


def test_paths_stay_urls_and_local_paths_become_absolute(monkeypatch, tmp_path):
  gcs = files.as_path("gs://bucket/run")
  assert str(gcs / "metrics.jsonl") == "gs://bucket/run/metrics.jsonl" and not files.is_local(gcs)
  monkeypatch.chdir(tmp_path)
  assert str(files.as_path("runs/x")) == str(tmp_path / "runs" / "x")
