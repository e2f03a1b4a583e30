"""How a decode step picks each row's next token from its logits: greedy, or temperature / top-k / top-p sampling.

The decode step hands a strategy `Logits`: the raw logits f32[R, V] and, per block of `BLOCK` vocabulary entries,
their max and sum of exponentials (at temperature 1 and at the strategy's temperature). On an AMX CPU the LM-head
kernel computes these in the same pass that writes the logits (`spct_jax.kernels.cpu_matvec.amx_head`); elsewhere
`summarize` computes them in two passes. With them, no step re-reads the [R, V] logits: the log-normalizer is a sum
over blocks, greedy looks for its maximum in one block, and sampling inverts the CDF over block masses and then
inside one block. With Gemma's 262k vocabulary and 32 rows, the four passes over the logits that the previous
formulation made (max, sum of exp, exp for probabilities, block sums) took ~28 ms per step on a 2-core CPU.

A strategy is a small frozen dataclass with `summary_temperature` (the temperature its `Logits` are summarized at)
and `sample(key, logits) -> (tokens, log-probs under the sampling distribution)`; key: one typed key per row
(key[R], as the sampler passes them: each row's draw depends only on its own key) or a single key for all rows.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

BLOCK = 512  # vocabulary entries per summary block: the first level of the CDF search; the CPU head kernel's too


@flax.struct.dataclass
class Logits:
  """Next-token logits with per-block summaries. NB = ceil(V / block); the last block may be partial.

  Attributes:
    values: f32[R, V] raw logits (finite for a model's own; -inf marks filtered-out entries).
    block_max: f32[R, NB] max of each block.
    block_sum: f32[R, NB] sum of exp(values - block_max) over the block (0 for an all -inf block).
    tempered_sum: f32[R, NB] sum of exp(values / T - block_max / T) at T = `temperature` (block_sum at T = 1).
    temperature: T, static. block: entries per block, static.
  """

  values: jax.Array
  block_max: jax.Array
  block_sum: jax.Array
  tempered_sum: jax.Array
  temperature: float = flax.struct.field(pytree_node=False, default=1.0)
  block: int = flax.struct.field(pytree_node=False, default=BLOCK)

  def log_normalizer(self, tempered: bool = False) -> jax.Array:
    """logsumexp of values (or of values / T): f32[R]."""
    top, masses = self.masses(tempered)
    return top + jnp.log(jnp.sum(masses, axis=-1))

  def masses(self, tempered: bool = False) -> tuple[jax.Array, jax.Array]:
    """(max, f32[R, NB] block masses relative to exp(max)) of values, or of values / T."""
    t = self.temperature if tempered else 1.0
    block_max = self.block_max if t == 1.0 else self.block_max / t
    sums = self.tempered_sum if tempered else self.block_sum
    top = jnp.max(block_max, axis=-1)
    return top, sums * jnp.exp(block_max - top[:, None])

  def block_values(self, b: jax.Array) -> jax.Array:
    """values of block b[r] of each row r: f32[R, block], -inf past the vocabulary."""
    index = b[:, None] * self.block + jnp.arange(self.block)
    vocab = self.values.shape[-1]
    got = jnp.take_along_axis(self.values, jnp.minimum(index, vocab - 1), axis=-1)
    return jnp.where(index < vocab, got, -jnp.inf)

  def at(self, tokens: jax.Array) -> jax.Array:
    """values[r, tokens[r]]: f32[R]."""
    return jnp.take_along_axis(self.values, tokens[:, None], axis=-1)[:, 0]


def summarize(values: jax.Array, temperature: float = 1.0, block: int = BLOCK) -> Logits:
  """`Logits` of f32[R, V] values in JAX (the CPU head kernel computes the same summaries while writing them)."""
  rows, vocab = values.shape
  padded = -(-vocab // block) * block
  blocks = jnp.pad(values, ((0, 0), (0, padded - vocab)), constant_values=-jnp.inf).reshape(rows, -1, block)
  block_max = jnp.max(blocks, axis=-1)
  safe_max = jnp.where(jnp.isneginf(block_max), 0.0, block_max)[..., None]  # an all -inf block has mass 0

  def sums(t):
    scaled = (blocks, safe_max) if t == 1.0 else (blocks / t, safe_max / t)
    return jnp.sum(jnp.exp(scaled[0] - scaled[1]), axis=-1)

  block_sum = sums(1.0)
  return Logits(values=values, block_max=block_max, block_sum=block_sum,
                tempered_sum=block_sum if temperature == 1.0 else sums(temperature), temperature=temperature,
                block=block)


@dataclasses.dataclass(frozen=True)
class Greedy:
  """Argmax decoding (the first maximum). Its sampling-distribution log-prob is 0 (a point mass)."""

  summary_temperature = 1.0

  def sample(self, key: jax.Array, logits: Logits) -> tuple[jax.Array, jax.Array]:
    del key
    b = first_argmax(logits.block_max)  # the first block holding the maximum, then its first entry equal to it
    best = jnp.take_along_axis(logits.block_max, b[:, None], axis=-1)
    token = b * logits.block + first_argmax(logits.block_values(b), best)
    return token.astype(jnp.int32), jnp.zeros(token.shape, jnp.float32)


def first_argmax(values: jax.Array, best: jax.Array | None = None) -> jax.Array:
  """`jnp.argmax` over the last axis (the first maximum; `best` [..., 1] if known) as two plain reductions: int32[...].

  XLA:CPU runs argmax as one (value, index) reduction, ~1 ms for two rows of Gemma's 262k logits; a max and then
  the smallest index holding it take a fraction of that.
  """
  if best is None:
    best = jnp.max(values, axis=-1, keepdims=True)
  index = jnp.arange(values.shape[-1], dtype=jnp.int32)
  return jnp.min(jnp.where(values == best, index, values.shape[-1] - 1), axis=-1)


@dataclasses.dataclass(frozen=True)
class Sampling:
  """Temperature sampling with optional top-k and top-p (nucleus) filtering.

  Unfiltered sampling reads only the block summaries and one block per row. top_k and top_p filter the whole
  [R, V] logits every step, and top_p sorts them (V log V per row); prefer top_k (or both: top_k first bounds the
  sort) on CPU with Gemma's 262k vocabulary.
  """

  temperature: float = 1.0
  top_k: int | None = None
  top_p: float | None = None

  def __post_init__(self):
    if self.temperature <= 0:
      raise ValueError(f"temperature must be > 0 for sampling (use Greedy for 0), got {self.temperature}")
    if self.top_k is not None and self.top_k < 1:
      raise ValueError(f"top_k must be >= 1, got {self.top_k}")
    if self.top_p is not None and not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

  @property
  def filters(self) -> bool:
    return self.top_k is not None or self.top_p is not None

  @property
  def summary_temperature(self) -> float:
    return 1.0 if self.filters else self.temperature  # filtering summarizes its own filtered logits

  def filter_logits(self, logits: jax.Array) -> jax.Array:
    if self.temperature != 1.0:
      logits = logits / self.temperature
    if self.top_k is not None and self.top_k < logits.shape[-1]:
      kth = jax.lax.top_k(logits, self.top_k)[0][..., -1:]
      logits = jnp.where(logits < kth, -jnp.inf, logits)
    if self.top_p is not None and self.top_p < 1:
      sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
      probs = jax.nn.softmax(sorted_logits, axis=-1)
      mass_before = jnp.cumsum(probs, axis=-1) - probs
      # Smallest logit that still belongs to the nucleus (the top token always does).
      cutoff = jnp.min(jnp.where(mass_before < self.top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
      logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits

  def sample(self, key: jax.Array, logits: Logits) -> tuple[jax.Array, jax.Array]:
    """Draws from `logits` (raw, summarized at `summary_temperature`); returns the tokens and their log-probs."""
    if self.filters:
      logits = summarize(self.filter_logits(logits.values), block=logits.block)
    elif logits.temperature != self.temperature:
      logits = summarize(logits.values, self.temperature, logits.block)
    tokens = sample_categorical(key, logits)
    chosen = logits.at(tokens)
    if logits.temperature != 1.0:
      chosen = chosen / logits.temperature
    return tokens, chosen - logits.log_normalizer(tempered=True)


def sample_categorical(key: jax.Array, logits: Logits) -> jax.Array:
  """Exact draw from softmax(values / T) of each row by inverting its CDF: int32[R].

  `key`: one typed key per row (key[R]: each row's draw independent of the others, as the sampler passes them) or
  a single key for all rows.

  One uniform per row (`jax.random.categorical` draws V Gumbel variates per row: ~135 ms per decode step for 32
  rows of Gemma's 262k vocabulary on a CPU). The CDF is searched in two levels, the block masses of the summary
  and then the one block the uniform falls in, so no length-V pass runs. Tokens of probability 0 are never drawn.
  Given the uniforms, the token is the plain inverse CDF's (the first entry whose cumulative probability exceeds
  u), up to f32 rounding at a CDF boundary.
  """
  t = logits.temperature
  top, masses = logits.masses(tempered=True)
  block_cdf = jnp.cumsum(masses, axis=-1)  # [R, NB]
  total = block_cdf[:, -1]
  rows = masses.shape[0]
  per_row = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == (rows,)
  uniform = jax.vmap(jax.random.uniform)(key) if per_row else jax.random.uniform(key, (rows,))
  # u < total strictly, so some block's CDF exceeds it; the first such block has positive mass.
  u = jnp.minimum(uniform * total, total * (1 - 1e-6))
  b = jnp.argmax(block_cdf > u[:, None], axis=-1)
  before = jnp.where(b > 0, jnp.take_along_axis(block_cdf, jnp.maximum(b - 1, 0)[:, None], axis=-1)[:, 0], 0.0)
  values, block_max = logits.block_values(b), jnp.take_along_axis(logits.block_max, b[:, None], axis=-1)
  if t != 1.0:
    values, block_max = values / t, block_max / t
  # In the units of the block masses: exp relative to the block's max, times the block's scale.
  within_cdf = jnp.cumsum(jnp.exp(values - block_max), axis=-1) * jnp.exp(block_max - top[:, None])  # [R, block]
  # The block's own cumsum may round a hair below its mass: keep u inside it so a positive-mass token is hit.
  u_within = jnp.minimum(u - before, within_cdf[:, -1] * (1 - 1e-6))
  return (b * logits.block + jnp.argmax(within_cdf > u_within[:, None], axis=-1)).astype(jnp.int32)


def strategy_for(temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None):
  return Greedy() if temperature == 0.0 else Sampling(temperature, top_k, top_p)
