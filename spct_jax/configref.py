"""`python -m spct_jax.configref`: writes docs/CONFIGS.md, the reference of every experiment's config fields.

Generated, so it cannot drift from the configs: every `configs/*.py` with a `get_config` (found by listing the
folder: a new experiment's config appears without touching this file) is built with its default variant, while
`ConfigDict.__setitem__` records the source line of every assignment. A field's meaning is the comment of the
last line (in `configs/`) that set it and carries one: the comment at the end of that statement, else the comment
block right above it. So `m.name = "gemma3-270m"  # preset / ...` in configs/common.py documents `model.name` for
every experiment built from `common.model()`, and an experiment's own `c.grpo.beta = 0.08  # KL weight` its own.
A field that no commented line sets is an error naming the field and where it was set: document it where it is set.

Defaults are shown as the default variant builds them, with machine-dependent paths written relative to the repo
(`<repo>/..`) and SPCT_DATA_ROOT / XDG_CACHE_HOME ignored, so the file is the same on every machine. Each variant's
changes follow as its own table.

  python -m spct_jax.configref            # (re)writes docs/CONFIGS.md
  python -m spct_jax.configref --check    # exit 1 when docs/CONFIGS.md is not what the configs generate
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import importlib.util
import io
import os
import pathlib
import sys
import tokenize
from typing import Any
from unittest import mock

from ml_collections import config_dict

from spct_jax import files

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS_DIR = REPO / "configs"
OUTPUT = REPO / "docs" / "CONFIGS.md"
IGNORED_ENV = ("SPCT_DATA_ROOT", "XDG_CACHE_HOME")  # would make defaults machine-dependent
Site = tuple[str, int]  # (file, line)


class UndocumentedFields(ValueError):
  """Fields whose setting lines carry no comment."""


@dataclasses.dataclass(frozen=True)
class Field:
  key: str  # dotted, e.g. "grpo.beta"
  default: Any
  meaning: str


@dataclasses.dataclass(frozen=True)
class Experiment:
  path: pathlib.Path
  summary: str  # first docstring line
  fields: tuple[Field, ...]
  variants: dict[str, dict[str, Any]]  # variant -> {key: value} that differ from the default variant
  # Sub-configs another config file builds (a pipeline's stages): key prefix -> that file's stem. Only the fields
  # this file sets itself are listed under such a prefix; the rest are in that file's section.
  inherited: dict[str, str] = dataclasses.field(default_factory=dict)


def config_files(configs_dir: pathlib.Path = CONFIGS_DIR) -> list[pathlib.Path]:
  """Every configs/*.py that defines `get_config` (common.py and helpers without one are not experiments)."""
  if not configs_dir.is_dir():
    raise FileNotFoundError(f"no configs folder at {configs_dir} (pass --configs: the repo's configs/ folder)")
  return [p for p in sorted(configs_dir.glob("*.py"))
          if any(isinstance(n, ast.FunctionDef) and n.name == "get_config" for n in ast.parse(p.read_text()).body)]


@contextlib.contextmanager
def _machine_independent():
  """IGNORED_ENV unset inside (restored after), so defaults read from the environment are the code's own."""
  saved = {k: os.environ.pop(k) for k in IGNORED_ENV if k in os.environ}
  try:
    yield
  finally:
    os.environ.update(saved)


def _load(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(f"spct_configref_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  with _machine_independent():
    spec.loader.exec_module(module)
  return module


def _build(module, arg: str | None, configs_dir: pathlib.Path):
  """(config, sites): sites[(id(dict), key)] lists the configs/ lines that assigned that key, in order."""
  sites: dict[tuple[int, str], list[Site]] = {}
  keep_alive = []  # ids stay unique only while their dicts live
  references: list[str] = []  # inside get_ref
  original = config_dict.ConfigDict.__setitem__
  root = str(configs_dir.resolve())

  def recording(self, key, value):
    if references:  # get_ref turning a field into a FieldReference does not set it
      return original(self, key, value)
    frame = sys._getframe(1)  # pylint: disable=protected-access
    while frame is not None and not os.path.abspath(frame.f_code.co_filename).startswith(root + os.sep):
      frame = frame.f_back
    if frame is not None:
      keep_alive.append(self)
      sites.setdefault((id(self), key), []).append((frame.f_code.co_filename, frame.f_lineno))
    return original(self, key, value)

  original_get_ref = config_dict.ConfigDict.get_ref

  def get_ref(self, key):
    references.append(key)
    try:
      return original_get_ref(self, key)
    finally:
      references.pop()

  with _machine_independent(), mock.patch.object(config_dict.ConfigDict, "__setitem__", recording), \
       mock.patch.object(config_dict.ConfigDict, "get_ref", get_ref):
    config = module.get_config(arg)
  return config, sites


@functools.cache
def _comments(path: str) -> tuple[dict[int, str], set[int], list[tuple[int, int]]]:
  """(comment text per line, lines holding only a comment, statement line ranges) of a source file."""
  source = pathlib.Path(path).read_text()
  comments, code_lines = {}, set()
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      comments[token.start[0]] = token.string.lstrip("#").strip()
    elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
      code_lines.update(range(token.start[0], token.end[0] + 1))
  spans = [(n.lineno, n.end_lineno) for n in ast.walk(ast.parse(source)) if isinstance(n, ast.stmt)]
  return comments, set(comments) - code_lines, spans


def comment_for(site: Site) -> str | None:
  """The comment of the statement at `site`: its trailing comment(s), else the comment block right above it."""
  path, line = site
  comments, comment_only, spans = _comments(path)
  first, last = min((s for s in spans if s[0] <= line <= s[1]), key=lambda s: s[1] - s[0], default=(line, line))
  trailing = [comments[i] for i in range(first, last + 1) if i in comments and i not in comment_only]
  if trailing:
    return " ".join(trailing)
  above, i = [], first - 1
  while i in comment_only:
    above.insert(0, comments[i])
    i -= 1
  return " ".join(above) or None


def leaves(config, prefix: str = ""):
  """(dotted key, value, the dict holding it, its key) for every leaf, in insertion order."""
  for key in config.keys():
    value = config[key]
    if isinstance(value, config_dict.ConfigDict):
      yield from leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value, config, key


def _values(config) -> dict[str, Any]:
  return {key: value for key, value, _, _ in leaves(config)}


def describe(path: pathlib.Path, configs_dir: pathlib.Path = CONFIGS_DIR) -> Experiment:
  """The fields (default, meaning) and the variants' changes of one config file."""
  module = _load(path)
  config, sites = _build(module, None, configs_dir)
  fields, missing = [], []
  flat = [(key, value, sites.get((id(holder), name), [])) for key, value, holder, name in leaves(config)]
  prefix = lambda key: ".".join(key.split(".")[:2])
  inherited = {prefix(key): pathlib.Path(f).stem for key, _, where in flat for f, _ in where
               if "." in key and pathlib.Path(f).name not in (path.name, "common.py")}
  for key, value, where in flat:
    if prefix(key) in inherited and all(pathlib.Path(f).name != path.name for f, _ in where):
      continue  # a sub-config field this file does not set: documented in the section of the file that does
    meaning = next((c for c in map(comment_for, reversed(where)) if c), None)
    if meaning is None:
      set_at = ", ".join(f"{os.path.relpath(f, configs_dir.parent)}:{n}" for f, n in where) or "no configs/ line"
      missing.append(f"{key} (set at {set_at})")
    fields.append(Field(key, value, meaning or ""))
  if missing:
    raise UndocumentedFields(f"{path.name}: config fields without a comment on the line that sets them (or right "
                             "above it): " + "; ".join(missing))
  default = _values(config)
  variants = {}
  for variant in getattr(module, "VARIANTS", ()):
    values = _values(_build(module, variant, configs_dir)[0])
    variants[variant] = {k: v for k, v in values.items() if k not in default or default[k] != v}
    variants[variant].update({k: "(removed)" for k in default if k not in values})
  doc = (module.__doc__ or "").strip().splitlines()
  return Experiment(path=path, summary=doc[0] if doc else "", fields=tuple(fields), variants=variants,
                    inherited=dict(sorted(inherited.items())))


def _cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ")


def _show(value: Any, configs_dir: pathlib.Path) -> str:
  text = repr(value).replace(str(configs_dir.resolve().parent.parent), "<repo>/..")
  return f"`{_cell(text)}`"


def render(configs_dir: pathlib.Path = CONFIGS_DIR) -> str:
  """The whole of docs/CONFIGS.md."""
  experiments, errors = [], []
  for path in config_files(configs_dir):
    try:
      experiments.append(describe(path, configs_dir))
    except UndocumentedFields as e:
      errors.append(str(e))
  if errors:
    raise UndocumentedFields("\n".join(errors))
  out = ["# Config reference", "",
         "Generated by `python -m spct_jax.configref` from `configs/*.py` (do not edit by hand; "
         "tests/test_configref.py checks that it is current). Every field can be overridden on the command line, "
         "`--config.<key>=<value>`. Defaults are those of the default variant; each variant's changes follow.", ""]
  out += [f"- [{e.path.stem}](#{e.path.stem}): {e.summary}" for e in experiments] + [""]
  for e in experiments:
    rel = e.path.relative_to(configs_dir.parent).as_posix()
    out += [f"## {e.path.stem}", "", f"`python -m spct_jax.main --config={rel}` — {e.summary}", "",
            "| key | default | meaning |", "|---|---|---|"]
    out += [f"| `{f.key}` | {_show(f.default, configs_dir)} | {_cell(f.meaning)} |" for f in e.fields]
    if e.inherited:
      out += ["", "Every other field of " + ", ".join(f"`{k}.*` is as [{stem}](#{stem})" for k, stem in
                                                      e.inherited.items()) + " builds it (same variant)."]
    for variant, changes in e.variants.items():
      out += ["", f"Variant `{rel}:{variant}` changes:", "", "| key | value |", "|---|---|"]
      out += [f"| `{k}` | {_show(v, configs_dir)} |" for k, v in changes.items()]
    out.append("")
  return "\n".join(out)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", type=pathlib.Path, default=CONFIGS_DIR, help="the configs/ folder")
  parser.add_argument("--out", type=pathlib.Path, default=OUTPUT, help="the markdown file to write")
  parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
  args = parser.parse_args(argv)
  try:
    text = render(args.configs)
  except UndocumentedFields as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return files.write_generated(text, args.out, check=args.check, command="python -m spct_jax.configref")


if __name__ == "__main__":
  sys.exit(main())
