"""ONE training loop for every objective: GRPO now, SFT (RFT) and the meta RM's BCE next.

The loop owns what every trainer needs and nothing of any objective: resume from the newest checkpoint, preemption
(SIGTERM -> save at the end of the current step, exit cleanly), the metrics writer, periodic evaluation, the NaN
stop, the progress bar. An objective is a `Body`: its `state` (a `TrainState`: trainable parameters, optimizer
state, step) is what the loop checkpoints and restores, and `body(step)` runs one step and returns its host
metrics. A body must draw everything random from (seed, step), so a resumed run continues exactly like an
uninterrupted one.

  body = MyBody(...)                      # state = init_train_state(...); __call__ = one jitted step
  summary = loop.train(body, workdir=workdir, config=loop.LoopConfig.from_config(config, name="sft"),
                       evaluators={"heldout": evaluator}, meta={"seed": config.seed})
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from spct_jax import checkpoint, files, multihost
from spct_jax.train.metrics import MetricsWriter
from spct_jax.train.step import TrainState

log = logging.getLogger(__name__)


class Body(Protocol):
  """One objective's training step."""

  state: TrainState  # checkpointed and restored by the loop: trainable, opt_state, step

  def __call__(self, step: int) -> dict[str, float]:
    """Runs step `step` (0-based; the checkpoint it leads to is step + 1) and returns host metrics, including the
    train step's "loss" and "params_finite" (`make_train_step` returns both)."""


class Evaluator(Protocol):
  """Periodic evaluation (`spct_jax.evaluators`): `every` steps and at the last one; 0 = never."""

  every: int

  def __call__(self, model) -> dict[str, float]:
    ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoopConfig:
  """total_steps: steps of the whole run (a resumed run continues to it). checkpoint_every: save every N steps
  (and at the last step and on preemption). name: the progress bar's label. progress_keys: metrics it shows."""

  total_steps: int
  checkpoint_every: int
  checkpoint_keep: int = 2
  async_save: bool = True
  name: str = "train"
  progress_keys: tuple[str, ...] = ()

  @classmethod
  def from_config(cls, config, **kwargs) -> LoopConfig:
    """From config.total_steps and config.checkpoint.{every, keep, async_save}."""
    c = config.checkpoint
    return cls(total_steps=config.total_steps, checkpoint_every=c.every, checkpoint_keep=c.keep,
               async_save=c.async_save, **kwargs)


class Preemption:
  """SIGTERM sets a flag; `reached(step)` is the one question the loop asks before deciding to stop.

  With several processes the answer is agreed: `reached` is true on every process as soon as the flag is set on
  any (one all-gather of a flag per step), so all of them save the same step and exit together, even when the
  signal reached only one host or reached them during different steps. Every process must call `reached` once
  per step. (JAX's own preemption service is off: `sharding.maybe_initialize_distributed`.)
  """

  def __init__(self):
    self._requested = False
    self._previous = None

  def __enter__(self) -> Preemption:
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame):
    del signum, frame
    self._requested = True

  def reached(self, step: int) -> bool:
    del step
    return multihost.any_process(self._requested)


def non_finite(metrics: Mapping[str, Any]) -> str | None:
  """Which of loss / weights is non-finite ("loss nan", "weights", "loss inf and weights"), or None."""
  loss = float(metrics["loss"])
  bad = [] if np.isfinite(loss) else [f"loss {loss}"]
  if not bool(metrics["params_finite"]):
    bad.append("weights")
  return " and ".join(bad) or None


def _due(every: int, step: int, total: int) -> bool:
  return bool(every) and (step % every == 0 or step == total)


def _restore(ckpt: checkpoint.Checkpointer, state: TrainState, meta: Mapping[str, Any]) -> int:
  """Restores the newest checkpoint that verifies (damaged newer ones are quarantined with a warning); 0 if none."""
  restored = ckpt.restore_latest_valid(params_target=state.trainable, opt_state_target=state.opt_state)
  if restored is None:
    return 0
  start, trainable, opt_state, saved = restored
  differs = {k: (saved.get(k), v) for k, v in meta.items() if saved.get(k, v) != v}
  if differs:
    raise ValueError(f"checkpoint {ckpt.directory}/{start} was written with "
                     f"{', '.join(f'{k}={a!r}' for k, (a, _) in differs.items())} but the config has "
                     f"{', '.join(f'{k}={b!r}' for k, (_, b) in differs.items())}; use another workdir to start over")
  state.trainable, state.opt_state, state.step = trainable, opt_state, saved["step"]
  log.info("resumed from %s at step %d", ckpt.directory, start)
  return start


def train(body: Body, *, workdir: files.PathLike, config: LoopConfig,
          evaluators: Mapping[str, Evaluator] | None = None, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Runs `body` from the newest checkpoint in `workdir` to `config.total_steps`.

  Writes `workdir/metrics.jsonl` (one line per step: the body's metrics, step_time_s, and `<evaluator>/<metric>`
  on evaluation steps; TensorBoard events beside it) and `workdir/checkpoints/<step>`. `meta` (JSON values, e.g.
  the seed) is saved with every checkpoint and must match on resume.

  Returns:
    The last step's metrics, plus "step" and, when SIGTERM stopped the run, "preempted": True.

  Raises:
    FloatingPointError: a step made the loss or the weights non-finite (the message says which); nothing is saved
      for that step, the newest checkpoint stays the last good one.
  """
  workdir, meta, evaluators = files.as_path(workdir), dict(meta or {}), dict(evaluators or {})
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", max_to_keep=config.checkpoint_keep,
                                 async_save=config.async_save)
  writer = MetricsWriter(workdir)
  summary: dict[str, Any] = {}
  try:
    start = _restore(ckpt, body.state, meta)
    writer.truncate_after(start)
    summary["step"] = start
    if start >= config.total_steps:
      log.info("%s: already at step %d of %d, nothing to do", workdir, start, config.total_steps)
    bar = tqdm(range(start, config.total_steps), initial=start, total=config.total_steps, desc=config.name,
               disable=not multihost.is_main_process())
    with Preemption() as preemption:
      for step in bar:
        t0 = time.perf_counter()
        metrics = dict(body(step))
        bad = non_finite(metrics)
        if bad:
          raise FloatingPointError(f"non-finite {bad} at step {step + 1}; no checkpoint written for it (last good: "
                                   f"{ckpt.latest_step()})")
        metrics["step_time_s"] = time.perf_counter() - t0
        done = step + 1
        for name, evaluator in evaluators.items():
          if _due(evaluator.every, done, config.total_steps):
            metrics.update({f"{name}/{k}": v for k, v in evaluator(body.state.model()).items()})
        writer.write(done, metrics)
        bar.set_postfix({k: f"{metrics[k]:.3g}" for k in config.progress_keys if k in metrics})
        summary = dict(metrics, step=done)
        stop = preemption.reached(done)
        if stop or done == config.total_steps or done % config.checkpoint_every == 0:
          ckpt.save(done, params=body.state.trainable, opt_state=body.state.opt_state, meta={"step": done, **meta},
                    force=True)
        if stop:
          log.warning("SIGTERM: saved step %d, exiting", done)
          summary["preempted"] = True
          break
  finally:
    ckpt.wait()
    ckpt.close()
    writer.close()
  return summary
