"""The SFT objective of RFT (spec sec. 3): next-token cross-entropy on target (judgement) tokens only, over the
decoder batches of `spct_jax.data.sft_task`'s feature converter, packed or not.

Batch, every array int32[B, L] (seqio's feature names; the sequence is `BOS prompt judgement`):
  decoder_input_tokens   the sequence without its last token
  decoder_target_tokens  the sequence without its first token: the next token at each position
  decoder_loss_weights   1 where the next token is a target token, else 0 (prompt and padding)
  decoder_positions      position within its own sequence (restarts in every packed segment)
  decoder_segment_ids    1, 2, ... per packed sequence, 0 = padding
and optionally, added on the host by `with_target_index` (RFT's `SFTBody` does, before the jitted step):
  decoder_target_index   int32[B, M] each row's positions of weight > 0, in order, padded with position 0
  decoder_target_weights f32[B, M] their weights (0 in the padding)
A packed row attends within its segments only (`Transformer.hidden_states(segment_ids=...)`), so packing changes
no token's log-prob: the loss is the token-mean over the same target tokens either way.

Why the index: the tied LM head (262,144 x D for Gemma 3) and its log-softmax are the largest part of the step,
and the loss reads them only at the judgement tokens (a few hundred of a packed 4 x 2560 batch's positions). With
the index the head runs on the gathered [B, M, D] hidden states only; the loss and its gradients are the same
(tests/test_sft.py). M is the longest row's target count rounded up to `multiple` (at most L), so few step shapes
compile.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from spct_jax import logprobs
from spct_jax import sharding as shd
from spct_jax.train import losses

BATCH_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_positions",
              "decoder_segment_ids")
TARGET_KEYS = ("decoder_target_index", "decoder_target_weights")


def target_width(weights: np.ndarray, multiple: int = 128) -> int:
  """M for `with_target_index`: the largest row's count of weight > 0, rounded up to a multiple of `multiple`, at
  least `multiple`, at most L."""
  if multiple < 1:
    raise ValueError(f"multiple must be positive, got {multiple}")
  counts = (np.asarray(weights) > 0).sum(axis=1)
  return min(weights.shape[1], multiple * max(1, -(-int(counts.max(initial=0)) // multiple)))


def with_target_index(batch: Mapping[str, np.ndarray], multiple: int = 128, *,
                      width: int | None = None) -> dict[str, np.ndarray]:
  """The batch plus `decoder_target_index` int32[B, M] and `decoder_target_weights` f32[B, M] (host side, numpy).

  Row r's index lists its positions with `decoder_loss_weights > 0` in order, then position 0 as padding (weight
  0). M = `width`, by default `target_width` (the largest row count rounded up to a multiple of `multiple`, at
  least `multiple`, at most L); processes of one step pass the agreed (largest) width, so their shapes match. A
  width that would drop a target is an error.
  """
  weights = np.asarray(batch["decoder_loss_weights"])
  if weights.ndim != 2:
    raise ValueError(f"decoder_loss_weights must be [B, L], got {weights.shape}")
  on = weights > 0
  counts = on.sum(axis=1)
  width = target_width(weights, multiple) if width is None else min(int(width), weights.shape[1])
  if width < int(counts.max(initial=0)):
    raise ValueError(f"width={width} would drop targets: a row has {int(counts.max())}")
  # A stable sort of "not a target" puts each row's targets first, in position order.
  index = np.argsort(~on, axis=1, kind="stable")[:, :width]
  real = np.arange(width)[None, :] < counts[:, None]
  index = np.where(real, index, 0).astype(np.int32)
  gathered = np.where(real, np.take_along_axis(weights, index, axis=1), 0).astype(np.float32)
  return {**batch, "decoder_target_index": index, "decoder_target_weights": gathered}


def _check_keys(batch, keys) -> None:
  missing = [k for k in keys if k not in batch]
  if missing:
    raise ValueError(f"SFT batch lacks {missing}; it has {sorted(batch)}")


def decoder_logps(model, batch: dict[str, jax.Array], *, mesh=None, rules=shd.DEFAULT_RULES,
                  chunk_size: int | None = None) -> jax.Array:
  """f32 log-prob of each next token (vocab-parallel with a mesh; full logits never built): [B, L] at every
  position, or [B, M] at the positions of `decoder_target_index` when the batch has it (the LM head runs there
  only)."""
  _check_keys(batch, BATCH_KEYS)
  segments = batch["decoder_segment_ids"]
  hidden = model.hidden_states(batch["decoder_input_tokens"], batch["decoder_positions"],
                               attention_mask=segments > 0, segment_ids=segments)
  targets = batch["decoder_target_tokens"]
  if "decoder_target_index" in batch:
    # Per row, over the sequence axis; rows sharded over "batch" (the layout `token_logprobs` reads) keep the
    # gather and its scatter-add backward local to each device.
    index = shd.shard_constraint(batch["decoder_target_index"].astype(jnp.int32), ("batch", None), mesh, rules)
    hidden = shd.shard_constraint(hidden, ("batch", "length", None), mesh, rules)
    hidden = jnp.take_along_axis(hidden, index[..., None], axis=1)
    targets = jnp.take_along_axis(targets, index, axis=1)
  cfg = model.cfg
  return logprobs.token_logprobs(hidden, model.embedding[...], targets, mesh=mesh, rules=rules,
                                 final_softcap=cfg.final_logit_softcap, compute_dtype=cfg.compute_jnp_dtype,
                                 chunk_size=chunk_size)


def sft_objective(*, mesh=None, rules=shd.DEFAULT_RULES, chunk_size: int | None = None):
  """loss_fn(model, aux, batch) for `train.step.make_train_step` (aux unused): `losses.token_cross_entropy`, over
  the gathered targets and `decoder_target_weights` when the batch has `decoder_target_index` (the same loss)."""

  def loss_fn(model, _, batch):
    gathered = "decoder_target_index" in batch
    if gathered:
      _check_keys(batch, TARGET_KEYS)
    logps = decoder_logps(model, batch, mesh=mesh, rules=rules, chunk_size=chunk_size)
    return losses.token_cross_entropy(logps, batch["decoder_target_weights" if gathered else "decoder_loss_weights"])

  return loss_fn
