"""The one training loop on a tiny objective (a 2x2 linear map fit by SGD): resume, preemption, periodic evaluation."""

import os
import signal

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from spct_jax import checkpoint, multihost
from spct_jax.train import loop
from spct_jax.train.metrics import read_metrics
from spct_jax.train.step import init_train_state, make_train_step


def _loss(model, aux, batch):
  del aux
  return jnp.mean((model(batch["x"]) - 2.0 * batch["x"]) ** 2), {}


class LinearBody:
  """Step s trains on a batch drawn from (seed, s); `on_step` lets a test act inside a step."""

  def __init__(self, seed=0, on_step=None):
    self.seed, self.on_step = seed, on_step
    optimizer = optax.sgd(0.2)
    self.state = init_train_state(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), optimizer, ".*")
    self._step = make_train_step(_loss, optimizer, self.state)

  def __call__(self, step):
    if self.on_step:
      self.on_step(step)
    x = np.random.default_rng([self.seed, step]).normal(size=(32, 2)).astype(np.float32)
    return {k: float(v) for k, v in multihost.to_host(self._step(self.state, None, {"x": x})).items()}


class CountingEvaluator:
  def __init__(self, every):
    self.every, self.calls = every, []

  def __call__(self, model):
    self.calls.append(model)
    return {"weight_sum": float(jnp.sum(model.kernel[...]))}


def _config(total, every=2):
  return loop.LoopConfig(total_steps=total, checkpoint_every=every, checkpoint_keep=5, async_save=False)


def _comparable(lines):
  return [{k: v for k, v in line.items() if k != "step_time_s"} for line in lines]


def test_resume_continues_identically(tmp_path):
  loop.train(LinearBody(), workdir=tmp_path / "straight", config=_config(5))
  loop.train(LinearBody(), workdir=tmp_path / "split", config=_config(3))
  summary = loop.train(LinearBody(), workdir=tmp_path / "split", config=_config(5))
  straight, split = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "split")
  assert [line["step"] for line in split] == [1, 2, 3, 4, 5]
  assert _comparable(straight) == _comparable(split)
  assert straight[-1]["loss"] < straight[0]["loss"]  # it learns
  assert summary["step"] == 5 and summary["loss"] == straight[-1]["loss"]
  assert checkpoint.Checkpointer(tmp_path / "split" / "checkpoints").all_steps() == [2, 3, 4, 5]
  # Already at total_steps: nothing runs, nothing is appended.
  assert loop.train(LinearBody(), workdir=tmp_path / "split", config=_config(5)) == {"step": 5}
  assert len(read_metrics(tmp_path / "split")) == 5


def test_periodic_evaluation_every_n_steps_and_at_the_last(tmp_path):
  evaluator = CountingEvaluator(every=2)
  loop.train(LinearBody(), workdir=tmp_path, config=_config(5), evaluators={"heldout": evaluator, "off":
                                                                             CountingEvaluator(every=0)})
  lines = read_metrics(tmp_path)
  assert [line["step"] for line in lines if "heldout/weight_sum" in line] == [2, 4, 5]
  assert len(evaluator.calls) == 3 and not any("off/weight_sum" in line for line in lines)


def test_sigterm_saves_the_step_and_stops(tmp_path):
  def preempt(step):
    if step == 1:
      os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step: the loop finishes the step, saves, stops

  summary = loop.train(LinearBody(on_step=preempt), workdir=tmp_path / "run", config=_config(5, every=10))
  assert summary["preempted"] and summary["step"] == 2
  assert checkpoint.Checkpointer(tmp_path / "run" / "checkpoints").latest_step() == 2
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is restored
  loop.train(LinearBody(), workdir=tmp_path / "run", config=_config(5, every=10))
  loop.train(LinearBody(), workdir=tmp_path / "straight", config=_config(5, every=10))
  assert _comparable(read_metrics(tmp_path / "run")) == _comparable(read_metrics(tmp_path / "straight"))


def test_resume_refuses_a_different_seed(tmp_path):
  loop.train(LinearBody(), workdir=tmp_path, config=_config(2), meta={"seed": 0})
  with pytest.raises(ValueError, match=r"written with seed=0 but the config has seed=1"):
    loop.train(LinearBody(seed=1), workdir=tmp_path, config=_config(4), meta={"seed": 1})
