"""Tests for spct_jax.sharding: mesh, logical rules, parameter shardings, sharded creation/placement, start-up."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from spct_jax import sharding as shd


@pytest.fixture(scope="module")
def mesh222():
  return shd.make_mesh(shd.MeshConfig(data=2, fsdp=2, tensor=2))


# ----------------------------------------------------------------------------------------------------------------
# Mesh.


def test_make_mesh_resolves_minus_one_and_names_axes():
  mesh = shd.make_mesh(shd.MeshConfig(data=2, fsdp=-1, tensor=2))
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert shd.MeshConfig(data=-1, fsdp=1, tensor=4).resolve(8) == (2, 1, 4)
  assert shd.MeshConfig().resolve(8) == (1, 8, 1)
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


@pytest.mark.parametrize("cfg, match", [
    (shd.MeshConfig(data=2, fsdp=2, tensor=1), r"product 4 != device count 8"),
    (shd.MeshConfig(data=3, fsdp=-1, tensor=1), r"8 devices are not divisible"),
    (shd.MeshConfig(data=-1, fsdp=-1, tensor=1), r"at most one size may be -1"),
    (shd.MeshConfig(data=0, fsdp=8, tensor=1), r"positive or -1"),
    (shd.MeshConfig(data=2, fsdp=4, tensor=1, dcn_data=4), r"multiple of dcn_data=4"),
])
def test_make_mesh_bad_sizes_raise(cfg, match):
  with pytest.raises(ValueError, match=match) as err:
    shd.make_mesh(cfg)
  assert f"data={cfg.data}" in str(err.value) and f"tensor={cfg.tensor}" in str(err.value)


def test_mesh_config_from_config():
  cfg = shd.MeshConfig.from_config({"data": 2, "tensor": "4", "dcn_data": 1})
  assert cfg == shd.MeshConfig(data=2, fsdp=-1, tensor=4, dcn_data=1)
  with pytest.raises(ValueError, match="unknown key.*'model'"):
    shd.MeshConfig.from_config({"data": 2, "model": 4})
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.data = 3  # type: ignore[misc]


@dataclasses.dataclass(frozen=True)
class _FakeDevice:
  id: int
  process_index: int
  platform: str = "cpu"
  device_kind: str = "fake"


@dataclasses.dataclass(frozen=True)
class _FakeSliceDevice(_FakeDevice):
  slice_index: int = 0


def test_device_grid_multi_slice_puts_slices_along_data():
  # 2 slices x 4 devices; slice s must own data rows [2s, 2s + 1] so only `data` crosses the DCN.
  devs = [_FakeSliceDevice(id=i, process_index=i // 2, slice_index=i // 4) for i in range(8)]
  grid = shd.device_grid(shd.MeshConfig(data=4, fsdp=2, tensor=1, dcn_data=2), devs)
  assert grid.shape == (4, 2, 1)
  assert [{d.slice_index for d in grid[r].flat} for r in range(4)] == [{0}, {0}, {1}, {1}]


def test_device_grid_multi_host_without_slice_index_uses_processes():
  devs = [_FakeDevice(id=i, process_index=i // 4) for i in range(8)]
  grid = shd.device_grid(shd.MeshConfig(data=2, fsdp=1, tensor=4, dcn_data=2), devs)
  assert grid.shape == (2, 1, 4)
  assert [{d.process_index for d in grid[r].flat} for r in range(2)] == [{0}, {1}]


# ----------------------------------------------------------------------------------------------------------------
# Logical rules.


def test_logical_to_spec_applies_rules():
  assert shd.logical_to_spec(("vocab", "embed")) == P("tensor", "fsdp")
  assert shd.logical_to_spec(("layers", "embed", "heads", "head_dim")) == P(None, "fsdp", "tensor", None)
  assert shd.logical_to_spec(("batch", "length")) == P(("data", "fsdp"), None)
  assert shd.logical_to_spec((None, "mlp")) == P(None, "tensor")


def test_logical_to_spec_uses_each_mesh_axis_once():
  # batch takes data and fsdp, so embed (-> fsdp) stays replicated.
  assert shd.logical_to_spec(("batch", "length", "embed")) == P(("data", "fsdp"), None, None)
  # The later dim keeps whatever axes of its tuple are still free.
  assert shd.logical_to_spec(("embed", "batch")) == P("fsdp", "data")
  # kv_heads and heads both map to tensor: only the first gets it.
  assert shd.logical_to_spec(("kv_heads", "heads")) == P("tensor", None)


def test_logical_to_spec_falls_through_to_next_rule_and_rejects_unknown():
  rules = (("mlp", "tensor"), ("x", "tensor"), ("x", "fsdp"))
  assert shd.logical_to_spec(("x",), rules) == P("tensor")
  assert shd.logical_to_spec(("mlp", "x"), rules) == P("tensor", "fsdp")
  with pytest.raises(ValueError, match="'embedd' has no sharding rule"):
    shd.logical_to_spec(("embedd",))


def test_spec_for_divisibility_fallback(mesh222):
  # Gemma 3 270M style: 1 KV head cannot split over tensor=2; 4 query heads can.
  assert shd.spec_for((8, 1, 4), ("embed", "kv_heads", "head_dim"), mesh222) == P("fsdp", None, None)
  assert shd.spec_for((8, 4, 4), ("embed", "heads", "head_dim"), mesh222) == P("fsdp", "tensor", None)
  # Batch 2 over (data=2, fsdp=2): data fits, fsdp would need 4 -> dropped; 6 likewise; 3 fits neither.
  assert shd.spec_for((2, 5), ("batch", "length"), mesh222) == P("data", None)
  assert shd.spec_for((6, 5), ("batch", "length"), mesh222) == P("data", None)
  assert shd.spec_for((3, 5), ("batch", "length"), mesh222) == P(None, None)
  assert shd.spec_for((4, 5), ("batch", "length"), mesh222) == P(("data", "fsdp"), None)
  # An odd vocab stays replicated, and its embed dim still gets fsdp.
  assert shd.spec_for((7, 8), ("vocab", "embed"), mesh222) == P(None, "fsdp")
  with pytest.raises(ValueError, match="has 2 dims"):
    shd.spec_for((2, 3), ("batch",), mesh222)


def test_spec_for_ignores_axes_missing_from_mesh():
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  assert shd.spec_for((8, 16), ("batch", "embed"), mesh) == P("data", None)
  assert shd.mesh_axes_for("batch", mesh, size=8) == ("data",)
  assert shd.mesh_axes_for("vocab", mesh) == ()


def test_shard_constraint_and_activation_sharding(mesh222):
  x = jnp.ones((4, 6, 8))
  assert shd.shard_constraint(x, ("batch", "length", "embed"), None) is x
  got = jax.jit(lambda y: shd.shard_constraint(y * 2, ("batch", "length", "embed"), mesh222))(x)
  want = shd.activation_sharding(x.shape, ("batch", "length", "embed"), mesh222)
  assert want.spec == P(("data", "fsdp"), None, None)
  assert got.sharding.is_equivalent_to(want, x.ndim)
  np.testing.assert_array_equal(got, 2 * x)


# ----------------------------------------------------------------------------------------------------------------
# Parameter shardings and sharded creation.


class _Tiny(nnx.Module):
  """Embedding [V, D], kernel [D, F], single-KV-head proj [D, K=1, H], and an un-annotated bias [F]."""

  def __init__(self, rngs: nnx.Rngs, v: int = 16, d: int = 8, f: int = 12, h: int = 4):
    init = jax.nn.initializers.normal(1.0)
    self.embedding = nnx.Param(init(rngs.params(), (v, d)), logical_axes=("vocab", "embed"))
    self.kernel = nnx.Param(init(rngs.params(), (d, f)), logical_axes=("embed", "mlp"))
    self.k_proj = nnx.Param(init(rngs.params(), (d, 1, h)), logical_axes=("embed", "kv_heads", "head_dim"))
    self.bias = nnx.Param(jax.random.uniform(rngs.params(), (f,)))


_EXPECTED = {"embedding": P("tensor", "fsdp"), "kernel": P("fsdp", "tensor"), "k_proj": P("fsdp", None, None),
             "bias": P()}


def test_state_shardings_match_specs(mesh222):
  abstract = nnx.eval_shape(lambda: _Tiny(nnx.Rngs(0)))
  for tree in (abstract, nnx.state(abstract)):
    shardings = shd.state_shardings(tree, mesh222)
    got = {k: v.get_value() for k, v in shardings.items()}
    assert all(isinstance(s, NamedSharding) and s.mesh == mesh222 for s in got.values())
    assert {k: s.spec for k, s in got.items()} == _EXPECTED
  # Bare array leaves are replicated.
  assert shd.state_shardings({"w": jnp.ones(3)}, mesh222)["w"].spec == P()


def test_create_sharded_matches_unsharded_init(mesh222):
  model = shd.create_sharded(lambda: _Tiny(nnx.Rngs(0)), mesh222)
  ref = _Tiny(nnx.Rngs(0))
  for name, spec in _EXPECTED.items():
    arr = getattr(model, name).get_value()
    assert arr.sharding.is_equivalent_to(NamedSharding(mesh222, spec), arr.ndim), name
    np.testing.assert_array_equal(np.asarray(arr), np.asarray(getattr(ref, name).get_value()), err_msg=name)
  # Each device holds only its slice (a [16, 8] embedding over tensor=2 x fsdp=2).
  assert model.embedding.get_value().addressable_shards[0].data.shape == (8, 4)
  assert isinstance(shd.create_sharded(lambda: _Tiny(nnx.Rngs(0)), None), _Tiny)


# ----------------------------------------------------------------------------------------------------------------
# put_sharded.


def test_put_sharded_round_trip(mesh222, tmp_path):
  host = np.arange(8 * 6, dtype=np.float64).reshape(8, 6)
  mm = np.lib.format.open_memmap(tmp_path / "w.npy", mode="w+", dtype=host.dtype, shape=host.shape)
  mm[...] = host
  sharding = shd.activation_sharding(host.shape, ("vocab", "embed"), mesh222)
  for src in (host, mm):
    arr = shd.put_sharded(src, sharding, dtype=np.float32)
    assert arr.dtype == jnp.float32 and arr.shape == host.shape
    assert arr.sharding == sharding
    assert arr.addressable_shards[0].data.shape == (4, 3)
    np.testing.assert_array_equal(np.asarray(arr), host.astype(np.float32))
  bf = shd.put_sharded(host, NamedSharding(mesh222, P()), dtype=jnp.bfloat16)
  assert bf.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(bf, np.float32), host.astype(np.float32))


def test_put_sharded_reads_each_slice_once():
  reads = []

  class Spy:
    shape = (8, 4)

    def __getitem__(self, index):
      reads.append(index)
      return np.zeros((8, 4))[index]

  mesh = shd.make_mesh(shd.MeshConfig(data=1, fsdp=2, tensor=4))
  shd.put_sharded(Spy(), NamedSharding(mesh, P("fsdp")))  # 2 distinct slices, each replicated 4x.
  assert len(reads) == 2


# ----------------------------------------------------------------------------------------------------------------
# Distributed start-up.

_LAUNCHER_VARS = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "SLURM_PROCID", "OMPI_COMM_WORLD_SIZE",
                  "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS")


@pytest.fixture
def fake_init(monkeypatch):
  for var in _LAUNCHER_VARS:
    monkeypatch.delenv(var, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.config, "update", lambda name, value: calls.append((name, value)))
  return calls


def _initialize_calls(calls):
  return [c for c in calls if isinstance(c, dict)]


def test_maybe_initialize_distributed_noop_locally(fake_init, monkeypatch):
  monkeypatch.setenv("SLURM_NTASKS", "1")
  monkeypatch.setenv("SLURM_PROCID", "0")
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")
  assert shd.maybe_initialize_distributed() is False
  assert shd.maybe_initialize_distributed(num_processes=1) is False
  assert fake_init == []


@pytest.mark.parametrize("env", [
    {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"},
    {"SLURM_NTASKS": "4", "SLURM_PROCID": "2"},
    {"OMPI_COMM_WORLD_SIZE": "2"},
    {"TPU_WORKER_HOSTNAMES": "host-0,host-1"},
    {"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.1"},
])
def test_maybe_initialize_distributed_detects_launchers(fake_init, monkeypatch, env):
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  assert shd.maybe_initialize_distributed() is True
  assert _initialize_calls(fake_init) == [dict(coordinator_address=None, num_processes=None, process_id=None)]


def test_maybe_initialize_distributed_explicit_args(fake_init):
  assert shd.maybe_initialize_distributed(coordinator_address="h:1", num_processes=2, process_id=1) is True
  assert _initialize_calls(fake_init) == [dict(coordinator_address="h:1", num_processes=2, process_id=1)]


@pytest.mark.parametrize("platforms, gloo", [("cpu", True), ("tpu", False), ("cuda,cpu", False)])
def test_multi_process_start_selects_gloo_on_cpu_and_leaves_sigterm_to_the_loop(fake_init, monkeypatch, platforms,
                                                                                 gloo):
  """Set before `initialize` (the order matters: the CPU client reads the setting when it starts)."""
  monkeypatch.setenv("JAX_PLATFORMS", platforms)
  shd.maybe_initialize_distributed(coordinator_address="h:1", num_processes=2, process_id=0)
  expected = [("jax_cpu_collectives_implementation", "gloo")] if gloo else []
  expected += [("jax_enable_preemption_service", False), dict(coordinator_address="h:1", num_processes=2,
                                                              process_id=0)]
  assert fake_init == expected
