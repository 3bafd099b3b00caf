#!/usr/bin/env bash
# One device call: the GPU test suite, the GPU peers (TF32 off, then on), and the
# cat / non-cat experiment on the GPU; logs under $OUT.
#   usage (on a machine with a CUDA GPU, from the repository root):
#     FASTMLP_DATA=path/to/data bash bench/gpu_check.sh [tests|bench|compare|cat|all]
# Writes $OUT/device.txt, gpu_tests.log, peers_cuda.{log,json}, peers_cuda_tf32.{log,json},
# compare_cuda.{log,json}, cat_cuda.log (OUT defaults to ./out).
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
what=${1:-all}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/device.txt"
python3 -c "import cupy, numpy, numba; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'numba', numba.__version__)" | tee -a "$OUT/device.txt"
if [[ $what == tests || $what == all ]]; then
  timeout "${TEST_LIMIT:-300}" python3 -m pytest -m gpu -q -p no:cacheprovider -n "${WORKERS:-8}" \
      --timeout 240 -rfE "${@:2}" 2>&1 | grep -v -i "benchmark" | tee "$OUT/gpu_tests.log" | tail -40
fi
if [[ $what == bench || $what == all ]]; then
  timeout "${BENCH_LIMIT:-240}" python3 bench/peers.py --quick --device cuda \
      --workload "${WORKLOADS:-p1,p2,p2big,wide,p3}" --json "$OUT/peers_cuda.json" 2>&1 \
      | tee "$OUT/peers_cuda.log" | tail -14
  timeout "${BENCH_LIMIT:-240}" python3 bench/peers.py --quick --device cuda --tf32 \
      --workload "${TF32_WORKLOADS:-p2big,wide}" --json "$OUT/peers_cuda_tf32.json" 2>&1 \
      | tee "$OUT/peers_cuda_tf32.log" | tail -6
fi
if [[ $what == compare || $what == all ]]; then
  timeout "${BENCH_LIMIT:-240}" python3 -m fastmlp compare --device cuda --data "$FASTMLP_DATA/mnist-t10k" \
      --json "$OUT/compare_cuda.json" 2>&1 | tee "$OUT/compare_cuda.log" | tail -25
fi
if [[ $what == cat || $what == all ]]; then
  for dt in float64 float32; do
    python3 examples/cat_vs_noncat.py --device cuda --dtype $dt \
        --data "$FASTMLP_DATA/catvnoncat" 2>&1 | tail -4
  done | tee "$OUT/cat_cuda.log"
  python3 examples/cat_cnn.py --device cuda --filters 8,16,32,64 --batchnorm --head flat --dropout 0.5 \
      --seed 1 --data "$FASTMLP_DATA/catvnoncat" 2>&1 | tail -2 | tee -a "$OUT/cat_cuda.log"
fi
