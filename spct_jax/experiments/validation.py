"""Declarative checks of an experiment config, run before anything is built.

Each experiment lists its rules (`Rule`: a dotted key, a predicate and what is allowed); `check` tests them all and
raises one `ConfigError` naming every offending key, its value and what is allowed. A missing key is an error too,
so a config file that forgot a field fails here and not deep inside a run.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any

_MISSING = object()


class ConfigError(ValueError):
  """A config value outside what the experiment allows (the message names the key, the value and the rule)."""


@dataclasses.dataclass(frozen=True)
class Rule:
  key: str  # dotted path below the config root, e.g. "grpo.group_size"
  ok: Callable[[Any], bool]
  allowed: str  # what the value may be, for the message
  optional: bool = False  # a missing key (or None) passes


def lookup(config, key: str) -> Any:
  node = config
  for part in key.split("."):
    if node is None or not hasattr(node, "keys") or part not in node:
      return _MISSING
    node = node[part]
  return node


def check(config, rules: Iterable[Rule]) -> None:
  """Raises ConfigError listing every rule `config` breaks."""
  problems = []
  for rule in rules:
    value = lookup(config, rule.key)
    if value is _MISSING or value is None:
      if not rule.optional:
        problems.append(f"config.{rule.key} is {'missing' if value is _MISSING else 'None'}; "
                        f"expected {rule.allowed}")
      continue
    try:
      ok = rule.ok(value)
    except (TypeError, ValueError):
      ok = False
    if not ok:
      problems.append(f"config.{rule.key}={value!r}; expected {rule.allowed}")
  if problems:
    raise ConfigError("invalid config: " + "; ".join(problems))


# ------------------------------------------------------------------------------------------------------------
# Rule builders.


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer(key: str, minimum: int | None = None, *, why: str = "", optional: bool = False) -> Rule:
  bound = "" if minimum is None else f" >= {minimum}"
  return Rule(key, lambda v: _is_int(v) and (minimum is None or v >= minimum),
              f"an integer{bound}{f' ({why})' if why else ''}", optional)


def number(key: str, minimum: float | None = None, *, strict: bool = False, maximum: float | None = None,
           why: str = "", optional: bool = False) -> Rule:
  def ok(v):
    if not isinstance(v, numbers.Real) or isinstance(v, bool) or v != v:
      return False
    low = minimum is None or (v > minimum if strict else v >= minimum)
    return low and (maximum is None or v <= maximum)

  parts = [] if minimum is None else [f"{'>' if strict else '>='} {minimum}"]
  parts += [] if maximum is None else [f"<= {maximum}"]
  return Rule(key, ok, f"a number{' ' + ' and '.join(parts) if parts else ''}{f' ({why})' if why else ''}",
              optional)


def boolean(key: str) -> Rule:
  return Rule(key, lambda v: isinstance(v, bool), "True or False")


def one_of(key: str, values: Sequence[Any], *, optional: bool = False) -> Rule:
  return Rule(key, lambda v: v in values, f"one of {list(values)}", optional)


def string(key: str) -> Rule:
  return Rule(key, lambda v: isinstance(v, str), "a string")


def subset_of(key: str, values: Sequence[str], *, nonempty: bool = True) -> Rule:
  def ok(v):
    return isinstance(v, (tuple, list)) and (bool(v) or not nonempty) and all(x in values for x in v)

  return Rule(key, ok, f"a {'non-empty ' if nonempty else ''}tuple of names from {list(values)}")


def int_tuple(key: str, minimum: int = 1, *, nonempty: bool = False) -> Rule:
  def ok(v):
    return isinstance(v, (tuple, list)) and (bool(v) or not nonempty) and all(_is_int(x) and x >= minimum for x in v)

  return Rule(key, ok, f"a {'non-empty ' if nonempty else ''}tuple of integers >= {minimum}")


def int_or_range(key: str, minimum: int, maximum: int) -> Rule:
  """An integer in [minimum, maximum] or a (low, high) pair of them with low <= high."""

  def ok(v):
    if _is_int(v):
      return minimum <= v <= maximum
    return (isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_int(x) for x in v)
            and minimum <= v[0] <= v[1] <= maximum)

  return Rule(key, ok, f"an integer in [{minimum}, {maximum}] or a (low, high) pair of them, e.g. (2, 4)")


def voting_eval(prefix: str) -> tuple[Rule, ...]:
  """Rules of one voting-evaluator entry (`config.evals.<name>`, `spct_jax.evaluators.voting.VotingSpec`)."""
  return (one_of(f"{prefix}.type", ("voting",)), integer(f"{prefix}.every", 0), boolean(f"{prefix}.greedy"),
          int_tuple(f"{prefix}.ks", 1), number(f"{prefix}.temperature", 0.0, optional=True),
          boolean(f"{prefix}.nested_k"), integer(f"{prefix}.batch_size", 1))


def binary_eval(prefix: str) -> tuple[Rule, ...]:
  """Rules of one binary-evaluator entry (`spct_jax.evaluators.binary.BinarySpec`)."""
  return (one_of(f"{prefix}.type", ("binary",)), integer(f"{prefix}.every", 0),
          integer(f"{prefix}.batch_size", 1, optional=True), integer(f"{prefix}.num_bins", 1))


EVAL_RULES = {"voting": voting_eval, "binary": binary_eval}


def evals(config, types: Sequence[str] = ("voting",)) -> tuple[Rule, ...]:
  """Rules of every entry of `config.evals`, by its type; `types` are the ones this experiment accepts."""
  entries = config.get("evals") or {}
  rules = []
  for name in entries.keys():
    kind = lookup(config, f"evals.{name}.type")
    rules += EVAL_RULES[kind](f"evals.{name}") if kind in types else [one_of(f"evals.{name}.type", types)]
  return tuple(rules)
