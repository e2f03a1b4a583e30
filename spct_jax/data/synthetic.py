"""The project's own verifiable preference items, for the embedded default training run.

We cannot ship others' data, so the default run trains on short questions whose answers we compute:
  arithmetic       "What is 37 + 48?"                              -> "37 + 48 = 85"
  unit_conversion  "Convert 3.5 km to m."                          -> "3.5 km = 3500 m"
  sorting          "Sort from smallest to largest: 12, 7, 19, 3."  -> "3, 7, 12, 19"
  string_edit      "Reverse the letters of 'planet'."              -> "'planet' reversed is 'tenalp'."
One response is right (rating 1), the others are plausible mistakes (rating 0: off by one, swapped digits, wrong
operation, wrong conversion factor, one pair out of order, one letter wrong, ...), in random order. With
`num_responses=1` the single response is right or wrong with probability 1/2 and its rating is the 0/1 label.

Item i of seed s depends only on (s, i) (`numpy.random.default_rng([s, i])`), so a longer run extends a shorter
one and any item can be regenerated alone. `worked_judgement` recomputes the truth from the question text (not
from the ratings) and writes the principles / analysis / scores a correct GRM would produce.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from decimal import Decimal
from fractions import Fraction

import numpy as np

from spct_jax.data import schema

KINDS = ("arithmetic", "unit_conversion", "sorting", "string_edit")
DIFFICULTIES = ("easy", "medium", "hard")
SOURCE = "synthetic"
MAX_RESPONSES = 4
CORRECT_SCORE, WRONG_SCORE = 9, 2  # Pairwise / best-of-N scores (1..10) in worked judgements.


def _fmt(value: Fraction | int) -> str:
  """Exact decimal text of a value whose denominator divides a power of 10 (all we generate)."""
  value = Fraction(value)
  if value.denominator == 1:
    return str(value.numerator)
  text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
  return text.rstrip("0").rstrip(".")


def _terminates(value: Fraction) -> bool:
  """Whether the value has a finite decimal expansion (h -> min slips can produce thirds)."""
  d = value.denominator
  for p in (2, 5):
    while d % p == 0:
      d //= p
  return d == 1


@dataclasses.dataclass(frozen=True)
class _Problem:
  question: str
  answer: str
  wrong: tuple[str, ...]  # distinct plausible mistakes, none equal to `answer`


def _dedupe(answer: str, candidates: Sequence[str]) -> tuple[str, ...]:
  seen, out = {answer}, []
  for c in candidates:
    if c not in seen:
      seen.add(c)
      out.append(c)
  return tuple(out)


# Arithmetic ---------------------------------------------------------------------------------------------------
_ARITH_Q = re.compile(r"^What is (\d+) ([+*-]) (\d+)\?$")


def _arith_value(a: int, op: str, b: int) -> int:
  return {"+": a + b, "-": a - b, "*": a * b}[op]


def _make_arithmetic(rng: np.random.Generator, difficulty: str) -> _Problem:
  ops = ("+", "-") if difficulty == "easy" else ("+", "-", "*")
  op = str(rng.choice(ops))
  if op == "*":
    lo, hi = {"medium": (2, 12), "hard": (11, 99)}[difficulty]
    a, b = int(rng.integers(lo, 100 if difficulty == "medium" else 1000)), int(rng.integers(lo, hi + 1))
  else:
    hi = {"easy": 100, "medium": 1000, "hard": 10000}[difficulty]
    a, b = sorted((int(rng.integers(2, hi)), int(rng.integers(2, hi))), reverse=True)  # a >= b: no negatives
  value = _arith_value(a, op, b)
  swapped = str(value)[::-1].lstrip("0") or "0"
  wrong_op = {"+": a - b, "-": a + b, "*": a + b}[op]
  slips = [value + 1, value - 1, value + 10, value - 10, wrong_op]
  if op == "*":
    slips += [a * (b - 1), a * (b + 1)]
  candidates = [str(v) for v in slips] + [swapped]
  order = rng.permutation(len(candidates))
  return _Problem(f"What is {a} {op} {b}?", str(value), _dedupe(str(value), [candidates[i] for i in order]))


def _solve_arithmetic(question: str) -> str:
  a, op, b = _match(_ARITH_Q, question).groups()
  return str(_arith_value(int(a), op, int(b)))


def _render_arithmetic(question: str, answer: str) -> str:
  a, op, b = _match(_ARITH_Q, question).groups()
  return f"{a} {op} {b} = {answer}"


# Unit conversion ----------------------------------------------------------------------------------------------
_UNITS = (("km", "m", 1000), ("m", "cm", 100), ("kg", "g", 1000), ("L", "mL", 1000), ("h", "min", 60),
          ("min", "s", 60))
_FACTORS = {(big, small): Fraction(f) for big, small, f in _UNITS} | {
    (small, big): Fraction(1, f) for big, small, f in _UNITS}
_UNIT_Q = re.compile(r"^Convert ([\d.]+) (\w+) to (\w+)\.$")


def _make_unit_conversion(rng: np.random.Generator, difficulty: str) -> _Problem:
  big, small, factor = _UNITS[int(rng.integers(len(_UNITS)))]
  # Amount of the big unit: whole numbers when easy, tenths otherwise (exact with Fraction).
  amount = Fraction(int(rng.integers(1, 20)), 1) if difficulty == "easy" else Fraction(
      int(rng.integers(1, 100 if difficulty == "medium" else 1000)), 10)
  if rng.random() < 0.5:
    qty, src, dst, f = amount, big, small, Fraction(factor)
  else:
    qty, src, dst, f = amount * factor, small, big, Fraction(1, factor)
  value = qty * f
  slip_factor = Fraction(100) if factor == 60 else Fraction(factor, 10)  # h->min x100 is the classic slip
  slips = [qty / f, value * 10, value / 10, qty * (slip_factor if f > 1 else 1 / slip_factor), value + 1, value - 1]
  candidates = [_fmt(v) for v in slips if v > 0 and _terminates(v)]
  order = rng.permutation(len(candidates))
  answer = _fmt(value)
  return _Problem(f"Convert {_fmt(qty)} {src} to {dst}.", answer, _dedupe(answer, [candidates[i] for i in order]))


def _solve_unit_conversion(question: str) -> str:
  qty, src, dst = _match(_UNIT_Q, question).groups()
  return _fmt(Fraction(qty) * _FACTORS[(src, dst)])


def _render_unit_conversion(question: str, answer: str) -> str:
  qty, src, dst = _match(_UNIT_Q, question).groups()
  return f"{qty} {src} = {answer} {dst}"


# Sorting ------------------------------------------------------------------------------------------------------
_SORT_Q = re.compile(r"^Sort from (smallest to largest|largest to smallest): (.+)\.$")


def _make_sorting(rng: np.random.Generator, difficulty: str) -> _Problem:
  count, lo, hi = {"easy": (4, 1, 50), "medium": (5, 1, 100), "hard": (6, -50, 150)}[difficulty]
  numbers = [int(x) for x in rng.choice(np.arange(lo, hi), size=count, replace=False)]
  descending = difficulty != "easy" and rng.random() < 0.5
  direction = "largest to smallest" if descending else "smallest to largest"
  right = sorted(numbers, reverse=descending)
  slips = [right[:k] + [right[k + 1], right[k]] + right[k + 2:] for k in range(count - 1)]  # one adjacent swap
  slips += [right[::-1], numbers, right[:-1]]  # wrong direction, unsorted, one number dropped
  candidates = [", ".join(map(str, s)) for s in slips]
  order = rng.permutation(len(candidates))
  answer = ", ".join(map(str, right))
  question = f"Sort from {direction}: {', '.join(map(str, numbers))}."
  return _Problem(question, answer, _dedupe(answer, [candidates[i] for i in order]))


def _solve_sorting(question: str) -> str:
  direction, listed = _match(_SORT_Q, question).groups()
  numbers = sorted((int(x) for x in listed.split(", ")), reverse=direction.startswith("largest"))
  return ", ".join(map(str, numbers))


def _render_sorting(question: str, answer: str) -> str:
  del question  # The answer alone is the natural reply.
  return answer


# String edits -------------------------------------------------------------------------------------------------
_WORDS = ("planet", "garden", "silver", "rocket", "window", "banana", "orange", "market", "pencil", "dragon",
          "castle", "forest", "bottle", "candle", "little", "yellow", "summer", "winter", "mirror", "button",
          "coffee", "letter", "monkey", "paper", "table", "river", "lemon", "tiger", "cookie", "balloon",
          "elephant", "umbrella", "triangle", "mountain", "computer", "sandwich", "dinosaur", "calendar")
_EDIT_Q = {
    "reverse": re.compile(r"^Reverse the letters of '([a-z]+)'\.$"),
    "remove": re.compile(r"^Remove every '([a-z])' from '([a-z]+)'\.$"),
    "replace": re.compile(r"^Replace every '([a-z])' with '([a-z])' in '([a-z]+)'\.$"),
}
_CLAIM = re.compile(r"'([^']*)'\.?$")


def _swap_adjacent(text: str, k: int) -> str:
  return text[:k] + text[k + 1] + text[k] + text[k + 2:]


def _make_string_edit(rng: np.random.Generator, difficulty: str) -> _Problem:
  pool = [w for w in _WORDS if (len(w) <= 6) == (difficulty == "easy") or difficulty == "medium"]
  word = str(rng.choice(pool))
  op = str(rng.choice(("reverse", "remove", "replace")))
  if op == "reverse":
    question, answer = f"Reverse the letters of '{word}'.", word[::-1]
    slips = [_swap_adjacent(answer, k) for k in range(len(answer) - 1)] + [word, answer[1:], answer[:-1]]
  else:
    letter = str(rng.choice(sorted(set(word))))
    if op == "remove":
      question, answer = f"Remove every '{letter}' from '{word}'.", word.replace(letter, "")
      slips = [word.replace(letter, "", 1), word, answer[:-1]]
    else:
      new = str(rng.choice([c for c in "aeioust" if c != letter]))
      question, answer = f"Replace every '{letter}' with '{new}' in '{word}'.", word.replace(letter, new)
      slips = [word.replace(letter, new, 1), word, answer.replace(new, letter), answer[:-1], answer + answer[-1]]
    slips += [answer[:k] + answer[k + 1:] for k in range(len(answer))]  # one letter dropped
  order = rng.permutation(len(slips))
  return _Problem(question, answer, _dedupe(answer, [slips[i] for i in order]))


def _solve_string_edit(question: str) -> str:
  if m := _EDIT_Q["reverse"].match(question):
    return m.group(1)[::-1]
  if m := _EDIT_Q["remove"].match(question):
    return m.group(2).replace(m.group(1), "")
  letter, new, word = _match(_EDIT_Q["replace"], question).groups()
  return word.replace(letter, new)


def _claim_quoted(response: str) -> str:
  m = _CLAIM.search(response.strip())
  if m is None:
    raise ValueError(f"not a synthetic string-edit response: {response!r}")
  return m.group(1)


def _render_string_edit(question: str, answer: str) -> str:
  if m := _EDIT_Q["reverse"].match(question):
    return f"'{m.group(1)}' reversed is '{answer}'."
  if m := _EDIT_Q["remove"].match(question):
    return f"'{m.group(2)}' without '{m.group(1)}' is '{answer}'."
  letter, new, word = _match(_EDIT_Q["replace"], question).groups()
  return f"'{word}' with '{letter}' replaced by '{new}' is '{answer}'."


# Registry -----------------------------------------------------------------------------------------------------
def _match(pattern: re.Pattern, text: str) -> re.Match:
  m = pattern.match(text)
  if m is None:
    raise ValueError(f"not a synthetic question/response of this kind: {text!r}")
  return m


@dataclasses.dataclass(frozen=True)
class _Kind:
  make: Callable[[np.random.Generator, str], _Problem]
  solve: Callable[[str], str]
  render: Callable[[str, str], str]
  claim: Callable[[str], str]  # the answer a response states
  principles: str
  rule: Callable[[str], str]  # the worked derivation of the truth, one clause


_KINDS = {
    "arithmetic": _Kind(
        _make_arithmetic, _solve_arithmetic, _render_arithmetic, lambda r: r.rsplit("= ", 1)[-1].strip(),
        "Correctness of the final number (weight 80%): it must equal the exact value of the expression. "
        "Clarity (weight 20%): the result is stated directly.",
        lambda q: "{} {} {} = {}".format(*_match(_ARITH_Q, q).groups(), _solve_arithmetic(q))),
    "unit_conversion": _Kind(
        _make_unit_conversion, _solve_unit_conversion, _render_unit_conversion,
        lambda r: r.rsplit("= ", 1)[-1].rsplit(" ", 1)[0].strip(),
        "Correct conversion factor and direction (weight 80%): multiply when going to a smaller unit, divide when "
        "going to a larger one. Exact final number with the right unit (weight 20%).",
        lambda q: "{1} {2} = {0} {3}".format(_solve_unit_conversion(q), *_match(_UNIT_Q, q).groups())),
    "sorting": _Kind(
        _make_sorting, _solve_sorting, _render_sorting, lambda r: r.strip(),
        "Correct order in the requested direction (weight 70%). Every given number appears exactly once, none "
        "added or dropped (weight 30%).",
        lambda q: f"in the requested order the numbers are {_solve_sorting(q)}"),
    "string_edit": _Kind(
        _make_string_edit, _solve_string_edit, _render_string_edit,
        _claim_quoted,
        "Exact result of the requested edit (weight 80%): every letter checked, none added or dropped. "
        "Following the instruction literally (weight 20%).",
        lambda q: f"the edited word is '{_solve_string_edit(q)}'"),
}


def _response_count(num_responses: int | tuple[int, int], rng: np.random.Generator) -> int:
  lo, hi = (num_responses, num_responses) if isinstance(num_responses, int) else num_responses
  if not 1 <= lo <= hi <= MAX_RESPONSES:
    raise ValueError(f"num_responses must be an int or (lo, hi) range within 1..{MAX_RESPONSES}, got "
                     f"{num_responses!r}")
  return lo if lo == hi else int(rng.integers(lo, hi + 1))


def make_item(index: int, *, seed: int, num_responses: int | tuple[int, int] = 2, kinds: Sequence[str] = KINDS,
              difficulty: str | Sequence[str] = "easy") -> schema.PreferenceItem:
  """Item `index` of the stream `seed` (what `generate_items` returns at that position)."""
  difficulties = (difficulty,) if isinstance(difficulty, str) else tuple(difficulty)
  bad = sorted(set(kinds) - set(KINDS)) + sorted(set(difficulties) - set(DIFFICULTIES))
  if bad or not kinds or not difficulties:
    raise ValueError(f"unknown or empty kinds/difficulty {bad}; kinds from {KINDS}, difficulty from {DIFFICULTIES}")
  rng = np.random.default_rng([seed, index])
  kind_name = str(kinds[int(rng.integers(len(kinds)))])
  level = str(difficulties[int(rng.integers(len(difficulties)))])
  n = _response_count(num_responses, rng)
  kind = _KINDS[kind_name]
  problem = kind.make(rng, level)
  if len(problem.wrong) < MAX_RESPONSES - 1:
    raise AssertionError(f"synthetic {kind_name} made too few distractors for {problem.question!r}")
  if n == 1:
    correct = bool(rng.random() < 0.5)
    answers, ratings = [problem.answer if correct else problem.wrong[0]], [float(correct)]
  else:
    answers = [problem.answer, *problem.wrong[: n - 1]]
    ratings = [1.0] + [0.0] * (n - 1)
    perm = rng.permutation(n)
    answers, ratings = [answers[i] for i in perm], [ratings[i] for i in perm]
  return schema.PreferenceItem(
      conversation=((schema.USER, problem.question),),
      responses=tuple(kind.render(problem.question, a) for a in answers),
      ratings=tuple(ratings),
      category=kind_name,
      source=SOURCE,
      uid=f"{SOURCE}:{seed}:{index}",
      subset=level,
  )


def generate_items(num_items: int, *, seed: int, num_responses: int | tuple[int, int] = 2,
                   kinds: Sequence[str] = KINDS, difficulty: str | Sequence[str] = "easy",
                   start: int = 0) -> list[schema.PreferenceItem]:
  """`num_items` items of stream `seed`, indices start..start+num_items-1.

  Args:
    num_items: how many.
    seed: stream seed; same seed -> identical items.
    num_responses: n per item, or an inclusive (lo, hi) range drawn per item; 1..4. n = 1: 0/1-labelled item.
    kinds: which problem kinds to draw from (uniformly per item).
    difficulty: "easy" | "medium" | "hard", or several to draw from per item (recorded as `subset`).
    start: first index; disjoint index ranges give disjoint item sets (e.g. train / validation splits),
      though the same question can recur by chance.
  """
  if num_items < 0 or start < 0:
    raise ValueError(f"num_items and start must be >= 0, got {num_items}, {start}")
  return [make_item(i, seed=seed, num_responses=num_responses, kinds=kinds, difficulty=difficulty)
          for i in range(start, start + num_items)]


def solve(item: schema.PreferenceItem) -> str:
  """The correct answer to a synthetic item, recomputed from its question."""
  if item.category not in _KINDS:
    raise ValueError(f"PreferenceItem {item.uid!r}: category {item.category!r} is not a synthetic kind")
  return _KINDS[item.category].solve(item.query)


def claimed_answers(item: schema.PreferenceItem) -> tuple[str, ...]:
  """The answer each response states."""
  return tuple(_KINDS[item.category].claim(r) for r in item.responses)


def worked_judgement(item: schema.PreferenceItem) -> dict:
  """A correct principles / analysis / scores triple for a synthetic item (for few-shot demonstrations).

  Scores follow the spec's two prompt variants: n >= 2 -> integers 1..10 (9 for a right answer, 2 for a wrong
  one, so the best is strictly highest); n = 1 -> the 0/1 correctness score. Raises ValueError if the item's
  ratings disagree with the recomputed truth.
  """
  truth = solve(item)
  kind = _KINDS[item.category]
  claims = claimed_answers(item)
  right = [c == truth for c in claims]
  if right != [r == 1 for r in item.ratings]:
    raise ValueError(f"PreferenceItem {item.uid!r}: ratings {item.ratings} disagree with the computed truth")
  working = kind.rule(item.query)
  sentences = []
  for i, (claim, ok) in enumerate(zip(claims, right)):
    name = "The response" if item.num_responses == 1 else f"Response {i + 1}"
    verdict = "which is correct" if ok else f"but the correct answer is {truth}, so it is wrong"
    sentences.append(f"{name} gives {claim}, {verdict}.")
  if item.num_responses == 1:
    scores = (1,) if right[0] else (0,)
  else:
    scores = tuple(CORRECT_SCORE if ok else WRONG_SCORE for ok in right)
  return {"principles": kind.principles, "analysis": f"Checking: {working}. " + " ".join(sentences),
          "scores": scores}
