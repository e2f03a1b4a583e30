"""SentencePiece tokenizer for Gemma: from a `.model` file or rebuilt from GGUF metadata; chat-turn formatting."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"

_Piece = sp_pb2.ModelProto.SentencePiece
_SPACE_MARK = "\u2581"


class Tokenizer:
  """Thin wrapper over `sentencepiece.SentencePieceProcessor` with Gemma's special ids.

  `encode` never adds EOS; `decode` skips padding and drops control tokens (BOS/EOS), but keeps the chat
  markers `<start_of_turn>` / `<end_of_turn>` as text so a decoded transcript can be re-encoded unchanged.

  Known differences from HF transformers' Gemma tokenizer (ids otherwise equal, tests/test_tokenizer.py):
  a run of more than 31 spaces (the longest whitespace piece) is split differently, e.g. 32 spaces + "b" ->
  [31 spaces, "▁b"] here vs [16 spaces, 16 spaces, "b"] in HF, decoding to the same text; and control-token
  text other than the chat markers (e.g. a literal "<bos>") stays plain text here, HF maps it to the control id.
  """

  def __init__(self, serialized_model: bytes):
    self._model = bytes(serialized_model)
    self._sp = spm.SentencePieceProcessor()
    self._sp.LoadFromSerializedProto(self._model)

  @classmethod
  def from_file(cls, path: str | os.PathLike) -> Tokenizer:
    """Loads a sentencepiece `tokenizer.model` file."""
    if not os.path.isfile(path):
      raise FileNotFoundError(f"tokenizer model {os.fspath(path)!r} does not exist")
    with open(path, "rb") as f:
      data = f.read()
    try:
      return cls(data)
    except RuntimeError as e:  # sentencepiece's parse error does not name the file
      raise ValueError(f"{os.fspath(path)!r} is not a sentencepiece model: {e}") from e

  @classmethod
  def from_gguf_metadata(cls, meta: Mapping[str, Any]) -> Tokenizer:
    """Rebuilds the sentencepiece model from GGUF `tokenizer.ggml.*` metadata (see `gguf_tokenizer_meta`)."""
    return cls(build_sentencepiece_model(meta))

  @property
  def serialized_model(self) -> bytes:
    return self._model

  @property
  def processor(self) -> spm.SentencePieceProcessor:
    return self._sp

  @property
  def vocab_size(self) -> int:
    return self._sp.GetPieceSize()

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def pad_id(self) -> int:
    return self._sp.pad_id()

  @property
  def start_of_turn_id(self) -> int:
    return self._sp.PieceToId(START_OF_TURN)

  @property
  def end_of_turn_id(self) -> int:
    return self._sp.PieceToId(END_OF_TURN)

  def encode(self, text: str, add_bos: bool = True) -> list[int]:
    ids = self._sp.EncodeAsIds(text)
    return [self.bos_id, *ids] if add_bos else ids

  def encode_batch(self, texts: Sequence[str], add_bos: bool = True) -> list[list[int]]:
    batch = self._sp.EncodeAsIds(list(texts))
    return [[self.bos_id, *ids] for ids in batch] if add_bos else batch

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1) if int(i) != self.pad_id]
    return self._sp.DecodeIds(ids)

  def id_to_piece(self, i: int) -> str:
    return self._sp.IdToPiece(int(i))

  def __len__(self) -> int:
    return self.vocab_size


def format_chat(turns: Sequence[tuple[str, str] | Mapping[str, str]], add_generation_prompt: bool = True) -> str:
  """Gemma chat text: `<start_of_turn>{role}\\n{text}<end_of_turn>\\n` per turn, then `<start_of_turn>model\\n`.

  Args:
    turns: (role, text) pairs or {"role", "content"} dicts; roles are "user" or "model" ("assistant" maps to
      "model"; a "system" turn is prepended to the next user turn, as Gemma's own template does).
    add_generation_prompt: end with an open model turn.
  """
  parts, system = [], None
  for turn in turns:
    role, text = (turn["role"], turn["content"]) if isinstance(turn, Mapping) else turn
    role = {"assistant": "model"}.get(role, role)
    if role == "system":
      system = text
      continue
    if role not in ("user", "model"):
      raise ValueError(f"chat role {role!r} is not one of user/model/assistant/system")
    if system is not None and role == "user":
      text, system = f"{system}\n\n{text}", None
    parts.append(f"{START_OF_TURN}{role}\n{text}{END_OF_TURN}\n")
  if system is not None:
    raise ValueError("a system turn must be followed by a user turn")
  if add_generation_prompt:
    parts.append(f"{START_OF_TURN}model\n")
  return "".join(parts)


def gguf_tokenizer_meta(fields: Mapping[str, Any]) -> dict[str, Any]:
  """Collects what the rebuild needs from GGUF metadata values (`field.contents()` of `tokenizer.ggml.*`)."""
  model = fields.get("tokenizer.ggml.model")
  if model != "llama":
    raise ValueError(f"tokenizer.ggml.model={model!r}; only sentencepiece ('llama') tokenizers are supported")
  return {
      "tokens": list(fields["tokenizer.ggml.tokens"]),
      "scores": np.asarray(fields["tokenizer.ggml.scores"], np.float32),
      "types": np.asarray(fields["tokenizer.ggml.token_type"], np.int32),
      "bos_id": int(fields.get("tokenizer.ggml.bos_token_id", 2)),
      "eos_id": int(fields.get("tokenizer.ggml.eos_token_id", 1)),
      "unk_id": int(fields.get("tokenizer.ggml.unknown_token_id", 3)),
      "pad_id": int(fields.get("tokenizer.ggml.padding_token_id", 0)),
  }


def build_sentencepiece_model(meta: Mapping[str, Any]) -> bytes:
  """Serialized sentencepiece ModelProto equivalent to Gemma's `tokenizer.model` (recipe: shared gemma3-270m.md).

  Fixes applied to the GGUF vocabulary: the unk id becomes UNKNOWN (GGUF marks it CONTROL); whitespace-only pieces
  stored with literal spaces get U+2581 back; the chat markers become USER_DEFINED so they are matched in raw text.
  """
  tokens, scores, types = meta["tokens"], meta["scores"], meta["types"]
  if not len(tokens) == len(scores) == len(types):
    raise ValueError(f"GGUF tokenizer arrays disagree: {len(tokens)} tokens, {len(scores)} scores, "
                     f"{len(types)} types")
  unk_id = meta["unk_id"]
  proto = sp_pb2.ModelProto()
  for i, (piece, score, kind) in enumerate(zip(tokens, scores, types)):
    kind = int(kind)
    if i == unk_id:
      kind = _Piece.UNKNOWN
    elif piece in (START_OF_TURN, END_OF_TURN):
      kind = _Piece.USER_DEFINED
    if kind != _Piece.BYTE and piece and piece.strip(" ") == "":
      piece = piece.replace(" ", _SPACE_MARK)
    proto.pieces.add(piece=piece, score=float(score), type=kind)

  ts = proto.trainer_spec
  ts.model_type = sp_pb2.TrainerSpec.BPE
  ts.vocab_size = len(tokens)
  ts.byte_fallback = True
  ts.split_digits = True
  ts.allow_whitespace_only_pieces = True
  ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = unk_id, meta["bos_id"], meta["eos_id"], meta["pad_id"]
  ts.unk_piece, ts.bos_piece = tokens[unk_id], tokens[meta["bos_id"]]
  ts.eos_piece, ts.pad_piece = tokens[meta["eos_id"]], tokens[meta["pad_id"]]

  ns = proto.normalizer_spec
  ns.name = "identity"
  ns.add_dummy_prefix = False
  ns.remove_extra_whitespaces = False
  ns.escape_whitespaces = True
  return proto.SerializeToString()
