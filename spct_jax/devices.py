"""What this runtime has (backend, chips, memory per chip) and the mesh to build over it.

A notebook's first cell calls `describe_devices()` and `auto_mesh()` so the same cells run on a Colab TPU v5e-1 /
v6e-1 (one chip: no mesh), a Kaggle TPU v5e-8 (eight chips: parameters sharded over all of them), a GPU box or a
laptop CPU. The mesh follows `configs/common.py`'s default (`data=1, fsdp=-1, tensor=1`, the experiments' own
choice): fully sharded data parallel over every device, which is what a model that fits one host wants.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax

from spct_jax import sharding as shd

# jax's device_kind -> the name cloud consoles use (the TPU generations Colab and Kaggle hand out).
KIND_NAMES = {"TPU v5 lite": "TPU v5e", "TPU v5e": "TPU v5e", "TPU v6 lite": "TPU v6e", "TPU v5": "TPU v5p",
              "TPU v5p": "TPU v5p", "TPU v4": "TPU v4"}
GIB = 2**30


def _memory_bytes(device: Any) -> int | None:
  """Accelerator memory of one device (`memory_stats()["bytes_limit"]`), None where the backend does not say."""
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  CPU devices raise or return None, depending on the jaxlib.
    return None
  return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


@dataclasses.dataclass(frozen=True)
class DeviceSummary:
  """backend: "tpu" / "gpu" / "cpu"; kind: e.g. "TPU v5e"; count: global devices; processes: hosts of the job;
  memory_bytes: per device (None: unknown, e.g. CPU); mesh_shape: the auto mesh's axis sizes (None: one device)."""

  backend: str
  kind: str
  count: int
  processes: int
  memory_bytes: int | None
  mesh_shape: dict[str, int] | None

  def __str__(self) -> str:
    memory = f", {self.memory_bytes / GIB:.1f} GiB each" if self.memory_bytes else ""
    hosts = f" over {self.processes} processes" if self.processes > 1 else ""
    mesh = ("no mesh (one device)" if self.mesh_shape is None else
            "mesh " + ", ".join(f"{axis}={size}" for axis, size in self.mesh_shape.items()))
    return f"backend {self.backend}: {self.count} x {self.kind}{memory}{hosts}; {mesh}"


def auto_mesh_config(devices: Sequence[Any] | None = None) -> shd.MeshConfig | None:
  """`MeshConfig(data=1, fsdp=<all devices>, tensor=1)`, or None for a single device (every code path here takes
  mesh=None as "one device, no sharding")."""
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("no devices: jax.devices() is empty")
  return None if len(devices) == 1 else shd.MeshConfig(data=1, fsdp=len(devices), tensor=1)


def auto_mesh(devices: Sequence[Any] | None = None) -> jax.sharding.Mesh | None:
  """The mesh of `auto_mesh_config` over `devices` (default: all), or None for a single device."""
  cfg = auto_mesh_config(devices)
  return None if cfg is None else shd.make_mesh(cfg, devices)


def describe_devices(devices: Sequence[Any] | None = None) -> DeviceSummary:
  """What `devices` (default: all of the job's) are and the mesh `auto_mesh` builds over them."""
  devices = list(jax.devices() if devices is None else devices)
  cfg = auto_mesh_config(devices)
  first = devices[0]
  kinds = sorted({d.device_kind for d in devices})
  if len(kinds) > 1:
    raise ValueError(f"mixed device kinds {kinds}: one mesh needs one kind of device")
  memory = _memory_bytes(first)
  mesh_shape = None if cfg is None else dict(zip(shd.MESH_AXES, cfg.resolve(len(devices))))
  return DeviceSummary(backend=first.platform, kind=KIND_NAMES.get(first.device_kind, first.device_kind),
                       count=len(devices), processes=len({d.process_index for d in devices}),
                       memory_bytes=memory, mesh_shape=mesh_shape)
