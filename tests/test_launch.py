"""Launchers: the local multi-process launcher for real (gloo psum over 2 processes x 2 CPU devices, failure,
timeout, SIGTERM forwarding), and the TPU-pod / SLURM scripts against fake `gcloud`, `srun`, `scontrol` on PATH:
the dry run prints exactly what a run executes, and overrides reach the worker's `python` word for word."""

import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from spct_jax import launch

REPO = pathlib.Path(__file__).resolve().parents[1]
# Overrides a shell would mangle: parentheses, both quotes, spaces, $, ;, a backtick.
NASTY = ['--config.data.names=("llmbar",)', "--config.note=it's a \"quoted\" (test) $HOME; `x`"]

FAKE = textwrap.dedent("""\
    #!{python}
    import json, os, signal, sys, time
    name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
    def log(entry):
      with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps(entry) + "\\n")
    log([name, *args])
    if name == "gcloud" and "describe" in args:
      print("ACTIVE")
    if name == "gcloud" and os.environ.get("FAKE_FAIL") and os.environ["FAKE_FAIL"] in " ".join(args):
      sys.exit(7)
    if name == "srun":
      program = args[next(i for i, a in enumerate(args) if not a.startswith("--")):]
      if os.environ.get("FAKE_SRUN") == "exec":
        os.execv(program[0], program)
      if os.environ.get("FAKE_SRUN") == "wait" and "spct_jax.main" in program:
        signal.signal(signal.SIGTERM, lambda *_: (log(["srun got SIGTERM"]), sys.exit(0)))
        time.sleep(60)
        sys.exit(9)
    """)


def fake_path(tmp_path, *names):
  """A bin folder of fakes that record their argv to tmp_path/calls.jsonl; (env, calls reader)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in names:
    (bin_dir / name).write_text(FAKE.format(python=sys.executable))
    (bin_dir / name).chmod(0o755)
  log = tmp_path / "calls.jsonl"
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log), "TMPDIR": str(tmp_path)}
  return env, lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def commands(stdout: str) -> list[list[str]]:
  return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


# ---------------------------------------------------------------------------------------------------------------
# spct_jax.launch: real processes.

PSUM = textwrap.dedent("""\
    import sys
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    flags = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(flags["coordinator_address"], int(flags["num_processes"]), int(flags["process_id"]))
    mesh = jax.make_mesh((jax.device_count(),), ("d",))
    local = np.arange(jax.local_device_count(), dtype=np.float32) + 10 * jax.process_index()
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("d")), local)
    total = jax.jit(lambda a: a.sum(), out_shardings=NamedSharding(mesh, P()))(x)
    print(f"process {jax.process_index()} of {jax.process_count()}, {jax.device_count()} devices, sum {float(total)}")
    """)


def test_two_processes_of_two_cpu_devices_psum_over_gloo(tmp_path):
  script = tmp_path / "psum.py"
  script.write_text(PSUM)
  result = launch.run_local([], num_processes=2, devices_per_process=2, program=[sys.executable, str(script)],
                            log_dir=tmp_path / "logs", timeout=240, grace=5)
  logs = [path.read_text() for path in result.logs]
  assert result.exit_code == 0, logs
  for i, text in enumerate(logs):  # devices hold 0, 1 (process 0) and 10, 11 (process 1)
    assert f"process {i} of 2, 4 devices, sum 22.0" in text


def test_each_process_gets_the_distributed_flags_then_the_args_and_its_device_count(tmp_path, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=8")
  show = "import json, os, sys; print(json.dumps([sys.argv[1:], os.environ['XLA_FLAGS']]))"
  result = launch.run_local(NASTY, num_processes=3, devices_per_process=2, program=[sys.executable, "-c", show],
                            log_dir=tmp_path, port=23571, timeout=60)
  assert result.exit_code == 0 and result.returncodes == (0, 0, 0)
  for i, log in enumerate(result.logs):
    argv, xla_flags = json.loads(log.read_text())
    assert argv == ["--coordinator_address=127.0.0.1:23571", "--num_processes=3", f"--process_id={i}", *NASTY]
    assert xla_flags == "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=2"


def test_a_failing_process_stops_the_others_and_its_code_is_the_launchers(tmp_path):
  # Process 0 ignores SIGTERM (so it takes the SIGKILL after `grace`); once it does, process 1 fails.
  body = textwrap.dedent(f"""\
      import pathlib, signal, sys, time
      ready = pathlib.Path({str(tmp_path / "ready")!r})
      if sys.argv[3] == "--process_id=0":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ready.write_text("ok")
        time.sleep(120)
      while not ready.exists():
        time.sleep(0.05)
      sys.exit(3)
      """)
  start = time.monotonic()
  result = launch.run_local([], num_processes=2, program=[sys.executable, "-c", body], log_dir=tmp_path / "logs",
                            timeout=100, grace=1)
  assert time.monotonic() - start < 30
  assert result.first_failure == 1 and result.returncodes == (-signal.SIGKILL, 3)
  assert result.exit_code == 3 and not result.timed_out


def test_a_run_past_its_timeout_is_stopped_with_124(tmp_path):
  result = launch.run_local([], num_processes=2, program=[sys.executable, "-c", "import time; time.sleep(120)"],
                            log_dir=tmp_path, timeout=1, grace=5)
  assert result.timed_out and result.exit_code == 124
  assert result.returncodes == (-signal.SIGTERM, -signal.SIGTERM)


def test_sigterm_to_local_sh_reaches_every_process(tmp_path):
  """The preemption path: the launcher forwards SIGTERM; processes that save and exit 0 make it exit 0."""
  body = textwrap.dedent(f"""\
      import pathlib, signal, sys, time
      i = sys.argv[3].split("=")[1]
      out = pathlib.Path({str(tmp_path)!r})
      signal.signal(signal.SIGTERM, lambda *_: ((out / f"saved-{{i}}").write_text("ok"), sys.exit(0)))
      (out / f"started-{{i}}").write_text("ok")
      time.sleep(120)
      """)
  script = tmp_path / "child.py"
  script.write_text(body)
  proc = subprocess.Popen([REPO / "launch/local.sh", "--num-processes", "2", "--log-dir", tmp_path / "logs",
                           "--timeout", "100", "--program", f"{sys.executable} {script}"])
  try:
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"started-{i}").exists() for i in range(2)) and time.monotonic() < deadline:
      time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
  finally:
    proc.kill()
  assert all((tmp_path / f"saved-{i}").read_text() == "ok" for i in range(2))


def test_local_dry_run_prints_copy_pasteable_commands(tmp_path):
  out = subprocess.run([REPO / "launch/local.sh", "--dry-run", "--num-processes", "2", "--devices-per-process",
                        "2", "--log-dir", tmp_path, "--port", "4321", "--", "--config=configs/eval.py:smoke",
                        *NASTY], capture_output=True, text=True, check=True).stdout
  lines = out.splitlines()
  assert lines[0] == f"mkdir -p {tmp_path}" and lines[-1] == "wait"
  for i, line in enumerate(lines[1:-1]):
    words = shlex.split(line)
    assert words[0] == "XLA_FLAGS=--xla_force_host_platform_device_count=2"
    assert words[1:-4] == [*launch.MAIN, "--coordinator_address=127.0.0.1:4321", "--num_processes=2",
                           f"--process_id={i}", "--config=configs/eval.py:smoke", *NASTY]
    assert words[-4:] == [">", str(tmp_path / f"process-{i}.log"), "2>&1", "&"]


def test_launcher_rejects_bad_counts():
  with pytest.raises(SystemExit):
    launch.main(["--num-processes", "0", "--dry-run"])
  with pytest.raises(ValueError, match="devices_per_process"):
    launch.plan([], num_processes=2, devices_per_process=0)


# ---------------------------------------------------------------------------------------------------------------
# TPU pod (fake gcloud).


def _repo_copy(tmp_path) -> pathlib.Path:
  """A git repo holding the launchers, with a modified, a deleted, an untracked and an ignored file."""
  repo = tmp_path / "repo"
  (repo / "launch").mkdir(parents=True)
  for name in ("tpu_pod.sh", "lib.sh"):
    (repo / "launch" / name).write_text((REPO / "launch" / name).read_text())
  (repo / "launch/tpu_pod.sh").chmod(0o755)
  (repo / ".gitignore").write_text("ignored.txt\n")
  (repo / "modified.txt").write_text("committed\n")
  (repo / "deleted.txt").write_text("committed\n")
  git = ["git", "-C", repo, "-c", "user.name=t", "-c", "user.email=t@t"]
  subprocess.run([*git, "init", "-q"], check=True)
  subprocess.run([*git, "add", "-A"], check=True)
  subprocess.run([*git, "commit", "-qm", "init"], check=True)
  (repo / "modified.txt").write_text("edited, not committed\n")
  (repo / "deleted.txt").unlink()
  (repo / "untracked.txt").write_text("new\n")
  (repo / "ignored.txt").write_text("secret\n")
  return repo


def _run_worker_command(tmp_path, command: str, worker: int = 3) -> tuple[list[str], dict]:
  """Runs the worker-side command as the worker's shell would, with a fake venv python and metadata curl."""
  home, bin_dir = tmp_path / "home", tmp_path / "worker-bin"
  (home / "spct-jax/src").mkdir(parents=True)
  (home / "spct-jax/venv/bin").mkdir(parents=True)
  bin_dir.mkdir()
  python = home / "spct-jax/venv/bin/python"
  python.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "print(json.dumps([sys.argv[1:], os.getcwd(), os.environ.get('SPCT_DISTRIBUTED')]))\n")
  (bin_dir / "curl").write_text(f"#!/bin/sh\necho {worker}\n")
  for path in (python, bin_dir / "curl"):
    path.chmod(0o755)
  env = {"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin"}
  out = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  argv, cwd, distributed = json.loads(out.stdout.splitlines()[-1])
  return argv, {"cwd": cwd, "SPCT_DISTRIBUTED": distributed, "home": home}


def test_tpu_pod_runs_what_its_dry_run_prints_and_overrides_reach_the_worker_exactly(tmp_path):
  repo = _repo_copy(tmp_path)
  env, calls = fake_path(tmp_path, "gcloud")
  env["SPCT_POLL_SECONDS"] = "0"
  args = ["--create=v4-16", "--runtime=tpu-ubuntu2204-base", "--spot", "--delete", "my-tpu", "us-central2-b",
          "configs/grpo.py:smoke", str(tmp_path / "run"), *NASTY]
  status = subprocess.run(["git", "-C", repo, "status", "--porcelain"], capture_output=True, text=True).stdout
  dry = subprocess.run([repo / "launch/tpu_pod.sh", "--dry-run", *args], env=env, capture_output=True, text=True)
  assert dry.returncode == 0, dry.stderr
  assert calls() == []  # a dry run runs nothing
  real = subprocess.run([repo / "launch/tpu_pod.sh", *args], env=env, capture_output=True, text=True)
  assert real.returncode == 0, real.stderr
  printed = commands(dry.stdout)
  assert [c for c in printed if c[0] == "gcloud"] == calls()
  assert commands(real.stdout) == printed
  head = ["gcloud", "compute", "tpus"]
  assert [c[:5] for c in calls()] == [
      [*head, "queued-resources", "create"], [*head, "queued-resources", "describe"],
      [*head, "tpu-vm", "scp"], [*head, "tpu-vm", "ssh"], [*head, "tpu-vm", "ssh"],
      [*head, "queued-resources", "delete"]]
  assert calls()[0][5:] == ["my-tpu", "--zone=us-central2-b", "--node-id=my-tpu", "--accelerator-type=v4-16",
                            "--runtime-version=tpu-ubuntu2204-base", "--spot"]
  assert calls()[-1][5:] == ["my-tpu", "--zone=us-central2-b", "--force", "--quiet"]
  # The shipped tree is the working tree as `git add -A` sees it; the repo's own index is untouched.
  tarball = calls()[2][5]
  listing = subprocess.run(["tar", "-tzf", tarball], capture_output=True, text=True, check=True).stdout.split()
  assert sorted(listing) == [".gitignore", "launch/", "launch/lib.sh", "launch/tpu_pod.sh", "modified.txt",
                             "untracked.txt"]
  edited = subprocess.run(["tar", "-xzOf", tarball, "modified.txt"], capture_output=True, text=True).stdout
  assert edited == "edited, not committed\n"
  assert subprocess.run(["git", "-C", repo, "status", "--porcelain"], capture_output=True,
                        text=True).stdout == status
  setup, worker = (c[-1].removeprefix("--command=") for c in calls()[3:5])
  for piece in ('pkill -f "spct_jax[.]main"', "uv venv --python 3.11", '-c requirements.lock -e ".[tpu,data]"',
                'tar -xzf "$HOME/spct-jax.tar.gz"'):
    assert piece in setup
  argv, seen = _run_worker_command(tmp_path, worker)
  assert argv == ["-m", "spct_jax.main", "--config=configs/grpo.py:smoke", f"--workdir={tmp_path / 'run'}", *NASTY]
  assert seen["cwd"] == str(seen["home"] / "spct-jax/src") and seen["SPCT_DISTRIBUTED"] == "1"
  assert json.loads((tmp_path / "run/logs/worker-3.log").read_text())[0] == argv  # one log per worker, teed


def test_tpu_pod_gs_workdir_logs_on_the_worker_and_failures_propagate(tmp_path):
  env, calls = fake_path(tmp_path, "gcloud")
  env["FAKE_FAIL"] = "spct_jax.main"  # the run step fails on the workers
  out = subprocess.run([REPO / "launch/tpu_pod.sh", "--delete", "t", "z", "configs/eval.py:smoke", "gs://b/r"],
                       env=env, capture_output=True, text=True)
  assert out.returncode == 7
  assert calls()[-1][3:5] == ["queued-resources", "delete"]  # deleted even though the run failed
  _, seen = _run_worker_command(tmp_path, calls()[-2][-1].removeprefix("--command="), worker=0)
  assert (seen["home"] / "spct-jax/logs/worker-0.log").exists()


@pytest.mark.parametrize("args, message", [
    (["t", "z", "configs/eval.py", "runs/eval"], "WORKDIR must be gs://... or an absolute path"),
    (["--create=v4-8", "t", "z", "configs/eval.py", "/r"], "--create needs --runtime"),
    (["--bogus", "t", "z", "c", "/r"], "unknown option --bogus"),
    (["t", "z"], "usage:"),
])
def test_tpu_pod_rejects_bad_arguments(tmp_path, args, message):
  env, calls = fake_path(tmp_path, "gcloud")
  out = subprocess.run([REPO / "launch/tpu_pod.sh", *args], env=env, capture_output=True, text=True)
  assert out.returncode == 2 and message in out.stderr and calls() == []


# ---------------------------------------------------------------------------------------------------------------
# SLURM (fake srun, scontrol).


def _slurm_env(tmp_path, mode):
  env, calls = fake_path(tmp_path, "srun", "scontrol")
  env.update(FAKE_SRUN=mode, SPCT_VENV=sys.prefix, SLURM_JOB_ID="4242", SLURM_SUBMIT_DIR=str(REPO))
  return env, calls


def test_slurm_runs_what_its_dry_run_prints(tmp_path):
  env, calls = _slurm_env(tmp_path, "ok")
  args = ["configs/grpo.py:smoke", "/shared/runs/g", *NASTY]
  dry = subprocess.run(["bash", REPO / "launch/gpu_slurm.sbatch", "--dry-run", *args], env=env,
                       capture_output=True, text=True, check=True)
  assert calls() == []
  subprocess.run(["bash", REPO / "launch/gpu_slurm.sbatch", *args], env=env, capture_output=True, check=True)
  assert calls() == commands(dry.stdout)
  check, step = calls()
  assert check[:3] == ["srun", "--label", "--ntasks-per-node=1"] and 'b == "gpu"' in check[-1]
  assert step == ["srun", "--label", "--output=logs/%x-%j-%t.out", "--open-mode=append",
                  f"{sys.prefix}/bin/python", "-m", "spct_jax.main", *(f"--{k}={v}" for k, v in [
                      ("config", args[0]), ("workdir", args[1])]), *NASTY]
  header = re.findall(r"^#SBATCH (\S+)", (REPO / "launch/gpu_slurm.sbatch").read_text(), re.M)
  assert {"--requeue", "--signal=B:TERM@120", "--ntasks-per-node=1", "--open-mode=append"} <= set(header)


def test_slurm_stops_before_the_run_when_jax_sees_no_gpu(tmp_path):
  env, calls = _slurm_env(tmp_path, "exec")  # the check really runs, here on the CPU
  out = subprocess.run(["bash", REPO / "launch/gpu_slurm.sbatch", "configs/eval.py:smoke", "/r"], env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and "JAX backend is 'cpu', not gpu" in out.stderr
  assert len(calls()) == 1  # the run itself never started


def test_slurm_sigterm_reaches_the_tasks_then_the_job_is_requeued(tmp_path):
  env, calls = _slurm_env(tmp_path, "wait")
  proc = subprocess.Popen(["bash", REPO / "launch/gpu_slurm.sbatch", "configs/grpo.py:smoke", "/r"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 60
    while len(calls()) < 2 and time.monotonic() < deadline:
      time.sleep(0.1)
    time.sleep(0.5)  # the fake srun installs its handler
    proc.send_signal(signal.SIGTERM)  # what --signal=B:TERM@120 sends
    _, err = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 0, err
  assert calls()[2:] == [["srun got SIGTERM"], ["scontrol", "requeue", "4242"]]


def test_slurm_setup_installs_the_cuda_plugin_with_its_dependencies(tmp_path):
  out = subprocess.run(["bash", REPO / "launch/gpu_slurm.sbatch", "--dry-run", "--setup"], env={
      **os.environ, "SPCT_VENV": str(tmp_path / "venv")}, capture_output=True, text=True, check=True).stdout
  assert commands(out) == [["python3.11", "-m", "venv", str(tmp_path / "venv")],
                           [str(tmp_path / "venv/bin/python"), "-m", "pip", "install", "-q", "-c",
                            "requirements.lock", "-e", ".[gpu,data]"]]
  assert "jax[cuda12]" in (REPO / "setup.py").read_text()  # what the gpu extra brings, at the locked jax


# ---------------------------------------------------------------------------------------------------------------
# The README's launcher commands, in their dry-run form.


def readme_launcher_commands() -> list[list[str]]:
  section = (REPO / "README.md").read_text().split("### Multi-host", 1)[1].split("\n#", 1)[0]
  block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
  return [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_readme_shows_every_launcher():
  scripts = {next(w for w in words if w.startswith("launch/")) for words in readme_launcher_commands()}
  assert scripts == {"launch/local.sh", "launch/tpu_pod.sh", "launch/gpu_slurm.sbatch"}


@pytest.mark.parametrize("words", readme_launcher_commands(), ids=" ".join)
def test_readme_launcher_command_dry_runs(tmp_path, words):
  env, calls = fake_path(tmp_path, "gcloud", "srun", "sbatch")
  script = next(i for i, w in enumerate(words) if w.startswith("launch/"))
  head = ["bash"] if words[0] in ("bash", "sbatch") else []  # sbatch's own options are its business
  out = subprocess.run([*head, words[script], "--dry-run", *words[script + 1:]], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert calls() == []
  printed = commands(out.stdout)
  config = next((w for w in words if w.startswith("configs/") or w.startswith("--config=")), None)
  if config is not None:  # the experiment reaches the command that runs main
    main = [c for c in printed if any("spct_jax.main" in w for w in c)][-1]
    assert any(config.removeprefix("--config=") in w for w in main)
  words_run = [w for c in printed for w in c]  # and, for the TPU pod, the words of the worker's command
  words_run += [t for w in words_run if w.startswith("--command=") for t in shlex.split(w[len("--command="):])]
  for flag in (w for w in words[script + 1:] if w.startswith("--config.")):
    assert flag in words_run
