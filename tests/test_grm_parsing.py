"""Tests for spct_jax.grm.parsing: which span is taken, and the precise error for each failure."""

import numpy as np
import pytest

from spct_jax.grm import parsing


@pytest.mark.parametrize("text, n, expected", [
    ("Scores: \\boxed{8, 3}", 2, (8, 3)),
    ("Scores: \\\\boxed{8, 3}", 2, (8, 3)),  # double backslash, as JSON-escaped text shows it
    ("Scores: \\boxed{ 7 ,3 }", 2, (7, 3)),
    ("The scores are [[8, 1]] out of 10.", 2, (8, 1)),
    ("Scores: [4,5,6]", 3, (4, 5, 6)),
    ("Scores: \\boxed{+7, 2}", 2, (7, 2)),
    ("Scores: \\boxed{6，9}", 2, (6, 9)),  # full-width comma
    ("Scores: \\boxed{\n  5\n}", 1, (5,)),
])
def test_parses_valid_scores(text, n, expected):
  parsed = parsing.parse_scores(text, n)
  assert parsed.ok and parsed.error is None
  assert parsed.scores == expected


def test_last_boxed_wins_over_earlier_boxed_and_any_bracket():
  text = "Draft \\boxed{2, 9}. Final: \\boxed{9, 2}. Also [3, 3]."
  assert parsing.parse_scores(text, 2).scores == (9, 2)


def test_last_numeric_bracket_wins_without_boxed():
  assert parsing.parse_scores("first [1, 2] then [[6, 4]]", 2).scores == (6, 4)


def test_template_echoes_are_not_score_lists():
  text = ("[The Begin of Response 1]\nfoo\n[The End of Response 1]\n[The Begin of Response 2]\nbar\n"
          "[The End of Response 2]\nAnalysis: per [General Evaluation Criteria] ...\nScores: [7, 4]\n"
          "[The End of Response 2]")
  assert parsing.parse_scores(text, 2).scores == (7, 4)
  only_echo = "[The Begin of Response 1]\nfoo\n[The End of Response 1]"
  assert parsing.parse_scores(only_echo, 1).error == "no \\boxed{} or [..] found"


@pytest.mark.parametrize("text, n, error", [
    ("no scores here", 2, "no \\boxed{} or [..] found"),
    ("Scores: \\boxed{8, 3", 2, "no \\boxed{} or [..] found"),  # unclosed (truncated) box
    ("\\boxed{1, 2, 3}", 2, "expected 2 scores, found 3"),
    ("\\boxed{7}", 2, "expected 2 scores, found 1"),
    ("\\boxed{abc, 3}", 2, "score 'abc' is not an integer"),
    ("\\boxed{x, x}", 2, "score 'x' is not an integer"),  # echoed format example
    ("\\boxed{7.0, 3}", 2, "score '7.0' is not an integer"),
    ("[[8, 7.5]]", 2, "score '7.5' is not an integer"),
    ("\\boxed{8, }", 2, "score '' is not an integer"),
    ("\\boxed{11, 3}", 2, "score 11 outside [1, 10]"),
    ("\\boxed{-1, 3}", 2, "score -1 outside [1, 10]"),
    ("\\boxed{0, 3}", 2, "score 0 outside [1, 10]"),
])
def test_errors_are_precise(text, n, error):
  parsed = parsing.parse_scores(text, n)
  assert not parsed.ok and parsed.scores is None
  assert parsed.error == error


def test_negative_scores_allowed_by_range():
  assert parsing.parse_scores("\\boxed{-3, 2}", 2, score_range=(-5, 5)).scores == (-3, 2)


def test_binary_single_response():
  assert parsing.parse_scores("Scores: \\boxed{0}", 1, score_range=(0, 1)).scores == (0,)
  assert parsing.parse_scores("Scores: \\boxed{1}", 1, score_range=(0, 1)).scores == (1,)
  assert parsing.parse_scores("Scores: \\boxed{2}", 1, score_range=(0, 1)).error == "score 2 outside [0, 1]"
  # 0 is out of the default range, in the binary range.
  assert not parsing.parse_scores("\\boxed{0}", 1).ok


def test_parse_batch_ragged_pads_and_flags():
  texts = ["\\boxed{8, 2}", "\\boxed{3, 4, 5}", "garbage", "\\boxed{1}"]
  scores, valid, errors = parsing.parse_batch(texts, [2, 3, 2, 1])
  assert scores.dtype == np.int32 and valid.dtype == np.bool_
  np.testing.assert_array_equal(scores, [[8, 2, 0], [3, 4, 5], [0, 0, 0], [1, 0, 0]])
  np.testing.assert_array_equal(valid, [True, True, False, True])
  assert errors == [None, None, "no \\boxed{} or [..] found", None]


def test_parse_batch_scalar_n_and_range():
  scores, valid, errors = parsing.parse_batch(["\\boxed{1}", "\\boxed{0}", "\\boxed{3}"], 1, score_range=(0, 1))
  np.testing.assert_array_equal(scores[:, 0], [1, 0, 0])
  np.testing.assert_array_equal(valid, [True, True, False])
  assert errors[2] == "score 3 outside [0, 1]"
  with pytest.raises(ValueError, match="3 texts"):
    parsing.parse_batch(["a", "b", "c"], [1, 2])


@pytest.mark.parametrize("text", ["\\boxed{٧, 3}", "\\boxed{8, ３}", "[[٨, 1]]", "\\boxed{१}"])
def test_only_ascii_digits_are_scores(text):
  # Python's \d and int() accept Arabic-Indic, full-width and Devanagari digits; the parser must not.
  n = 1 if text.count(",") == 0 else 2
  parsed = parsing.parse_scores(text, n)
  assert not parsed.ok
  assert parsed.error.endswith("is not an integer") or parsed.error == parsing.NO_SCORES_ERROR


def test_parse_batch_per_row_score_ranges_and_width():
  texts = ["\\boxed{1}", "\\boxed{9, 2}", "\\boxed{10}", "\\boxed{0, 1}"]
  scores, valid, errors = parsing.parse_batch(texts, [1, 2, 1, 2], score_range=[(0, 1), (1, 10), (0, 1), (1, 10)],
                                              width=4)
  assert scores.shape == (4, 4)
  np.testing.assert_array_equal(scores, [[1, 0, 0, 0], [9, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(valid, [True, True, False, False])
  assert errors[2:] == ["score 10 outside [0, 1]", "score 0 outside [1, 10]"]
  with pytest.raises(ValueError, match="score_range has 1 entries"):
    parsing.parse_batch(texts, 1, score_range=[(0, 1)])
  with pytest.raises(ValueError, match="width=1"):
    parsing.parse_batch(texts, [1, 2, 1, 2], width=1)
