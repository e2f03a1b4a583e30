"""Greedy generation from the real Gemma 3 270M equals HF transformers' greedy `generate` token for token."""

import numpy as np
import pytest
import torch

from spct_jax import sampler, strategies
from spct_jax.weights import load_model, resolve_gemma3_270m
from hf_fixtures import load_hf_gguf

NEW_TOKENS = 24


@pytest.mark.slow
def test_greedy_equals_hf_generate_including_a_prompt_beyond_the_window():
  model, tokenizer = load_model("gemma3-270m", compute_dtype="float32")  # token-for-token parity needs f32
  long_text = " ".join(f"Item {i}: the {['red', 'blue', 'green'][i % 3]} box holds {i * 7 % 13} stones." for i in
                       range(60)) + " The total number of stones is"
  prompts = ["The capital of France is", "def fibonacci(n):\n", long_text]
  encoded = [tokenizer.encode(p) for p in prompts]
  assert len(encoded[2]) > 600, "one prompt must be longer than the 512-token sliding window"
  ours = sampler.sample_from_tokens(model, encoded, max_new_tokens=NEW_TOKENS, eos_ids=(tokenizer.eos_id,))[0]

  hf = load_hf_gguf(resolve_gemma3_270m())
  for i, ids in enumerate(encoded):  # one prompt at a time: no padding on the HF side
    with torch.no_grad():
      out = hf.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                        eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    expected = out[0, len(ids):].tolist()
    got = np.asarray(ours.tokens[i, :len(expected)]).tolist()
    assert got == expected, f"prompt {i}: ours {tokenizer.decode(got)!r} vs HF {tokenizer.decode(expected)!r}"
    assert len(expected) >= 20 or expected[-1] == tokenizer.eos_id


@pytest.mark.slow
def test_bf16_sampled_log_probs_equal_the_training_paths_on_the_real_model():
  """The sampler (unrolled decoding, bf16 weights, f32 cache) and the GRPO train step's teacher-forced log-probs
  (scanned layers, shared prefix) are the same function: rollout log-probs mean what the update assumes."""
  import jax  # pylint: disable=g-import-not-at-top
  from spct_jax.train import grpo_trainer  # pylint: disable=g-import-not-at-top

  model, tokenizer = load_model("gemma3-270m", compute_dtype="bfloat16")
  text = " ".join(f"Step {i}: add {i * 3 % 11} to the total, then note it." for i in range(70))
  prompts = [tokenizer.encode(text), tokenizer.encode("Score the two answers to 2 + 2:")]
  assert len(prompts[0]) > 600
  out, prompt_tokens, prompt_mask, row_source = sampler.sample_from_tokens(
      model, prompts, max_new_tokens=32, num_samples=3, strategy=strategies.Sampling(1.0), seed=1,
      eos_ids=(tokenizer.eos_id,), pad_id=tokenizer.pad_id)
  out = jax.device_get(out)
  batch = grpo_trainer.assemble_batch(prompt_tokens, prompt_mask, row_source, out)
  teacher = np.asarray(jax.jit(grpo_trainer.completion_logps)(model, batch))
  real = batch["completion_mask"] > 0
  diff = np.abs(teacher - out.model_logps)[real]
  assert diff.mean() < 0.03 and diff.max() < 0.5, (diff.mean(), diff.max())  # bf16 matmuls on both sides
