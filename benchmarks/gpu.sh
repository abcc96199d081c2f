#!/usr/bin/env bash
# Every GPU run of issue 5 in one command, on a machine with a CUDA GPU, PyTorch with CUDA and Triton:
#
#   bash benchmarks/gpu.sh [OUT_DIR]          (default OUT_DIR: benchmarks/results/gpu-<date>)
#
# 1. the kernel tests on CUDA (Triton RMSNorm and linear attention, FlexAttention dispatch, parity fwd + bwd)
#    and the interpreter parity tests;
# 2. `nas profile` to T = 16K, forward and train, with the layer activation-memory comparison;
# 3. TFLOP/s: causal (dispatch vs SDPA flash vs math), sliding window and ALiBi (dispatch vs FlexAttention vs
#    SDPA with an explicit mask);
# 4. the LRA Table 2 shape (benchmarks/lra_table2.py) on the GPU.
# Everything is written under OUT_DIR (logs, CSV, JSON, PNG); copy the tables into docs/benchmarks.md.
# PYTHON (default: python) and NAS (default: nas) pick the interpreter and the command.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results/gpu-$(date +%Y%m%d-%H%M%S)}"
PY="${PYTHON:-python}"
NAS="${NAS:-nas}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

"$PY" - <<'PYEOF' | tee "$OUT/device.txt"
import sys, torch
if not torch.cuda.is_available():
    sys.exit("no CUDA device visible to PyTorch " + torch.__version__ + ": this script is for a GPU machine")
import triton
p = torch.cuda.get_device_properties(0)
print(f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}; "
      f"torch {torch.__version__}, CUDA {torch.version.cuda}, triton {triton.__version__}")
PYEOF

echo "== 1/4 kernel tests (CUDA parity + interpreter parity)"
"$PY" -m pytest -q -rs tests/test_kernels.py 2>&1 | tee "$OUT/test_kernels.log"

echo "== 2/4 nas profile to 16K"
PROFILE=(--device cuda --seq-lens 512 1024 2048 4096 8192 16384 --batch 4 --heads 16 --head-dim 64
         --layer-seq-lens 1024 2048 4096 8192 --budget 120 --threads 1)
"$NAS" profile "${PROFILE[@]}" --mode forward --out "$OUT/profile-forward" --quiet 2>&1 | tee "$OUT/profile-forward.txt"
"$NAS" profile "${PROFILE[@]}" --mode train --out "$OUT/profile-train" --quiet 2>&1 | tee "$OUT/profile-train.txt"

echo "== 3/4 attention TFLOP/s"
"$PY" benchmarks/attention_tflops.py --device cuda --out "$OUT/attention_tflops.json" 2>"$OUT/attention_tflops.log" \
    | tee "$OUT/attention_tflops.txt"

echo "== 4/4 LRA Table 2 shape"
"$PY" benchmarks/lra_table2.py --device cuda --batch 8 --layers 4 --d-model 256 --heads 4 --repeats 10 \
    --out "$OUT/lra_table2.json" 2>"$OUT/lra_table2.log" | tee "$OUT/lra_table2.txt"

echo "done: $OUT"
