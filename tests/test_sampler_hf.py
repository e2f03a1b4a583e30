"""Greedy generation from the real Gemma 3 270M equals HF transformers' greedy `generate` token for token."""

import numpy as np
import pytest
import torch

from spct_jax import sampler
from spct_jax.weights import load_model, resolve_gemma3_270m
from hf_fixtures import load_hf_gguf

NEW_TOKENS = 24


@pytest.mark.slow
def test_greedy_equals_hf_generate_including_a_prompt_beyond_the_window():
  model, tokenizer = load_model("gemma3-270m")
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
