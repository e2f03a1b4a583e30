"""How many sampled rows fit a memory budget: the footprint of a sampling call, and its split into row chunks.

`sampler.sample_from_tokens` runs B x k rows in chunks of contiguous rows whose estimated footprint fits the budget
(`memory_budget_bytes`; default: a share of the memory free when the call starts), instead of one call for every
row. The estimate (`sampling_bytes`) counts what grows with the rows and the lengths: the KV cache (the prefill's
rows and the gathered sample rows exist together at its end), one layer's f32 activations of the prefill, its
attention working set (the [N, T, S] scores of "dense", one block of "blockwise") and the logits of the prefill
and the decode steps. The parameters are resident already and are not counted. A request whose single longest row
does not fit fails before any work (`RowsDoNotFit`), naming the prompt, its length and the budget.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import numpy as np

from spct_jax.model import attention, decoding
from spct_jax.model.config import ModelConfig

# Share of the free memory a call may plan for: XLA's temporaries, allocator slack and copies the estimate does not
# model (e.g. the decoding weights split on a model's first call) take the rest.
DEFAULT_SHARE = 0.5

log = logging.getLogger(__name__)


class RowsDoNotFit(ValueError):
  """Even one row of the request exceeds the memory budget; `prompt_index` is the prompt that sets its length."""

  def __init__(self, message: str, prompt_index: int):
    super().__init__(message)
    self.prompt_index = prompt_index


def free_bytes(device: jax.Device | None = None) -> int | None:
  """Memory free now: the device allocator's headroom on accelerators, MemAvailable (/proc/meminfo) on the CPU."""
  device = device or jax.devices()[0]
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
      return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return None
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def default_budget_bytes() -> int | None:
  """DEFAULT_SHARE of `free_bytes()`; None (no limit) where the free memory cannot be read (logged)."""
  free = free_bytes()
  if free is None:
    log.warning("free memory unknown on %s: sampling runs all rows at once (pass memory_budget_bytes to bound it)",
                jax.devices()[0].platform)
    return None
  return int(DEFAULT_SHARE * free)


@dataclasses.dataclass(frozen=True)
class Footprint:
  """Estimated bytes of one sampling call, by part."""

  cache: int
  activations: int
  attention: int
  logits: int

  @property
  def total(self) -> int:
    return self.cache + self.activations + self.attention + self.logits


def sampling_bytes(cfg: ModelConfig, prompt_rows: int, rows: int, prompt_length: int, new_tokens: int) -> Footprint:
  """Footprint of prefilling `prompt_rows` prompts of `prompt_length` (padded) tokens and decoding `rows` rows."""
  t, s = prompt_length, prompt_length + new_tokens
  n, k, h, d, f, v = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.embed_dim, cfg.mlp_dim, cfg.vocab_size
  cache_row = cfg.num_layers * 2 * k * s * h * np.dtype(decoding.cache_dtype(cfg)).itemsize
  # One layer of the prefill, f32: residual, norms and outputs (5 D), q/k/v before and after RoPE, the attended
  # values, gate/up and their product (3 F); plus the compute-dtype copies of the matmul inputs.
  compute = np.dtype(cfg.compute_jnp_dtype).itemsize
  per_token = 4 * (5 * d + 2 * (n + 2 * k) * h + n * h + 3 * f) + compute * (d + f + n * h)
  impl = attention.resolve_impl(cfg, t, s, self_layout=False)
  if impl == "dense":  # f32 scores and probabilities, their compute-dtype copy and the mask
    attn_row = (8 + np.dtype(attention.Spec.of(cfg).dtype).itemsize + 1) * n * t * s
  else:  # one block's scores (three f32 copies) and accumulators, plus the regrouped queries and the output
    bq, bk = min(cfg.attention_block_q, t), min(cfg.attention_block_k, s)
    attn_row = 4 * (3 * n * bq * bk + 2 * n * bq * h) + 4 * 2 * t * n * h
  logits = 4 * v * (2 * prompt_rows + 4 * rows) + 12 * rows * new_tokens  # + the sampled tokens and log-probs
  return Footprint(cache=(prompt_rows + rows) * cache_row, activations=prompt_rows * t * per_token,
                   attention=prompt_rows * attn_row, logits=logits)


def row_chunks(cfg: ModelConfig, row_source: np.ndarray, prompt_lengths: list[int], prompt_length: int,
               new_tokens: int, budget: int | None, *, shards: int = 1) -> list[slice]:
  """Contiguous equal chunks (the last may be shorter) of the rows whose footprints fit `budget` bytes.

  Args:
    cfg: the model config.
    row_source: int[R] the distinct prompt of each output row.
    prompt_lengths: the token count of each prompt as given (for the error message).
    prompt_length: the padded prompt length every row is prefilled at.
    new_tokens: max_new_tokens.
    budget: bytes per device; None = one chunk.
    shards: devices the rows are split over (the budget is per device).

  Raises:
    RowsDoNotFit: one row with its prompt exceeds the budget.
  """
  total = len(row_source)
  if budget is None:
    return [slice(0, total)]
  fits = lambda chunk: sampling_bytes(cfg, len(np.unique(row_source[chunk])), chunk.stop - chunk.start,
                                      prompt_length, new_tokens).total <= budget * shards
  for count in range(1, total + 1):
    size = -(-total // count)
    chunks = [slice(start, min(start + size, total)) for start in range(0, total, size)]
    if all(fits(c) for c in chunks):
      if len(chunks) > 1:
        log.info("sampling %d rows in %d chunks of <= %d rows (memory budget %.2f GiB)", total, len(chunks), size,
                 budget / 2**30)
      return chunks
    if size == 1:
      break
  longest = int(np.argmax(prompt_lengths))
  one = sampling_bytes(cfg, 1, 1, prompt_length, new_tokens)
  gib = lambda x: f"{x / 2**30:.2f} GiB"
  raise RowsDoNotFit(
      f"prompt {longest} has {prompt_lengths[longest]} tokens (padded to {prompt_length}, + {new_tokens} new "
      f"tokens): one sampled row needs about {gib(one.total)} (KV cache {gib(one.cache)}, prefill activations "
      f"{gib(one.activations)}, attention {gib(one.attention)}, logits {gib(one.logits)}), more than the memory "
      f"budget of {gib(budget)} per device (memory_budget_bytes={budget}); shorten the prompt, lower "
      f"max_new_tokens, or raise the budget", longest)
