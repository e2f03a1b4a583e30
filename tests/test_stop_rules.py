"""Stop rules: the character automaton over vocabulary pieces, on the GRM's real text patterns and a toy vocabulary.

The sampler runs these tables in its decode loop (tests/test_sampler.py drives one through the real sampler).
"""

import numpy as np
import pytest

from spct_jax import stop_rules
from spct_jax.grm import scorer


@pytest.fixture(scope="module")
def gemma_tokenizer():
  from spct_jax.weights import load_tokenizer
  return load_tokenizer("gemma3-270m")


@pytest.fixture(scope="module")
def score_stop_table(gemma_tokenizer):
  return scorer.stop_after_scores(gemma_tokenizer).table(gemma_tokenizer.vocab_size)


@pytest.mark.parametrize("text, stops_after", [
    ("Analysis: x\nScores: \\boxed{8, 3}\nmore", "Analysis: x\nScores: \\boxed{8, 3}"),
    ("Scores: \\boxed{\n8, 3 }\n", "Scores: \\boxed{\n8, 3 }"),
    ("Scores: Response 1 gets 8: \\boxed{8, 3}.", "Scores: Response 1 gets 8: \\boxed{8, 3}."),
    ("Analysis: see \\boxed{42}. Sc Scores Scores: ok \\\\boxed{1,2} x", None),  # stops at the double box too
    ("Analysis: \\boxed{42}\nScores: [8, 3]", None),  # bracket scores: no box to stop at
    ("scores: \\boxed{8, 3}", None),  # the template's capitalised "Scores:" only
])
def test_score_stop_rule_on_text_patterns(gemma_tokenizer, score_stop_table, text, stops_after):
  tok, table = gemma_tokenizer, score_stop_table
  ids, state, stopped = tok.encode(text, add_bos=False), 0, None
  for j, token in enumerate(ids):
    state = table[token, state]
    if state == table.shape[1] - 1:
      stopped = tok.decode(ids[:j + 1])
      break
  if "\\\\boxed" in text:
    assert stopped is not None and stopped.endswith("\\\\boxed{1,2}")
  else:
    assert stopped == stops_after


def test_text_automaton_follows_the_prefix_and_matches_across_pieces():
  class Pieces:  # a toy vocabulary that splits the pattern unevenly
    pieces = ["a", "Sco", "res", ":", "\\", "box", "ed{", "}", "Scores:\\boxed{7}", "\u2581x", "<0x7D>"]
    vocab_size = len(pieces)

    def id_to_piece(self, i):
      return self.pieces[i]

  rule = stop_rules.StopAfter.after_texts(Pieces(), ("Scores:", "\\boxed{", "}"))

  def stop_index(ids, table):
    state = 0
    for j, t in enumerate(ids):
      state = table[t, state]
      if state == table.shape[1] - 1:
        return j
    return None

  table = rule.table(Pieces.vocab_size + 3)  # ids the rule does not know keep the state
  assert stop_index([1, 2, 3, 0, 4, 5, 6, 0, 7], table) == 8
  assert stop_index([1, 2, 3, 4, 5, 6, 10], table) == 6  # a byte piece "}" closes it as well
  assert stop_index([8], table) == 0  # one piece holding everything
  assert stop_index([1, 9, 2, 3, 4, 5, 6, 7], table) is None  # "Sco xres:" is not "Scores:"
  assert stop_index([4, 5, 6, 7, 1, 2, 3, 4, 5, 6, 12, 7], table) == 11
  # A prefix that already wrote "Scores:" starts the rule at the box.
  after_prefix = stop_rules.StopAfter.after_texts(Pieces(), ("Scores:", "\\boxed{", "}"), prefix="Scores:").table(11)
  assert stop_index([4, 5, 6, 7], after_prefix) == 3
  with pytest.raises(ValueError, match="already contains"):
    stop_rules.StopAfter.after_texts(Pieces(), ("a", "}"), prefix="a}")


def test_after_tokens_table_and_vocabulary_checks():
  rule = stop_rules.StopAfter.after_tokens([3], [5], vocab_size=6)
  table = rule.table(8)  # ids 6, 7 (beyond the rule's vocabulary) keep the state
  state, states = 0, []
  for token in [5, 3, 3, 6, 5]:  # a stop token before the trigger does not count; the one after does
    state = table[token, state]
    states.append(int(state))
  assert states == [0, 1, 1, 1, 2]
  with pytest.raises(ValueError, match="more than the model's vocabulary"):
    rule.table(4)
  assert stop_rules.NEVER_STOP.table(4).shape == (4, 2) and (stop_rules.NEVER_STOP.table(4) == [0, 1]).all()
  with pytest.raises(ValueError, match="non-empty"):
    stop_rules.StopAfter.after_texts(gemma_like(), ("", "}"))


def gemma_like():
  class Pieces:
    vocab_size = 2

    def id_to_piece(self, i):
      return ["a", "}"][i]

  return Pieces()
