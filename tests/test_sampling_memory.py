"""Row chunks within a memory budget: chunked sampling equals one call, a row that cannot fit fails before any work,
and the estimate bounds what XLA compiles."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spct_jax import sampler, sampling_memory, strategies
from spct_jax.grm.scorer import GRM, build_prompts
from spct_jax.model import Transformer, decoding, get_config

PROMPTS = [[2, 5, 6, 7, 8, 9, 10, 11, 12, 13], [2, 40, 41], [2, 99, 98, 97, 96]]


@pytest.fixture(scope="module")
def model():
  return Transformer(get_config("tiny-gemma3"), rngs=nnx.Rngs(0))


def _budget_for(cfg, rows, length=16, new_tokens=6):
  """A budget that holds `rows` rows with their own prompts (and not one more)."""
  return sampling_memory.sampling_bytes(cfg, rows, rows, length, new_tokens).total


@pytest.mark.parametrize("rows_per_chunk", [1, 2])
def test_chunked_sampling_equals_one_call(model, rows_per_chunk):
  sample = functools.partial(sampler.sample_from_tokens, model, PROMPTS, max_new_tokens=6, num_samples=3,
                             strategy=strategies.Sampling(1.0), seed=11, length_multiple=16)
  budget = _budget_for(model.cfg, rows_per_chunk)
  row_source = np.repeat(np.arange(3), 3)
  chunks = sampling_memory.row_chunks(model.cfg, row_source, [len(p) for p in PROMPTS], 16, 6, budget)
  assert len(chunks) == 9 if rows_per_chunk == 1 else 1 < len(chunks) < 9
  whole, chunked = sample(memory_budget_bytes=1 << 40)[0], sample(memory_budget_bytes=budget)[0]
  np.testing.assert_array_equal(chunked.tokens, whole.tokens)
  np.testing.assert_array_equal(chunked.lengths, whole.lengths)
  np.testing.assert_allclose(chunked.model_logps, whole.model_logps, atol=1e-5)
  np.testing.assert_allclose(chunked.logps, whole.logps, atol=1e-5)
  assert len({tuple(np.asarray(r)) for r in whole.tokens[:3]}) > 1  # the samples of a prompt differ


def test_a_row_that_cannot_fit_fails_before_any_work(model, monkeypatch):
  monkeypatch.setattr(decoding, "decoding_params", lambda *_: pytest.fail("work started"))
  prompts = [[2, 3], [2] + list(range(5, 35)), [2, 4]]
  with pytest.raises(sampling_memory.RowsDoNotFit, match=r"prompt 1 has 31 tokens \(padded to 32, \+ 4 new tokens\)"
                     r".*memory budget of 0.00 GiB per device \(memory_budget_bytes=1000\)") as err:
    sampler.sample_from_tokens(model, prompts, max_new_tokens=4, memory_budget_bytes=1000)
  assert err.value.prompt_index == 1


class _Tokenizer:
  """Bytes as tokens (ids 3..258): enough for the GRM's prompt and text round trip."""

  pad_id, eos_id, bos_id, vocab_size = 0, 1, 2, 512

  def encode(self, text, add_bos=True):
    return [2] * add_bos + [3 + b for b in text.encode()]

  def decode(self, ids):
    return bytes(i - 3 for i in ids if 3 <= i < 259).decode(errors="replace")


def test_grm_names_the_item_that_cannot_fit_and_chunks_like_one_call():
  model = Transformer(get_config("tiny-gemma3", max_seq_len=4096), rngs=nnx.Rngs(0))
  items = [((("user", "q1"),), ("a", "b")), ((("user", "a longer question"),), ("x", "y", "z"))]
  grm = lambda **kw: GRM(model, _Tokenizer(), stop_after_scores=False, max_new_tokens=4, **kw)
  with pytest.raises(ValueError, match=r"item 1 \(sample 0\): prompt 2 has \d+ tokens"):
    grm(memory_budget_bytes=1000).score_batch(items, k=2)
  prompts, _, _ = build_prompts(items, 2, grm().options, np.random.default_rng(0))
  length = sampler.left_pad([_Tokenizer().encode(p) for p in prompts], 0, multiple=64)[0].shape[1]
  whole = grm(memory_budget_bytes=1 << 40).score_batch(items, k=2)
  chunked = grm(memory_budget_bytes=_budget_for(model.cfg, 1, length, new_tokens=4)).score_batch(items, k=2)
  assert chunked.texts == whole.texts
  assert len({t for texts in whole.texts for t in texts}) > 1  # sampled (k > 1: temperature 0.5), not all equal


def test_the_estimate_bounds_the_compiled_prefill():
  for impl in ("dense", "blockwise"):
    cfg = get_config("tiny-gemma3", attention_impl=impl, max_seq_len=2048)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    params = decoding.decoding_params(model)
    prompts, rows, length, new = 2, 4, 1024, 8
    tokens = jnp.zeros((prompts, length), jnp.int32)
    prefill = jax.jit(functools.partial(sampler.prefill, cfg, cache_length=length + new))
    compiled = prefill.lower(params, tokens, tokens > 0, jnp.zeros(rows, jnp.int32)).compile().memory_analysis()
    needed = compiled.temp_size_in_bytes + compiled.output_size_in_bytes
    estimate = sampling_memory.sampling_bytes(cfg, prompts, rows, length, new).total
    assert needed <= estimate <= 4 * needed


def test_default_budget_is_a_share_of_the_free_memory(monkeypatch):
  free = sampling_memory.free_bytes()
  assert free is not None and free > 0  # Linux: MemAvailable
  monkeypatch.setattr(sampling_memory, "free_bytes", lambda: 10 << 30)
  assert sampling_memory.default_budget_bytes() == int(sampling_memory.DEFAULT_SHARE * (10 << 30))
