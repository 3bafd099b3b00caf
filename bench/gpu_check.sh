#!/usr/bin/env bash
# One device call: what the GPU suite and the GPU benchmarks say, logs under $OUT.
#   usage (on a machine with a CUDA GPU, from the repository root):
#     FASTMLP_DATA=path/to/data bash bench/gpu_check.sh [tests|bench|all]
# Writes $OUT/gpu_tests.log, $OUT/peers_cuda.log and $OUT/peers_cuda.json (OUT defaults to ./out).
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
what=${1:-all}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/device.txt"
python3 -c "import cupy, numpy, numba; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'numba', numba.__version__)" | tee -a "$OUT/device.txt"
if [[ $what == tests || $what == all ]]; then
  timeout "${TEST_LIMIT:-300}" python3 -m pytest -m gpu -q -p no:cacheprovider -n "${WORKERS:-8}" \
      --timeout 240 -rfE "${@:2}" 2>&1 | tee "$OUT/gpu_tests.log" | tail -60
fi
if [[ $what == bench || $what == all ]]; then
  timeout "${BENCH_LIMIT:-240}" python3 bench/peers.py --quick --device cuda --workload "${WORKLOADS:-p1,p2,p3}" \
      --json "$OUT/peers_cuda.json" 2>&1 | tee "$OUT/peers_cuda.log" | tail -40
fi
