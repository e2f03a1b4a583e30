"""Tests for spct_jax.strategies: block summaries, argmax ties, top-k / top-p filters, top-k draws, the exact
categorical draw (equal to the plain inverse CDF) and per-row keys."""

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
  summary = strategies.summarize(logits, strategy.summary_temperature)
  keys = jax.random.split(jax.random.key(1), 100_000)
  tokens, logps = jax.jit(jax.vmap(lambda key: strategy.sample(key, summary)))(keys)
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


def _plain_inverse_cdf(uniforms, values, temperature):
  """float64 reference: the first token whose cumulative softmax(values / T) exceeds u, and u's distance to the
  nearest CDF boundary (where f32 rounding may move a draw to the neighbouring token)."""
  scaled = np.asarray(values, np.float64) / temperature
  probs = np.exp(scaled - scaled.max(-1, keepdims=True))
  cdf = np.cumsum(probs / probs.sum(-1, keepdims=True), axis=-1)
  uniforms = np.asarray(uniforms, np.float64)
  tokens = np.array([np.searchsorted(row, u, side="right") for row, u in zip(cdf, uniforms)])
  return tokens, np.abs(cdf - uniforms[:, None]).min(-1)


def test_summary_draws_equal_the_plain_inverse_cdf_for_the_same_per_row_keys():
  """Same keys, same tokens: the two-level search over block summaries returns the token a plain inverse CDF over
  the full softmax returns for the same uniform (jax.random.uniform of the row's key), except where u lies within
  f32 rounding (1e-5) of a CDF boundary; such draws must be rare."""
  values = jax.random.normal(jax.random.key(4), (256, 1100)) * 3  # 2 full blocks of 512 and a partial one
  for temperature in (1.0, 0.7):
    keys = jax.random.split(jax.random.key(5), values.shape[0])
    tokens, _ = jax.jit(strategies.Sampling(temperature).sample)(keys, strategies.summarize(values, temperature))
    expected, margin = _plain_inverse_cdf(jax.vmap(jax.random.uniform)(keys), values, temperature)
    clear = margin > 1e-5
    assert clear.mean() > 0.98
    np.testing.assert_array_equal(np.asarray(tokens)[clear], expected[clear])


def test_each_rows_draw_depends_only_on_its_own_key():
  """Rows sampled together, in two chunks, or one at a time draw the same tokens (what row chunking relies on)."""
  values = jax.random.normal(jax.random.key(6), (12, 1100)) * 2
  keys = jax.random.split(jax.random.key(7), 12)
  for strategy in (strategies.Sampling(0.8), strategies.Sampling(1.0, top_k=20)):
    draw = lambda k, v, s=strategy: s.sample(k, strategies.summarize(v, s.summary_temperature))
    whole, whole_logps = draw(keys, values)
    chunks = [draw(keys[lo:hi], values[lo:hi]) for lo, hi in ((0, 5), (5, 12))]
    np.testing.assert_array_equal(jnp.concatenate([c[0] for c in chunks]), whole)
    np.testing.assert_allclose(jnp.concatenate([c[1] for c in chunks]), whole_logps, rtol=1e-6)
    for r in (0, 7, 11):
      np.testing.assert_array_equal(draw(keys[r:r + 1], values[r:r + 1])[0], whole[r:r + 1])
    assert len(set(np.asarray(whole).tolist())) > 1  # the rows' keys differ, so do (some of) their draws
