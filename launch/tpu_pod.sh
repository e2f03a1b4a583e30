#!/usr/bin/env bash
# Runs one experiment on every host of a Cloud TPU VM pod slice (no Pathways): each host runs the same command,
# jax.distributed.initialize() discovers the others, and orbax/metrics write from process 0 (checkpoints from all).
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/grpo.py:gemma2_27b gs://bucket/runs/grpo27b [--config.key=value ...]
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [overrides...]" >&2; exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4; shift 4
repo_url=${SPCT_REPO_URL:-$(git config --get remote.origin.url)}
ref=${SPCT_REF:-$(git rev-parse HEAD)}

# 1. Same code and environment on every host.
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  set -e
  [ -d spct-jax ] || git clone '$repo_url' spct-jax
  cd spct-jax && git fetch -q origin && git checkout -q '$ref'
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q -r requirements.lock && pip install -q --no-deps -e . && pip install -q 'jax[tpu]'
"
# 2. The run itself, on all hosts at once (a preemption's SIGTERM makes every host save and exit cleanly).
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  cd spct-jax && . .venv/bin/activate &&
  SPCT_DISTRIBUTED=1 python -m spct_jax.main --config='$config' --workdir='$workdir' $*
"
