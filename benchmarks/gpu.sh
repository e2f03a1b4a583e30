#!/usr/bin/env bash
# One run on a lent GPU machine (no network) for the README's GPU numbers; run from anywhere in the checkout:
#
#   bash benchmarks/gpu.sh        # carry: .whl (missing pure-python wheels), .bench_assets (tokenizer.model)
#
# Stages, each under `timeout` (a failed or hung stage does not stop the next one):
#   1. env: GPU, jax / flax / torch versions; installs the wheels from .whl whose packages are missing here.
#   2. tests: a short GPU pass over the unit tests that use tiny configs (no GGUF, no TensorFlow, one device).
#   3. sampler.py: ours bf16 vs HF generate bf16, on the GPU, seeded random weights (the GGUF cannot travel).
#   4. grpo_step.py: ours bf16 vs TRL GRPOTrainer bf16 (autocast), on the GPU, the same random weights.
# Everything goes to $OUT (default /tmp/gpu_out), 8 files: env.txt tests.txt sampler.{log,md,json}
# grpo.{log,md,json}. The tables are printed again at the very end.
#
# Knobs (environment): PY (python3), OUT, WHL_DIR (.whl), GPU_SH_BUDGET (seconds for the whole script, 480),
# GPU_SH_F32=1 (also the float32 systems), GPU_SH_QUICK=1 (CPU simulation: --quick sizes, JAX_PLATFORMS=cpu, no
# nvidia-smi, GPU code paths run on the CPU, every time limit x GPU_SH_LIMIT_SCALE (4); for checking this script),
# GPU_SH_FORCE_WHEELS=1 (install every wheel, even where the package exists: proves the install line).
set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu_out}
WHL_DIR=${WHL_DIR:-.whl}
SITE=/tmp/site
TOKENIZER=.bench_assets/tokenizer.model
QUICK=()
mkdir -p "$OUT"

export SPCT_BENCH_CACHE=${SPCT_BENCH_CACHE:-/tmp/spct_bench_cache}  # the 1 GB random-weights folder, not in $OUT
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
SCALE=1
if [[ ${GPU_SH_QUICK:-0} == 1 ]]; then
  QUICK=(--quick)
  SCALE=${GPU_SH_LIMIT_SCALE:-4}  # 2 loaded CPU cores are far slower than the GPU machine
  export JAX_PLATFORMS=cpu SPCT_BENCH_SIMULATE_GPU=1
fi
BUDGET=${GPU_SH_BUDGET:-$((480 * SCALE))}
SAMPLER_SYSTEMS=ours-bfloat16,hf-bfloat16
GRPO_SYSTEMS=ours-bfloat16,trl-bfloat16
if [[ ${GPU_SH_F32:-0} == 1 ]]; then
  SAMPLER_SYSTEMS+=,ours-float32,hf-float32
  GRPO_SYSTEMS+=,ours-float32,trl-float32
fi

START=$SECONDS
STATUS=()

# stage NAME LIMIT_S LOG CMD...: runs CMD (stdout + stderr to LOG) under `timeout`, capped by the budget left;
# prints the log's last lines.
stage() {
  local name=$1 limit=$2 log=$3 left rc t0=$SECONDS
  shift 3
  limit=$((limit * SCALE))
  left=$((BUDGET - (SECONDS - START)))
  ((limit > left)) && limit=$left
  if ((limit < 15)); then
    echo "=== $name: SKIPPED, budget of ${BUDGET}s spent" | tee -a "$log"
    STATUS+=("$name: skipped (budget)")
    return
  fi
  echo "=== $name: limit ${limit}s, $(date +%T), $((SECONDS - START))s into the run"
  timeout -k 10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  ((rc == 124 || rc == 137)) && rc="$rc (TIMED OUT after ${limit}s)"
  STATUS+=("$name: rc=$rc, $((SECONDS - t0))s")
  tail -n 6 "$log" | cut -c1-300
  echo "=== $name: rc=$rc after $((SECONDS - t0))s"
}

# --- 1. env -------------------------------------------------------------------------------------------------
{
  echo "=== env $(date)"
  if [[ ${GPU_SH_QUICK:-0} != 1 ]]; then timeout 20 nvidia-smi -L; fi
  "$PY" --version
  # Only wheels whose package is missing: --target copies put first on PYTHONPATH would shadow the machine's own
  # numpy / torch / transformers / jax.
  wheels=()
  for whl in "$WHL_DIR"/*.whl; do
    [[ -e $whl ]] || continue
    dist=$(basename "$whl" | cut -d- -f1)
    if [[ ${GPU_SH_FORCE_WHEELS:-0} == 1 ]] ||
      ! "$PY" -c 'import importlib.metadata as m, sys; m.version(sys.argv[1])' "$dist" 2>/dev/null; then
      wheels+=("$whl")
    fi
  done
  echo "installing into $SITE: ${wheels[*]:-nothing}"
  if ((${#wheels[@]})); then
    timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" "${wheels[@]}"
  fi
} >>"$OUT/env.txt" 2>&1
export PYTHONPATH=$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}
env_checks() {
  "$PY" -c 'import jax; print("jax", jax.__version__, jax.default_backend(), jax.devices())'
  "$PY" -m pip list 2>/dev/null | grep -i -E "^(jax|flax|optax|orbax|chex|numpy|ml.dtypes|torch|transformers|trl|\
accelerate|datasets|tokenizers|safetensors|sentencepiece|pandas|pyarrow|dill|multiprocess|xxhash|huggingface)"
  "$PY" - <<'PYEOF'
import importlib
for name in ("flax", "optax", "torch", "transformers", "accelerate", "datasets", "dill", "multiprocess", "trl"):
  try:
    m = importlib.import_module(name)
    print(f"import {name} {getattr(m, '__version__', '?')} from {m.__file__}")
  except Exception as e:  # noqa: BLE001  Report every missing piece, then go on.
    print(f"import {name} FAILED: {type(e).__name__}: {e}")
import torch
print("torch cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
PYEOF
}
export -f env_checks
export PY
stage env 45 "$OUT/env.txt" bash -c env_checks

# --- 2. tests -------------------------------------------------------------------------------------------------
# conftest's 8 forced host devices stay on the CPU backend: tests that build multi-device meshes are deselected.
# Highest matmul precision: the tests compare f32 results at tight tolerances (XLA's GPU default is TF32).
NO_MESH="not sharded and not shard_map and not mesh and not entropy and not divisible"
NO_MESH+=" and not bf16_compute_dtype_is_close and not bad_inputs_raise"  # test_logprobs: these build meshes too
stage tests 60 "$OUT/tests.txt" env JAX_DEFAULT_MATMUL_PRECISION=highest "$PY" -m pytest -v -p no:cacheprovider \
  --maxfail=10 --durations=5 tests/test_grpo.py tests/test_losses.py tests/test_logprobs.py tests/test_model.py \
  tests/test_sampler.py tests/test_grpo_trainer.py -k "$NO_MESH"

# --- 3. sampler -----------------------------------------------------------------------------------------------
stage sampler 150 "$OUT/sampler.log" "$PY" benchmarks/sampler.py "${QUICK[@]}" --device gpu --random-weights \
  --tokenizer "$TOKENIZER" --systems "$SAMPLER_SYSTEMS" --worker-timeout $((100 * SCALE)) \
  --json "$OUT/sampler.json" --markdown "$OUT/sampler.md"

# --- 4. GRPO step ---------------------------------------------------------------------------------------------
stage grpo 260 "$OUT/grpo.log" "$PY" benchmarks/grpo_step.py "${QUICK[@]}" --device gpu --random-weights \
  --tokenizer "$TOKENIZER" --systems "$GRPO_SYSTEMS" --worker-timeout $((120 * SCALE)) \
  --json "$OUT/grpo.json" --markdown "$OUT/grpo.md"

# --- Summary: what the caller sees last ------------------------------------------------------------------------
echo
echo "################ SUMMARY ($((SECONDS - START))s; files in $OUT) ################"
printf '%s\n' "${STATUS[@]}"
echo
grep -E "^(jax |import |torch cuda|GPU |installing)" "$OUT/env.txt" |
  grep -v -E "^import (flax|optax|accelerate|dill|multiprocess) " | cut -c1-200
echo
grep -E "(FAILED|ERROR)" "$OUT/tests.txt" | head -n 15 | cut -c1-250
grep -E "^(=+ .*(passed|failed|error).* =+|[0-9]+ (passed|failed))" "$OUT/tests.txt" | tail -n 2 ||
  echo "tests: $(grep -c PASSED "$OUT/tests.txt") passed, $(grep -c FAILED "$OUT/tests.txt") failed before the stop"
for part in sampler grpo; do
  echo
  if [[ -s $OUT/$part.md ]]; then
    cat "$OUT/$part.md"
  else
    echo "## $part: no report; last lines of $part.log:"
    grep -v -E "^\{'loss'|Warning|warn" "$OUT/$part.log" 2>/dev/null | tail -n 25 | cut -c1-300
  fi
done
