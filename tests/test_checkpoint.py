"""Checkpointer: round trip, pruning, sharded restore, NaN refusal, atomic commit."""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from spct_jax.checkpoint import Checkpointer, is_finite_tree


def make_state(scale=1.0):
  params = {"w": jnp.arange(8.0, dtype=jnp.float32).reshape(4, 2) * scale, "b": jnp.full((2,), 0.5 * scale)}
  opt = optax.adam(1e-2)
  opt_state = opt.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = opt.update(grads, opt_state, params)  # nonzero moments, count = 1
  return params, opt_state


def meta_for(step):
  rng = np.random.default_rng(step)
  return {"data_position": 10 * step, "np_rng": rng.bit_generator.state["state"]["state"] % 1000,
          "history": [{"step": step, "loss": 0.25}], "config": {"lr": 1e-2, "name": "x"}}


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def committed_steps(d):
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def test_round_trip(tmp_path):
  params, opt_state = make_state()
  with Checkpointer(tmp_path / "ck") as ck:
    assert ck.latest_step() is None
    assert ck.save(5, params=params, opt_state=opt_state, meta=meta_for(5))
    ck.wait()
    assert ck.latest_step() == 5
  # A fresh object (as after a restart) restores from disk onto concrete targets.
  with Checkpointer(tmp_path / "ck") as ck:
    assert ck.latest_step() == 5
    zeros_p, zeros_o = jax.tree.map(jnp.zeros_like, (params, opt_state))
    p, o, meta = ck.restore(params_target=zeros_p, opt_state_target=zeros_o)
  assert_trees_equal(p, params)
  assert_trees_equal(o, opt_state)
  assert int(o[0].count) == 1
  assert meta == json.loads(json.dumps(meta_for(5)))


def test_keep_n_and_interval(tmp_path):
  params, opt_state = make_state()
  with Checkpointer(tmp_path, max_to_keep=2, save_interval_steps=2, async_save=False) as ck:
    saved = [ck.save(s, params=params, opt_state=opt_state, meta={"s": s}) for s in range(1, 8)]
    # Orbax always writes the first save of an empty directory, then every 2nd step.
    assert saved == [True, True, False, True, False, True, False]
    assert ck.save(7, params=params, opt_state=opt_state, meta={"s": 7}, force=True)
    ck.wait()
    assert ck.all_steps() == [6, 7]
    assert ck.latest_step() == 7
    assert committed_steps(tmp_path) == [6, 7]
    _, _, meta = ck.restore(6, params_target=params, opt_state_target=opt_state)
    assert meta == {"s": 6}
    with pytest.raises(FileNotFoundError, match="step 2"):
      ck.restore(2, params_target=params, opt_state_target=opt_state)


def test_restore_sharded_abstract_targets(tmp_path):
  params, opt_state = make_state()
  with Checkpointer(tmp_path) as ck:
    ck.save(1, params=params, opt_state=opt_state, meta={})
    ck.wait()
    mesh = Mesh(np.array(jax.devices()[:2]), ("x",))
    row = NamedSharding(mesh, P("x"))
    rep = NamedSharding(mesh, P())
    # Leading dim 4 or 2 splits over 2 devices; scalars (adam count) are replicated.
    pick = lambda x: row if x.ndim else rep
    to_abstract = lambda t: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=pick(x)), t)
    p, o, _ = ck.restore(params_target=to_abstract(params), opt_state_target=to_abstract(opt_state))
  for restored, want in ((p, params), (o, opt_state)):
    assert_trees_equal(restored, want)
    for x in jax.tree.leaves(restored):
      assert isinstance(x, jax.Array)
      assert x.sharding.is_equivalent_to(pick(x), x.ndim)
      assert len(x.sharding.device_set) == 2
  assert p["w"].addressable_shards[0].data.shape == (2, 2)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_params_refused_nothing_written(tmp_path, bad):
  params, opt_state = make_state()
  with Checkpointer(tmp_path) as ck:
    ck.save(1, params=params, opt_state=opt_state, meta={})
    ck.wait()
    broken = {**params, "b": params["b"].at[1].set(bad)}
    with pytest.raises(FloatingPointError, match="step 2"):
      ck.save(2, params=broken, opt_state=opt_state, meta={})
    ck.wait()
    assert ck.latest_step() == 1
  assert os.listdir(tmp_path) == ["1"]


def test_meta_must_be_json(tmp_path):
  params, opt_state = make_state()
  with Checkpointer(tmp_path) as ck:
    with pytest.raises(ValueError, match="step 3"):
      ck.save(3, params=params, opt_state=opt_state, meta={"x": object()})
    assert ck.latest_step() is None


def test_step_dir_appears_only_when_committed(tmp_path):
  # Bigger arrays so the background write takes a moment; poll the directory while it runs.
  params = {"w": jnp.ones((512, 512)), "v": jnp.ones((512, 256))}
  opt_state = optax.sgd(0.1).init(params)
  with Checkpointer(tmp_path) as ck:
    ck.save(1, params=params, opt_state=opt_state, meta={"k": 1})
    deadline = time.time() + 30
    while time.time() < deadline:
      names = os.listdir(tmp_path)
      for name in names:
        if name == "1":  # visible as a step => complete, with every item
          assert {"params", "opt_state", "meta"} <= set(os.listdir(tmp_path / name))
        else:
          assert name.startswith("1.orbax-checkpoint-tmp")
      if "1" in names:
        break
      time.sleep(0.002)
    ck.wait()
    assert os.listdir(tmp_path) == ["1"]  # renamed into place, no temporary leftovers
    assert {"params", "opt_state", "meta"} <= set(os.listdir(tmp_path / "1"))


def test_is_finite_tree():
  params, opt_state = make_state()
  assert is_finite_tree(params) and is_finite_tree(opt_state)
  assert is_finite_tree({"i": jnp.arange(3), "n": np.int32(5)})  # ints are ignored
  assert is_finite_tree({})
  assert not is_finite_tree({"a": params, "z": np.array([1.0, np.nan])})
  assert not is_finite_tree([jnp.ones(2), 1.0, jnp.array([-np.inf], jnp.bfloat16)])
