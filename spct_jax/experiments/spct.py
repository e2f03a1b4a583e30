"""The SPCT pipeline in one run: rft_generate -> rft -> grpo -> meta_rm -> eval of every stage (spec sec. 3-6).

Each stage is an existing experiment, configured by `config.stages.<stage>` (a whole experiment config, as its own
configs/<experiment>.py builds it) and run in `<workdir>/<stage>/`. A stage's string fields may name another
stage's folder as `{stage}` (`"{rft}/grm"`: the RFT model): that is how the stages are chained, and the config
reference shows every link. A finished stage writes `<workdir>/<stage>/stage.json` (its resolved config's
fingerprint and summary); re-running the pipeline skips finished stages, and a killed one resumes from its own
checkpoints or shards. A finished stage whose config has changed since is an error naming the changed keys: its
outputs no longer match its config (remove its folder to re-run it). A field added to an experiment later, at the
value that keeps the old behaviour (`ADDED_FIELDS`), is no change.

At the end, `table.json` / `table.md` / `table.png` hold the paper's Table 3 rows (base greedy, RFT greedy, RFT+GRPO greedy,
k=1 sampled, Voting@k, MetaRM@k) from the eval stages' results, per dataset and pooled over all held-out items,
with 95% bootstrap intervals and position-swap consistency; table.json also keeps each stage's wall time and
summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from typing import Any

import ml_collections

from spct_jax import configref, files, multihost, plotting
from spct_jax.evaluators import metrics
from spct_jax.experiments import validation, workdir as workdir_lib

log = logging.getLogger(__name__)

# The stages in the order they run (a later stage may name an earlier one's folder).
STAGES = ("rft_generate", "rft", "grpo", "meta_rm", "eval_base", "eval_rft", "eval_final")
EXPERIMENT_OF = {"rft_generate": "rft_generate", "rft": "rft", "grpo": "grpo", "meta_rm": "meta_rm",
                 "eval_base": "eval", "eval_rft": "eval", "eval_final": "eval"}
STAGE_FILE = "stage.json"
TABLE_JSON, TABLE_MD, TABLE_PNG = "table.json", "table.md", "table.png"
LINK = re.compile(r"\{(" + "|".join(STAGES) + r")\}")
RULES = (validation.subset_of("run_stages", STAGES),)


def resolve(stage: str, config: ml_collections.ConfigDict, folders: dict[str, str]) -> ml_collections.ConfigDict:
  """A copy of `config` with every `{stage}` link replaced by that stage's folder; a link to a stage that does not
  run before `stage` is an error naming the key."""
  resolved = ml_collections.ConfigDict(config.to_dict())
  earlier = set(STAGES[:STAGES.index(stage)])
  for key, value, node, leaf in configref.leaves(resolved):
    if isinstance(value, str) and LINK.search(value):
      for target in LINK.findall(value):
        if target not in earlier:
          raise validation.ConfigError(f"config.stages.{stage}.{key}={value!r} links stage {target!r}, which does "
                                       f"not run before {stage!r} (order: {list(STAGES)})")
      node[leaf] = LINK.sub(lambda m: folders[m.group(1)], value)
  if resolved.get("experiment") != EXPERIMENT_OF[stage]:
    raise validation.ConfigError(f"config.stages.{stage}.experiment={resolved.get('experiment')!r}; expected "
                                 f"{EXPERIMENT_OF[stage]!r}")
  return resolved


# Fields added to an experiment's config after pipeline stages had finished, with the value that keeps the old
# behaviour: at that value a field is left out of stage.json's config and fingerprint, so a stage finished before
# the field existed is still recognised as finished (any other value is a changed config).
ADDED_FIELDS = {"rft_generate": {"rft.position_hints": False}}


def _as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as stage.json stores it (tuples as lists, anything else JSON lacks as its str; `ADDED_FIELDS` at
  their old-behaviour value left out)."""
  record = json.loads(json.dumps(config.to_dict(), default=str))
  for key, old_value in ADDED_FIELDS.get(record.get("experiment"), {}).items():
    *path, leaf = key.split(".")
    node = record
    for part in path:
      node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and leaf in node and node[leaf] == old_value:
      del node[leaf]
  return record


def fingerprint(config: ml_collections.ConfigDict) -> str:
  return hashlib.sha256(json.dumps(_as_json(config), sort_keys=True).encode()).hexdigest()[:16]


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _changed_keys(a, b, f"{prefix}{key}.")
    elif json.dumps(a, default=str) != json.dumps(b, default=str):
      out.append(f"{prefix}{key}")
  return out


def _finished(stage: str, folder, config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The stage's record if it finished with this config; None if it has not finished."""
  path = folder / STAGE_FILE
  if not path.exists():
    return None
  record = json.loads(path.read_text())
  if record["fingerprint"] != fingerprint(config):
    changed = _changed_keys(record["config"], _as_json(config))
    raise validation.ConfigError(
        f"stage {stage!r} finished in {folder} with another config (changed: {changed[:8]}); its outputs no longer "
        f"match config.stages.{stage}: remove {folder} to run it again, or restore the old values")
  return record


def run(config, workdir) -> dict[str, Any]:
  """Runs (or skips, when finished) every stage of `config.run_stages` in order, then writes the table."""
  from spct_jax.experiments import EXPERIMENTS  # pylint: disable=g-import-not-at-top  (the registry imports us)

  validation.check(config, RULES)
  with workdir_lib.locked(workdir) as workdir:
    folders = {stage: str(workdir / stage) for stage in STAGES}
    summaries = {}
    for stage in STAGES:
      if stage not in config.run_stages:
        continue
      stage_config = resolve(stage, config.stages[stage], folders)
      folder = workdir / stage
      record = _finished(stage, folder, stage_config)
      if record is not None:
        print(f"== stage {stage}: finished before ({folder / STAGE_FILE}), skipped", flush=True)
        summaries[stage] = record["summary"]
        continue
      log.info("stage %s: %s experiment in %s", stage, stage_config.experiment, folder)
      print(f"== stage {stage} ({stage_config.experiment}) -> {folder}", flush=True)
      start = time.time()
      summary = EXPERIMENTS[stage_config.experiment].run(stage_config, folder)
      if isinstance(summary, dict) and summary.get("preempted"):
        print(f"== stage {stage} preempted: re-run the same command to resume", flush=True)
        return {"preempted": True, "stage": stage}
      summaries[stage] = _summary(summary)
      if multihost.is_main_process():
        files.write_json({"stage": stage, "fingerprint": fingerprint(stage_config), "seconds": time.time() - start,
                          "config": _as_json(stage_config),
                          "summary": summaries[stage]}, folder / STAGE_FILE)
    table = build_table(workdir, config)
    if table and multihost.is_main_process():
      files.write_json(table, workdir / TABLE_JSON)
      text = format_table(table)
      files.write_lines([text], workdir / TABLE_MD)
      plotting.plot_table(table, workdir / TABLE_PNG, title="SPCT stages, pooled over the held-out benchmarks")
      print(text, flush=True)
      if config.publish_dir:
        publish(workdir, files.as_path(config.publish_dir))
  return {"stages": summaries, "table": table}


# What publish copies: (file under the pipeline workdir, its name in the publish folder).
PUBLISHED = ((TABLE_JSON, TABLE_JSON), (TABLE_MD, TABLE_MD), (TABLE_PNG, TABLE_PNG),
             ("eval_final/accuracy_vs_k.png", "accuracy_vs_k.png"), ("rft_generate/stats.json", "rft_generate_stats.json"),
             ("meta_rm/data.json", "meta_rm_data.json"))


def publish(workdir, folder) -> list[str]:
  """Copies the pipeline's results (PUBLISHED, those that exist) into `folder`, each file atomically."""
  folder.mkdir(parents=True, exist_ok=True)
  copied = []
  for source, name in PUBLISHED:
    if (workdir / source).exists():
      with files.atomic_write(folder / name, "wb") as f:
        f.write((workdir / source).read_bytes())
      copied.append(name)
  print(f"== published {copied} to {folder}", flush=True)
  return copied


def _summary(summary: Any) -> Any:
  """What a stage's stage.json keeps of its run's return value: scalars and short lists (no per-item data)."""
  if isinstance(summary, dict):
    keep = {k: v for k, v in summary.items() if k in ("step", "model_path", "kept", "trajectories", "timing")
            or isinstance(v, (int, float, str, bool))}
    return metrics.jsonable(keep)
  return None


# ------------------------------------------------------------------------------------------------------------
# Table 3.

def table_rows(config) -> list[tuple[str, str, str]]:
  """(row label, eval stage, run name) of the table, in the paper's order."""
  ks = sorted(config.stages.eval_final.evals.voting.ks)
  rows = [("base greedy", "eval_base", "greedy"), ("RFT greedy", "eval_rft", "greedy"),
          ("RFT+GRPO greedy", "eval_final", "greedy")]
  if 1 in ks:
    rows.append(("RFT+GRPO k=1 sampled", "eval_final", "voting@1"))
  if ks and ks[-1] > 1:
    rows.append((f"RFT+GRPO Voting@{ks[-1]}", "eval_final", f"voting@{ks[-1]}"))
  if ks and config.stages.eval_final.meta_rm.path:
    rows.append((f"RFT+GRPO MetaRM@{ks[-1]}", "eval_final", f"metarm@{ks[-1]}"))
  return rows


def build_table(workdir, config) -> dict[str, Any] | None:
  """Table 3 from the eval stages' results.json: per row, per dataset and pooled accuracy (both rules, bootstrap
  intervals), parse rate and, for greedy rows, position-swap consistency. None when no eval stage has run."""
  results = {}
  for stage in ("eval_base", "eval_rft", "eval_final"):
    path = workdir / stage / config.stages[stage].output.results
    if path.exists():
      results[stage] = json.loads(path.read_text())
      # Pooled again from the per-dataset values (per item), so the table follows today's pooling rules.
      results[stage]["pooled"] = metrics.pooled(results[stage]["datasets"])
  if not results:
    return None
  rows = []
  for label, stage, run_name in table_rows(config):
    if stage not in results or run_name not in results[stage]["pooled"]:
      continue
    datasets = results[stage]["datasets"]
    row = {"row": label, "stage": stage, "run": run_name, "pooled": results[stage]["pooled"][run_name],
           "datasets": {name: {m: info["runs"][run_name]["overall"][m] for m in (*metrics.HEADLINE, "ci95")}
                        for name, info in datasets.items()}}
    if run_name == "greedy" and "position_swap" in results[stage]["pooled"]:
      row["position_swap"] = results[stage]["pooled"]["position_swap"]
      for name, info in datasets.items():
        if info.get("position_swap"):  # pairs only: a best-of-N list has none
          row["datasets"][name]["consistency"] = info["position_swap"]["consistency"]
    rows.append(row)
  return {"rows": rows, "datasets": sorted({d for r in results.values() for d in r["datasets"]}),
          "items": {stage: {d: info["counts"]["items"] for d, info in r["datasets"].items()}
                    for stage, r in results.items()},
          "stages": _stage_records(workdir)}


def _stage_records(workdir) -> dict[str, Any]:
  """Per finished stage: its wall time and summary (stage.json), so the table says what it cost to make."""
  records = {}
  for stage in STAGES:
    path = workdir / stage / STAGE_FILE
    if path.exists():
      record = json.loads(path.read_text())
      records[stage] = {"seconds": record["seconds"], "summary": record["summary"]}
  return records


def _cell(value, interval=None) -> str:
  if value is None:
    return "-"
  text = f"{100 * value:.1f}"
  if interval:
    text += f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
  return text


def format_table(table: dict[str, Any]) -> str:
  """A Markdown table: one line per row; accuracy (tie-random, the paper's rule) per dataset, then pooled with the
  95% interval, strict accuracy, parse rate and position-swap consistency."""
  names = table["datasets"]
  header = ["run", *names, "all (95% CI)", "strict", "parse", "consistency"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in table["rows"]:
    pooled, swap = row["pooled"], row.get("position_swap")
    cells = [row["row"], *[_cell(row["datasets"].get(n, {}).get("accuracy_tie_random")) for n in names],
             _cell(pooled["accuracy_tie_random"], pooled["ci95"]["accuracy_tie_random"]),
             _cell(pooled["accuracy_strict"]),
             _cell(pooled["parse_rate"]), _cell(swap["consistency"]) if swap else "-"]
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")  # the note is a paragraph of its own, not a row of the table
  lines.append("Accuracy in %: ties broken at random (the paper's rule); strict = Eq. 10 (a tie is wrong); parse = "
               "parse rate; consistency = correct with the best response shown first and second (greedy).")
  return "\n".join(lines)
