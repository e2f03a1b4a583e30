"""Sampler: greedy equals step-by-step argmax, prefill sharing, determinism, EOS, filters, stop rules, errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spct_jax import sampler, strategies
from spct_jax.model import Transformer, get_config

PROMPTS = [[2, 5, 6, 7, 8, 9, 10, 11, 12, 13], [2, 40, 41], [2, 99, 98, 97, 96]]


@pytest.fixture(scope="module")
def model():
  return Transformer(get_config("tiny-gemma3"), rngs=nnx.Rngs(0))


def _reference_greedy(model, prompt, steps):
  seq = list(prompt)
  for _ in range(steps):
    seq.append(int(jnp.argmax(model(jnp.asarray([seq], jnp.int32))[0, -1])))
  return seq[len(prompt):]


def test_greedy_equals_full_forward_argmax_with_mixed_prompt_lengths(model):
  out, _, _, row_source = sampler.sample_from_tokens(model, PROMPTS, max_new_tokens=10, eos_ids=(1,),
                                                     length_multiple=16)
  np.testing.assert_array_equal(row_source, [0, 1, 2])
  for i, prompt in enumerate(PROMPTS):
    assert list(np.asarray(out.tokens[i])) == _reference_greedy(model, prompt, 10)
  # Greedy raw-model log-probs are the log-softmax of the step's logits at the chosen token.
  seq = PROMPTS[1] + [int(t) for t in out.tokens[1, :3]]
  logits = model(jnp.asarray([seq[:-1]], jnp.int32))[0, -1]
  np.testing.assert_allclose(out.model_logps[1, 2], jax.nn.log_softmax(logits)[seq[-1]], atol=1e-5)


def test_k_samples_share_one_prefill_and_groups_are_contiguous(model):
  out, tokens, _, row_source = sampler.sample_from_tokens(
      model, [PROMPTS[0], PROMPTS[1], PROMPTS[0]], max_new_tokens=6, num_samples=4,
      strategy=strategies.Sampling(1.0), seed=3)
  assert tokens.shape[0] == 2, "identical prompts are prefilled once"
  np.testing.assert_array_equal(row_source, [0] * 4 + [1] * 4 + [0] * 4)
  assert out.tokens.shape == (12, 6)
  assert len({tuple(np.asarray(r)) for r in out.tokens[:4]}) > 1, "samples of one prompt should differ at T=1"


def test_sampling_is_deterministic_per_seed(model):
  run = lambda seed: np.asarray(sampler.sample_from_tokens(
      model, PROMPTS, max_new_tokens=8, num_samples=2, strategy=strategies.Sampling(1.0, top_k=50), seed=seed)[0].tokens)
  np.testing.assert_array_equal(run(7), run(7))
  assert not np.array_equal(run(7), run(8))


def test_eos_stops_a_row_and_pads_the_rest(model):
  greedy = _reference_greedy(model, PROMPTS[0], 8)
  eos = greedy[3]
  first = greedy.index(eos)
  out, *_ = sampler.sample_from_tokens(model, PROMPTS[:2], max_new_tokens=8, eos_ids=(eos,), pad_id=0)
  row = np.asarray(out.tokens[0])
  assert list(row[:first + 1]) == greedy[:first + 1]
  assert (row[first + 1:] == 0).all()
  assert int(out.lengths[0]) == first + 1 and bool(out.done[0])
  assert (np.asarray(out.logps[0, first + 1:]) == 0).all()
  other = _reference_greedy(model, PROMPTS[1], 8)
  if eos not in other:
    assert int(out.lengths[1]) == 8 and not bool(out.done[1])


def test_one_new_token_comes_from_the_prefill_alone(model):
  # The first token is drawn from the prefill's logits; the decode loop runs N - 1 forward steps.
  out, *_ = sampler.sample_from_tokens(model, PROMPTS, max_new_tokens=1, eos_ids=(1,))
  assert [int(t) for t in out.tokens[:, 0]] == [_reference_greedy(model, p, 1)[0] for p in PROMPTS]
  assert out.tokens.shape == (3, 1) and list(np.asarray(out.lengths)) == [1, 1, 1]


def test_unfiltered_sampling_log_probs_are_the_raw_model_log_probs(model):
  out, *_ = sampler.sample_from_tokens(model, PROMPTS, max_new_tokens=5, strategy=strategies.Sampling(1.0), seed=3)
  np.testing.assert_allclose(out.logps, out.model_logps, atol=1e-6)
  assert (np.asarray(out.model_logps) < 0).all()


def test_temperature_sampling_log_probs_are_log_softmax_of_the_logits_over_t(model):
  """At T = 0.5 `logps` is log_softmax(logits / T) and `model_logps` log_softmax(logits), at each drawn token of an
  independent full forward of prompt + the tokens drawn before it."""
  warm, *_ = sampler.sample_from_tokens(model, PROMPTS, max_new_tokens=5, strategy=strategies.Sampling(0.5), seed=3)
  for r, prompt in enumerate(PROMPTS):
    tokens = np.asarray(warm.tokens[r, :int(warm.lengths[r])])
    logits = model(jnp.asarray([list(prompt) + list(tokens[:-1])], jnp.int32))[0, len(prompt) - 1:]
    picked = lambda table: np.take_along_axis(np.asarray(table), tokens[:, None], -1)[:, 0]
    np.testing.assert_allclose(warm.logps[r, :len(tokens)], picked(jax.nn.log_softmax(logits / 0.5, axis=-1)),
                               atol=1e-5)
    np.testing.assert_allclose(warm.model_logps[r, :len(tokens)], picked(jax.nn.log_softmax(logits, axis=-1)),
                               atol=1e-5)
  assert not np.allclose(warm.logps, warm.model_logps)  # and the two differ: the temperature is applied


def test_left_pad_buckets_short_prompts_to_powers_of_two():
  lengths = lambda n, multiple=64: sampler.left_pad([[5] * n], 0, multiple=multiple)[0].shape[1]
  assert [lengths(n) for n in (1, 8, 9, 20, 33, 64, 65, 130)] == [8, 8, 16, 32, 64, 64, 128, 192]
  tokens, mask = sampler.left_pad([[7, 8, 9], [4]], 0, multiple=64)
  np.testing.assert_array_equal(tokens, [[0] * 5 + [7, 8, 9], [0] * 7 + [4]])
  assert mask.sum() == 4 and mask[:, -1].all()
  assert lengths(20, multiple=1) == 20 and lengths(50, multiple=16) == 64


def test_top_k_one_and_tiny_top_p_equal_greedy(model):
  greedy = sampler.sample_from_tokens(model, PROMPTS, max_new_tokens=6)[0].tokens
  for strategy in (strategies.Sampling(0.7, top_k=1), strategies.Sampling(1.0, top_p=1e-6)):
    np.testing.assert_array_equal(sampler.sample_from_tokens(model, PROMPTS, max_new_tokens=6,
                                                             strategy=strategy, seed=5)[0].tokens, greedy)


def test_bad_arguments_raise_clear_errors(model):
  with pytest.raises(ValueError, match="num_samples must be >= 1"):
    sampler.sample_from_tokens(model, PROMPTS, max_new_tokens=4, num_samples=0)
  with pytest.raises(ValueError, match="exceeds the model's context of 256"):
    sampler.sample_from_tokens(model, PROMPTS, max_new_tokens=250)
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    sampler.sample_from_tokens(model, [[2], []], max_new_tokens=4)
  with pytest.raises(ValueError, match="temperature must be > 0"):
    strategies.Sampling(0.0)
  with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
    sampler.sample_from_tokens(model, PROMPTS, max_new_tokens=0)


def test_stop_after_trigger_ends_rows_at_the_stop_token(model):
  greedy = _reference_greedy(model, PROMPTS[0], 10)

  def expected_length(trigger, stop):  # first stop token strictly after the first trigger token, else all 10
    armed = greedy.index(trigger)
    after = [j for j in range(armed + 1, 10) if greedy[j] == stop]
    return after[0] + 1 if after else 10

  trigger = greedy[0]
  stop = next(t for t in greedy if t != trigger)
  out, *_ = sampler.sample_from_tokens(model, PROMPTS[:1], max_new_tokens=10,
                                       stop=sampler.StopAfter.after_tokens((trigger,), (stop,), model.cfg.vocab_size))
  n = expected_length(trigger, stop)
  assert n < 10, "the test needs a stop inside the window"
  assert int(out.lengths[0]) == n and bool(out.done[0])
  assert list(np.asarray(out.tokens[0, :n])) == greedy[:n] and (np.asarray(out.tokens[0, n:]) == 0).all()
  # Swapped: stop tokens emitted before the trigger do not count.
  out, *_ = sampler.sample_from_tokens(model, PROMPTS[:1], max_new_tokens=10,
                                       stop=sampler.StopAfter.after_tokens((stop,), (trigger,), model.cfg.vocab_size))
  assert int(out.lengths[0]) == expected_length(stop, trigger)


@dataclasses.dataclass(frozen=True)
class Scripted:
  """A test strategy that emits `script[r][s]` as row r's token s, whatever the logits.

  The decode loop draws token s of row r with `fold_in(fold_in(key(seed), s), r)` (its documented key schedule; the
  row ids of a one-chunk request are 0..R-1): the step is found by matching each row's key, so the script runs
  through the real prefill / while_loop / stop machinery.
  """

  script: tuple[tuple[int, ...], ...]
  seed: int
  summary_temperature = 1.0

  def sample(self, key, logits):
    rows, steps = len(self.script), len(self.script[0])
    step_key = lambda s, r: jax.random.key_data(jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), s), r))
    candidates = jax.vmap(lambda s: jax.vmap(lambda r: step_key(s, r))(jnp.arange(rows)))(jnp.arange(steps))
    step = jnp.argmax(jnp.all(candidates == jax.random.key_data(key)[None], axis=-1), axis=0)  # [R]
    tokens = jnp.asarray(self.script, jnp.int32)[jnp.arange(rows), step]
    return tokens, jnp.zeros(logits.values.shape[:1], jnp.float32)


@pytest.fixture(scope="module")
def gemma_tokenizer():
  from spct_jax.weights import load_tokenizer
  return load_tokenizer("gemma3-270m")


@pytest.fixture(scope="module")
def gemma_vocab_model(gemma_tokenizer):
  return Transformer(get_config("tiny-gemma3", vocab_size=gemma_tokenizer.vocab_size), rngs=nnx.Rngs(0))


def _judgement(tok, text, steps):
  ids = tok.encode(text, add_bos=False)
  assert len(ids) <= steps
  return tuple(ids + [ids[-1]] * (steps - len(ids)))  # keeps writing past the end: only a stop rule ends it


def test_score_stop_rule_ends_at_the_scores_box_not_a_quoted_box(gemma_tokenizer, gemma_vocab_model):
  from spct_jax.grm import scorer
  tok = gemma_tokenizer
  quoting = (" The answer should be 42.\nAnalysis: Response 1 ends with \\boxed{42}, Response 2 with "
             "\\boxed{41}.\nScores: \\boxed{8, 3}")
  plain = " Correctness.\nAnalysis: Response 2 is wrong.\nScores:\\boxed{9,2}."  # ":\\" is one piece
  rows = [quoting + "\nNext: \\boxed{1, 1} and more text", plain + " Trailing \\boxed{5} text"]
  steps = 64
  script = Scripted(tuple(_judgement(tok, r, steps) for r in rows), seed=11)
  stop = scorer.stop_after_scores(tok, "Specific Criteria:")
  out, *_ = sampler.sample_from_tokens(gemma_vocab_model, [tok.encode("Judge.", add_bos=True)] * 2,
                                       max_new_tokens=steps, strategy=script, seed=11, stop=stop,
                                       eos_ids=(tok.eos_id,), pad_id=tok.pad_id)
  texts = [tok.decode([int(t) for t in row[:n]]) for row, n in zip(np.asarray(out.tokens), np.asarray(out.lengths))]
  assert texts[0] == quoting
  assert texts[1] == plain  # the piece "}." completes the box: the row stops on it
  assert np.asarray(out.done).all()
  assert (np.asarray(out.tokens[0, int(out.lengths[0]):]) == tok.pad_id).all()

  # The old rule (first "}" after any piece containing "boxed") cut the first judgement inside its Analysis.
  pieces = [tok.id_to_piece(i) for i in range(tok.vocab_size)]
  old = sampler.StopAfter.after_tokens([i for i, p in enumerate(pieces) if "boxed" in p],
                                       [i for i, p in enumerate(pieces) if "}" in p], tok.vocab_size)
  out, *_ = sampler.sample_from_tokens(gemma_vocab_model, [tok.encode("Judge.", add_bos=True)] * 2,
                                       max_new_tokens=steps, strategy=script, seed=11, stop=old,
                                       eos_ids=(tok.eos_id,), pad_id=tok.pad_id)
  assert tok.decode([int(t) for t in np.asarray(out.tokens[0, :int(out.lengths[0])])]).endswith("with \\boxed{42},")
