"""Tests for spct_jax.strategies: argmax ties, top-k / top-p filters, top-k draws and the exact categorical draw."""

import jax
import jax.numpy as jnp
import numpy as np

from spct_jax import strategies


def test_first_argmax_takes_the_first_of_tied_maxima():
  logits = jnp.array([[0.0, 3.0, 1.0, 3.0], [-5.0, -7.0, -5.0, -9.0], [2.0, 2.0, 2.0, 2.0]])
  np.testing.assert_array_equal(strategies.first_argmax(logits), [1, 0, 0])
  random = jax.random.normal(jax.random.key(0), (6, 1000))
  np.testing.assert_array_equal(strategies.first_argmax(random), jnp.argmax(random, axis=-1))


def test_filters_match_numpy():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(3, 50)), jnp.float32)
  filtered = np.asarray(strategies.Sampling(0.5, top_p=0.6).filter_logits(logits))
  for row, out in zip(np.asarray(logits) / 0.5, filtered):
    order = np.argsort(-row)
    probs = np.exp(row[order] - row.max())
    probs /= probs.sum()
    keep = order[: int(np.searchsorted(np.cumsum(probs), 0.6) + 1)]
    assert set(np.flatnonzero(np.isfinite(out))) == set(keep)


def test_top_k_keeps_exactly_the_k_largest_logits_scaled_by_the_temperature():
  logits = np.random.default_rng(1).normal(size=(4, 300)).astype(np.float32)
  for k in (1, 3, 17):
    filtered = np.asarray(strategies.Sampling(0.8, top_k=k).filter_logits(jnp.asarray(logits)))
    for row, out in zip(logits, filtered):
      largest = np.argsort(-row)[:k]
      assert set(np.flatnonzero(np.isfinite(out))) == set(largest)
      np.testing.assert_allclose(out[largest], row[largest] / 0.8, rtol=1e-6)


def test_top_k_draws_follow_the_renormalised_top_k_distribution():
  """Frequencies of 100k seeded draws against softmax over the 4 largest logits / T (~4 standard errors)."""
  logits = jnp.asarray(np.random.default_rng(2).normal(size=(1, 40)) * 2, jnp.float32)
  strategy = strategies.Sampling(0.7, top_k=4)
  log_z = strategies.log_normalizer(logits)
  keys = jax.random.split(jax.random.key(1), 100_000)
  tokens, logps = jax.jit(jax.vmap(lambda key: strategy.sample(key, logits, log_z)))(keys)
  tokens, logps = np.asarray(tokens)[:, 0], np.asarray(logps)[:, 0]
  row = np.asarray(logits[0]) / 0.7
  top = np.argsort(-row)[:4]
  expected = np.zeros(40)
  expected[top] = np.exp(row[top] - row[top].max()) / np.exp(row[top] - row[top].max()).sum()
  freq = np.bincount(tokens, minlength=40) / len(keys)
  assert set(np.flatnonzero(freq)) <= set(top)
  np.testing.assert_allclose(freq, expected, atol=4 * np.sqrt(expected.max() * (1 - expected.max()) / len(keys)))
  # Each draw's log-prob is that of the renormalised distribution.
  np.testing.assert_allclose(logps, np.log(expected[tokens]), atol=1e-5)


def test_sample_categorical_draws_from_the_distribution_and_never_zero_probability_tokens():
  # Vocab 11 with block 4 (padded to 12): the two-level CDF search crosses block edges; -inf tokens sit inside
  # blocks and at a block's end.
  logits = jnp.array([0.0, -jnp.inf, 1.0, 2.0, -jnp.inf, 0.5, -1.0, -jnp.inf, 1.5, 0.2, -0.3])
  log_probs = jax.nn.log_softmax(logits)[None]
  keys = jax.random.split(jax.random.key(0), 100_000)
  draws = jax.jit(jax.vmap(lambda k: strategies.sample_categorical(k, log_probs, block=4)[0]))(keys)
  freq = np.bincount(np.asarray(draws), minlength=11) / len(keys)
  probs = np.exp(np.asarray(log_probs[0]))
  assert freq[[1, 4, 7]].sum() == 0
  np.testing.assert_allclose(freq, probs, atol=0.006)  # ~4 standard errors at 100k draws
