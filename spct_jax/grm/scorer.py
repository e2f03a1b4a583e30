"""The decode-and-vote kernel: k shuffled prompts per item -> one batched sampling call -> parse -> vote (Eq. 14).

Per item, `num_distinct_orders` response orders are drawn and cycled over the k samples; identical prompts are
prefilled once by the sampler, so k samples cost about `num_distinct_orders` prefills, not k. Parsing runs on the
host (it is text); unshuffling and voting run on device, vmapped over samples and items (`voting.vote_items`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spct_jax import sampler, sampling_memory, strategies
from spct_jax.grm import parsing, templates, voting

# (conversation, responses) or any object with .conversation and .responses (data.PreferenceItem).
Item = object
# meta_scorer(items, texts [B][k]) -> f32[B, k]: the meta RM hook; higher = more likely correct.
MetaScorer = Callable[[Sequence[Item], list[list[str]]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class GRMOptions:
  """How the GRM is prompted and sampled.

  temperature: None = greedy for k == 1 and 0.5 for k > 1 (the paper's settings for scaling).
  num_distinct_orders: response orders per item; samples sharing an order share one prefill. 1 = one shuffled order.
  shuffle: False keeps the data's order (no positional-bias control; useful for debugging only).
  k_meta: meta-RM guided voting keeps this many samples (None = k // 2) when a meta scorer is given.
  stop_after_scores: end a sample at the `}` that closes its `\\boxed{..}` (the judgement is complete there).
  memory_budget_bytes: the B x k rows of a call run in row chunks that fit this many bytes per device
    (`sampling_memory`; None = a share of the memory free at the call).
  """

  template: str = "default"
  chat_style: str = "raw"
  max_new_tokens: int = 512
  temperature: float | None = None
  top_k: int | None = None
  top_p: float | None = None
  num_distinct_orders: int = 2
  shuffle: bool = True
  demonstrations: tuple[str, ...] = ()
  output_prefix: str = ""
  k_meta: int | None = None
  seed: int = 0
  stop_after_scores: bool = True
  memory_budget_bytes: int | None = None

  def strategy(self, k: int):
    temperature = self.temperature if self.temperature is not None else (0.0 if k == 1 else 0.5)
    return strategies.strategy_for(temperature, self.top_k, self.top_p)


@dataclasses.dataclass(frozen=True)
class GRMResult:
  """Scores of B items, n = the largest number of responses (rows with fewer are padded; see response_mask).

  Attributes:
    voted: f32[B, n] Eq. 14 sums in the ORIGINAL response order.
    sample_scores: int32[B, k, n] each sample's scores mapped back to the original order (0 where invalid).
    valid: bool[B, k] the sample's scores parsed.
    perms: int32[B, k, n] perms[b, s, p] = original index of the response shown at position p.
    texts: [B][k] generated texts (output prefix included).
    errors: [B][k] parse errors (None where valid).
    response_mask: bool[B, n].
    kept: bool[B, k] samples that voted (all valid ones without a meta RM).
  """

  voted: np.ndarray
  sample_scores: np.ndarray
  valid: np.ndarray
  perms: np.ndarray
  texts: list[list[str]]
  errors: list[list[str | None]]
  response_mask: np.ndarray
  kept: np.ndarray

  @property
  def parse_failures(self) -> np.ndarray:
    return (~self.valid).sum(axis=1)


def _fields(item: Item):
  if isinstance(item, tuple):
    return item
  return item.conversation, item.responses


def build_prompts(items: Sequence[Item], k: int, options: GRMOptions, rng: np.random.Generator,
                  *, hint_best: Sequence[int | None] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
  """Prompts for B items x k samples (row b*k + s), their response orders and the response mask.

  hint_best: per item, the ORIGINAL index of the best response to hint (RFT hinted sampling), or None.
  """
  n_max = max(len(_fields(item)[1]) for item in items)
  prompts, perms = [], np.zeros((len(items), k, n_max), np.int32)
  mask = np.zeros((len(items), n_max), np.bool_)
  for b, item in enumerate(items):
    conversation, responses = _fields(item)
    n = len(responses)
    mask[b, :n] = True
    if options.shuffle:
      perms[b] = voting.response_orders(rng, n, k, options.num_distinct_orders, pad_to=n_max)
    else:
      perms[b] = np.arange(n_max)
    for s in range(k):
      order = perms[b, s, :n]
      hint = None
      if hint_best is not None and hint_best[b] is not None:
        hint = int(np.flatnonzero(order == hint_best[b])[0])  # hint names the position shown
      prompts.append(templates.build_prompt(
          conversation, [responses[i] for i in order], template=options.template, hint_best=hint,
          demonstrations=options.demonstrations, output_prefix=options.output_prefix,
          chat_style=options.chat_style))
  return prompts, perms, mask


def parse_texts(texts: Sequence[str], num_responses: Sequence[int], n_max: int,
                template: str) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
  """Scores in SHOWN order int32[R, n_max], valid bool[R], errors."""
  score_range = templates.get_template(template).score_range
  scores, valid, errors = parsing.parse_batch(list(texts), list(num_responses), score_range=score_range)
  padded = np.zeros((len(texts), n_max), np.int32)
  padded[:, :scores.shape[1]] = scores
  return padded, valid, errors


@jax.jit
def _vote(shown, perms, valid, meta_scores, k_meta):
  """Eq. 14 on device: per-sample scores in the original order, the kept samples, and their sums."""
  voted = voting.vote_items(shown, perms, valid, meta_scores, k_meta)
  original = jax.vmap(voting.unshuffle)(shown, perms)
  kept = jax.vmap(voting.meta_rm_keep, in_axes=(0, 0, None))(meta_scores, valid, k_meta)
  return voted, jnp.where(valid[..., None], original, 0), kept


def stop_after_scores(tokenizer) -> sampler.StopAfter:
  """Stop at the first `}` after `boxed`: the end of the score list in the paper's output format."""
  return sampler.StopAfter.from_pieces(tokenizer, "boxed", "}")


class GRM:
  """A pointwise generative reward model: `GRM(model, tokenizer).score(query, [r1, r2], k=8)`."""

  def __init__(self, model, tokenizer, *, mesh=None, **options):
    self.model = model
    self.tokenizer = tokenizer
    self.mesh = mesh
    self.options = GRMOptions(**options)
    templates.get_template(self.options.template)  # fail early on a bad name

  def score(self, query, responses: Sequence[str], k: int = 1, **kwargs) -> GRMResult:
    """Scores one item; `query` is a string (one user turn) or a conversation of (role, content) pairs."""
    conversation = (("user", query),) if isinstance(query, str) else tuple(query)
    return self.score_batch([(conversation, tuple(responses))], k=k, **kwargs)

  def score_batch(self, items: Sequence[Item], k: int = 1, *, meta_scorer: MetaScorer | None = None,
                  seed: int | None = None, hint_best: Sequence[int | None] | None = None) -> GRMResult:
    """The kernel: B items x k samples in one sampling call, parsed, unshuffled and voted on device."""
    if k < 1:
      raise ValueError(f"k must be >= 1, got {k}")
    if not items:
      raise ValueError("no items to score")
    opts = self.options
    seed = opts.seed if seed is None else seed
    rng = np.random.default_rng(seed)
    prompts, perms, response_mask = build_prompts(items, k, opts, rng, hint_best=hint_best)
    try:
      generated = self.generate_texts(prompts, opts.strategy(k), seed)
    except sampling_memory.RowsDoNotFit as e:
      raise ValueError(f"item {e.prompt_index // k} (sample {e.prompt_index % k}): {e}") from e
    texts = [opts.output_prefix + t for t in generated]
    num_responses = np.repeat(response_mask.sum(axis=1), k)
    shown, valid, errors = parse_texts(texts, num_responses, perms.shape[2], opts.template)
    batch, n_max = len(items), perms.shape[2]
    shown, valid = shown.reshape(batch, k, n_max), valid.reshape(batch, k)
    texts_2d = [texts[b * k:(b + 1) * k] for b in range(batch)]
    if meta_scorer is None:  # every valid sample votes: equal meta scores, keep all k
      meta_scores, k_meta = np.zeros((batch, k), np.float32), k
    else:
      meta_scores = np.asarray(meta_scorer(items, texts_2d), np.float32)
      k_meta = opts.k_meta if opts.k_meta is not None else max(1, k // 2)
    voted, original, kept = jax.device_get(_vote(shown, perms, valid, meta_scores, k_meta))
    return GRMResult(voted=voted, sample_scores=original, valid=valid, perms=perms, texts=texts_2d,
                     errors=[errors[b * k:(b + 1) * k] for b in range(batch)], response_mask=response_mask,
                     kept=kept)

  def generate_texts(self, prompts: Sequence[str], strategy, seed: int) -> list[str]:
    """One continuation per prompt, in one batched call (identical prompts share a prefill)."""
    encoded = [self.tokenizer.encode(p, add_bos=True) for p in prompts]
    out, *_ = sampler.sample_from_tokens(
        self.model, encoded, max_new_tokens=self.options.max_new_tokens, strategy=strategy, seed=seed,
        eos_ids=self.eos_ids, pad_id=self.tokenizer.pad_id, mesh=self.mesh, stop=self.stop_condition,
        memory_budget_bytes=self.options.memory_budget_bytes)
    out = jax.device_get(out)
    return [self._decode(row, n) for row, n in zip(out.tokens, out.lengths)]

  @functools.cached_property
  def stop_condition(self) -> sampler.StopAfter | None:
    return stop_after_scores(self.tokenizer) if self.options.stop_after_scores else None

  @property
  def eos_ids(self) -> tuple[int, ...]:
    eos = [self.tokenizer.eos_id]
    if self.options.chat_style == "gemma" and getattr(self.tokenizer, "end_of_turn_id", None) is not None:
      eos.append(self.tokenizer.end_of_turn_id)
    return tuple(eos)

  def _decode(self, row: np.ndarray, length: int) -> str:
    return self.tokenizer.decode([int(t) for t in row[:length] if t not in self.eos_ids])
