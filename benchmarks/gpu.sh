#!/usr/bin/env bash
# One prepared GPU check for issue 15, at most 8 minutes on one CUDA GPU:
#   1. GEMM TFLOP/s per dtype (fp32, tf32, bf16, fp16) against the card's datasheet peak
#      (benchmarks/gpu_gemm.py);
#   2. `mixprec bench` of det-s and det-n (640 px, batch 16) and unet3d-n / unet3d-s (patch 64,
#      batch 2) at precision=32,bf16-mixed,16-mixed,16-master: step time, speedup over 32 in the
#      same run, memory, and energy per step from NVML's total-energy counter when nvidia-ml-py
#      (pynvml) is importable (pip install nvidia-ml-py);
#   3. pytest -m cuda;
#   4. the summary (benchmarks/gpu_summary.py): $OUT/summary.md and $OUT/summary.json.
# Every step has its own time limit and the whole run a budget (BUDGET_S, default 480 s): a step
# that would not fit is skipped and marked so in $OUT/steps.tsv; logs are in $OUT/logs/.
#
#   benchmarks/gpu.sh                       # on the GPU machine; results in ./gpu-results
#   OUT=/tmp/res benchmarks/gpu.sh
#   benchmarks/gpu.sh --dry-run             # (or DRY_RUN=1) the same steps on CPU, tiny sizes
#
# The dry run builds the real models once (a misspelt name fails there), then benches the test
# suite's tiny ones in their place (det-t at 64 px, unet3d-t at patch 16: FP16 convolutions on a
# CPU take seconds per step at the real sizes), writing under the real names.
#
# Environment: OUT (results folder), DRY_RUN=1, PYTHON (default python3), BUDGET_S, MODELS
# (default "det-s det-n unet3d-n unet3d-s"), CUDA_TESTS=0 (skip step 3).
set -u
cd "$(dirname "$0")/.."
DRY=${DRY_RUN:-0}
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument '$arg' (use --dry-run, or --help)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-./gpu-results}
PY=${PYTHON:-python3}
MODELS=${MODELS:-det-s det-n unet3d-n unet3d-s}
PRECISIONS=32,bf16-mixed,16-mixed,16-master
CUDA_TESTS=${CUDA_TESTS:-1}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DRY" = 1 ]; then
  DEVICE=cpu; DET_SIZE="imgsz=64 batch=2"; UNET_SIZE="patch=16 batch=1"; STEPS="steps=2 warmup=1"
  GEMM_ARGS="--device cpu --n 256 --reps 2"; BUDGET_S=${BUDGET_S:-300}; BENCH_LIMIT=90; GEMM_LIMIT=30
  TEST_LIMIT=120
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu.sh: no CUDA GPU visible to torch; run benchmarks/gpu.sh --dry-run to exercise it on CPU" >&2
    exit 2
  fi
  DEVICE=cuda; DET_SIZE="imgsz=640 batch=16"; UNET_SIZE="patch=64 batch=2"; STEPS="steps=20 warmup=3"
  GEMM_ARGS="--device cuda --n 8192 --reps 20"; BUDGET_S=${BUDGET_S:-480}; BENCH_LIMIT=85; GEMM_LIMIT=40
  TEST_LIMIT=60
fi
mkdir -p "$OUT/logs" "$OUT/bench"
START=$(date +%s)
printf 'step\tstatus\tseconds\n' > "$OUT/steps.tsv"
RESERVE=$(( (CUDA_TESTS == 1 ? TEST_LIMIT : 0) + 10 ))  # kept for pytest and the summary

# run_step NAME LIMIT_S CMD...: runs CMD under `timeout LIMIT_S` (shortened to what the budget
# leaves), logs to $OUT/logs/NAME.log, records ok / failed (rc N) / timed out / skipped.
run_step() {
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  [ "$name" != pytest-cuda ] && left=$(( left - RESERVE ))
  if [ "$left" -lt 15 ]; then
    printf '%s\tskipped (time budget)\t0\n' "$name" >> "$OUT/steps.tsv"; echo "== $name: skipped (time budget)"
    return
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  echo "== $name (limit ${limit} s)"
  local t0; t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  local rc=$? status=ok
  [ $rc -eq 124 ] && status="timed out (${limit} s)"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="failed (rc $rc)"
  printf '%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" >> "$OUT/steps.tsv"
  echo "   $status; log: $OUT/logs/$name.log"
}

"$PY" - > "$OUT/environment.txt" 2>&1 <<'PYEOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"cc {p.major}.{p.minor}", f"{p.total_memory / 2**30:.1f} GiB", f"{p.multi_processor_count} SMs")
try:
    import pynvml  # noqa: F401
    print("pynvml: importable (mixprec bench reads NVML energy)")
except ImportError:
    print("pynvml: not installed (energy n/a; pip install nvidia-ml-py)")
PYEOF
cat "$OUT/environment.txt"

if [ "$DRY" = 1 ]; then  # the real models build (names, YAMLs); the benches use tiny stand-ins
  run_step models 60 "$PY" -c "import sys
from mixprec.vision.task import task_for_model
for m in sys.argv[1:]:
    model = task_for_model(m + '.yaml').new_model(m + '.yaml')
    print(m, sum(p.numel() for p in model.parameters()), 'parameters')" $MODELS
fi
run_step gemm "$GEMM_LIMIT" "$PY" benchmarks/gpu_gemm.py $GEMM_ARGS --out "$OUT/gemm.json"
for model in $MODELS; do
  case "$model" in
    unet3d-*) size=$UNET_SIZE; tiny=tests/segment3d/unet3d-t.yaml ;;
    *) size=$DET_SIZE; tiny=tests/vision/det-t.yaml ;;
  esac
  yaml="$model.yaml"
  [ "$DRY" = 1 ] && yaml=$tiny
  # budget=0: no largest-batch search (it would not fit in the time); plots off
  run_step "bench-$model" "$BENCH_LIMIT" "$PY" -m mixprec bench "model=$yaml" $size $STEPS \
    "precision=$PRECISIONS" "device=$DEVICE" budget=0 plots=False "project=$OUT/bench" "name=$model" \
    exist_ok=True
done
if [ "$CUDA_TESTS" = 1 ]; then
  run_step pytest-cuda "$TEST_LIMIT" "$PY" -m pytest -q -p no:cacheprovider -m cuda tests
  cp "$OUT/logs/pytest-cuda.log" "$OUT/pytest-cuda.txt" 2>/dev/null
fi
"$PY" benchmarks/gpu_summary.py "$OUT" --models "$(echo $MODELS | tr ' ' ',')" --precisions "$PRECISIONS"
echo "gpu.sh: $(( $(date +%s) - START )) s; results in $OUT (summary.md)"
