"""SFT cross-entropy and sigmoid BCE against hand values and a float64 numpy reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spct_jax.train import losses


def test_token_cross_entropy_hand_values():
  logps = jnp.log(jnp.array([[0.5, 0.25, 0.9], [0.125, 0.3, 0.3]]))
  mask = jnp.array([[1, 1, 0], [1, 0, 0]])
  loss, m = losses.token_cross_entropy(logps, mask)
  want = -(math.log(0.5) + math.log(0.25) + math.log(0.125)) / 3  # = 2 ln 2
  np.testing.assert_allclose(float(loss), want, rtol=1e-6)
  np.testing.assert_allclose(float(m["nll"]), want, rtol=1e-6)
  np.testing.assert_allclose(float(m["perplexity"]), 4.0, rtol=1e-6)
  assert float(m["tokens"]) == 3.0


def test_token_cross_entropy_random_matches_numpy_and_grad():
  rng = np.random.default_rng(0)
  logps = -rng.exponential(2.0, (4, 9)).astype(np.float32)
  mask = rng.random((4, 9)) < 0.6
  mask[1] = False
  padded = np.where(mask, logps, -np.inf).astype(np.float32)  # padding may be -inf
  loss, _ = jax.jit(losses.token_cross_entropy)(padded, mask)
  want = -sum(float(logps[i, j]) for i in range(4) for j in range(9) if mask[i, j]) / mask.sum()
  np.testing.assert_allclose(float(loss), want, rtol=1e-6)
  g = np.asarray(jax.grad(lambda x: losses.token_cross_entropy(x, mask)[0])(jnp.asarray(padded)))
  assert np.all(np.isfinite(g))
  np.testing.assert_allclose(g, np.where(mask, -1.0 / mask.sum(), 0.0), rtol=1e-6)


def test_token_cross_entropy_empty_mask():
  loss, m = losses.token_cross_entropy(jnp.full((2, 3), -jnp.inf), jnp.zeros((2, 3)))
  assert float(loss) == 0.0 and float(m["tokens"]) == 0.0 and float(m["perplexity"]) == 1.0
  with pytest.raises(ValueError):
    losses.token_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


def ref_bce(x, y, w=None, pw=1.0):
  num = den = 0.0
  for i in range(len(x)):
    p = 1.0 / (1.0 + math.exp(-float(x[i])))
    li = -(pw * y[i] * math.log(p) + (1 - y[i]) * math.log(1 - p))
    wi = 1.0 if w is None else float(w[i])
    num += wi * li
    den += wi
  return num / den


def test_sigmoid_bce_matches_numpy():
  rng = np.random.default_rng(1)
  x = rng.normal(0, 3, 16).astype(np.float32)
  y = rng.random(16).astype(np.float32)  # soft labels
  w = rng.random(16).astype(np.float32)
  for kw, args in (({}, {}), ({"weights": w}, {"w": w}), ({"weights": w, "pos_weight": 3.0}, {"w": w, "pw": 3.0})):
    loss, _ = jax.jit(lambda a, b: losses.sigmoid_bce(a, b, **kw))(x, y)
    np.testing.assert_allclose(float(loss), ref_bce(x, y, **args), rtol=1e-5)


def test_sigmoid_bce_metrics():
  x = jnp.array([2.0, -1.0, 0.0, 3.0])
  y = jnp.array([1.0, 1.0, 0.0, 0.0])
  _, m = losses.sigmoid_bce(x, y)
  assert float(m["accuracy"]) == 0.5  # right: 2.0/1, 0.0/0 (0 counts negative); wrong: -1/1, 3/0
  np.testing.assert_allclose(float(m["mean_prob"]), float(jnp.mean(jax.nn.sigmoid(x))), rtol=1e-6)
  # Weights select examples for the metrics too.
  _, m = losses.sigmoid_bce(x, y, weights=jnp.array([1.0, 0.0, 1.0, 0.0]))
  assert float(m["accuracy"]) == 1.0


def test_sigmoid_bce_stable_at_large_logits():
  x = jnp.array([100.0, -100.0, 100.0, -100.0])
  y = jnp.array([1.0, 0.0, 0.0, 1.0])
  loss, m = losses.sigmoid_bce(x, y)
  # Right ones ~ e^-100 (0 in f32), wrong ones ~ 100 each: mean = 50.
  np.testing.assert_allclose(float(loss), 50.0, rtol=1e-6)
  g = np.asarray(jax.grad(lambda v: losses.sigmoid_bce(v, y)[0])(x))
  # d/dx = (sigmoid(x) - y) / B.
  np.testing.assert_allclose(g, [0.0, 0.0, 0.25, -0.25], atol=1e-7)
  assert float(m["accuracy"]) == 0.5


def test_sigmoid_bce_zero_weights_and_bad_shapes():
  loss, m = losses.sigmoid_bce(jnp.array([1.0, -2.0]), jnp.array([1.0, 0.0]), weights=jnp.zeros(2))
  assert float(loss) == 0.0 and all(np.isfinite(float(v)) for v in m.values())
  with pytest.raises(ValueError):
    losses.sigmoid_bce(jnp.zeros(3), jnp.zeros(4))
  with pytest.raises(ValueError):
    losses.sigmoid_bce(jnp.zeros(3), jnp.zeros(3), weights=jnp.zeros(2))
