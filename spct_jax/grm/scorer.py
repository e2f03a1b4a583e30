"""The decode-and-vote kernel: k shuffled prompts per item -> one batched sampling call -> parse -> vote (Eq. 14).

Per item, every sample shows the responses in its own random order (spec sec. 5: shuffle before each sample);
samples that happen to draw the same order have identical prompts, which the sampler prefills once (n = 2 has only
two orders, so k samples of a pair cost two prefills). `num_distinct_orders` caps the orders per item instead (they
are then cycled over the k samples). Each item is judged under its own template (`GRMOptions.template_for`: n = 1
items under the single-response 0/1 template by default), with that template's demonstrations and score range, so
batches may mix n = 1 and n >= 2 items. Parsing runs on the host (it is text); unshuffling and voting run on
device, vmapped over samples and items (`voting.vote_items`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spct_jax import multihost, sampler, sampling_memory, strategies
from spct_jax.grm import parsing, templates, voting

# (conversation, responses) or any object with .conversation and .responses (data.PreferenceItem); an object with
# .ratings also gives the n = 1 label that `GRMOptions.template_for` checks.
Item = object
# meta_scorer(items, texts [B][k], perms int32[B, k, n]) -> f32[B, k]: the meta RM hook; higher = more likely
# correct. perms[b, s] is the order sample s showed item b's responses in, which its text critiques by position;
# `meta_rm_inputs` renders (query, responses as shown, judgement) for a scalar meta RM.
MetaScorer = Callable[[Sequence[Item], list[list[str]], np.ndarray], np.ndarray]
# The stop rule of `stop_after_scores`: "Scores:", then "\boxed{", then the "}" that closes it.
SCORE_STOP_TEXTS = ("Scores:", "\\boxed{", "}")


@dataclasses.dataclass(frozen=True)
class GRMOptions:
  """How the GRM is prompted and sampled.

  template: the template of items with n >= 2 responses (and of every item when single_template is None).
  single_template: the template of n = 1 items (default `single_binary`: 0/1 scores, a 0/1 label); None: `template`.
  temperature: None = greedy for k == 1 and 0.5 for k > 1 (the paper's settings for scaling).
  num_distinct_orders: None = an independent random response order per sample (the paper's rule; repeated orders
    share a prefill); m = at most m orders per item, cycled over the k samples (fewer prefills, less shuffling).
  shuffle: False keeps the data's order (no positional-bias control; useful for debugging only).
  demonstrations: worked examples shown before items judged under `template` (rendered with it).
  single_demonstrations: worked examples shown before items judged under `single_template` (n = 1 renders).
  k_meta: meta-RM guided voting keeps this many samples (None = k // 2) when a meta scorer is given.
  stop_after_scores: end a sample at the `}` closing the `\\boxed{..}` after its `Scores:` (the judgement is
    complete there); boxes quoted earlier, in the Analysis, do not end it (`sampler.StopAfter.after_texts`).
  memory_budget_bytes: the B x k rows of a call run in row chunks that fit this many bytes per device
    (`sampling_memory`; None = a share of the memory free at the call).
  """

  template: str = "default"
  single_template: str | None = "single_binary"
  chat_style: str = "raw"
  max_new_tokens: int = 512
  temperature: float | None = None
  top_k: int | None = None
  top_p: float | None = None
  num_distinct_orders: int | None = None
  shuffle: bool = True
  demonstrations: tuple[str, ...] = ()
  single_demonstrations: tuple[str, ...] = ()
  output_prefix: str = ""
  k_meta: int | None = None
  seed: int = 0
  stop_after_scores: bool = True
  memory_budget_bytes: int | None = None

  def strategy(self, k: int):
    temperature = self.temperature if self.temperature is not None else (0.0 if k == 1 else 0.5)
    return strategies.strategy_for(temperature, self.top_k, self.top_p)

  def template_for(self, item: Item) -> str:
    """The template that judges `item` (`templates.template_for` on its n and, for n = 1, its label)."""
    responses = _fields(item)[1]
    ratings = getattr(item, "ratings", None)
    label = ratings[0] if ratings is not None and len(responses) == 1 else None
    return templates.template_for(len(responses), label, default=self.template, single=self.single_template)

  def demonstrations_for(self, template: str) -> tuple[str, ...]:
    """The worked examples shown before an item judged under `template`."""
    if self.single_template is not None and template == self.single_template != self.template:
      return self.single_demonstrations
    return self.demonstrations


@dataclasses.dataclass(frozen=True)
class GRMResult:
  """Scores of B items, n = the largest number of responses (rows with fewer are padded; see response_mask).

  Attributes:
    voted: int32[B, n] Eq. 14 sums in the ORIGINAL response order.
    sample_scores: int32[B, k, n] each sample's scores mapped back to the original order (0 where invalid).
    valid: bool[B, k] the sample's scores parsed.
    perms: int32[B, k, n] perms[b, s, p] = original index of the response shown at position p.
    texts: [B][k] generated texts (output prefix included).
    errors: [B][k] parse errors (None where valid).
    response_mask: bool[B, n].
    kept: bool[B, k] samples that voted (all valid ones without a meta RM).
    templates: [B] the template each item was judged under (its prompt, demonstrations and score range).
  """

  voted: np.ndarray
  sample_scores: np.ndarray
  valid: np.ndarray
  perms: np.ndarray
  texts: list[list[str]]
  errors: list[list[str | None]]
  response_mask: np.ndarray
  kept: np.ndarray
  templates: list[str]

  @property
  def parse_failures(self) -> np.ndarray:
    return (~self.valid).sum(axis=1)

  @property
  def num_votes(self) -> np.ndarray:
    """int32[B] samples that voted (the divisor of `voting.voted_label` for n = 1 items)."""
    return self.kept.sum(axis=1).astype(np.int32)


def _fields(item: Item):
  if isinstance(item, tuple):
    return item
  return item.conversation, item.responses


def item_prompt(item: Item, options: GRMOptions, order: Sequence[int] | None = None, hint_best: int | None = None,
                *, template: str | None = None) -> str:
  """The prompt of one sample of `item`: its template and demonstrations, responses in `order`.

  order: original response indices in the order shown (None: the data's order).
  hint_best: ORIGINAL index of the best response to hint (RFT hinted sampling); the hint names its shown position.
  template: the item's template when the caller has it already (`options.template_for(item)`).
  """
  conversation, responses = _fields(item)
  order = list(range(len(responses))) if order is None else [int(i) for i in order]
  template = options.template_for(item) if template is None else template
  hint = None if hint_best is None else order.index(int(hint_best))
  return templates.build_prompt(conversation, [responses[i] for i in order], template=template, hint_best=hint,
                                demonstrations=options.demonstrations_for(template),
                                output_prefix=options.output_prefix, chat_style=options.chat_style)


def item_templates(items: Sequence[Item], options: GRMOptions) -> list[str]:
  """[B] the template each item is judged under."""
  return [options.template_for(item) for item in items]


def build_prompts(items: Sequence[Item], k: int, options: GRMOptions, rng: np.random.Generator,
                  *, hint_best: Sequence[int | None] | None = None,
                  orders: Sequence[Sequence[Sequence[int]]] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
  """Prompts for B items x k samples (row b*k + s), their response orders and the response mask.

  Each item gets its own template (`item_templates`). hint_best: per item, the ORIGINAL index of the best response
  to hint (RFT hinted sampling), or None (n = 1 items cannot be hinted). orders: orders[b][s] the order sample s
  shows item b's responses in (original indices, length n), instead of drawn ones (rng and shuffle unused).
  """
  n_max = max(len(_fields(item)[1]) for item in items)
  prompts, perms = [], np.zeros((len(items), k, n_max), np.int32)
  mask = np.zeros((len(items), n_max), np.bool_)
  for b, (item, template) in enumerate(zip(items, item_templates(items, options))):
    n = len(_fields(item)[1])
    mask[b, :n] = True
    if orders is not None:
      if len(orders[b]) != k or any(sorted(int(i) for i in order) != list(range(n)) for order in orders[b]):
        raise ValueError(f"item {b}: orders {orders[b]} are not {k} permutations of its {n} responses")
      perms[b] = np.arange(n_max)
      perms[b, :, :n] = np.asarray(orders[b])
    elif options.shuffle:
      perms[b] = voting.response_orders(rng, n, k, options.num_distinct_orders, pad_to=n_max)
    else:
      perms[b] = np.arange(n_max)
    hint = None if hint_best is None else hint_best[b]
    prompts += [item_prompt(item, options, perms[b, s, :n], hint, template=template) for s in range(k)]
  return prompts, perms, mask


def parse_texts(texts: Sequence[str], num_responses: Sequence[int], n_max: int,
                template: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
  """Scores in SHOWN order int32[R, n_max], valid bool[R], errors; `template`: one name, or one per row."""
  names = [template] * len(texts) if isinstance(template, str) else list(template)
  ranges = [templates.get_template(name).score_range for name in names]
  return parsing.parse_batch(list(texts), list(num_responses), score_range=ranges, width=n_max)


def meta_rm_inputs(items: Sequence[Item], texts: Sequence[Sequence[str]], perms: np.ndarray,
                   chat_style: str = "raw") -> list[list[str]]:
  """[B][k] meta-RM inputs: the query, the responses in the order sample s showed them, and its judgement."""
  out = []
  for b, item in enumerate(items):
    conversation, responses = _fields(item)
    n = len(responses)
    out.append([templates.meta_rm_input(conversation, [responses[i] for i in perms[b, s, :n]], text,
                                        chat_style=chat_style) for s, text in enumerate(texts[b])])
  return out


@jax.jit
def _vote(shown, perms, valid, meta_scores, k_meta):
  """Eq. 14 on device: per-sample scores in the original order, the kept samples, and their sums."""
  voted = voting.vote_items(shown, perms, valid, meta_scores, k_meta)
  original = jax.vmap(voting.unshuffle)(shown, perms)
  kept = jax.vmap(voting.meta_rm_keep, in_axes=(0, 0, None))(meta_scores, valid, k_meta)
  return voted, jnp.where(valid[..., None], original, 0), kept


def stop_after_scores(tokenizer, output_prefix: str = "") -> sampler.StopAfter:
  """Stop at the `}` closing the first `\\boxed{` after `Scores:` (`SCORE_STOP_TEXTS`), the end of the output format.

  A box quoted before `Scores:` (a response's `\\boxed{42}` repeated in the Analysis) does not end the sample.
  output_prefix: text the prompt already opened the answer with (e.g. "Specific Criteria:"), fed to the rule first.
  """
  return sampler.StopAfter.after_texts(tokenizer, SCORE_STOP_TEXTS, prefix=output_prefix)


class GRM:
  """A pointwise generative reward model: `GRM(model, tokenizer).score(query, [r1, r2], k=8)`."""

  def __init__(self, model, tokenizer, *, mesh=None, **options):
    self.model = model
    self.tokenizer = tokenizer
    self.mesh = mesh
    self.options = GRMOptions(**options)
    templates.get_template(self.options.template)  # fail early on a bad name
    if self.options.single_template is not None:
      templates.get_template(self.options.single_template)

  def score(self, query, responses: Sequence[str], k: int = 1, **kwargs) -> GRMResult:
    """Scores one item; `query` is a string (one user turn) or a conversation of (role, content) pairs."""
    conversation = (("user", query),) if isinstance(query, str) else tuple(query)
    return self.score_batch([(conversation, tuple(responses))], k=k, **kwargs)

  def score_batch(self, items: Sequence[Item], k: int = 1, *, meta_scorer: MetaScorer | None = None,
                  meta_rm=None, k_meta: int | None = None, seed: int | None = None,
                  hint_best: Sequence[int | None] | None = None) -> GRMResult:
    """The kernel: B items x k samples in one sampling call, parsed, unshuffled and voted on device.

    meta_rm: meta-RM guided voting (MetaRM@k): a `meta_rm.MetaRM` (read with this GRM's tokenizer and mesh) or a
      callable `(items, texts[B][k], perms int32[B, k, n]) -> f32[B, k]` (`meta_rm.as_meta_scorer`) that sees each
      sample's response order. All B x k trajectories are scored in one batched call, the k_meta highest are kept.
    k_meta: samples kept under a meta RM / meta scorer; default `options.k_meta`, else max(1, k // 2).
    """
    if k < 1:
      raise ValueError(f"k must be >= 1, got {k}")
    if not items:
      raise ValueError("no items to score")
    opts = self.options
    seed = opts.seed if seed is None else seed
    rng = np.random.default_rng(seed)
    names = item_templates(items, opts)
    prompts, perms, response_mask = build_prompts(items, k, opts, rng, hint_best=hint_best)
    try:
      generated = self.generate_texts(prompts, opts.strategy(k), seed)
    except sampling_memory.RowsDoNotFit as e:
      raise ValueError(f"item {e.prompt_index // k} (sample {e.prompt_index % k}): {e}") from e
    texts = [opts.output_prefix + t for t in generated]
    num_responses = np.repeat(response_mask.sum(axis=1), k)
    shown, valid, errors = parse_texts(texts, num_responses, perms.shape[2], np.repeat(names, k).tolist())
    batch, n_max = len(items), perms.shape[2]
    shown, valid = shown.reshape(batch, k, n_max), valid.reshape(batch, k)
    texts_2d = [texts[b * k:(b + 1) * k] for b in range(batch)]
    if meta_rm is not None and meta_scorer is not None:
      raise ValueError("give meta_rm or meta_scorer, not both")
    meta_rm = meta_rm if meta_rm is not None else meta_scorer
    if meta_rm is None:  # every valid sample votes: equal meta scores, keep all k
      if k_meta is not None:
        raise ValueError("k_meta given without a meta RM")
      meta_scores, k_meta = np.zeros((batch, k), np.float32), k
    else:  # a meta RM reads every sample's responses in the order that sample showed them
      from spct_jax import meta_rm as meta_rm_lib  # pylint: disable=g-import-not-at-top  (meta_rm imports grm)
      score_meta = meta_rm_lib.resolve_scorer(meta_rm, self.tokenizer, mesh=self.mesh)
      meta_scores = np.asarray(score_meta(items, texts_2d, perms), np.float32)
      k_meta = meta_rm_lib.default_k_meta(k, k_meta if k_meta is not None else opts.k_meta)
    voted, original, kept = multihost.to_host(_vote(shown, perms, valid, meta_scores, k_meta))
    return GRMResult(voted=voted, sample_scores=original, valid=valid, perms=perms, texts=texts_2d,
                     errors=[errors[b * k:(b + 1) * k] for b in range(batch)], response_mask=response_mask,
                     kept=kept, templates=names)

  def generate_texts(self, prompts: Sequence[str], strategy, seed: int) -> list[str]:
    """One continuation per prompt, in one batched call (identical prompts share a prefill)."""
    encoded = [self.tokenizer.encode(p, add_bos=True) for p in prompts]
    out, *_ = sampler.sample_from_tokens(
        self.model, encoded, max_new_tokens=self.options.max_new_tokens, strategy=strategy, seed=seed,
        eos_ids=self.eos_ids, pad_id=self.tokenizer.pad_id, mesh=self.mesh, stop=self.stop_condition,
        memory_budget_bytes=self.options.memory_budget_bytes)
    out = multihost.to_host(out)
    return [self._decode(row, n) for row, n in zip(out.tokens, out.lengths)]

  @functools.cached_property
  def stop_condition(self) -> sampler.StopAfter | None:
    if not self.options.stop_after_scores:
      return None
    return stop_after_scores(self.tokenizer, self.options.output_prefix)

  @property
  def eos_ids(self) -> tuple[int, ...]:
    eos = [self.tokenizer.eos_id]
    if self.options.chat_style == "gemma" and getattr(self.tokenizer, "end_of_turn_id", None) is not None:
      eos.append(self.tokenizer.end_of_turn_id)
    return tuple(eos)

  def _decode(self, row: np.ndarray, length: int) -> str:
    return self.tokenizer.decode([int(t) for t in row[:length] if t not in self.eos_ids])
