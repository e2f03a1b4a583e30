"""PreferenceItem invariants, skip policy and the generic JSON format."""

import json
import math

import pytest

from spct_jax.data import schema
from spct_jax.data.schema import PreferenceItem


def _item(**overrides):
  fields = dict(
      conversation=(("user", "Hi"), ("assistant", "Hello!"), ("user", "What is 2 + 2?")),
      responses=("4", "5"),
      ratings=(1.0, 0.0),
      category="math",
      source="unit",
      uid="unit:0",
  )
  fields.update(overrides)
  return PreferenceItem(**fields)


def test_properties():
  item = _item(responses=("a", "b", "c"), ratings=(0.0, 2.0, 1.0))
  assert item.validate() is item
  assert item.num_responses == 3
  assert item.best_index == 1
  assert item.query == "What is 2 + 2?"
  assert item.subset is None


def test_single_response_label():
  item = _item(responses=("4",), ratings=(1.0,)).validate()
  assert item.best_index == 0
  _item(responses=("5",), ratings=(0.0,)).validate()
  with pytest.raises(ValueError, match="0/1 label"):
    _item(responses=("5",), ratings=(0.5,)).validate()


def test_lists_become_tuples():
  item = _item(conversation=[["user", "q"]], responses=["a", "b"], ratings=[1.0, 0.0])
  assert item.conversation == (("user", "q"),)
  assert isinstance(item.responses, tuple) and isinstance(item.ratings, tuple)
  hash(item)  # Frozen and hashable.


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(ratings=(1.0, 1.0)), "shared"),
        (dict(responses=("same", " same\n")), "equals a lower-rated"),
        (dict(ratings=(1.0,)), "1 ratings for 2 responses"),
        (dict(responses=(), ratings=()), "no responses"),
        (dict(ratings=(math.nan, 0.0)), "finite"),
        (dict(ratings=(True, False)), "finite number"),
        (dict(responses=("a", 3)), "response 1"),
        (dict(conversation=()), "conversation is empty"),
        (dict(conversation=(("user", "a"), ("user", "b"))), "turn 1 has role 'user'"),
        (dict(conversation=(("assistant", "a"), ("user", "b"))), "turn 0 has role 'assistant'"),
        (dict(conversation=(("user", "a"), ("assistant", "b"))), "end with a user turn"),
        (dict(conversation=(("system", "a"),)), "turn 0 has role 'system'"),
        (dict(uid=""), "uid"),
        (dict(source=""), "source"),
        (dict(subset=3), "subset"),
    ],
)
def test_validate_rejects(overrides, message):
  item = _item(**overrides)
  with pytest.raises(ValueError, match=message) as err:
    item.validate()
  assert repr(item.uid) in str(err.value)


def test_best_index_tie_raises():
  with pytest.raises(ValueError, match="unit:0"):
    _ = _item(ratings=(0.5, 0.5)).best_index


def test_skip_reason():
  assert schema.skip_reason(("a", "b"), (1, 0)) is None
  assert schema.skip_reason(("a", "b"), (1, 1)) == schema.SKIP_TIE
  assert schema.skip_reason(("a", "b", "c"), (1, 1, 0)) == schema.SKIP_TIE
  assert schema.skip_reason(("a ", "a"), (1, 0)) == schema.SKIP_DUPLICATE
  # Losers may repeat each other: the best is still strictly better than each.
  assert schema.skip_reason(("a", "b", "b"), (1, 0, 0)) is None
  # A lone item never has a tie.
  assert schema.skip_reason(("a",), (0,)) is None


def test_json_round_trip():
  item = _item(subset="Helpfulness", responses=("四", "ünïcode \"quoted\"\nline"), uid="x/y.json:3").validate()
  text = item.to_json()
  assert "\n" not in text  # One line per item in JSONL.
  assert "四" in text  # Not ASCII-escaped.
  back = PreferenceItem.from_json(text)
  assert back == item
  assert json.loads(text)["conversation"][0] == {"role": "user", "content": "Hi"}


def test_from_json_errors():
  with pytest.raises(ValueError, match="invalid JSON"):
    PreferenceItem.from_json("{not json")
  with pytest.raises(ValueError, match="missing keys"):
    PreferenceItem.from_json(json.dumps({"uid": "a"}))
  with pytest.raises(ValueError, match="JSON object"):
    PreferenceItem.from_json("[1, 2]")
  record = _item().to_dict()
  record["conversation"] = [{"role": "user"}]
  with pytest.raises(ValueError, match="content"):
    PreferenceItem.from_dict(record)


def test_with_order():
  item = _item(responses=("a", "b", "c"), ratings=(1.0, 0.0, 0.5))
  moved = item.with_order([2, 0, 1])
  assert moved.responses == ("c", "a", "b")
  assert moved.ratings == (0.5, 1.0, 0.0)
  assert moved.best_index == 1
  with pytest.raises(ValueError, match="permutation"):
    item.with_order([0, 0, 1])
