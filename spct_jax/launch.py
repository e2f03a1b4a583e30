"""Local multi-process launcher: N processes on loopback, started the way a pod starts them.

  python -m spct_jax.launch --num-processes 2 --devices-per-process 2 --log-dir logs/local -- \\
      --config=configs/grpo.py:smoke --workdir=/tmp/grpo-2p

Process i runs `python -m spct_jax.main --coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=i`
followed by the arguments after `--` (PORT: a free port, picked here). `--devices-per-process D` gives each
process D CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=D`, replacing any inherited count). The
launcher waits for all of them. The first process to fail stops the others (SIGTERM to its process group, SIGKILL
after `grace` seconds) and its code becomes the launcher's; SIGINT or SIGTERM sent to the launcher reaches every
process as SIGTERM, the preemption signal `main` saves on. `--dry-run` prints the commands instead, one per line,
shell-quoted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence

MAIN = (sys.executable, "-m", "spct_jax.main")
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
TIMEOUT_EXIT = 124  # what coreutils `timeout` returns


def free_port(host: str = "127.0.0.1") -> int:
  """A TCP port nothing listens on right now (the OS picks it)."""
  with socket.socket() as s:
    s.bind((host, 0))
    return s.getsockname()[1]


def xla_flags(inherited: str, devices: int) -> str:
  """`inherited` XLA_FLAGS with the host device count set to `devices` (an earlier count is dropped)."""
  kept = [f for f in inherited.split() if not f.startswith(DEVICE_COUNT_FLAG)]
  return " ".join([*kept, f"{DEVICE_COUNT_FLAG}={devices}"])


@dataclasses.dataclass(frozen=True)
class Process:
  """One planned process: its argv, the environment variables the launcher sets, its log file (or None)."""
  argv: tuple[str, ...]
  env: tuple[tuple[str, str], ...]
  log: pathlib.Path | None

  def shell_line(self) -> str:
    """The process as one copy-pasteable shell line, started in the background like the others."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env)
    redirect = f" > {shlex.quote(str(self.log))} 2>&1" if self.log else ""
    return f"{env + ' ' if env else ''}{shlex.join(self.argv)}{redirect} &"


def plan(args: Sequence[str], *, num_processes: int, devices_per_process: int | None = None,
         program: Sequence[str] = MAIN, port: int | None = None,
         log_dir: str | os.PathLike | None = None) -> list[Process]:
  """The processes `run_local` starts: `[*program, <distributed flags>, *args]` for process 0..N-1."""
  if num_processes < 1:
    raise ValueError(f"num_processes must be >= 1, got {num_processes}")
  if devices_per_process is not None and devices_per_process < 1:
    raise ValueError(f"devices_per_process must be >= 1, got {devices_per_process}")
  address = f"127.0.0.1:{port or free_port()}"
  env = ()
  if devices_per_process is not None:
    env = (("XLA_FLAGS", xla_flags(os.environ.get("XLA_FLAGS", ""), devices_per_process)),)
  log_dir = None if log_dir is None else pathlib.Path(log_dir)
  return [Process(argv=(*program, f"--coordinator_address={address}", f"--num_processes={num_processes}",
                        f"--process_id={i}", *args),
                  env=env, log=None if log_dir is None else log_dir / f"process-{i}.log")
          for i in range(num_processes)]


def _exit_code(returncode: int) -> int:
  return 128 - returncode if returncode < 0 else returncode  # killed by signal s: 128 + s, as a shell says


@dataclasses.dataclass(frozen=True)
class Result:
  """How a local run ended.

  Attributes:
    returncodes: one per process (negative: killed by that signal, Popen's convention).
    first_failure: index of the process whose non-zero exit stopped the others, or None.
    timed_out: the run passed its timeout and was stopped.
    interrupted: the launcher received SIGINT/SIGTERM and forwarded SIGTERM.
    logs: each process's log file (None: it wrote to the launcher's stdout/stderr).
  """
  returncodes: tuple[int, ...]
  first_failure: int | None
  timed_out: bool
  interrupted: bool
  logs: tuple[pathlib.Path | None, ...]

  @property
  def exit_code(self) -> int:
    """124 on timeout, else the first failing process's code, else the first non-zero one, else 0."""
    if self.timed_out:
      return TIMEOUT_EXIT
    if self.first_failure is not None:
      return _exit_code(self.returncodes[self.first_failure])
    return next((_exit_code(c) for c in self.returncodes if c), 0)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
  try:
    os.killpg(proc.pid, sig)  # its own session: the group holds the process and anything it started
  except ProcessLookupError:
    pass


def _tail(path: pathlib.Path | None, lines: int = 20) -> str:
  if path is None or not path.exists():
    return ""
  return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_local(args: Sequence[str], *, num_processes: int = 2, devices_per_process: int | None = None,
              program: Sequence[str] = MAIN, log_dir: str | os.PathLike | None = None,
              timeout: float | None = None, grace: float = 30.0, port: int | None = None,
              poll_interval: float = 0.05) -> Result:
  """Starts `plan(...)`'s processes, waits for all, stops all on the first failure, a timeout or a signal.

  Args:
    args: arguments after the distributed flags (for spct_jax.main: `--config=...`, `--workdir=...`, ...).
    num_processes: N.
    devices_per_process: CPU devices per process (XLA_FLAGS), or None to leave XLA_FLAGS as inherited.
    program: argv prefix; default `python -m spct_jax.main` with this interpreter.
    log_dir: each process writes stdout+stderr to `log_dir/process-<i>.log` (truncated); None: inherited.
    timeout: seconds before every process is stopped (exit code 124); None: no limit.
    grace: seconds between SIGTERM and SIGKILL when stopping.
    port: coordinator port; None picks a free one.
    poll_interval: seconds between polls.

  Returns:
    A `Result`; `result.exit_code` is what the command-line launcher exits with.
  """
  processes = plan(args, num_processes=num_processes, devices_per_process=devices_per_process, program=program,
                   port=port, log_dir=log_dir)
  received: list[int] = []
  previous = {}
  if threading.current_thread() is threading.main_thread():
    for sig in (signal.SIGINT, signal.SIGTERM):
      previous[sig] = signal.signal(sig, lambda signum, _: received.append(signum))
  procs: list[subprocess.Popen] = []
  first_failure, timed_out, kill_at = None, False, None
  deadline = None if timeout is None else time.monotonic() + timeout
  try:
    for p in processes:
      if p.log is not None:
        p.log.parent.mkdir(parents=True, exist_ok=True)
      out = open(p.log, "wb") if p.log is not None else None  # pylint: disable=consider-using-with
      try:
        procs.append(subprocess.Popen(p.argv, env={**os.environ, **dict(p.env)}, stdout=out,
                                      stderr=subprocess.STDOUT if out else None, start_new_session=True))
      finally:
        if out is not None:
          out.close()  # the child holds its own copy
    while True:
      codes = [proc.poll() for proc in procs]
      if all(c is not None for c in codes):
        break
      now = time.monotonic()
      stop = None
      if first_failure is None and kill_at is None:
        failed = [i for i, c in enumerate(codes) if c]
        if failed:
          first_failure = failed[0]
          stop = f"process {first_failure} exited with code {codes[first_failure]}"
        elif received:
          stop = f"received signal {signal.Signals(received[0]).name}"
        elif deadline is not None and now > deadline:
          timed_out, stop = True, f"timed out after {timeout} s"
      if stop is not None:
        print(f"spct_jax.launch: {stop}; sending SIGTERM to the others", file=sys.stderr, flush=True)
        for proc, code in zip(procs, codes):
          if code is None:
            _signal_group(proc, signal.SIGTERM)
        kill_at = now + grace
      elif kill_at is not None and (now > kill_at or len(received) > 1):  # a second Ctrl-C: no more waiting
        for proc, code in zip(procs, codes):
          if code is None:
            _signal_group(proc, signal.SIGKILL)
        kill_at = float("inf")
      time.sleep(poll_interval)
  finally:
    for proc in procs:
      if proc.poll() is None:  # an exception (or KeyboardInterrupt) here: leave nothing running
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  result = Result(returncodes=tuple(proc.returncode for proc in procs), first_failure=first_failure,
                  timed_out=timed_out, interrupted=bool(received), logs=tuple(p.log for p in processes))
  if first_failure is not None and processes[first_failure].log is not None:
    log = processes[first_failure].log
    print(f"spct_jax.launch: last lines of {log}:\n{_tail(log)}", file=sys.stderr, flush=True)
  return result


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m spct_jax.launch", allow_abbrev=False,
      usage="%(prog)s [--num-processes N] [--devices-per-process D] [--log-dir DIR] [--timeout S] [--dry-run] "
            "-- [spct_jax.main flags]",
      description="Runs N processes of spct_jax.main on this machine, joined through a coordinator on "
                  "127.0.0.1 (the multi-process path of a pod, on one host).")
  parser.add_argument("--num-processes", type=int, default=2, help="processes to start (default 2)")
  parser.add_argument("--devices-per-process", type=int, default=None,
                      help="CPU devices per process, via XLA_FLAGS (default: XLA_FLAGS as inherited)")
  parser.add_argument("--log-dir", default="logs/local",
                      help="process-<i>.log per process (default logs/local); '-' writes to this terminal")
  parser.add_argument("--timeout", type=float, default=None, help="seconds before all are stopped (exit 124)")
  parser.add_argument("--grace", type=float, default=30.0, help="seconds from SIGTERM to SIGKILL (default 30)")
  parser.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
  parser.add_argument("--program", default=None,
                      help="command to run instead of 'python -m spct_jax.main' (shell-split)")
  parser.add_argument("--dry-run", action="store_true", help="print the commands, one per line, and exit")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  ours, forwarded = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
  parser = _parser()
  opts = parser.parse_args(ours)
  if opts.num_processes < 1 or (opts.devices_per_process is not None and opts.devices_per_process < 1):
    parser.error("--num-processes and --devices-per-process must be >= 1")
  kwargs = dict(num_processes=opts.num_processes, devices_per_process=opts.devices_per_process,
                program=shlex.split(opts.program) if opts.program else MAIN, port=opts.port,
                log_dir=None if opts.log_dir == "-" else opts.log_dir)
  if opts.dry_run:
    processes = plan(forwarded, **kwargs)
    mkdir = [f"mkdir -p {shlex.quote(opts.log_dir)}"] if kwargs["log_dir"] else []
    print("\n".join([*mkdir, *(p.shell_line() for p in processes), "wait"]))
    return 0
  result = run_local(forwarded, timeout=opts.timeout, grace=opts.grace, **kwargs)
  if opts.log_dir != "-":
    print(f"spct_jax.launch: logs in {opts.log_dir}/process-<i>.log; exit codes {list(result.returncodes)}",
          file=sys.stderr)
  return result.exit_code


if __name__ == "__main__":
  sys.exit(main())
