"""The SFT objective of RFT (spec sec. 3): next-token cross-entropy on target (judgement) tokens only, over the
decoder batches of `spct_jax.data.sft_task`'s feature converter, packed or not.

Batch, every array int32[B, L] (seqio's feature names; the sequence is `BOS prompt judgement`):
  decoder_input_tokens   the sequence without its last token
  decoder_target_tokens  the sequence without its first token: the next token at each position
  decoder_loss_weights   1 where the next token is a target token, else 0 (prompt and padding)
  decoder_positions      position within its own sequence (restarts in every packed segment)
  decoder_segment_ids    1, 2, ... per packed sequence, 0 = padding
A packed row attends within its segments only (`Transformer.hidden_states(segment_ids=...)`), so packing changes
no token's log-prob: the loss is the token-mean over the same target tokens either way.
"""

from __future__ import annotations

import jax

from spct_jax import logprobs
from spct_jax import sharding as shd
from spct_jax.train import losses

BATCH_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_positions",
              "decoder_segment_ids")


def decoder_logps(model, batch: dict[str, jax.Array], *, mesh=None, rules=shd.DEFAULT_RULES,
                  chunk_size: int | None = None) -> jax.Array:
  """f32[B, L] log-prob of each next token (vocab-parallel with a mesh; full logits never built)."""
  missing = [k for k in BATCH_KEYS if k not in batch]
  if missing:
    raise ValueError(f"SFT batch lacks {missing}; it has {sorted(batch)}")
  segments = batch["decoder_segment_ids"]
  hidden = model.hidden_states(batch["decoder_input_tokens"], batch["decoder_positions"],
                               attention_mask=segments > 0, segment_ids=segments)
  cfg = model.cfg
  return logprobs.token_logprobs(hidden, model.embedding[...], batch["decoder_target_tokens"], mesh=mesh,
                                 rules=rules, final_softcap=cfg.final_logit_softcap,
                                 compute_dtype=cfg.compute_jnp_dtype, chunk_size=chunk_size)


def sft_objective(*, mesh=None, rules=shd.DEFAULT_RULES, chunk_size: int | None = None):
  """loss_fn(model, aux, batch) for `train.step.make_train_step` (aux unused): `losses.token_cross_entropy`."""

  def loss_fn(model, _, batch):
    logps = decoder_logps(model, batch, mesh=mesh, rules=rules, chunk_size=chunk_size)
    return losses.token_cross_entropy(logps, batch["decoder_loss_weights"])

  return loss_fn
