"""The public API as a user calls it: `spct_jax.generate` and `GRM.score` on strings, with the real Gemma 3 tokenizer
and a tiny random model over its 262k vocabulary, against an independent greedy loop over `model(tokens)`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import spct_jax
from spct_jax import sampler, strategies
from spct_jax.grm import NO_SCORES_ERROR, build_prompt, parse_scores
from spct_jax.model import Transformer, get_config

PROMPTS = ["The capital of France is", "def f(x):"]
NEW = 10


@pytest.fixture(scope="module")
def tok():
  from spct_jax.weights import load_tokenizer  # pylint: disable=g-import-not-at-top
  return load_tokenizer("gemma3-270m")


def _tiny(tok, seed=0):
  return Transformer(get_config("tiny-gemma3", vocab_size=tok.vocab_size, max_seq_len=2048), rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def model(tok):
  return _tiny(tok)


def _forward(model, rows=16):
  """logits(tokens, at) -> f32[len(at), V] of one token list at positions `at` (default: the last), via
  `model.hidden_states` + `model.logits` on a right-padded power-of-two buffer (causal: padding after a position
  does not change its logits), so a few compiles serve every length."""
  graphdef, state = nnx.split(model)
  run = jax.jit(lambda state, tokens, at: nnx.merge(graphdef, state).logits(
      nnx.merge(graphdef, state).hidden_states(tokens)[:, at])[0])

  def logits(tokens, at=None):
    at = [len(tokens) - 1] if at is None else list(at)
    buffer = np.zeros((1, max(32, 1 << (len(tokens) - 1).bit_length())), np.int32)
    buffer[0, :len(tokens)] = tokens
    return np.asarray(run(state, jnp.asarray(buffer), jnp.asarray(at + [0] * (rows - len(at)), jnp.int32)))[:len(at)]

  return logits


@pytest.fixture(scope="module")
def forward(model):
  return _forward(model)


def _reference_greedy(forward, prompt, steps, eos_ids=()):
  seq = list(prompt)
  for _ in range(steps):
    seq.append(int(np.argmax(forward(seq)[-1])))
    if seq[-1] in eos_ids:
      break
  return seq[len(prompt):]


def test_generate_greedy_equals_an_independent_loop_and_texts_drop_the_eos(model, tok, forward):
  reference = [_reference_greedy(forward, tok.encode(p), NEW) for p in PROMPTS]
  # An EOS the first prompt reaches mid-way: its first token that differs from the first generated one.
  eos = next(t for t in reference[0][1:] if t != reference[0][0])
  assert tok.decode([eos]), "the EOS must have visible text for the stripping to be checked"
  out = spct_jax.generate(model, tok, PROMPTS, max_new_tokens=NEW, eos_ids=(eos,))
  for i, prompt in enumerate(PROMPTS):
    expected = _reference_greedy(forward, tok.encode(prompt), NEW, eos_ids=(eos,))
    n = len(expected)
    assert list(out.tokens[i, :n]) == expected and (out.tokens[i, n:] == tok.pad_id).all()
    assert int(out.lengths[i]) == n and bool(out.done[i]) == (expected[-1] == eos)
    assert out.texts[i] == tok.decode([t for t in expected if t != eos])
    # The prompt row the sample continues is the prompt, tokenised with BOS and left-padded.
    row = out.prompt_tokens[out.row_source[i]][out.prompt_mask[out.row_source[i]]]
    assert list(row) == [tok.bos_id, *tok.encode(prompt, add_bos=False)]
  assert bool(out.done[0]) and out.lengths[0] < NEW, "the first prompt must stop at the EOS"
  assert out.texts[0] != tok.decode(reference[0][:int(out.lengths[0])]), "the EOS text was not stripped"
  np.testing.assert_array_equal(out.logps, 0.0)  # greedy: a point mass


def test_generate_default_eos_is_the_tokenizers(model, tok, forward):
  out = spct_jax.generate(model, tok, PROMPTS[:1], max_new_tokens=4)
  assert list(out.tokens[0]) == _reference_greedy(forward, tok.encode(PROMPTS[0]), 4, (tok.eos_id,))
  with pytest.raises(TypeError, match="list of strings"):
    spct_jax.generate(model, tok, PROMPTS[0], max_new_tokens=4)


def test_generate_sampling_seeds_reproduce_and_log_probs_are_the_models(model, tok, forward):
  """Temperature 0.7 with top-k 50: `logps` is log_softmax of the top-50 logits / T, `model_logps` log_softmax of
  the raw logits, both at each drawn token of an independent forward of prompt + the tokens drawn before it."""
  run = lambda seed: spct_jax.generate(model, tok, PROMPTS, max_new_tokens=6, num_samples=3, temperature=0.7,
                                       top_k=50, seed=seed)
  a, b, c = run(3), run(3), run(4)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert a.texts == b.texts and not np.array_equal(a.tokens, c.tokens)
  np.testing.assert_array_equal(a.row_source, [0, 0, 0, 1, 1, 1])
  for r in range(6):
    prompt = tok.encode(PROMPTS[a.row_source[r]])
    n = int(a.lengths[r])
    tokens = [int(t) for t in a.tokens[r, :n]]
    assert a.texts[r] == tok.decode([t for t in tokens if t != tok.eos_id])
    logits = forward(prompt + tokens, at=range(len(prompt) - 1, len(prompt) - 1 + n))
    raw = jax.nn.log_softmax(logits, axis=-1)
    scaled = logits / 0.7
    kth = np.sort(scaled, axis=-1)[:, -50][:, None]
    filtered = jax.nn.log_softmax(np.where(scaled >= kth, scaled, -np.inf), axis=-1)
    picked = lambda table: np.take_along_axis(np.asarray(table), np.asarray(tokens)[:, None], -1)[:, 0]
    np.testing.assert_allclose(a.model_logps[r, :n], picked(raw), atol=5e-5)
    np.testing.assert_allclose(a.logps[r, :n], picked(filtered), atol=5e-5)
    assert np.isfinite(picked(filtered)).all(), "a drawn token outside the top 50"


def test_grm_score_on_a_string_query_parses_unshuffles_and_votes(model, tok):
  """The prefix opens the answer with `\\boxed{7, 3}`, so each sample's scores are known in SHOWN order; the
  result must give them back in the original order and sum them over samples (Eq. 14)."""
  prefix = "Scores: \\boxed{7, 3}\n"
  grm = spct_jax.GRM(model, tok, max_new_tokens=6, output_prefix=prefix, num_distinct_orders=2,
                     stop_after_scores=False)  # the prefix already holds the scores: nothing left to stop at
  responses = ["Paris.", "Lyon, I think."]
  result = grm.score("What is the capital of France?", responses, k=4)
  assert len({tuple(p) for p in result.perms[0]}) == 2, "both orders were shown"
  shown = np.array([7, 3])
  for s in range(4):
    perm = result.perms[0, s]
    text = result.texts[0][s]
    assert text.startswith(prefix) and parse_scores(text, 2).scores == (7, 3)
    original = np.zeros(2, np.int32)
    original[perm] = shown
    np.testing.assert_array_equal(result.sample_scores[0, s], original)
  np.testing.assert_array_equal(result.voted[0], result.sample_scores[0].sum(axis=0))
  assert set(map(tuple, result.sample_scores[0])) == {(7, 3), (3, 7)}
  assert result.valid.all() and result.kept.all()


def test_grm_score_greedy_text_is_the_decoded_greedy_continuation_of_its_prompt(model, tok, forward):
  grm = spct_jax.GRM(model, tok, max_new_tokens=6, stop_after_scores=False)
  query, responses = "Which answer is kinder?", ["Thanks!", "No."]
  result = grm.score(query, responses, k=1)
  order = result.perms[0, 0]
  prompt = build_prompt((("user", query),), [responses[i] for i in order])
  expected = _reference_greedy(forward, tok.encode(prompt), 6, (tok.eos_id,))
  text = result.texts[0][0]
  assert text == tok.decode([t for t in expected if t != tok.eos_id])
  parsed = parse_scores(text, 2)
  assert not result.valid[0, 0] and result.errors[0][0] == parsed.error == NO_SCORES_ERROR
  np.testing.assert_array_equal(result.voted[0], [0, 0])


def test_gemma_chat_style_ends_a_sample_at_end_of_turn(tok, model):
  """With chat_style="gemma" a sample ends at `<end_of_turn>` (id 106); with the same prompt and seed but only
  `<eos>` as the end, the same tokens run past it. The tiny model's row 106 is scaled so that it is often drawn."""
  assert tok.end_of_turn_id == 106
  model = nnx.clone(model)
  direction = np.random.default_rng(0).normal(size=model.cfg.embed_dim)
  model.embedding[...] = model.embedding[...].at[106].set(jnp.asarray(5 * direction / np.linalg.norm(direction)))
  grm = spct_jax.GRM(model, tok, chat_style="gemma", max_new_tokens=12, temperature=1.0, num_distinct_orders=1,
                     stop_after_scores=False)
  assert grm.eos_ids == (tok.eos_id, 106)
  query, responses = "Which is better?", ["ab", "b c"]
  result = grm.score(query, responses, k=8)
  prompt = build_prompt((("user", query),), [responses[i] for i in result.perms[0, 0]], chat_style="gemma")
  assert prompt.endswith("<start_of_turn>model\n")
  raw, *_ = sampler.sample_from_tokens(model, [tok.encode(prompt)] * 8, max_new_tokens=12,
                                       strategy=strategies.Sampling(1.0), seed=0, eos_ids=(tok.eos_id,),
                                       pad_id=tok.pad_id)
  stopped_mid_way = 0
  for s, row in enumerate(np.asarray(raw.tokens).tolist()):
    end = row.index(106) if 106 in row else len(row)
    stopped_mid_way += 0 < end < len(row) - 1
    assert result.texts[0][s] == tok.decode(row[:end])
    assert "<end_of_turn>" not in result.texts[0][s]
  assert stopped_mid_way >= 2, "the test needs samples that reach <end_of_turn> after some text"
