"""Synthetic verifiable items: ground truth recomputed independently, determinism, worked judgements."""

import re
from collections import Counter
from fractions import Fraction

import pytest

from spct_jax.data import synthetic

# Conversion factors written out again here (not imported) so the truth is checked independently.
_TO_SMALLER = {("km", "m"): 1000, ("m", "cm"): 100, ("kg", "g"): 1000, ("L", "mL"): 1000, ("h", "min"): 60,
               ("min", "s"): 60}


def _number(text):
  return Fraction(text)


def _truth(question):
  """The correct answer computed from the question text, independently of the module."""
  if m := re.fullmatch(r"What is (\d+) ([+*-]) (\d+)\?", question):
    a, op, b = int(m[1]), m[2], int(m[3])
    return Fraction(a + b if op == "+" else a - b if op == "-" else a * b)
  if m := re.fullmatch(r"Convert ([\d.]+) (\w+) to (\w+)\.", question):
    qty, src, dst = Fraction(m[1]), m[2], m[3]
    return qty * _TO_SMALLER[(src, dst)] if (src, dst) in _TO_SMALLER else qty / _TO_SMALLER[(dst, src)]
  if m := re.fullmatch(r"Sort from (smallest to largest|largest to smallest): (.+)\.", question):
    return sorted((int(x) for x in m[2].split(", ")), reverse=m[1].startswith("largest"))
  if m := re.fullmatch(r"Reverse the letters of '(\w+)'\.", question):
    return m[1][::-1]
  if m := re.fullmatch(r"Remove every '(\w)' from '(\w+)'\.", question):
    return m[2].replace(m[1], "")
  m = re.fullmatch(r"Replace every '(\w)' with '(\w)' in '(\w+)'\.", question)
  assert m, question
  return m[3].replace(m[1], m[2])


def _stated(kind, response):
  """What a response claims, parsed independently of the module."""
  if kind == "arithmetic":
    return _number(response.rsplit("= ", 1)[1])
  if kind == "unit_conversion":
    return _number(response.rsplit("= ", 1)[1].split(" ")[0])
  if kind == "sorting":
    return [int(x) for x in response.split(", ")]
  return re.findall(r"'([^']*)'", response)[-1]


@pytest.fixture(scope="module")
def mixed():
  return synthetic.generate_items(600, seed=11, num_responses=(1, 4), difficulty=("easy", "medium", "hard"))


def test_ground_truth(mixed):
  assert {item.category for item in mixed} == set(synthetic.KINDS)
  for item in mixed:
    truth = _truth(item.query)
    for response, rating in zip(item.responses, item.ratings):
      assert (_stated(item.category, response) == truth) == (rating == 1.0), (item.query, response, rating)


def test_items_valid_with_unique_best(mixed):
  for item in mixed:
    item.validate()
    assert item.source == "synthetic" and item.subset in synthetic.DIFFICULTIES
    assert len(item.conversation) == 1
    if item.num_responses > 1:
      assert item.ratings.count(1.0) == 1 and item.ratings[item.best_index] == 1.0
      assert len(set(item.responses)) == item.num_responses
  assert Counter(item.num_responses for item in mixed).keys() == {1, 2, 3, 4}
  # The right answer is not always in the same place, and single items are right and wrong.
  assert len({item.best_index for item in mixed if item.num_responses == 4}) == 4
  assert {item.ratings[0] for item in mixed if item.num_responses == 1} == {0.0, 1.0}


def test_short_texts(mixed):
  # The default model is Gemma 3 270M on a CPU: keep prompts and responses tiny.
  assert max(len(item.query) for item in mixed) <= 80
  assert max(len(r) for item in mixed for r in item.responses) <= 80


def test_deterministic_and_seed_dependent():
  a = synthetic.generate_items(50, seed=3, num_responses=(2, 3))
  assert a == synthetic.generate_items(50, seed=3, num_responses=(2, 3))
  b = synthetic.generate_items(50, seed=4, num_responses=(2, 3))
  assert sum(x.query != y.query for x, y in zip(a, b)) > 40
  assert len({item.uid for item in a + b}) == 100
  # Item i depends only on (seed, i): prefixes and offsets agree with the full list.
  assert synthetic.generate_items(20, seed=3, num_responses=(2, 3)) == a[:20]
  assert synthetic.generate_items(10, seed=3, num_responses=(2, 3), start=40) == a[40:]
  assert synthetic.make_item(7, seed=3, num_responses=(2, 3)) == a[7]


def test_options():
  items = synthetic.generate_items(40, seed=0, num_responses=3, kinds=("sorting",), difficulty="hard")
  assert {(i.category, i.subset, i.num_responses) for i in items} == {("sorting", "hard", 3)}
  assert all(len(i.query.split(", ")) == 6 for i in items)  # Hard sorting lists have six numbers.
  assert synthetic.generate_items(0, seed=0) == []
  for bad in (dict(num_responses=0), dict(num_responses=5), dict(num_responses=(3, 2)), dict(kinds=("poetry",)),
              dict(difficulty="impossible"), dict(kinds=())):
    with pytest.raises(ValueError):
      synthetic.generate_items(1, seed=0, **bad)
  with pytest.raises(ValueError):
    synthetic.generate_items(-1, seed=0)


def test_worked_judgement_ranks_best_highest(mixed):
  for item in mixed:
    judgement = synthetic.worked_judgement(item)
    scores = judgement["scores"]
    assert isinstance(scores, tuple) and len(scores) == item.num_responses
    assert all(isinstance(s, int) for s in scores)
    if item.num_responses == 1:
      assert scores == (int(item.ratings[0]),)  # The single-response variant scores 0 / 1.
    else:
      best = item.best_index
      assert all(1 <= s <= 10 for s in scores)
      assert all(scores[best] > s for i, s in enumerate(scores) if i != best)
    assert judgement["principles"] and "weight" in judgement["principles"]
    for i in range(item.num_responses):
      label = "The response" if item.num_responses == 1 else f"Response {i + 1}"
      assert label in judgement["analysis"]


def test_worked_judgement_example():
  item = next(i for i in synthetic.generate_items(100, seed=0) if i.category == "arithmetic")
  judgement = synthetic.worked_judgement(item)
  a, op, b = re.fullmatch(r"What is (\d+) ([+*-]) (\d+)\?", item.query).groups()
  assert f"{a} {op} {b} = {_truth(item.query)}" in judgement["analysis"]
  assert "which is correct" in judgement["analysis"] and "so it is wrong" in judgement["analysis"]


def test_worked_judgement_rejects_wrong_ratings():
  item = synthetic.generate_items(1, seed=0)[0]
  flipped = item.with_order([1, 0])
  tampered = type(item)(**{**item.__dict__, "ratings": flipped.ratings})
  with pytest.raises(ValueError, match="disagree"):
    synthetic.worked_judgement(tampered)
  foreign = type(item)(**{**item.__dict__, "category": "chat"})
  with pytest.raises(ValueError, match="not a synthetic kind"):
    synthetic.worked_judgement(foreign)
