#!/usr/bin/env bash
# Compile every kernels/*.cu with nvcc --ptx for sm_80 and sm_90, warnings as errors.
#
# nvcc alone never instantiates a template, so each family is compiled as the
# unit fastmlp/backend/cuda/source.py --nvcc-unit writes: the .cu source as is
# (same line numbers) plus a table of the name expressions NVRTC emits at run
# time. A .cu file that source.py does not list fails the check.
# Skips, with a message and exit status 0, where nvcc is not on PATH.
# Usage: .ci/nvcc_check.sh   (PYTHON=... to pick the interpreter)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
archs=(80 90)

if ! command -v nvcc >/dev/null 2>&1; then
    echo "nvcc_check: nvcc is not on PATH; skipping the nvcc compile of kernels/*.cu"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
source_py="$root/fastmlp/backend/cuda/source.py"
failed=0
shopt -s nullglob
units=("$root"/kernels/*.cu)
if [ ${#units[@]} -eq 0 ]; then
    echo "nvcc_check: no kernels/*.cu under $root" >&2
    exit 1
fi

for cu in "${units[@]}"; do
    family="$(basename "$cu" .cu)"
    unit="$tmp/$family.cu"
    if ! "$py" "$source_py" --nvcc-unit "$family" > "$unit"; then
        echo "nvcc_check: kernels/$family.cu: FAILED (not a family listed in fastmlp/backend/cuda/source.py)"
        failed=1
        continue
    fi
    read -r -a opts <<< "$("$py" "$source_py" --options "$family")"
    for arch in "${archs[@]}"; do
        if nvcc --ptx "-arch=sm_$arch" "${opts[@]}" -Werror all-warnings \
                -o "$tmp/$family.sm_$arch.ptx" "$unit"; then
            echo "nvcc_check: kernels/$family.cu sm_$arch: ok"
        else
            echo "nvcc_check: kernels/$family.cu sm_$arch: FAILED (line numbers above are those of kernels/$family.cu)"
            failed=1
        fi
    done
done
exit "$failed"
