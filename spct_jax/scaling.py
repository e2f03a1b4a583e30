"""`python -m spct_jax.scaling`: docs/SCALING.md, the mesh and memory per device to train / serve Gemma 2 GRMs.

Persistent state is exact, from the shapes the code builds (no parameter formula of its own):
  weights     `nnx.eval_shape` of `Transformer(model.get_config(name))`: every leaf's shape, dtype, logical axes;
  per device  each leaf's shard under the project's rules (`sharding.spec_for` on an `AbstractMesh`: a dim that
              does not divide stays replicated, as on a real mesh);
  gradients   the trainable subset (`train.step.split_params`), in the parameters' dtype;
  optimizer   `jax.eval_shape` of `train.step.make_optimizer(...).init` on it (AdamW: two moments, params' dtype),
              sharded like the parameters the moments mirror;
  reference   GRPO's frozen copy of the starting parameters (`GRPOTrainer`, beta > 0);
  decoding    the sampler's compute-dtype copy of the weights when they are stored in another dtype
              (`model.decoding`), plus its KV cache (`jax.eval_shape` of `decoding.init_cache`: f32 under
              float32_attention).
Activations are an ESTIMATE from the same config, per row of `seq_len` tokens, with remat per layer (the scanned
layers are `jax.checkpoint`ed): the f32 residual saved at every layer boundary, plus one layer's forward values
and their cotangents while it is recomputed (q, k, v, the f32 [heads, T, T] scores and probabilities that
`_attend` materialises, the MLP's three [T, mlp] arrays, norm temporaries), plus the loss's f32 logits and their
gradient (over `logprob_chunk_size` tokens at a time). Heads, MLP and vocabulary split over `tensor` where they
divide. A training step and a rollout are separate phases: the peak is the persistent state plus the larger one.
A plan fits when the peak is at most `HEADROOM` of the device's memory (XLA temporaries, fragmentation).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh

from spct_jax import files
from spct_jax import sharding as shd
from spct_jax.model import Transformer, get_config
from spct_jax.model.config import ModelConfig
from spct_jax.train import step as train_step

GIB = 2**30
HEADROOM = 0.9
MODELS = ("gemma2-2b", "gemma2-9b", "gemma2-27b")
TENSOR_SIZES = (1, 2, 4, 8)
OUTPUT = files.as_path(__file__).parent.parent / "docs" / "SCALING.md"


@dataclasses.dataclass(frozen=True)
class Hardware:
  name: str
  memory_gib: float  # per device
  per_node: int  # devices per host
  max_devices: int  # the largest slice / cluster the table searches


HARDWARE = (Hardware("TPU v5e", 16, 8, 256), Hardware("TPU v5p", 95, 4, 1024), Hardware("H100", 80, 8, 256))


@dataclasses.dataclass(frozen=True)
class Workload:
  """trains: gradients + optimizer state + activations; reference: GRPO's frozen copy; generates: rollouts."""

  name: str
  trains: bool
  reference: bool
  generates: bool


WORKLOADS = (Workload("GRPO", True, True, True), Workload("RFT (SFT)", True, False, False),
             Workload("inference (eval)", False, False, True))


@dataclasses.dataclass(frozen=True)
class Setting:
  """seq_len: tokens per row (prompt + judgement). train_rows / generate_rows: rows per device in a train step /
  a rollout or voting batch. logprob_chunk_size: tokens of [T, V] logits at a time (None: all T)."""

  seq_len: int = 4096
  train_rows: int = 1
  generate_rows: int = 8
  logprob_chunk_size: int | None = 256
  trainable: str = ".*"
  compute_dtype: str = "bfloat16"


@dataclasses.dataclass(frozen=True)
class Leaf:
  shape: tuple[int, ...]
  dtype: Any
  logical_axes: tuple[str | None, ...] | None

  @property
  def size(self) -> int:
    return math.prod(self.shape)


@functools.cache
def model_config(name: str, param_dtype: str = "float32", compute_dtype: str = "bfloat16") -> ModelConfig:
  return get_config(name, param_dtype=param_dtype, compute_dtype=compute_dtype)


def _leaves(tree) -> list[Leaf]:
  out = []
  for leaf in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nnx.Variable)):
    if isinstance(leaf, nnx.Variable):
      value, axes = leaf.get_value(), leaf.get_metadata().get("logical_axes")
    else:
      value, axes = leaf, None
    out.append(Leaf(tuple(value.shape), np.dtype(value.dtype), None if axes is None else tuple(axes)))
  return out


@functools.cache
def abstract_state(cfg: ModelConfig, trainable: str = ".*") -> tuple[list[Leaf], list[Leaf], list[Leaf]]:
  """(every parameter, the trainable ones, the optimizer state) as abstract leaves: nothing is allocated."""
  module = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  _, train, _ = train_step.split_params(module, trainable)
  opt = jax.eval_shape(train_step.make_optimizer(train_step.OptimizerConfig(trainable=trainable)).init, train)
  return _leaves(nnx.state(module, nnx.Param)), _leaves(train), _leaves(opt)


def param_count(name_or_cfg: str | ModelConfig) -> int:
  cfg = model_config(name_or_cfg) if isinstance(name_or_cfg, str) else name_or_cfg
  return sum(leaf.size for leaf in abstract_state(cfg)[0])


def abstract_mesh(data: int, fsdp: int, tensor: int) -> AbstractMesh:
  return AbstractMesh((data, fsdp, tensor), shd.MESH_AXES)


def device_bytes(leaves: list[Leaf], mesh: AbstractMesh, itemsize: int | None = None) -> int:
  """Bytes of the largest per-device shard of `leaves` on `mesh` (ceil division, as jax pads uneven shards);
  `itemsize` overrides the leaves' own dtype (a copy in another dtype)."""
  total = 0
  for leaf in leaves:
    spec = (shd.spec_for(leaf.shape, leaf.logical_axes, mesh) if leaf.logical_axes is not None
            else (None,) * len(leaf.shape))
    local = 1
    for size, entry in zip(leaf.shape, tuple(spec) + (None,) * (len(leaf.shape) - len(spec))):
      axes = () if entry is None else ((entry,) if isinstance(entry, str) else entry)
      local *= -(-size // math.prod(mesh.shape[a] for a in axes))
    total += local * (itemsize or leaf.dtype.itemsize)
  return total


def _split(size: int, tensor: int) -> float:
  return size / tensor if size % tensor == 0 else size


def activation_bytes(cfg: ModelConfig, setting: Setting, tensor: int = 1) -> int:
  """Estimated training activations of one row (see the module docstring), f32 throughout."""
  t, d, hd = setting.seq_len, cfg.embed_dim, cfg.head_dim
  heads, kv, mlp = _split(cfg.num_heads, tensor), _split(cfg.num_kv_heads, tensor), _split(cfg.mlp_dim, tensor)
  boundaries = cfg.num_layers * t * d
  layer = t * (heads + 2 * kv) * hd + 2 * heads * t * t + t * heads * hd + 3 * t * mlp + 4 * t * d
  logits = 2 * min(t, setting.logprob_chunk_size or t) * _split(cfg.vocab_size, tensor)
  return int(4 * (boundaries + 2 * layer + logits))


def kv_cache_bytes(cfg: ModelConfig, setting: Setting) -> int:
  """The sampler's KV cache for `generate_rows` rows of `seq_len` tokens: `jax.eval_shape` of
  `decoding.init_cache` (its rows are this device's; tensor devices hold the same rows' whole cache)."""
  from spct_jax.model import decoding  # pylint: disable=g-import-not-at-top
  cache = jax.eval_shape(functools.partial(decoding.init_cache, cfg, setting.generate_rows, setting.seq_len))
  return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(cache))


@dataclasses.dataclass(frozen=True)
class Memory:
  """Bytes per device."""

  weights: int
  gradients: int
  optimizer: int
  reference: int
  activations: int  # a train step (estimate)
  decoding: int  # a rollout / voting batch: weight copy + KV cache

  @property
  def peak(self) -> int:
    return self.weights + self.gradients + self.optimizer + self.reference + max(self.activations, self.decoding)


def memory(cfg: ModelConfig, workload: Workload, mesh: AbstractMesh, setting: Setting = Setting()) -> Memory:
  params, train, opt = abstract_state(cfg, setting.trainable)
  tensor = mesh.shape["tensor"]
  weights = device_bytes(params, mesh)
  decoding = 0
  if workload.generates:
    copy = 0 if cfg.param_dtype == cfg.compute_dtype else device_bytes(
        params, mesh, np.dtype(cfg.compute_jnp_dtype).itemsize)
    decoding = copy + kv_cache_bytes(cfg, setting)
  return Memory(weights=weights,
                gradients=device_bytes(train, mesh) if workload.trains else 0,
                optimizer=device_bytes(opt, mesh) if workload.trains else 0,
                reference=weights if workload.reference else 0,
                activations=setting.train_rows * activation_bytes(cfg, setting, tensor) if workload.trains else 0,
                decoding=decoding)


@dataclasses.dataclass(frozen=True)
class Plan:
  devices: int
  mesh: tuple[int, int, int]  # (data, fsdp, tensor)
  generate_rows: int  # rollout / voting rows per device that fit (0: the workload does not generate)
  memory: Memory


def _row_choices(workload: Workload, setting: Setting) -> list[int]:
  if not workload.generates:
    return [setting.generate_rows]
  rows = [setting.generate_rows]
  while rows[-1] > 1:
    rows.append(rows[-1] // 2)
  return rows


def plan(cfg: ModelConfig, workload: Workload, hardware: Hardware, setting: Setting = Setting()) -> Plan | None:
  """The fewest devices (powers of two up to hardware.max_devices), then the smallest tensor size, then the most
  rollout rows per device (setting.generate_rows, halved down to 1) whose peak fits HEADROOM of the memory, with
  the parameters fully sharded over fsdp (data=1: more devices would add data parallelism). None: nothing fits."""
  limit = HEADROOM * hardware.memory_gib * GIB
  devices = 1
  while devices <= hardware.max_devices:
    for tensor in TENSOR_SIZES:
      if tensor > min(devices, hardware.per_node):  # tensor parallelism stays inside a node's fast links
        break
      mesh = abstract_mesh(1, devices // tensor, tensor)
      for rows in _row_choices(workload, setting):
        used = memory(cfg, workload, mesh, dataclasses.replace(setting, generate_rows=rows))
        if used.peak <= limit:
          return Plan(devices, (1, devices // tensor, tensor), rows if workload.generates else 0, used)
    devices *= 2
  return None


def _gib(n: int) -> str:
  return f"{n / GIB:.1f}" if n else "—"


def render(setting: Setting = Setting()) -> str:
  """The whole of docs/SCALING.md."""
  out = ["# Scaling guide: mesh shapes and memory per device", "",
         "Generated by `python -m spct_jax.scaling` (do not edit by hand; tests/test_scaling.py checks that it is "
         "current). Weights, gradients, optimizer state and GRPO's reference are exact per-device shard sizes of "
         "the shapes the code builds, under the project's sharding rules; activations are an estimate "
         "(`spct_jax/scaling.py` says which arrays it counts). Set the mesh with `--config.mesh.fsdp=N "
         "--config.mesh.tensor=T` (`configs/common.py` `mesh()`).", "",
         f"Assumed: rows of {setting.seq_len} tokens; {setting.train_rows} row per device per train micro-batch "
         f"(more through `optimizer.grad_accum_steps`); up to {setting.generate_rows} rows per device per "
         "rollout / voting batch (the table gives the most that fit: the KV cache is f32 under the models' "
         f"`float32_attention` and not split over `tensor`); log-probs over {setting.logprob_chunk_size} tokens "
         "at a time (`grpo.logprob_chunk_size`); every parameter trained (`optimizer.trainable='.*'`); AdamW; compute in "
         f"{setting.compute_dtype}; a plan fits when its peak is at most {HEADROOM:.0%} of the device memory. "
         "`float32` stores weights, gradients and Adam moments in f32 (the configs' default); `bfloat16` stores "
         "all three in bf16 (the `gemma2_27b` variant's `model.param_dtype`), half the memory, with bf16 "
         "rounding in the updates.", "",
         "| model | parameters | f32 weights | bf16 weights |", "|---|---|---|---|"]
  for name in MODELS:
    n = param_count(name)
    out.append(f"| {name} | {n:,} | {_gib(4 * n)} GiB | {_gib(2 * n)} GiB |")
  for name in MODELS:
    out += ["", f"## {name}", "", "| workload | weights dtype | hardware | devices (nodes) | mesh data x fsdp x tensor "
            "| weights | grads | Adam | reference | activations | rollout rows | rollout | peak GiB / device |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for workload in WORKLOADS:
      for dtype in ("float32", "bfloat16"):
        cfg = model_config(name, dtype, setting.compute_dtype)
        for hw in HARDWARE:
          found = plan(cfg, workload, hw, setting)
          head = f"| {workload.name} | {dtype} | {hw.name} ({hw.memory_gib:g} GiB) |"
          if found is None:
            out.append(f"{head} more than {hw.max_devices} | — | — | — | — | — | — | — | — | — |")
            continue
          m, nodes = found.memory, -(-found.devices // hw.per_node)
          out.append(f"{head} {found.devices} ({nodes}) | {' x '.join(map(str, found.mesh))} | {_gib(m.weights)} | "
                     f"{_gib(m.gradients)} | {_gib(m.optimizer)} | {_gib(m.reference)} | {_gib(m.activations)} | "
                     f"{found.generate_rows or '—'} | {_gib(m.decoding)} | {_gib(m.peak)} |")
  return "\n".join(out) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=str(OUTPUT), help="the markdown file to write")
  parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
  args = parser.parse_args(argv)
  return files.write_generated(render(), args.out, check=args.check, command="python -m spct_jax.scaling")


if __name__ == "__main__":
  sys.exit(main())
