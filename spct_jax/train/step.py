"""One train-step machinery for every objective: GRPO now, SFT (RFT) and the meta RM's BCE later.

A loss is `loss_fn(model, aux, batch) -> (loss, metrics)`; `aux` carries whatever the objective needs besides the
trained model (GRPO: the frozen reference parameters). Parameters are split by a regex into trainable and frozen
states: only the trainable ones get gradients and optimizer state (freezing Gemma's 262k x D embedding saves its
gradient and two Adam moments). The step is one `jax.jit` with explicit in/out shardings; trainable parameters and
optimizer state are donated.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from spct_jax import multihost
from spct_jax import sharding as shd

LossFn = Callable[[nnx.Module, Any, dict[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW with linear warmup, optional cosine decay, global-norm clipping and gradient accumulation.

  trainable: regex over flat parameter keys (`embedding`, `blocks/q_proj`, ...); `re.search` semantics.
  grad_accum_steps: micro-batches per update (optax.MultiSteps); the learning-rate schedule counts updates.
  """

  learning_rate: float = 1e-6
  warmup_steps: int = 0
  schedule: str = "constant"
  total_steps: int = 1000
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  grad_clip_norm: float | None = 1.0
  grad_accum_steps: int = 1
  trainable: str = ".*"


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  if cfg.schedule == "constant":
    decay = optax.constant_schedule(cfg.learning_rate)
  elif cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(cfg.learning_rate, max(1, cfg.total_steps - cfg.warmup_steps))
  else:
    raise ValueError(f"optimizer.schedule={cfg.schedule!r}; valid: ['constant', 'cosine']")
  if cfg.warmup_steps <= 0:
    return decay
  warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
  return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
  chain = [optax.clip_by_global_norm(cfg.grad_clip_norm)] if cfg.grad_clip_norm else []
  chain.append(optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay))
  tx = optax.chain(*chain)
  if cfg.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum_steps)
  return tx


def trainable_filter(pattern: str) -> Callable[[tuple, Any], bool]:
  regex = re.compile(pattern)
  return lambda path, _: isinstance(_, nnx.Param) and bool(regex.search("/".join(map(str, path))))


def split_params(model: nnx.Module, pattern: str) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """(graphdef, trainable, frozen). Raises if the regex selects nothing (a typo would silently train nothing)."""
  graphdef, trainable, frozen = nnx.split(model, trainable_filter(pattern), ...)
  if not jax.tree.leaves(trainable):
    raise ValueError(f"optimizer.trainable={pattern!r} matches no parameter")
  return graphdef, trainable, frozen


@dataclasses.dataclass
class TrainState:
  """What a step updates (trainable, opt_state, step) and what it only reads (graphdef, frozen)."""

  graphdef: nnx.GraphDef
  trainable: nnx.State
  frozen: nnx.State
  opt_state: Any
  step: int = 0

  def model(self) -> nnx.Module:
    return nnx.merge(self.graphdef, self.trainable, self.frozen)


def init_train_state(model: nnx.Module, optimizer: optax.GradientTransformation, pattern: str, *,
                     mesh: jax.sharding.Mesh | None = None) -> TrainState:
  graphdef, trainable, frozen = split_params(model, pattern)
  # jit places moment estimates like the parameters they mirror; scalars (step counts) are replicated on the mesh.
  opt_state = jax.jit(optimizer.init)(trainable)
  if mesh is not None:
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    on_mesh = lambda x: isinstance(x.sharding, jax.sharding.NamedSharding) and x.sharding.mesh == mesh
    opt_state = jax.tree.map(lambda x: x if on_mesh(x) else jax.device_put(x, replicated), opt_state)
  return TrainState(graphdef=graphdef, trainable=trainable, frozen=frozen, opt_state=opt_state)


def _shardings_of(tree):
  return jax.tree.map(lambda x: x.sharding, tree)


def place_batch(batch: dict[str, Any], mesh: jax.sharding.Mesh | None, rules=shd.DEFAULT_RULES,
                batch_logical_axes: dict[str, tuple[str | None, ...]] | None = None) -> dict[str, jax.Array]:
  """The batch as jax arrays on `mesh`, each sharded by its logical axes (default: rows over `batch`).

  A host array (numpy, or a jax array local to this process) is the WHOLE batch entry, the same on every process;
  each process places its own shards (`multihost.host_to_global`). A process that holds only its own rows makes
  them global first (`multihost.global_batch`). A global array already on the right sharding is kept; another
  sharding is resharded. Without a mesh: `jnp.asarray`.
  """
  if mesh is None:
    return {k: jnp.asarray(v) for k, v in batch.items()}
  axes = batch_logical_axes or {}
  out = {}
  for name, value in batch.items():
    target = jax.sharding.NamedSharding(mesh, shd.spec_for(
        value.shape, axes.get(name, ("batch",) + (None,) * (len(value.shape) - 1)), mesh, rules))
    if isinstance(value, jax.Array) and (target.is_fully_addressable or not value.is_fully_addressable):
      out[name] = value if value.sharding.is_equivalent_to(target, value.ndim) else jax.device_put(value, target)
    else:  # host data (or a process-local copy of it) for a sharding that spans processes
      out[name] = multihost.host_to_global(np.asarray(value), target)
  return out


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, state: TrainState, *,
                    mesh: jax.sharding.Mesh | None = None, rules=shd.DEFAULT_RULES,
                    batch_logical_axes: dict[str, tuple[str | None, ...]] | None = None):
  """Returns `step(state, aux, batch) -> metrics`, updating `state` in place (its buffers are donated).

  With a mesh, parameters keep their logical-axis shardings, batch arrays are sharded over `batch` (first dim;
  `batch_logical_axes` names other layouts per entry) and placed by `place_batch` (host arrays: the whole batch,
  the same on every process), and the jit gets explicit in/out shardings; without one, jit places everything on
  the default device.
  """
  graphdef = state.graphdef

  def update(trainable, frozen, opt_state, aux, batch):
    def loss_of(trainable):
      return loss_fn(nnx.merge(graphdef, trainable, frozen), aux, batch)

    (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    # Fused into the step (nearly free): the loop refuses to go on from non-finite weights.
    finite = jnp.all(jnp.array([jnp.isfinite(x).all() for x in jax.tree.leaves(trainable)]))
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads), params_finite=finite)
    return trainable, opt_state, metrics

  if mesh is None:
    jitted = jax.jit(update, donate_argnums=(0, 2))
  else:
    trainable_sh = _shardings_of(state.trainable)
    opt_sh = _shardings_of(state.opt_state)
    compiled = {}

    def jitted(trainable, frozen, opt_state, aux, batch):
      signature = tuple(sorted((k, v.shape, str(v.dtype)) for k, v in batch.items()))
      if signature not in compiled:
        compiled[signature] = jax.jit(
            update, donate_argnums=(0, 2),
            in_shardings=(trainable_sh, _shardings_of(frozen), opt_sh,
                          None if aux is None else _shardings_of(aux), _shardings_of(batch)),
            out_shardings=(trainable_sh, opt_sh, None))
      return compiled[signature](trainable, frozen, opt_state, aux, batch)

  def step(state: TrainState, aux: Any, batch: dict[str, Any]) -> dict[str, jax.Array]:
    batch = place_batch(batch, mesh, rules, batch_logical_axes)
    state.trainable, state.opt_state, metrics = jitted(state.trainable, state.frozen, state.opt_state, aux, batch)
    state.step += 1
    return metrics

  return step
