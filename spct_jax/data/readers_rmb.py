"""RMB readers (Zhou-Zoey/RMB-Reward-Model-Benchmark): the pairwise set and the best-of-N set.

Files: `<root>/rmb/{Pairwise_set,BoN_set}/**/*.json[.gz]`, each a JSON list.
  pairwise: {pair_uid, conversation_input: [{role, content, language}], chosen: {llm_name, answer},
             reject: {llm_name, answer}, category_path}
  BoN:      {bon_uid, conversation_input, bon_best: {llm_name, answer}, loser_list: [{llm_name, answer}, ...],
             category_path}
Mapping: category = category_path without its leading "<set>/" (e.g. "Helpfulness/Chat/Discussion"),
subset = "Helpfulness" / "Harmlessness". Pairwise ratings: chosen 1, rejected 0. BoN: the whole list is one item
(n = 1 + losers), best 1 and every loser 0, as the paper scores it (correct iff the best outscores every loser).
Both are stored chosen/best first, so the default order is "shuffled" (see `reader_base.arrange`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spct_jax.data import reader_base as rb
from spct_jax.data import schema

_PATTERNS = ("*.json", "*.json.gz")


def _conversation(record: dict[str, Any]) -> tuple[tuple[str, str], ...]:
  turns = record["conversation_input"]
  if not isinstance(turns, list) or not turns:
    raise ValueError("'conversation_input' must be a non-empty list")
  return tuple((rb.get_str(t, "role"), rb.get_str(t, "content")) for t in turns)


def _category(record: dict[str, Any], set_name: str) -> tuple[str, str]:
  path = rb.get_str(record, "category_path")
  prefix = set_name + "/"
  category = path[len(prefix):] if path.startswith(prefix) else path
  return category, category.split("/", 1)[0]


def _read(root: Path | str, set_name: str, source: str, parse, order: str, seed: int) -> rb.ReadResult:
  rb.check_order(order)
  directory = rb.dataset_dir(root, "rmb") / set_name
  tally = rb.Tally(directory)
  for path in rb.find_files(directory, _PATTERNS):
    prefix = rb.uid_prefix(path, root)
    for index, record in enumerate(rb.load_json_list(path)):
      tally.records += 1
      with rb.record_errors(path, index):
        # Parse every field first so a malformed record fails even when it would be skipped.
        responses, ratings = parse(record)
        conversation = _conversation(record)
        category, subset = _category(record, set_name)
        if tally.skip_if_unjudgeable(responses, ratings):
          continue
        item = schema.PreferenceItem(
            conversation=conversation,
            responses=tuple(responses),
            ratings=tuple(ratings),
            category=category,
            source=source,
            uid=f"{prefix}:{index}",
            subset=subset,
        )
        tally.keep(rb.arrange(item, order, seed))
  return tally.result()


def _parse_pair(record: dict[str, Any]) -> tuple[list[str], list[float]]:
  return [rb.get_str(record["chosen"], "answer"), rb.get_str(record["reject"], "answer")], [1.0, 0.0]


def _parse_bon(record: dict[str, Any]) -> tuple[list[str], list[float]]:
  losers = record["loser_list"]
  if not isinstance(losers, list) or not losers:
    raise ValueError("'loser_list' must be a non-empty list")
  responses = [rb.get_str(record["bon_best"], "answer")] + [rb.get_str(x, "answer") for x in losers]
  return responses, [1.0] + [0.0] * len(losers)


def read_rmb_pairwise(root: Path | str, *, order: str = "shuffled", seed: int = 0) -> rb.ReadResult:
  """RMB pairwise set: one item per pair; pairs whose two answers are the same text are skipped."""
  return _read(root, "Pairwise_set", "rmb_pairwise", _parse_pair, order, seed)


def read_rmb_bon(root: Path | str, *, order: str = "shuffled", seed: int = 0) -> rb.ReadResult:
  """RMB best-of-N set: one item per list (best + 2..6 losers); lists whose best equals a loser are skipped."""
  return _read(root, "BoN_set", "rmb_bon", _parse_bon, order, seed)
