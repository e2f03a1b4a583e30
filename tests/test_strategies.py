"""Tests for spct_jax.strategies: block summaries, argmax ties, top-k / top-p filters and the exact categorical draw."""

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
  top3 = np.asarray(strategies.Sampling(1.0, top_k=3).filter_logits(logits))
  assert (np.isfinite(top3).sum(-1) == 3).all()


def test_summaries_equal_a_float64_reference_with_a_partial_last_block():
  values = jax.random.normal(jax.random.key(1), (3, 1100)) * 4  # 1100 = 2 blocks of 512 + 76
  logits = strategies.summarize(values, temperature=0.5)
  ref = np.asarray(values, np.float64)
  for b, lo in enumerate(range(0, 1100, 512)):
    block = ref[:, lo:lo + 512]
    np.testing.assert_allclose(logits.block_max[:, b], block.max(-1), rtol=0, atol=0)
    np.testing.assert_allclose(logits.block_sum[:, b], np.exp(block - block.max(-1, keepdims=True)).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(logits.tempered_sum[:, b], np.exp((block - block.max(-1, keepdims=True)) / 0.5).sum(-1),
                               rtol=1e-5)
  logsumexp = lambda x: x.max(-1) + np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1))
  np.testing.assert_allclose(logits.log_normalizer(), logsumexp(ref), rtol=1e-6)
  np.testing.assert_allclose(logits.log_normalizer(tempered=True), logsumexp(ref / 0.5), rtol=1e-6)


def test_greedy_takes_the_first_maximum_across_blocks():
  values = jax.random.normal(jax.random.key(2), (4, 1100))
  values = values.at[1, [700, 5]].set(9.0).at[2, [1099, 1098]].set(9.0).at[3, :].set(1.0)  # ties across / in blocks
  tokens, logp = strategies.Greedy().sample(jax.random.key(0), strategies.summarize(values))
  np.testing.assert_array_equal(tokens, [int(jnp.argmax(values[0])), 5, 1098, 0])
  np.testing.assert_array_equal(logp, 0.0)


# Vocab 11 with block 4 (the last block partial): the two-level CDF search crosses block edges; -inf tokens sit
# inside blocks and at a block's end.
_LOGITS = jnp.array([0.0, -jnp.inf, 1.0, 2.0, -jnp.inf, 0.5, -1.0, -jnp.inf, 1.5, 0.2, -0.3])


def _frequencies(strategy, logits, draws=100_000):
  summary = strategies.summarize(logits[None], strategy.summary_temperature, block=4)
  keys = jax.random.split(jax.random.key(0), draws)
  tokens, logps = jax.jit(jax.vmap(lambda k: strategy.sample(k, summary)))(keys)
  return np.bincount(np.asarray(tokens[:, 0]), minlength=logits.shape[-1]) / draws, tokens[:, 0], logps[:, 0]


def test_sampling_draws_from_the_tempered_distribution_and_never_zero_probability_tokens():
  for temperature in (1.0, 0.5):
    freq, tokens, logps = _frequencies(strategies.Sampling(temperature), _LOGITS)
    log_probs = np.asarray(jax.nn.log_softmax(_LOGITS / temperature))
    assert freq[[1, 4, 7]].sum() == 0
    np.testing.assert_allclose(freq, np.exp(log_probs), atol=0.006)  # ~4 standard errors at 100k draws
    np.testing.assert_allclose(logps, log_probs[np.asarray(tokens)], atol=1e-5)


def test_filtered_sampling_draws_only_the_kept_tokens():
  freq, tokens, logps = _frequencies(strategies.Sampling(0.5, top_k=3), _LOGITS)
  kept = np.asarray(jax.nn.log_softmax(strategies.Sampling(0.5, top_k=3).filter_logits(_LOGITS)))
  assert set(np.flatnonzero(freq)) == {2, 3, 8}
  np.testing.assert_allclose(freq, np.exp(kept), atol=0.006)
  np.testing.assert_allclose(logps, kept[np.asarray(tokens)], atol=1e-5)
