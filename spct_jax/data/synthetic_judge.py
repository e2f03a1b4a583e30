"""A scripted GRM for synthetic items: worked judgements, a seeded fraction of them wrong. No model.

The smoke data source of the meta RM (`configs/meta_rm.py:smoke`, `fresh.grm="synthetic"`): it stands where a
trained GRM would, so the fresh-sample stage, Eq. 10 labelling, the trajectory files and the meta RM's training
run end to end in seconds and with both labels. It has the two members `rft.generate_batch` uses (`options`,
`generate_texts(prompts, strategy, seed)`).

For each prompt it finds the item and the order the prompt shows its responses in (it renders every order of every
item it was given and looks the prompt up: exact, no parsing), then writes `synthetic.worked_judgement` of the
item in that order. With probability `error_rate` (seeded by the call's seed and the prompt's row) the judgement
is wrong: n >= 2 swaps the best response's score with a random wrong response's, n = 1 flips the 0/1 score; the
principles and analysis stay as written, so a wrong judgement's scores contradict its own analysis (a failure a
meta RM can learn to spot). The output starts after `options.output_prefix`, like a sampled continuation.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from spct_jax.data import schema, synthetic
from spct_jax.grm import scorer, templates


class SyntheticJudge:
  """`SyntheticJudge(items, options, error_rate=0.4)`: judges prompts of `items` built with `options`."""

  def __init__(self, items: Sequence[schema.PreferenceItem], options: scorer.GRMOptions, *, error_rate: float):
    if not 0.0 <= error_rate <= 1.0:
      raise ValueError(f"error_rate={error_rate} must lie in [0, 1]")
    self.options, self.error_rate = options, error_rate
    self._by_prompt: dict[str, tuple[schema.PreferenceItem, tuple[int, ...]]] = {}
    for item in items:
      for order in itertools.permutations(range(item.num_responses)):
        self._by_prompt[scorer.item_prompt(item, options, order)] = (item, order)

  def judgement(self, item: schema.PreferenceItem, order: Sequence[int], wrong: bool, rng: np.random.Generator) -> str:
    """The answer text (output prefix included) for `item` shown in `order`; `wrong`: scores made wrong."""
    shown = item.with_order(list(order))
    worked = synthetic.worked_judgement(shown)
    scores = list(worked["scores"])
    if wrong and shown.num_responses == 1:
      scores = [1 - scores[0]]
    elif wrong:
      best = shown.best_index
      other = int(rng.choice([i for i in range(shown.num_responses) if i != best]))
      scores[best], scores[other] = scores[other], scores[best]
    return templates.format_answer(worked["principles"], worked["analysis"], scores)

  def generate_texts(self, prompts: Sequence[str], strategy, seed: int) -> list[str]:
    del strategy  # scripted: no sampling
    prefix, texts = self.options.output_prefix, []
    for row, prompt in enumerate(prompts):
      if prompt not in self._by_prompt:
        raise ValueError(f"the synthetic judge got a prompt of an item it was not given (or built with other "
                         f"options): {prompt[-200:]!r}")
      item, order = self._by_prompt[prompt]
      rng = np.random.default_rng([seed, row])
      answer = self.judgement(item, order, bool(rng.random() < self.error_rate), rng)
      if not answer.startswith(prefix):
        raise ValueError(f"the synthetic judge writes answers starting 'Specific Criteria:'; grm.output_prefix="
                         f"{prefix!r} is not a prefix of that")
      texts.append(answer[len(prefix):])
    return texts
