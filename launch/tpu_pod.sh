#!/usr/bin/env bash
# Runs one experiment on every worker of a Cloud TPU VM slice (no Pathways), in four steps:
#   1. pack this working tree as `git add -A` would commit it (tracked files as they are now plus untracked,
#      non-ignored ones; no push needed) and scp it to every worker;
#   2. on every worker: stop processes of a previous run, unpack into ~/spct-jax/src, make a Python 3.11 venv
#      with uv (TPU VM images ship 3.10) in ~/spct-jax/venv, install `.[tpu,data]` pinned by requirements.lock;
#   3. on all workers at once: SPCT_DISTRIBUTED=1 python -m spct_jax.main --config=CONFIG --workdir=WORKDIR ARGS
#      (no --coordinator_address: JAX reads the workers, the coordinator and this worker's index from the TPU VM
#      metadata server). ARGS reach main exactly as given here (each one `printf %q`-quoted for the remote shell);
#   4. with --delete: delete the queued resource, whatever the run's outcome.
# Logs: WORKDIR/logs/worker-<N>.log on each worker, N the TPU worker number; with a gs:// WORKDIR they stay on
# each worker in ~/spct-jax/logs/ (the script prints the scp command that fetches them). The run lives as long as
# the ssh sessions: start long runs inside tmux or screen.
set -euo pipefail

usage() {
  cat >&2 <<EOF
usage: $0 [options] TPU_NAME ZONE CONFIG WORKDIR [spct_jax.main flags...]
  e.g. $0 my-v4 us-central2-b configs/grpo.py:gemma2_27b gs://bucket/runs/grpo27b --config.data.names='("llmbar",)'
options:
  --dry-run          print the commands (one per line, shell-quoted) instead of running them
  --create=TYPE      first create the slice as a queued resource of accelerator TYPE (e.g. v4-32) and wait for it
  --runtime=VERSION  TPU software version for --create (e.g. tpu-ubuntu2204-base for v4, v2-alpha-tpuv5-lite v5e)
  --spot             with --create: spot capacity
  --delete           delete the queued resource (and its slice) when the run ends, even if it failed
WORKDIR is gs://... or an absolute path on the workers (a relative one would sit in the shipped tree, which the
next launch replaces).
EOF
  exit 2
}

dry_run=0 create="" runtime="" spot=0 delete=0
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry_run=1 ;;
    --create=*) create=${1#*=} ;;
    --runtime=*) runtime=${1#*=} ;;
    --spot) spot=1 ;;
    --delete) delete=1 ;;
    -h|--help) usage ;;
    --*) echo "$0: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
  shift
done
[ $# -ge 4 ] || usage
tpu=$1 zone=$2 config=$3 workdir=$4; shift 4
case $workdir in
  gs://*|/*) ;;
  *) echo "$0: WORKDIR must be gs://... or an absolute path, got '$workdir'" >&2; usage ;;
esac
if [ -n "$create" ] && [ -z "$runtime" ]; then echo "$0: --create needs --runtime=VERSION" >&2; usage; fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
poll_seconds=${SPCT_POLL_SECONDS:-30}

# shellcheck source=launch/lib.sh
. "$repo/launch/lib.sh"

# Worker-side scripts, one line each ($HOME, $w and $logs expand on the worker). A stale process would hold the
# TPU; the worker number (the metadata key JAX reads too) names the log.
# shellcheck disable=SC2016
stop_stale='pkill -f "spct_jax[.]main" || true; for _ in 1 2 3 4 5 6 7 8 9 10; do pgrep -f "spct_jax[.]main"
>/dev/null || break; sleep 1; done; pkill -9 -f "spct_jax[.]main" || true; rm -f /tmp/libtpu_lockfile'
# shellcheck disable=SC2016
setup='set -euo pipefail; '"$stop_stale"'; rm -rf "$HOME/spct-jax/src"; mkdir -p "$HOME/spct-jax/src";
tar -xzf "$HOME/spct-jax.tar.gz" -C "$HOME/spct-jax/src"; export PATH="$HOME/.local/bin:$PATH";
command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh;
[ -x "$HOME/spct-jax/venv/bin/python" ] || uv venv --python 3.11 "$HOME/spct-jax/venv"; cd "$HOME/spct-jax/src";
uv pip install -q --python "$HOME/spct-jax/venv/bin/python" -c requirements.lock -e ".[tpu,data]"'
# shellcheck disable=SC2016
case $workdir in
  gs://*) logs='"$HOME/spct-jax/logs"' ;;
  *) logs=$(printf %q "$workdir/logs") ;;
esac
# shellcheck disable=SC2016
worker='set -euo pipefail; cd "$HOME/spct-jax/src"; w=$(curl -sf --max-time 5 -H Metadata-Flavor:Google
http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname);
logs='"$logs"'; mkdir -p "$logs"; echo "worker $w: log $logs/worker-$w.log"; SPCT_DISTRIBUTED=1
"$HOME/spct-jax/venv/bin/python" -m spct_jax.main'"$(printf ' %q' "--config=$config" "--workdir=$workdir" "$@")"'
2>&1 | tee -a "$logs/worker-$w.log"'
setup=${setup//$'\n'/ } worker=${worker//$'\n'/ }

queued=(gcloud compute tpus queued-resources)
if [ -n "$create" ]; then
  spot_flag=(); [ "$spot" = 0 ] || spot_flag=(--spot)
  run "${queued[@]}" create "$tpu" --zone="$zone" --node-id="$tpu" --accelerator-type="$create" \
    --runtime-version="$runtime" ${spot_flag[@]+"${spot_flag[@]}"}
  echo "# repeated every $poll_seconds s until ACTIVE:"
  show "${queued[@]}" describe "$tpu" --zone="$zone" --format='value(state.state)'
  while [ "$dry_run" = 0 ]; do
    state=$("${queued[@]}" describe "$tpu" --zone="$zone" --format='value(state.state)')
    case $state in
      ACTIVE) break ;;
      FAILED|SUSPENDED) echo "$0: queued resource $tpu is $state" >&2; exit 1 ;;
    esac
    sleep "$poll_seconds"
  done
fi
if [ "$delete" = 1 ]; then
  trap 'run "${queued[@]}" delete "$tpu" --zone="$zone" --force --quiet' EXIT
fi

tarball=${TMPDIR:-/tmp}/spct-jax-$tpu.tar.gz
index=$(mktemp)
tree=$(export GIT_INDEX_FILE=$index; git -C "$repo" read-tree HEAD && git -C "$repo" add -A && git -C "$repo" write-tree)
rm -f "$index"
run git -C "$repo" archive --format=tar.gz --output="$tarball" "$tree"
run gcloud compute tpus tpu-vm scp "$tarball" "$tpu:spct-jax.tar.gz" --zone="$zone" --worker=all
run gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$setup"
run gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$worker"
case $workdir in
  gs://*) echo "# fetch the logs: gcloud compute tpus tpu-vm scp '$tpu:spct-jax/logs/*' . --zone=$zone --worker=all" ;;
  *) echo "# logs: $workdir/logs/worker-<N>.log on each worker" ;;
esac
