"""Every `python -m spct_jax.main ...` command that README.md or a config's docstring shows is run here.

A command is run as written where that is quick; where the real one is long it is run in a smoke form kept in the
tables below (the documented flags first, then the table's: later flags win), so a command that changes in the
docs is still run, and a new config spec fails here until it has a smoke form.
  * a bare command on the real model (no --config.* overrides): the real model, tiny steps (slow);
  * any other command: its config's smoke variant with the command's own overrides on top.
A command that reads another run's output (`PREPARE`: e.g. eval with `--config.meta_rm.path=`, or rft, whose
default `data.rft_dir` is rft_generate's workdir: `READS`) first gets that run, in its smoke form, in a folder of its
own, and the flag is pointed at what it wrote.
"""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCES = [REPO / "README.md", *sorted((REPO / "configs").glob("*.py"))]
COMMAND = re.compile(r"python -m spct_jax\.main\b[^\n`]*")  # a line, or inline code up to its backtick

REAL = {  # spec -> overrides that keep the real-model run to one short step / one item
    "configs/grpo.py": ["--config.total_steps=1", "--config.batch_size=1", "--config.grpo.group_size=2",
                        "--config.grm.max_new_tokens=4", "--config.evals.heldout.every=0"],
    "configs/eval.py": ["--config.data.max_items=1", "--config.evals.voting.ks=(1,)",
                        "--config.grm.max_new_tokens=4"],
    "configs/rft_generate.py": ["--config.data.max_per_source=1", "--config.data.num_items=1",
                                "--config.grm.max_new_tokens=4"],
    "configs/rft.py": ["--config.total_steps=1", "--config.batch_size=1", "--config.evals.heldout.every=0"],
    # 2 items x 2 samples of the real GRM (4 tokens: unparseable, all labelled wrong, hence balance=none), one step
    # on the real backbone, one held-out evaluation.
    "configs/meta_rm.py": ["--config.data.trajectories_dir=", "--config.fresh.grm=gemma3-270m",
                           "--config.fresh.num_items=2", "--config.fresh.k=2", "--config.fresh.num_shards=1",
                           "--config.grm.max_new_tokens=4", "--config.data.heldout_fraction=0.5",
                           "--config.meta_rm.balance=none", "--config.total_steps=1", "--config.batch_size=2",
                           "--config.evals.heldout.every=1"],
    # The real stage configs resolve and the base model's evaluation runs on the four held-out benchmarks (one
    # item each); the chained stages themselves are the smoke row's (tiny models, every stage).
    "configs/spct.py": ["--config.run_stages=('eval_base',)", "--config.stages.eval_base.data.max_items=1",
                        "--config.stages.eval_base.grm.max_new_tokens=4"],
    "configs/spct.py:full": ["--config.run_stages=('eval_base',)", "--config.stages.eval_base.data.max_items=1",
                             "--config.stages.eval_base.grm.max_new_tokens=4"],
}
SMOKE = {  # spec -> (the spec that stands in for it, overrides appended)
    "configs/grpo.py": ("configs/grpo.py:smoke", ["--config.total_steps=2"]),
    "configs/grpo.py:smoke": ("configs/grpo.py:smoke", []),
    "configs/grpo.py:gemma2_27b": ("configs/grpo.py:smoke,gemma2_27b", ["--config.data.eval_items=2"]),
    "configs/eval.py": ("configs/eval.py:smoke", []),
    "configs/eval.py:smoke": ("configs/eval.py:smoke", []),
    "configs/eval.py:rmb_bon": ("configs/eval.py:smoke,rmb_bon", ["--config.data.max_items=2",
                                                                   "--config.evals.voting.ks=(2,)"]),
    "configs/eval.py:full": ("configs/eval.py:smoke,full", [
        "--config.model.name=tiny-gemma3", "--config.data.max_items=1", "--config.grm.max_new_tokens=4",
        "--config.evals.voting.ks=(1,2)"]),
    "configs/rft_generate.py": ("configs/rft_generate.py:smoke", ["--config.model.name=tiny-gemma3"]),
    "configs/rft_generate.py:smoke": ("configs/rft_generate.py:smoke", []),
    "configs/rft.py": ("configs/rft.py:smoke", ["--config.total_steps=2"]),
    "configs/rft.py:smoke": ("configs/rft.py:smoke", []),
    "configs/meta_rm.py": ("configs/meta_rm.py:smoke", ["--config.model.name=tiny-gemma3",
                                                        "--config.data.trajectories_dir=",
                                                        "--config.fresh.grm=synthetic", "--config.fresh.num_items=16"]),
    "configs/meta_rm.py:smoke": ("configs/meta_rm.py:smoke", []),
    "configs/spct.py:smoke": ("configs/spct.py:smoke", []),
    "configs/spct.py": ("configs/spct.py:smoke", []),  # with overrides (the README's publishing run)
    "configs/meta_rm.py:full": ("configs/meta_rm.py:smoke,full", ["--config.model.name=tiny-gemma3",
                                                                  "--config.total_steps=2"]),
}
PREPARE = {  # flag -> (the run that makes what it reads, in its smoke form; the path below that run's workdir)
    "--config.meta_rm.path": (["--config=configs/meta_rm.py:smoke"], "meta_rm"),
    "--config.data.rft_dir": (["--config=configs/rft_generate.py:smoke"], ""),
}
# Flags naming where a run writes outside its workdir: pointed under the test's folder, never into the repo.
OUTSIDE = {"--config.publish_dir": "published"}
# config file -> the PREPARE flag its defaults read another run's output by (added when a command lacks it)
READS = {
    "configs/rft.py": "--config.data.rft_dir",
}


def documented_commands() -> list[tuple[str, list[str]]]:
  """(where, argv after `python -m spct_jax.main`), each distinct command once, in document order."""
  seen, out = set(), []
  for path in SOURCES:
    for match in COMMAND.finditer(path.read_text()):
      tokens = shlex.split(match.group(0), comments=True)
      for stop in ("&&", "||", ";", "|"):
        tokens = tokens[:tokens.index(stop)] if stop in tokens else tokens
      argv = tokens[3:]
      if argv and tuple(argv) not in seen:  # a bare mention of the entry point is not a command
        seen.add(tuple(argv))
        out.append((path.relative_to(REPO).as_posix(), argv))
  return out


def _spec(argv):
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1], i
    if arg == "--config":
      return argv[i + 1], i
  raise AssertionError(f"no --config in {argv}")


def runnable(argv) -> tuple[list[str], bool]:
  """(the argv to run, whether it is the slow real-model form)."""
  spec, index = _spec(argv)
  overrides = [a for a in argv if a.startswith("--config.")]
  if spec in REAL and not overrides:
    return argv + REAL[spec], True
  assert spec in SMOKE, f"documented config {spec!r} has no smoke form: add it to SMOKE in {__file__}"
  smoke, extra = SMOKE[spec]
  rest = [a for j, a in enumerate(argv) if j != index and not (argv[index] == "--config" and j == index + 1)]
  return [f"--config={smoke}", *rest, *extra], False


def _params():
  params = []
  for where, argv in documented_commands():
    run_argv, slow = runnable(argv)
    params.append(pytest.param(argv, run_argv, id=f"{where}: {' '.join(argv)}",
                               marks=[pytest.mark.slow] if slow else []))
  return params


def test_the_documents_show_the_commands_this_test_expects():
  specs = {_spec(argv)[0] for _, argv in documented_commands()}
  assert {"configs/grpo.py", "configs/grpo.py:smoke", "configs/eval.py", "configs/eval.py:smoke",
          "configs/meta_rm.py", "configs/meta_rm.py:smoke", "configs/rft_generate.py", "configs/rft_generate.py:smoke",
          "configs/rft.py", "configs/rft.py:smoke", "configs/spct.py", "configs/spct.py:smoke"} <= specs
  first = [argv for where, argv in documented_commands() if where == "README.md"][0]
  assert first == ["--config=configs/grpo.py"]  # the README's first command line


def _main(argv, workdir):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # one device, like a user's run
  result = subprocess.run([sys.executable, "-m", "spct_jax.main", *argv, f"--workdir={workdir}"], cwd=REPO, env=env,
                          capture_output=True, timeout=2400)
  return result.returncode, (result.stdout.decode() + result.stderr.decode())[-6000:]


def prepared(run_argv, folder) -> list[str]:
  """`run_argv` with each `PREPARE` flag pointed at the output of its run (made here, under `folder`); a config in
  `READS` gets its flag added first when the command relies on the default path."""
  flag = READS.get(_spec(run_argv)[0].split(":")[0])
  if flag and not any(arg.split("=", 1)[0] == flag for arg in run_argv):
    run_argv = [*run_argv, f"{flag}=<prepared>"]
  out = []
  for arg in run_argv:
    flag = arg.split("=", 1)[0]
    if flag in OUTSIDE:
      arg = f"{flag}={folder / OUTSIDE[flag]}"
    elif flag in PREPARE:
      first, below = PREPARE[flag]
      code, stderr = _main(first, folder / "prepare")
      assert code == 0, f"{first} (to make {flag}) failed:\n{stderr}"
      arg = f"{flag}={folder / 'prepare' / below}"
    out.append(arg)
  return out


def _metrics(workdir):
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert lines and all(line["params_finite"] == 1.0 for line in lines)
  return lines


@pytest.mark.parametrize("argv, run_argv", _params())
def test_documented_command_runs(tmp_path, argv, run_argv):
  run_argv = prepared(run_argv, tmp_path)
  tmp_path = tmp_path / "run"
  code, stderr = _main(run_argv, tmp_path)
  assert code == 0, f"{argv} ran as {run_argv}:\n{stderr}"
  config_file = _spec(run_argv)[0].split(":")[0]
  if config_file == "configs/meta_rm.py":
    assert "heldout/log_loss" in _metrics(tmp_path)[-1]
    assert (tmp_path / "meta_rm" / "meta_rm.json").is_file()
  elif config_file == "configs/grpo.py":
    _metrics(tmp_path)
  elif config_file == "configs/rft.py":
    _metrics(tmp_path)
    grm = tmp_path / "grm"  # the trained model, ready for --config.model.name=
    assert (grm / "spct_config.json").is_file() and (grm / "tokenizer.model").is_file()
  elif config_file == "configs/spct.py":
    check_pipeline(run_argv, tmp_path)
    if any(arg.startswith("--config.publish_dir=") for arg in run_argv):
      published = tmp_path.parent / OUTSIDE["--config.publish_dir"]
      assert (published / "table.json").read_text() == (tmp_path / "table.json").read_text()
      assert {"table.md", "table.png", "accuracy_vs_k.png", "rft_generate_stats.json"} <= {
          p.name for p in published.iterdir()}
  elif config_file == "configs/rft_generate.py":
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["total"]["items_seen"] >= 1 and (tmp_path / "trajectories" / "dataset_info.json").is_file()
  else:
    results = json.loads((tmp_path / "results.json").read_text())
    for info in results["datasets"].values():
      assert all({"accuracy_strict", "accuracy_tie_random", "parse_rate"} <= set(run["overall"])
                 for run in info["runs"].values())
      if any(arg.startswith("--config.meta_rm.path=") for arg in run_argv):
        assert {f"metarm@{k}" for k in results["config"]["evals"]["voting"]["ks"]} <= set(info["runs"])


def check_pipeline(run_argv, workdir):
  """The pipeline wrote each stage it ran and the table; a re-run skips them all; a changed finished stage is an
  error naming the key."""
  from spct_jax.experiments import spct
  records = {p.parent.name: json.loads(p.read_text()) for p in workdir.glob(f"*/{spct.STAGE_FILE}")}
  table = json.loads((workdir / spct.TABLE_JSON).read_text())
  assert (workdir / spct.TABLE_PNG).read_bytes()[:4] == b"\x89PNG"
  if "--config=configs/spct.py:smoke" not in run_argv:  # the real form: the base evaluation only
    assert set(records) == {"eval_base"} and [r["row"] for r in table["rows"]] == ["base greedy"]
    assert table["datasets"] == ["judgebench", "llmbar", "rm_bench", "rmb_bon"]
    return
  assert set(records) == set(spct.STAGES)
  assert [r["row"] for r in table["rows"]] == ["base greedy", "RFT greedy", "RFT+GRPO greedy", "RFT+GRPO k=1 sampled",
                                               "RFT+GRPO Voting@2", "RFT+GRPO MetaRM@2"]
  # Linked: the GRPO stage started from the RFT model, the final evaluation read the GRPO model and the meta RM.
  assert records["grpo"]["config"]["model"]["name"] == str(workdir / "rft" / "grm")
  assert records["eval_final"]["config"]["meta_rm"]["path"] == str(workdir / "meta_rm" / "meta_rm")
  for row in table["rows"]:
    lo, hi = row["pooled"]["ci95"]["accuracy_tie_random"]
    assert lo <= row["pooled"]["accuracy_tie_random"] <= hi
  assert all("position_swap" in row for row in table["rows"] if row["run"] == "greedy")
  before = {stage: (workdir / stage / spct.STAGE_FILE).stat().st_mtime_ns for stage in records}
  code, output = _main(run_argv, workdir)
  assert code == 0 and output.count("finished before") == len(spct.STAGES), output
  assert before == {stage: (workdir / stage / spct.STAGE_FILE).stat().st_mtime_ns for stage in records}
  code, output = _main([*run_argv, "--config.stages.grpo.total_steps=7"], workdir)
  assert code != 0 and "stage 'grpo' finished" in output and "total_steps" in output, output
