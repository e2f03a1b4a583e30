"""A scripted GRM teacher for RFT tests: its judgement is a fixed function of the prompt (no model)."""

import re

from spct_jax.data.schema import PreferenceItem
from spct_jax.grm.scorer import GRMOptions

HINT = re.compile(r"The best response is: Response (\d+)")
PREFIX = "Specific Criteria:"


def shown_order(prompt: str, item: PreferenceItem) -> list[int]:
  """Original indices of the responses in the order the prompt shows them (their texts are distinct tags)."""
  return sorted(range(item.num_responses), key=lambda i: prompt.index(item.responses[i]))


class ScriptedGRM:
  """A GRM stand-in: `behaviours[query]` turns (prompt, item) into the generated text. Records every call."""

  def __init__(self, items, behaviours, **options):
    self.options = GRMOptions(output_prefix=PREFIX, **options)
    self.by_query = {item.query: item for item in items}
    self.behaviours = behaviours
    self.calls = []

  def generate_texts(self, prompts, strategy, seed):
    self.calls.append((list(prompts), strategy, seed))
    texts = []
    for prompt in prompts:
      query = re.search(r"User: (q\d+)", prompt).group(1)
      texts.append(" reasons.\nScores: " + self.behaviours[query](prompt, self.by_query[query]))
    return texts


def boxed(scores):
  return "\\boxed{" + ", ".join(map(str, scores)) + "}"


def right(prompt, item):  # the best response gets 9, the others 2, wherever they are shown; n = 1: the label
  if item.num_responses == 1:
    return boxed([int(item.ratings[0])])
  return boxed([9 if i == item.best_index else 2 for i in shown_order(prompt, item)])


def wrong(prompt, item):
  if item.num_responses == 1:  # the other 0/1 score (the single-response template)
    return boxed([1 - int(item.ratings[0])])
  return boxed([2 if i == item.best_index else 9 for i in shown_order(prompt, item)])


def first_wins(prompt, item):  # positional bias: correct exactly when the best response is shown first
  return boxed([9] + [2] * (item.num_responses - 1))


def follows_hint(prompt, item):  # wrong unless told; then it scores the named position highest
  hint = HINT.search(prompt)
  if hint is None:
    return wrong(prompt, item)
  return boxed([9 if p == int(hint.group(1)) - 1 else 2 for p in range(item.num_responses)])


def biased_follows_hint(prompt, item):  # positional bias (first shown wins) unless told; told, it follows the hint
  return follows_hint(prompt, item) if HINT.search(prompt) else first_wins(prompt, item)


def garbage(prompt, item):
  return "I cannot decide."


def make_item(i, n=2, source="src_a", label=None):
  responses = tuple(f"r{i}_{j}" for j in range(n))
  ratings = (label,) if n == 1 else tuple(float(j == (i % n)) for j in range(n))
  return PreferenceItem(conversation=(("user", f"q{i}"),), responses=tuple(f"<{r}>" for r in responses),
                        ratings=ratings, category="c", source=source, uid=f"u{i}").validate()


def constructed_case():
  """Items u0..u6 and the teacher's behaviour on each: too easy, positional bias, hint-follower, unparseable,
  always wrong, an n = 1 item always wrong, and a too-easy n = 3 item (sources src_a / src_b)."""
  items = [make_item(0), make_item(1), make_item(2, n=3), make_item(3, source="src_b"), make_item(4),
           make_item(5, n=1, label=1), make_item(6, n=3, source="src_b")]
  behaviours = {"q0": right, "q1": first_wins, "q2": follows_hint, "q3": garbage, "q4": wrong, "q5": wrong,
                "q6": right}
  return items, behaviours


def larger_case():
  """`constructed_case` plus five positional-bias items (n = 2 and 3): more kept records, spread over shards."""
  items, behaviours = constructed_case()
  more = [make_item(i, n=2 + i % 2) for i in range(7, 12)]
  for item in more:
    behaviours[item.query] = first_wins
  return items + more, behaviours


def position_case():
  """Pairs u0..u5 and triples u6..u9 judged by a teacher that scores the first shown response highest unless a hint
  names another, a pair u10 whose teacher ignores the hint too, and a too-easy n = 1 item u11."""
  items = [make_item(i) for i in range(6)] + [make_item(i, n=3) for i in range(6, 10)] + [
      make_item(10), make_item(11, n=1, label=1)]
  behaviours = {f"q{i}": biased_follows_hint for i in range(10)} | {"q10": first_wins, "q11": right}
  return items, behaviours
