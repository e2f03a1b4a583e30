"""Pairwise readers: LLMBar, JudgeBench, PandaLM, Auto-J, RM-Bench, Anthropic HH-RLHF.

Each returns one item per usable pair (RM-Bench: several per prompt), ratings 1 for the better response and 0 for
the other. See `readers.py` for the dataset table (paths, orders, options, counts) and the skip policy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spct_jax.data import reader_base as rb
from spct_jax.data import schema

SKIP_PREFIX_MISMATCH = "prefix_mismatch"
SKIP_MALFORMED_TRANSCRIPT = "malformed_transcript"
SKIP_NO_MAJORITY = "no_majority"

HH_SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
RM_BENCH_DOMAINS = ("chat", "code", "safety-refuse", "safety-response")
RM_BENCH_PAIRS = ("all", "diagonal")


def _pair_item(responses, ratings, *, query, category, source, uid, subset=None) -> schema.PreferenceItem:
  return schema.PreferenceItem(
      conversation=rb.single_turn(query),
      responses=tuple(responses),
      ratings=tuple(ratings),
      category=category,
      source=source,
      uid=uid,
      subset=subset,
  )


def _winner_ratings(winner: int) -> list[float]:
  return [1.0, 0.0] if winner == 0 else [0.0, 1.0]


def read_llmbar(
    root: Path | str, *, subsets: Sequence[str] | None = None, order: str = "source", seed: int = 0
) -> rb.ReadResult:
  """LLMBar `Dataset/**/dataset.json`: {input, output_1, output_2, label in {1, 2}}.

  category = the subset path under Dataset/ (e.g. "LLMBar/Adversarial/GPTInst"), subset = its first part.
  `subsets` keeps only paths equal to or under the given prefixes (e.g. ("LLMBar",) = the 419 RewardBench pairs).
  """
  rb.check_order(order)
  directory = rb.dataset_dir(root, "llmbar") / "Dataset"
  tally = rb.Tally(directory)
  for path in rb.find_files(directory, ("dataset.json",)):
    category = path.parent.relative_to(directory).as_posix()
    if subsets and not any(category == s or category.startswith(s.rstrip("/") + "/") for s in subsets):
      continue
    prefix = rb.uid_prefix(path, root)
    for index, record in enumerate(rb.load_json_list(path)):
      tally.records += 1
      with rb.record_errors(path, index):
        responses = [rb.get_str(record, "output_1"), rb.get_str(record, "output_2")]
        query = rb.get_str(record, "input")
        label = record["label"]
        if isinstance(label, bool) or label not in (1, 2):
          raise ValueError(f"label must be 1 or 2, got {label!r}")
        ratings = _winner_ratings(label - 1)
        if tally.skip_if_unjudgeable(responses, ratings):
          continue
        item = _pair_item(responses, ratings, query=query, category=category, source="llmbar",
                          uid=f"{prefix}:{index}", subset=category.split("/", 1)[0])
        tally.keep(rb.arrange(item, order, seed))
  return tally.result()


_JUDGEBENCH_LABELS = {"A>B": 0, "B>A": 1, "A=B": None, "B=A": None}


def read_judgebench(root: Path | str, *, order: str = "source", seed: int = 0) -> rb.ReadResult:
  """JudgeBench `data/*.jsonl`: {question, response_A, response_B, label "A>B" | "B>A", source, response_model}.

  category = the record's source (e.g. "mmlu-pro-math"), subset = response_model. "A=B" would be a tie (none
  in the shipped files).
  """
  rb.check_order(order)
  directory = rb.dataset_dir(root, "judgebench") / "data"
  tally = rb.Tally(directory)
  for path in rb.find_files(directory, ("*.jsonl",)):
    prefix = rb.uid_prefix(path, root)
    for index, line, record in rb.iter_jsonl(path):
      tally.records += 1
      with rb.record_errors(path, index, line):
        responses = [rb.get_str(record, "response_A"), rb.get_str(record, "response_B")]
        query = rb.get_str(record, "question")
        label = rb.get_str(record, "label")
        if label not in _JUDGEBENCH_LABELS:
          raise ValueError(f"label must be one of {sorted(_JUDGEBENCH_LABELS)}, got {label!r}")
        category, model = rb.get_str(record, "source"), rb.get_str(record, "response_model")
        if _JUDGEBENCH_LABELS[label] is None:
          tally.skip(schema.SKIP_TIE)
          continue
        ratings = _winner_ratings(_JUDGEBENCH_LABELS[label])
        if tally.skip_if_unjudgeable(responses, ratings):
          continue
        item = _pair_item(responses, ratings, query=query, category=category, source="judgebench",
                          uid=f"{prefix}:{index}", subset=model)
        tally.keep(rb.arrange(item, order, seed))
  return tally.result()


def _vote(value: Any) -> int:
  # SOURCE.txt describes string votes; the shipped file has ints. Accept both, nothing else.
  if isinstance(value, str) and value.strip() in ("0", "1", "2"):
    return int(value)
  if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1, 2):
    return value
  raise ValueError(f"annotator vote must be 0, 1 or 2, got {value!r}")


def _pandalm_response(record: dict[str, Any], key: str, tally: rb.Tally) -> str:
  value = record[key]
  if isinstance(value, bool):
    # A few responses were stored as JSON true/false (a YAML-style conversion upstream): the text was "True".
    tally.note("bool_response_as_text")
    return str(value)
  return rb.get_str(record, key)


def read_pandalm(root: Path | str, *, order: str = "source", seed: int = 0) -> rb.ReadResult:
  """PandaLM `data/testset-v1.json`: 3 annotators vote 1 / 2 (that response is better) or 0 (tie).

  Label = the majority vote (>= 2 of 3 agree). A majority for 0 is a tie and is skipped, as is a three-way
  split (no majority). Query = instruction, then a blank line and the input when the input is non-empty.
  category = motivation_app (the app the instruction came from).
  """
  rb.check_order(order)
  path = rb.dataset_dir(root, "pandalm") / "data" / "testset-v1.json"
  prefix = rb.uid_prefix(path, root)
  tally = rb.Tally(path)
  for index, record in enumerate(rb.load_json_list(path)):
    tally.records += 1
    with rb.record_errors(path, index):
      votes = [_vote(record[f"annotator{k}"]) for k in (1, 2, 3)]
      responses = [_pandalm_response(record, "response1", tally), _pandalm_response(record, "response2", tally)]
      instruction, extra = rb.get_str(record, "instruction"), rb.get_str(record, "input")
      query = f"{instruction}\n\n{extra}" if extra.strip() else instruction
      category = rb.get_str(record, "motivation_app")
      majority = [v for v in (0, 1, 2) if votes.count(v) >= 2]
      if not majority:
        tally.skip(SKIP_NO_MAJORITY)
        continue
      if majority[0] == 0:
        tally.skip(schema.SKIP_TIE)
        continue
      ratings = _winner_ratings(majority[0] - 1)
      if tally.skip_if_unjudgeable(responses, ratings):
        continue
      item = _pair_item(responses, ratings, query=query, category=category, source="pandalm", uid=f"{prefix}:{index}")
      tally.keep(rb.arrange(item, order, seed))
  return tally.result()


def read_auto_j(root: Path | str, *, order: str = "source", seed: int = 0) -> rb.ReadResult:
  """Auto-J `data/test/testdata_pairwise.jsonl`: label 0 = response 1 better, 1 = response 2 better, 2 = tie.

  Ties are skipped. category = scenario (58 of them).
  """
  rb.check_order(order)
  path = rb.dataset_dir(root, "auto-j") / "data" / "test" / "testdata_pairwise.jsonl"
  prefix = rb.uid_prefix(path, root)
  tally = rb.Tally(path)
  for index, line, record in rb.iter_jsonl(path):
    tally.records += 1
    with rb.record_errors(path, index, line):
      responses = [rb.get_str(record, "response 1"), rb.get_str(record, "response 2")]
      query, category = rb.get_str(record, "prompt"), rb.get_str(record, "scenario")
      label = record["label"]
      if isinstance(label, bool) or label not in (0, 1, 2):
        raise ValueError(f"label must be 0, 1 or 2, got {label!r}")
      if label == 2:
        tally.skip(schema.SKIP_TIE)
        continue
      ratings = _winner_ratings(label)
      if tally.skip_if_unjudgeable(responses, ratings):
        continue
      item = _pair_item(responses, ratings, query=query, category=category, source="auto_j", uid=f"{prefix}:{index}")
      tally.keep(rb.arrange(item, order, seed))
  return tally.result()


def _str_list(record: dict[str, Any], key: str) -> list[str]:
  value = record[key]
  if not isinstance(value, list) or not value or not all(isinstance(x, str) for x in value):
    raise ValueError(f"field {key!r} must be a non-empty list of strings")
  return value


def read_rm_bench(
    root: Path | str,
    *,
    domains: Sequence[str] = RM_BENCH_DOMAINS,
    pairs: str = "all",
    order: str = "shuffled",
    seed: int = 0,
) -> rb.ReadResult:
  """RM-Bench `data/<domain>_filtered.json`: {id, prompt, subset, chosen: [3 styles], rejected: [3 styles]}.

  Styles: 0 concise, 1 detailed plain text, 2 detailed markdown. pairs="all" makes all 9 (chosen style i,
  rejected style j) items per prompt, as the paper's harness scores them (the 3x3 matrix gives its easy /
  normal / hard accuracies); pairs="diagonal" makes the 3 same-style pairs. The uid ends with ":c<i>r<j>".
  category = domain, subset = the record's subset (e.g. "xstest-should-refuse").
  """
  rb.check_order(order)
  if pairs not in RM_BENCH_PAIRS:
    raise ValueError(f"pairs must be one of {RM_BENCH_PAIRS}, got {pairs!r}")
  unknown = sorted(set(domains) - set(RM_BENCH_DOMAINS))
  if unknown:
    raise ValueError(f"unknown RM-Bench domains {unknown}; known: {RM_BENCH_DOMAINS}")
  directory = rb.dataset_dir(root, "rm-bench") / "data"
  tally = rb.Tally(directory)
  for domain in domains:
    path = directory / f"{domain}_filtered.json"
    prefix = rb.uid_prefix(path, root)
    for index, record in enumerate(rb.load_json_list(path)):
      tally.records += 1
      with rb.record_errors(path, index):
        query, subset = rb.get_str(record, "prompt"), rb.get_str(record, "subset")
        chosen, rejected = _str_list(record, "chosen"), _str_list(record, "rejected")
        if len(chosen) != len(rejected):
          raise ValueError(f"{len(chosen)} chosen styles but {len(rejected)} rejected styles")
        styles = range(len(chosen))
        combos = [(i, j) for i in styles for j in styles] if pairs == "all" else [(i, i) for i in styles]
        for i, j in combos:
          responses, ratings = [chosen[i], rejected[j]], [1.0, 0.0]
          if tally.skip_if_unjudgeable(responses, ratings):
            continue
          item = _pair_item(responses, ratings, query=query, category=domain, source="rm_bench",
                            uid=f"{prefix}:{index}:c{i}r{j}", subset=subset)
          tally.keep(rb.arrange(item, order, seed))
  return tally.result()


_HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": schema.USER, "Assistant": schema.ASSISTANT}


def _hh_split(transcript: str) -> tuple[str, str]:
  """(everything before the final Assistant turn, that turn's text)."""
  cut = transcript.rfind(_HH_ASSISTANT)
  if cut < 0:
    raise ValueError("transcript has no '\\n\\nAssistant:' turn")
  return transcript[:cut], transcript[cut + len(_HH_ASSISTANT):].strip()


def _hh_turns(prefix: str, tally: rb.Tally) -> tuple[tuple[str, str], ...] | None:
  """Parses the shared prefix into alternating turns; None if it does not start and end with Human."""
  parts = _HH_TURN.split(prefix)
  if parts[0].strip():
    raise ValueError("transcript has text before the first '\\n\\nHuman:' turn")
  turns: list[list[str]] = []
  for k in range(1, len(parts), 2):
    role, content = _HH_ROLES[parts[k]], parts[k + 1].strip()
    if turns and turns[-1][0] == role:
      # A few transcripts have two Human (or Assistant) turns in a row: join them so roles alternate.
      turns[-1][1] += "\n\n" + content
      tally.note("merged_turns")
    else:
      turns.append([role, content])
  if not turns or turns[0][0] != schema.USER or turns[-1][0] != schema.USER:
    return None
  return tuple((role, content) for role, content in turns)


def read_hh_rlhf(
    root: Path | str,
    *,
    subsets: Sequence[str] = HH_SUBSETS,
    split: str = "test",
    order: str = "shuffled",
    seed: int = 0,
) -> rb.ReadResult:
  """Anthropic HH-RLHF `<subset>/<split>.jsonl.gz`: {chosen, rejected}, full "\\n\\nHuman: .. \\n\\nAssistant: .." text.

  The response is the text after each transcript's final "\\n\\nAssistant:"; the conversation is the text before
  it, which must be the same in both (else skipped as "prefix_mismatch": the pair differs in an earlier turn).
  Turn texts are stripped; consecutive same-role turns are merged. category = subset, subset = "harmless" /
  "helpful".
  """
  rb.check_order(order)
  unknown = sorted(set(subsets) - set(HH_SUBSETS))
  if unknown:
    raise ValueError(f"unknown HH-RLHF subsets {unknown}; known: {HH_SUBSETS}")
  directory = rb.dataset_dir(root, "hh-rlhf")
  tally = rb.Tally(directory)
  for name in subsets:
    path = directory / name / f"{split}.jsonl.gz"
    if not path.is_file():
      raise FileNotFoundError(f"HH-RLHF file {path} does not exist")
    prefix = rb.uid_prefix(path, root)
    for index, line, record in rb.iter_jsonl(path):
      tally.records += 1
      with rb.record_errors(path, index, line):
        context, chosen = _hh_split(rb.get_str(record, "chosen"))
        other_context, rejected = _hh_split(rb.get_str(record, "rejected"))
        if context != other_context:
          tally.skip(SKIP_PREFIX_MISMATCH)
          continue
        responses, ratings = [chosen, rejected], [1.0, 0.0]
        if tally.skip_if_unjudgeable(responses, ratings):
          continue
        conversation = _hh_turns(context, tally)
        if conversation is None:
          tally.skip(SKIP_MALFORMED_TRANSCRIPT)
          continue
        item = schema.PreferenceItem(
            conversation=conversation,
            responses=tuple(responses),
            ratings=tuple(ratings),
            category=name,
            source="hh_rlhf",
            uid=f"{prefix}:{index}",
            subset=name.split("-", 1)[0],
        )
        tally.keep(rb.arrange(item, order, seed))
  return tally.result()
