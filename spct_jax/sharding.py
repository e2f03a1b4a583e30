"""Device mesh, MaxText-style logical-axis rules, parameter shardings and sharded creation/loading.

Parameters carry logical axis names as Variable metadata (`logical_axes`, see docs/DESIGN.md); the rules here map
those names onto the mesh axes ("data", "fsdp", "tensor"). Resolution semantics, shared by every helper:

- a rule target is a mesh axis, a tuple of mesh axes (sharded over their product, in order) or None (replicated);
  a logical name may appear in several rules: the first one that yields at least one usable mesh axis wins;
- a mesh axis is used at most once per PartitionSpec: when two dims map to the same mesh axis the later dim drops
  that axis (and stays replicated if nothing is left);
- with a mesh and a shape (`spec_for`), a mesh axis is also dropped when the dim is not divisible by the product of
  the axes kept so far times that axis (greedy, in rule order), and axes absent from the mesh are ignored. Gemma 3
  270M's single KV head therefore stays replicated on tensor=2 instead of failing;
- an unknown logical name raises ValueError (a typo must not silently replicate a 27B weight); a None entry in
  `logical_axes` means "replicated".

Vocab-parallel log-probs live in `spct_jax/logprobs.py`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

DEFAULT_RULES: Rules = (
    # Activations.
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("cache_length", None),
    # Parameters (names from the DESIGN.md parameter table).
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("layers", None),
)


# ----------------------------------------------------------------------------------------------------------------
# Mesh.


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh axis sizes. Exactly one of `data`, `fsdp`, `tensor` may be -1 ("the rest of the devices").

  Attributes:
    data: total data-parallel size (across slices when dcn_data > 1).
    fsdp: parameter-sharded data-parallel size (within a slice).
    tensor: tensor/vocab-parallel size (within a slice).
    dcn_data: number of slices (or hosts, where devices lack `slice_index`) laid along `data`; `data` must be a
      multiple of it. Only the data axis crosses the slow network, the axis with the least traffic.
    allow_split_physical_axes: passed to `mesh_utils` for TPU topologies that need a physical axis split.
  """

  data: int = 1
  fsdp: int = -1
  tensor: int = 1
  dcn_data: int = 1
  allow_split_physical_axes: bool = False

  @classmethod
  def from_config(cls, config: Mapping[str, Any] | Any) -> "MeshConfig":
    """Builds from a mapping or ml_collections ConfigDict holding (a subset of) the field names."""
    keys = list(config.keys())
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(keys) - names)
    if unknown:
      raise ValueError(f"mesh config: unknown key(s) {unknown}; expected a subset of {sorted(names)}")
    kwargs = {k: (bool(config[k]) if k == "allow_split_physical_axes" else int(config[k])) for k in keys}
    return cls(**kwargs)

  def resolve(self, num_devices: int) -> tuple[int, int, int]:
    """Returns (data, fsdp, tensor) with the -1 filled in; raises ValueError if they don't fit `num_devices`."""
    sizes = (self.data, self.fsdp, self.tensor)
    desc = f"mesh sizes (data={self.data}, fsdp={self.fsdp}, tensor={self.tensor})"
    if any(s == 0 or s < -1 for s in sizes):
      raise ValueError(f"{desc}: sizes must be positive or -1")
    if sizes.count(-1) > 1:
      raise ValueError(f"{desc}: at most one size may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if num_devices % known:
        raise ValueError(f"{desc}: {num_devices} devices are not divisible by the fixed product {known}")
      sizes = tuple(num_devices // known if s == -1 else s for s in sizes)
    if math.prod(sizes) != num_devices:
      raise ValueError(f"{desc}: product {math.prod(sizes)} != device count {num_devices}")
    if self.dcn_data < 1 or sizes[0] % self.dcn_data:
      raise ValueError(f"{desc}: data={sizes[0]} must be a multiple of dcn_data={self.dcn_data}")
    return sizes  # type: ignore[return-value]


def device_grid(cfg: MeshConfig, devices: Sequence[Any] | None = None) -> np.ndarray:
  """Returns the device array of shape (data, fsdp, tensor), topology-aware (ICI inside, DCN along data)."""
  devices = list(jax.devices() if devices is None else devices)
  data, fsdp, tensor = cfg.resolve(len(devices))
  if cfg.dcn_data == 1:
    return mesh_utils.create_device_mesh(
        (data, fsdp, tensor), devices, allow_split_physical_axes=cfg.allow_split_physical_axes)
  # TPU multi-slice devices carry slice_index; elsewhere (multi-host GPU) each process is one granule.
  return mesh_utils.create_hybrid_device_mesh(
      (data // cfg.dcn_data, fsdp, tensor), (cfg.dcn_data, 1, 1), devices,
      process_is_granule=not hasattr(devices[0], "slice_index"),
      allow_split_physical_axes=cfg.allow_split_physical_axes)


def make_mesh(cfg: MeshConfig, devices: Sequence[Any] | None = None) -> Mesh:
  """Builds the ("data", "fsdp", "tensor") mesh over `devices` (default: all global devices)."""
  return Mesh(device_grid(cfg, devices), MESH_AXES)


# ----------------------------------------------------------------------------------------------------------------
# Logical axis rules.


def _targets(name: str, rules: Rules) -> list[tuple[str, ...]]:
  found = [() if t is None else ((t,) if isinstance(t, str) else tuple(t)) for n, t in rules if n == name]
  if not found:
    raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted({n for n, _ in rules})}")
  return found


def _spec_entry(axes: Sequence[str]) -> str | tuple[str, ...] | None:
  if not axes:
    return None
  return axes[0] if len(axes) == 1 else tuple(axes)


def _resolve(logical_axes: Sequence[str | None], rules: Rules, shape: Sequence[int] | None = None,
             mesh: Mesh | None = None, used: set[str] | None = None) -> PartitionSpec:
  """Core resolver; `used` (mutated) lets callers reserve mesh axes. See the module docstring for semantics."""
  used = set() if used is None else used
  entries = []
  for i, name in enumerate(logical_axes):
    chosen: list[str] = []
    if name is not None:
      for target in _targets(name, rules):
        chosen, prod = [], 1
        for ax in target:
          if ax in used or ax in chosen:
            continue
          if mesh is not None:
            if ax not in mesh.shape:
              continue
            if shape is not None and shape[i] % (prod * mesh.shape[ax]):
              continue
            prod *= mesh.shape[ax]
          chosen.append(ax)
        if chosen:
          break
    used.update(chosen)
    entries.append(_spec_entry(chosen))
  return PartitionSpec(*entries)


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules = DEFAULT_RULES) -> PartitionSpec:
  """Maps logical names to a PartitionSpec (no mesh: no divisibility check). One entry per dim."""
  return _resolve(logical_axes, rules)


def spec_for(shape: Sequence[int], logical_axes: Sequence[str | None], mesh: Mesh,
             rules: Rules = DEFAULT_RULES) -> PartitionSpec:
  """Like `logical_to_spec`, but a dim not divisible by its mesh axes stays replicated along them."""
  if len(shape) != len(logical_axes):
    raise ValueError(f"shape {tuple(shape)} has {len(shape)} dims but logical axes {tuple(logical_axes)} "
                     f"name {len(logical_axes)}")
  return _resolve(logical_axes, rules, shape=shape, mesh=mesh)


def mesh_axes_for(name: str, mesh: Mesh, rules: Rules = DEFAULT_RULES, *, size: int | None = None,
                  exclude: Sequence[str] = ()) -> tuple[str, ...]:
  """Mesh axes one dim named `name` (of length `size`, when given) shards over, never using `exclude`."""
  entry = _resolve((name,), rules, shape=None if size is None else (size,), mesh=mesh, used=set(exclude))[0]
  return () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))


def activation_sharding(shape: Sequence[int], logical_axes: Sequence[str | None], mesh: Mesh,
                        rules: Rules = DEFAULT_RULES) -> NamedSharding:
  """NamedSharding for an activation (or any array) of `shape` named by `logical_axes`."""
  return NamedSharding(mesh, spec_for(shape, logical_axes, mesh, rules))


def shard_constraint(x: jax.Array, logical_axes: Sequence[str | None], mesh: Mesh | None,
                     rules: Rules = DEFAULT_RULES) -> jax.Array:
  """`with_sharding_constraint` by logical names; the identity when `mesh` is None (single device code paths)."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, activation_sharding(x.shape, logical_axes, mesh, rules))


# ----------------------------------------------------------------------------------------------------------------
# Parameter shardings.


def _is_var(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def state_shardings(state: nnx.State | nnx.Module | Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
  """Shardings for every array of an (abstract or concrete) nnx state or module.

  Args:
    state: an `nnx.State`, an `nnx.Module` (its full state is used) or any pytree of arrays/Variables.
    mesh: the device mesh.
    rules: logical axis rules.

  Returns:
    The same structure with each Variable's value replaced by a `NamedSharding` (flax's
    `nnx.get_partition_spec` convention, so it is a valid `jit` `out_shardings` and `jax.tree.leaves` yields
    the shardings). Variables without `logical_axes` metadata, and bare arrays, are replicated.
  """
  if isinstance(state, nnx.Module):
    state = nnx.state(state)
  replicated = NamedSharding(mesh, PartitionSpec())

  def one(x):
    if _is_var(x):
      axes = x.get_metadata().get("logical_axes")
      if axes is None:
        return x.replace(replicated)
      return x.replace(NamedSharding(mesh, spec_for(x.get_value().shape, axes, mesh, rules)))
    return replicated if hasattr(x, "shape") else None

  return jax.tree.map(one, state, is_leaf=_is_var)


def create_sharded(init_fn: Callable[[], nnx.Module], mesh: Mesh | None,
                   rules: Rules = DEFAULT_RULES) -> nnx.Module:
  """Creates a module with every parameter born sharded (no full copy ever sits on one device).

  Args:
    init_fn: zero-argument constructor, e.g. `lambda: Transformer(cfg, rngs=nnx.Rngs(seed))`. It must create its
      own `nnx.Rngs` (it is traced twice: once by `nnx.eval_shape`, once by `jit`).
    mesh: the device mesh; None just calls `init_fn()`.
    rules: logical axis rules.

  Returns:
    The module, its arrays laid out as `state_shardings` says.
  """
  if mesh is None:
    return init_fn()
  graphdef, abstract_state = nnx.split(nnx.eval_shape(init_fn))
  shardings = state_shardings(abstract_state, mesh, rules)
  state = jax.jit(lambda: nnx.split(init_fn())[1], out_shardings=shardings)()
  return nnx.merge(graphdef, state)


def put_sharded(array: np.ndarray, sharding: jax.sharding.Sharding, dtype: Any = None) -> jax.Array:
  """Places a host array (numpy or memmap) so each device receives only its own slice.

  Multi-host safe: `make_array_from_callback` asks only for this process's addressable shards, so a loader on each
  host reads (from a memmap: touches) only those bytes. Replicas of one slice are read once per process.

  Args:
    array: host array `[*shape]`, indexable with tuples of slices.
    sharding: target sharding.
    dtype: optional cast, applied per slice (never materialises a converted full copy).

  Returns:
    A global `jax.Array` of `array.shape`.
  """
  cache: dict[tuple, np.ndarray] = {}

  def piece(index: tuple[slice, ...]) -> np.ndarray:
    key = tuple((s.start, s.stop, s.step) if isinstance(s, slice) else s for s in index)
    if key not in cache:
      cache[key] = np.asarray(array[index], dtype=dtype)
    return cache[key]

  return jax.make_array_from_callback(tuple(array.shape), sharding, piece)


# ----------------------------------------------------------------------------------------------------------------
# Multi-process start-up.


def _env_int(name: str) -> int:
  try:
    return int(os.environ.get(name, "0"))
  except ValueError:
    return 0


def _multi_process_env() -> str | None:
  """Names the launcher whose environment says this job spans several processes, or None.

  Only environment variables are read (no metadata-server queries, which would stall on a laptop):
  `JAX_COORDINATOR_ADDRESS` (generic), SLURM (`SLURM_NTASKS` > 1 with `SLURM_PROCID`), Open MPI
  (`OMPI_COMM_WORLD_SIZE` > 1), Cloud TPU on GKE (`TPU_WORKER_HOSTNAMES` / `TPU_PROCESS_ADDRESSES` listing > 1
  host) and multi-slice TPU (`MEGASCALE_COORDINATOR_ADDRESS`).
  """
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  if _env_int("SLURM_NTASKS") > 1 and "SLURM_PROCID" in os.environ:
    return "SLURM"
  if _env_int("OMPI_COMM_WORLD_SIZE") > 1:
    return "Open MPI"
  for var in ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES"):
    if len([h for h in os.environ.get(var, "").split(",") if h.strip()]) > 1:
      return var
  if os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "MEGASCALE_COORDINATOR_ADDRESS"
  return None


def _cpu_backend() -> bool:
  """Whether this job will run on the CPU: JAX_PLATFORMS says so, or no accelerator plugin is installed.

  Decided without starting a backend (this runs before `jax.distributed.initialize`).
  """
  platforms = os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("libtpu") is not None or importlib.metadata.entry_points(group="jax_plugins"):
    return False
  plugins = importlib.util.find_spec("jax_plugins")  # the namespace package of the CUDA / ROCm plugins, if any
  if plugins is None:
    return True
  import pkgutil  # pylint: disable=g-import-not-at-top
  return not any(True for _ in pkgutil.iter_modules(plugins.submodule_search_locations))


def maybe_initialize_distributed(*, coordinator_address: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None, force: bool = False) -> bool:
  """Calls `jax.distributed.initialize` when this is a multi-process job; a no-op for a local run.

  Multi-process means: explicit arguments (a coordinator address or num_processes > 1), `force=True` (e.g. GCE
  TPU-VM pods, which JAX detects from the metadata server rather than the environment), or an environment
  recognised by `_multi_process_env`. Arguments left None are auto-detected by JAX. Must run before any other
  JAX call touches the devices. Before initialising it
    * selects gloo cross-process collectives when the job runs on the CPU (`_cpu_backend`), so any launcher can
      start N CPU processes;
    * turns JAX's preemption service off: it would take SIGTERM over in C++ for its own sync-point protocol, so a
      SIGTERM before the training loop would be swallowed instead of ending the process. The loop decides
      preemption itself, agreed across processes (`train.loop.Preemption`), as with one process.

  Returns:
    Whether the distributed runtime is initialised (now or earlier).
  """
  if jax.distributed.is_initialized():
    return True
  explicit = coordinator_address is not None or (num_processes is not None and num_processes > 1)
  if not (explicit or force or _multi_process_env()):
    return False
  if _cpu_backend():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_enable_preemption_service", False)
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
  return True
