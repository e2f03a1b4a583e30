"""The one record type every dataset is read into: `PreferenceItem`.

An item is a conversation (the last user turn is the query), n >= 1 candidate responses and one rating per response
(higher = better). Pairs rate the chosen response 1 and the rejected one 0; n = 1 items (verifiable single-response
data) carry the 0/1 label as their only rating.

Ground-truth policy (the spec's Eq. 10 needs a single maximum, `../shared/docs/spct-spec.md` section 2):
  * An item whose best rating is shared by two responses ("tie" labels in PandaLM / Auto-J, equal ratings) has no
    correct answer under the strict rule, so readers skip it and count it under `SKIP_TIE`.
  * An item whose best response text equals a loser's text (after stripping surrounding whitespace) cannot be
    judged either (no response is strictly better than itself): readers skip it and count it under
    `SKIP_DUPLICATE`. Losers identical to each other are kept (all rated below the best, the order is unaffected).
  * `PreferenceItem.validate` enforces both rules, so a valid item always has one well-defined best response.

Conversations must alternate user / assistant, start with a user turn and end with a user turn (the query);
Gemma's chat template rejects anything else. Empty texts are allowed: an empty response is a (bad) response.

The generic on-disk format is JSON lines, one `PreferenceItem.to_json()` per line:
  {"uid": ..., "source": ..., "category": ..., "subset": ...,
   "conversation": [{"role": "user", "content": ...}, ...], "responses": [...], "ratings": [...]}
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

USER = "user"
ASSISTANT = "assistant"
ROLES = (USER, ASSISTANT)

# Reasons a reader drops a record; the keys of `ReadStats.skipped`.
SKIP_TIE = "tie"
SKIP_DUPLICATE = "duplicate_response"


def skip_reason(responses: Sequence[str], ratings: Sequence[float]) -> str | None:
  """Returns why (responses, ratings) has no unique best response, or None when it has one."""
  if len(responses) < 2:
    return None
  best = max(ratings)
  winners = [i for i, r in enumerate(ratings) if r == best]
  if len(winners) > 1:
    return SKIP_TIE
  best_text = responses[winners[0]].strip()
  if any(i != winners[0] and text.strip() == best_text for i, text in enumerate(responses)):
    return SKIP_DUPLICATE
  return None


@dataclasses.dataclass(frozen=True)
class PreferenceItem:
  """A query with n candidate responses and their ground-truth ratings.

  Attributes:
    conversation: (role, content) turns, roles "user" / "assistant", alternating, first and last "user".
    responses: the n candidate responses, in the order the GRM sees them.
    ratings: one per response, higher is better; for n = 1 the 0/1 correctness label.
    category: dataset-specific category (e.g. RMB's category path, LLMBar's subset path).
    source: dataset name (the reader's registry name, or "synthetic").
    uid: stable id, "<file relative to the data root>:<record index>[:<suffix>]".
    subset: optional coarser grouping (e.g. RMB "Helpfulness" / "Harmlessness").
  """

  conversation: tuple[tuple[str, str], ...]
  responses: tuple[str, ...]
  ratings: tuple[float, ...]
  category: str
  source: str
  uid: str
  subset: str | None = None

  def __post_init__(self):
    # Accept lists (e.g. from JSON) but store tuples so items stay hashable and immutable.
    object.__setattr__(self, "conversation", tuple(tuple(turn) for turn in self.conversation))
    object.__setattr__(self, "responses", tuple(self.responses))
    object.__setattr__(self, "ratings", tuple(self.ratings))

  @property
  def num_responses(self) -> int:
    return len(self.responses)

  @property
  def query(self) -> str:
    """The last user turn."""
    for role, content in reversed(self.conversation):
      if role == USER:
        return content
    raise ValueError(f"PreferenceItem {self.uid!r}: conversation has no user turn")

  @property
  def best_index(self) -> int:
    """Index of the highest rating; 0 for n = 1 (use `ratings[0]` as the label there)."""
    if not self.ratings:
      raise ValueError(f"PreferenceItem {self.uid!r}: no ratings")
    best = max(self.ratings)
    winners = [i for i, r in enumerate(self.ratings) if r == best]
    if len(winners) > 1:
      raise ValueError(f"PreferenceItem {self.uid!r}: best rating {best} is shared by responses {winners}")
    return winners[0]

  def validate(self) -> PreferenceItem:
    """Checks every invariant; returns self so calls chain. Raises ValueError naming the uid."""

    def fail(message: str):
      raise ValueError(f"PreferenceItem {self.uid!r}: {message}")

    if not isinstance(self.uid, str) or not self.uid:
      fail("uid must be a non-empty string")
    if not isinstance(self.source, str) or not self.source:
      fail("source must be a non-empty string")
    if not isinstance(self.category, str):
      fail(f"category must be a string, got {type(self.category).__name__}")
    if self.subset is not None and not isinstance(self.subset, str):
      fail(f"subset must be a string or None, got {type(self.subset).__name__}")
    if not self.conversation:
      fail("conversation is empty")
    for t, turn in enumerate(self.conversation):
      if len(turn) != 2 or not all(isinstance(x, str) for x in turn):
        fail(f"turn {t} must be a (role, content) pair of strings, got {turn!r}")
      expected = USER if t % 2 == 0 else ASSISTANT
      if turn[0] != expected:
        fail(f"turn {t} has role {turn[0]!r}, expected {expected!r} (turns alternate, starting with user)")
    if self.conversation[-1][0] != USER:
      fail("conversation must end with a user turn (the query)")
    if not self.responses:
      fail("no responses")
    for i, text in enumerate(self.responses):
      if not isinstance(text, str):
        fail(f"response {i} is a {type(text).__name__}, not a string")
    if len(self.ratings) != len(self.responses):
      fail(f"{len(self.ratings)} ratings for {len(self.responses)} responses")
    for i, r in enumerate(self.ratings):
      if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
        fail(f"rating {i} must be a finite number, got {r!r}")
    if len(self.responses) == 1:
      if self.ratings[0] not in (0, 1):
        fail(f"a single-response item needs a 0/1 label, got {self.ratings[0]!r}")
    else:
      reason = skip_reason(self.responses, self.ratings)
      if reason == SKIP_TIE:
        fail(f"best rating {max(self.ratings)} is shared (ratings {self.ratings})")
      if reason == SKIP_DUPLICATE:
        fail("the best response's text equals a lower-rated response's text")
    return self

  def to_dict(self) -> dict[str, Any]:
    return {
        "uid": self.uid,
        "source": self.source,
        "category": self.category,
        "subset": self.subset,
        "conversation": [{"role": role, "content": content} for role, content in self.conversation],
        "responses": list(self.responses),
        "ratings": list(self.ratings),
    }

  @classmethod
  def from_dict(cls, record: Mapping[str, Any]) -> PreferenceItem:
    """Inverse of `to_dict`; raises ValueError on missing keys or wrong types (does not validate)."""
    if not isinstance(record, Mapping):
      raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    missing = [k for k in ("uid", "source", "category", "conversation", "responses", "ratings") if k not in record]
    if missing:
      raise ValueError(f"missing keys {missing}")
    conversation = record["conversation"]
    if not isinstance(conversation, list) or not all(isinstance(t, Mapping) for t in conversation):
      raise ValueError("'conversation' must be a list of {role, content} objects")
    try:
      turns = tuple((t["role"], t["content"]) for t in conversation)
    except KeyError as err:
      raise ValueError(f"conversation turn without {err}") from None
    for key in ("responses", "ratings"):
      if not isinstance(record[key], list):
        raise ValueError(f"{key!r} must be a list")
    return cls(
        conversation=turns,
        responses=tuple(record["responses"]),
        ratings=tuple(record["ratings"]),
        category=record["category"],
        source=record["source"],
        uid=record["uid"],
        subset=record.get("subset"),
    )

  def to_json(self) -> str:
    # ensure_ascii=False keeps non-English text readable and the files smaller.
    return json.dumps(self.to_dict(), ensure_ascii=False)

  @classmethod
  def from_json(cls, text: str) -> PreferenceItem:
    try:
      record = json.loads(text)
    except json.JSONDecodeError as err:
      raise ValueError(f"invalid JSON: {err}") from None
    return cls.from_dict(record)

  def with_order(self, order: Sequence[int]) -> PreferenceItem:
    """The same item with responses (and ratings) permuted: new position k holds old response order[k]."""
    if sorted(order) != list(range(len(self.responses))):
      raise ValueError(f"PreferenceItem {self.uid!r}: {list(order)} is not a permutation of the responses")
    return dataclasses.replace(
        self,
        responses=tuple(self.responses[i] for i in order),
        ratings=tuple(self.ratings[i] for i in order),
    )
