"""Score extraction from GRM output text (Eq. 7: S_i = f_extract(C)).

Which span holds the scores:
  1. The LAST complete `\\boxed{...}` (one or two backslashes) anywhere in the text, whatever its content: the
     templates ask for a boxed list, so a boxed span is the model's answer even when it is malformed.
  2. Otherwise the LAST innermost `[...]` whose content looks like a list of numbers (digits, signs, dots,
     commas, spaces). This accepts the paper's `[[8, 1]]` and `[8, 1.5]` (which then fails as a non-integer),
     and skips bracketed text such as echoed `[The Begin of Response 1]` headers or `[General Evaluation
     Criteria]`. Known blind spot: a numeric citation like `[2]` after the score list wins (boxed output
     avoids this).
Then the content is split on commas (ASCII or full-width), each piece stripped; pieces must be integers with an
optional sign (`7.0` is not) written in ASCII digits (`\\boxed{٧, 3}` with an Arabic-Indic 7 is unparseable: the
templates ask for ASCII), their count must equal n, and each must lie in the inclusive score range.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence, Union

import numpy as np

# Content stops at the first closing brace: nested braces are not a score list anyway.
_BOXED = re.compile(r"\\{1,2}boxed\{([^{}]*)\}")
_BRACKET = re.compile(r"\[([^\[\]]*)\]")
# ASCII digits only: Python's \d also matches other scripts' digits, which int() would then accept.
_NUMERIC_LIST = re.compile(r"\s*[+-]?[0-9][0-9.\s,，+-]*")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_SPLIT = re.compile(r"[,，]")

NO_SCORES_ERROR = "no \\boxed{} or [..] found"


@dataclasses.dataclass(frozen=True)
class ParsedScores:
  """Parse result: `scores` (one int per response) or an `error` message, never both."""

  scores: tuple[int, ...] | None
  error: str | None = None

  @property
  def ok(self) -> bool:
    return self.scores is not None


def _score_span(text: str) -> str | None:
  boxed = _BOXED.findall(text)
  if boxed:
    return boxed[-1]
  numeric = [c for c in _BRACKET.findall(text) if _NUMERIC_LIST.fullmatch(c)]
  return numeric[-1] if numeric else None


def parse_scores(text: str, num_responses: int, *, score_range: tuple[int, int] = (1, 10)) -> ParsedScores:
  """Extracts one integer score per response from a GRM trajectory.

  Args:
    text: the generated output.
    num_responses: n, the number of responses the prompt showed.
    score_range: inclusive (low, high).

  Returns:
    `ParsedScores` with `scores` in response order, or `error` naming the first problem found.
  """
  span = _score_span(text)
  if span is None:
    return ParsedScores(None, NO_SCORES_ERROR)
  pieces = [p.strip() for p in _SPLIT.split(span)]
  if len(pieces) != num_responses:
    return ParsedScores(None, f"expected {num_responses} scores, found {len(pieces)}")
  lo, hi = score_range
  scores = []
  for piece in pieces:
    if not _INTEGER.fullmatch(piece):
      return ParsedScores(None, f"score {piece!r} is not an integer")
    value = int(piece)
    if not lo <= value <= hi:
      return ParsedScores(None, f"score {value} outside [{lo}, {hi}]")
    scores.append(value)
  return ParsedScores(tuple(scores))


ScoreRange = tuple[int, int]


def parse_batch(texts: Sequence[str],
                num_responses: Union[int, Sequence[int]],
                *,
                score_range: Union[ScoreRange, Sequence[ScoreRange]] = (1, 10),
                width: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
  """Parses B trajectories into a padded array.

  Args:
    texts: B generated outputs.
    num_responses: n for every row, or one n per row.
    score_range: inclusive (low, high) for every row, or one per row (rows judged under different templates).
    width: columns of the output (>= every row's n); None: the largest n.

  Returns:
    scores: int32[B, width], 0 beyond a row's n and on unparseable rows.
    valid: bool[B], True where the row parsed.
    errors: B entries, None where the row parsed.
  """
  if isinstance(num_responses, (int, np.integer)):
    ns = [int(num_responses)] * len(texts)
  else:
    ns = [int(n) for n in num_responses]
    if len(ns) != len(texts):
      raise ValueError(f"num_responses has {len(ns)} entries for {len(texts)} texts")
  if len(score_range) == 2 and all(isinstance(v, (int, np.integer)) for v in score_range):
    ranges = [tuple(score_range)] * len(texts)
  else:
    ranges = [tuple(r) for r in score_range]
    if len(ranges) != len(texts):
      raise ValueError(f"score_range has {len(ranges)} entries for {len(texts)} texts")
  n_max = max(ns, default=0) if width is None else width
  if ns and max(ns) > n_max:
    raise ValueError(f"width={width} is smaller than the largest num_responses {max(ns)}")
  scores = np.zeros((len(texts), n_max), np.int32)
  valid = np.zeros((len(texts),), np.bool_)
  errors: list[str | None] = []
  for row, (text, n, score_range_row) in enumerate(zip(texts, ns, ranges)):
    parsed = parse_scores(text, n, score_range=score_range_row)
    errors.append(parsed.error)
    if parsed.ok:
      scores[row, :n] = parsed.scores
      valid[row] = True
  return scores, valid, errors
