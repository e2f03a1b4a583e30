"""Tests for spct_jax.devices: backend description and the automatic mesh (Colab v5e-1, Kaggle v5e-8, CPU)."""

import dataclasses

import jax
import numpy as np
import pytest

from spct_jax import devices


@dataclasses.dataclass(frozen=True)
class FakeTpu:
  """Just what `describe_devices` reads from a jax device."""

  id: int
  platform: str = "tpu"
  device_kind: str = "TPU v5 lite"
  process_index: int = 0
  hbm: int = 16 * 2**30

  def memory_stats(self):
    return {"bytes_limit": self.hbm, "bytes_in_use": 0}


def test_eight_cpu_devices_get_a_fully_sharded_mesh():
  mesh = devices.auto_mesh()
  assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
  summary = devices.describe_devices()
  assert (summary.backend, summary.count, summary.processes) == ("cpu", 8, 1)
  assert summary.mesh_shape == {"data": 1, "fsdp": 8, "tensor": 1}
  assert str(summary).startswith("backend cpu: 8 x ") and str(summary).endswith("mesh data=1, fsdp=8, tensor=1")


def test_one_device_means_no_mesh():
  one = jax.devices()[:1]
  assert devices.auto_mesh(one) is None and devices.auto_mesh_config(one) is None
  summary = devices.describe_devices(one)
  assert summary.count == 1 and summary.mesh_shape is None
  assert str(summary).endswith("no mesh (one device)")


def test_a_mesh_over_a_device_subset_uses_exactly_those_devices():
  four = jax.devices()[2:6]
  mesh = devices.auto_mesh(four)
  assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 1}
  assert sorted(d.id for d in mesh.devices.flat) == [d.id for d in four]


@pytest.mark.parametrize("kind, name, count", [("TPU v5 lite", "TPU v5e", 1), ("TPU v6 lite", "TPU v6e", 1),
                                               ("TPU v5 lite", "TPU v5e", 8)])
def test_colab_and_kaggle_tpus_are_named_and_sized(kind, name, count):
  chips = [FakeTpu(i, device_kind=kind) for i in range(count)]
  summary = devices.describe_devices(chips)
  assert (summary.backend, summary.kind, summary.count, summary.memory_bytes) == ("tpu", name, count, 16 * 2**30)
  assert summary.mesh_shape == (None if count == 1 else {"data": 1, "fsdp": 8, "tensor": 1})
  assert f"{count} x {name}, 16.0 GiB each" in str(summary)


def test_processes_are_counted_and_mixed_kinds_refused():
  pod = [FakeTpu(i, process_index=i // 4) for i in range(8)]
  assert devices.describe_devices(pod).processes == 2
  assert "over 2 processes" in str(devices.describe_devices(pod))
  with pytest.raises(ValueError, match="mixed device kinds"):
    devices.describe_devices([FakeTpu(0), FakeTpu(1, device_kind="TPU v6 lite")])
  with pytest.raises(ValueError, match="no devices"):
    devices.auto_mesh_config([])


def test_the_auto_mesh_shards_a_model_over_all_devices():
  mesh = devices.auto_mesh()
  x = jax.device_put(np.arange(64.0).reshape(8, 8), jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec("fsdp")))
  assert len({s.device.id for s in x.addressable_shards}) == 8
  np.testing.assert_array_equal(np.asarray(x), np.arange(64.0).reshape(8, 8))
