"""Stop rules of the decode loop: token-level automata that end a row once its text has completed a pattern.

The GRM's rule (`grm.scorer.stop_after_scores`) ends a judgement at the `}` closing the first `\\boxed{` after
`Scores:`. It is matched on the decoded characters, not on token ids, because a tokenizer splits the same text in
several ways (Gemma: "Scores", ":", "\u2581\\", "boxed", "{" or "Scores", ":\\", "boxed", ...): each vocabulary piece is
run through a character automaton (one KMP matcher per text, chained) from every state, which gives a [V, S] table
of token transitions. The sampler carries one state per row and does one table lookup per generated token.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class StopAfter:
  """A stop rule as a token-level automaton: a row also stops at the token that brings it to the accepting state.

  `transitions[t, q]` is the state after token t from state q; state 0 is the start and state S - 1 accepts (and
  is absorbing). The decode loop carries one int32 state per row and looks each new token up: nothing but a
  [V, S] table gather per step. Build one with `after_texts` (texts that must appear in order, matched on the
  decoded characters whatever the tokenization) or `after_tokens` (a trigger token, then a stop token).
  """

  transitions: np.ndarray  # int8[V, S]

  @classmethod
  def after_tokens(cls, trigger_ids: Sequence[int], stop_ids: Sequence[int], vocab_size: int) -> StopAfter:
    """Stop at any `stop_ids` token emitted after (strictly later than) one of `trigger_ids`."""
    table = np.tile(np.arange(3, dtype=np.int8), (vocab_size, 1))
    table[list(trigger_ids), 0] = 1
    table[list(stop_ids), 1] = 2
    return cls(table)

  @classmethod
  def after_texts(cls, tokenizer, texts: Sequence[str], *, prefix: str = "") -> StopAfter:
    """Stop at the token that completes the last of `texts`, each found after the previous one ends.

    E.g. ("Scores:", "\\boxed{", "}") stops at the `}` closing the first box after "Scores:", however the
    tokenizer splits these (pieces are matched character by character; `▁` is a space, `<0xNN>` a byte).
    prefix: text already generated before the first token (an output prefix the prompt ends with).
    """
    pieces = [_piece_text(tokenizer.id_to_piece(i)) for i in range(tokenizer.vocab_size)]
    return cls(_text_automaton(pieces, tuple(texts), prefix))

  @property
  def num_states(self) -> int:
    return self.transitions.shape[1]

  def table(self, vocab_size: int) -> np.ndarray:
    """The transitions for a model vocabulary of `vocab_size` ids: ids the rule does not know keep the state."""
    rows = self.transitions.shape[0]
    if rows > vocab_size:
      raise ValueError(f"stop rule covers {rows} token ids, more than the model's vocabulary of {vocab_size}")
    identity = np.tile(np.arange(self.num_states, dtype=self.transitions.dtype), (vocab_size - rows, 1))
    return np.concatenate([self.transitions, identity])


NEVER_STOP = StopAfter(np.zeros((0, 2), np.int8))  # state 1 (accepting) is unreachable: EOS / length only


def _piece_text(piece: str) -> str:
  if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # byte-fallback piece
    byte = int(piece[3:5], 16)
    return chr(byte) if byte < 0x80 else "\0"  # a non-ASCII byte matches no pattern character
  return piece.replace("\u2581", " ")


def _text_automaton(pieces: Sequence[str], texts: tuple[str, ...], prefix: str) -> np.ndarray:
  """int8[V, S] token transitions of the character automaton that finds `texts` one after another (KMP each)."""
  if not texts or not all(texts):
    raise ValueError(f"stop texts must be non-empty strings, got {texts!r}")
  alphabet = sorted(set("".join(texts)))
  code = {c: i for i, c in enumerate(alphabet)}  # other characters: len(alphabet)
  offsets = np.cumsum([0] + [len(t) for t in texts])  # state offsets[p] + j: j chars of text p matched
  accept = int(offsets[-1])
  char_step = np.zeros((accept + 1, len(alphabet) + 1), np.int16)
  char_step[accept] = accept
  for p, text in enumerate(texts):
    for j in range(len(text)):
      for c, ch in enumerate(alphabet + [None]):
        # KMP: the longest prefix of `text` that is a suffix of (matched part + ch).
        seen = text[:j] + (ch if ch is not None else "\0")
        m = next(m for m in range(len(seen), -1, -1) if text.startswith(seen[len(seen) - m:]))
        char_step[offsets[p] + j, c] = offsets[p] + m  # m == len(text) lands on the next text's start
  num_states = accept + 1
  if num_states > 127:
    raise ValueError(f"stop texts need {num_states} states; at most 127 fit the int8 table")
  width = max(len(p) for p in pieces)
  chars = np.full((len(pieces), width), -1, np.int16)  # -1: past the piece's end, the state is kept
  for i, piece in enumerate(pieces):
    chars[i, :len(piece)] = [code.get(ch, len(alphabet)) for ch in piece]
  state = np.tile(np.arange(num_states, dtype=np.int16), (len(pieces), 1))
  for t in range(width):
    c = chars[:, t:t + 1]
    state = np.where(c >= 0, char_step[state, np.maximum(c, 0)], state)
  start = 0
  for ch in prefix:
    start = int(char_step[start, code.get(ch, len(alphabet))])
  if start == accept:
    raise ValueError(f"the prefix {prefix!r} already contains every stop text {texts!r}")
  # Relabel so the start is state 0 (swap it with 0); the accepting state stays last.
  relabel = np.arange(num_states)
  relabel[[0, start]] = relabel[[start, 0]]
  return relabel[state[:, relabel]].astype(np.int8)
