"""NumPy reference of the SFT decoder batch (the contract of `spct_jax.train.sft`), to build test batches by hand."""

import numpy as np


def decoder_row(inputs, targets):
  """(input tokens, target tokens, loss weights) of one `inputs + targets` sequence (inputs start with BOS)."""
  seq = list(inputs) + list(targets)
  weights = [0] * (len(inputs) - 1) + [1] * len(targets)
  return seq[:-1], seq[1:], weights


def batch(rows_of_examples, length):
  """rows_of_examples: per row, the (inputs, targets) pairs packed into it, in order. Returns the int32 batch."""
  keys = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_positions",
          "decoder_segment_ids")
  out = {k: np.zeros((len(rows_of_examples), length), np.int32) for k in keys}
  for r, examples in enumerate(rows_of_examples):
    at = 0
    for segment, (inputs, targets) in enumerate(examples, start=1):
      tokens, next_tokens, weights = decoder_row(inputs, targets)
      span = slice(at, at + len(tokens))
      assert at + len(tokens) <= length, "examples do not fit the row"
      out["decoder_input_tokens"][r, span] = tokens
      out["decoder_target_tokens"][r, span] = next_tokens
      out["decoder_loss_weights"][r, span] = weights
      out["decoder_positions"][r, span] = np.arange(len(tokens))
      out["decoder_segment_ids"][r, span] = segment
      at += len(tokens)
  return out
