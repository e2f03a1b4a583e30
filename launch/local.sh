#!/usr/bin/env bash
# N processes of spct_jax.main on this machine, joined through a coordinator on 127.0.0.1: the multi-process path
# of a pod on one host (a thin wrapper over `python -m spct_jax.launch`, whose --help lists the options).
#
#   launch/local.sh --num-processes 2 --devices-per-process 2 -- --config=configs/grpo.py:smoke --workdir=/tmp/g2
#   launch/local.sh --dry-run --num-processes 2 -- --config=configs/eval.py:smoke
set -euo pipefail
if [ $# -eq 0 ]; then
  echo "usage: $0 [--num-processes N] [--devices-per-process D] [--log-dir DIR] [--timeout S] [--dry-run]" \
    "-- [spct_jax.main flags]" >&2
  exit 2
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m spct_jax.launch "$@"
