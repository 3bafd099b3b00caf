"""The register tiles of predictions against OpenBLAS, one thread, by rows: where TILE_ROWS comes from.

    python bench/tile_gemm.py [--d 784] [--m 256] [--dtype float32]

For each row count, act(a @ W + b) by backend/cpu/tile_gemm.py's ``dense_rows`` and
``np.matmul`` into a preallocated output (NumPy's OpenBLAS, held to one thread), each
checked first against float64, then timed interleaved (the fastest of 7 rounds).
The last line is key=value pairs.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from numba import njit  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from fastmlp.backend.codes import RELU  # noqa: E402
from fastmlp.backend.cpu import tile_gemm  # noqa: E402


@njit(nogil=True)
def _tiles(z, a, w, b, buf):
    tile_gemm.dense_rows(z, a, w, b, RELU, 0.0, buf)


def _best(fn, calls):
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e6


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=784)
    p.add_argument("--m", type=int, default=256)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = p.parse_args(argv)
    if not tile_gemm.available():
        raise SystemExit("the register tiles need a CPU with AVX-512 (and FASTMLP_TILE_GEMM unset or 1)")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((args.d, args.m)).astype(args.dtype)
    b = rng.standard_normal(args.m).astype(args.dtype)
    buf = np.empty(tile_gemm.MR * tile_gemm.LDC, args.dtype)
    kv = []
    print(f"{args.d}x{args.m} layer, {args.dtype}, one thread: microseconds a call (GFLOP/s)")
    with threadpool_limits(1):
        for rows in (1, 8, 16, 32, 64, 128, 256):
            a = rng.standard_normal((rows, args.d)).astype(args.dtype)
            z, zb = np.empty((rows, args.m), args.dtype), np.empty((rows, args.m), args.dtype)
            _tiles(z, a, w, b, buf)
            ref = np.maximum(a.astype(np.float64) @ w + b, 0)
            assert np.allclose(z, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max()), "tiles disagree with float64"
            calls = max(20, 4000 // rows)
            tiles = _best(lambda: _tiles(z, a, w, b, buf), calls)
            blas = _best(lambda: np.matmul(a, w, out=zb), calls)
            flop = 2.0 * rows * args.d * args.m
            print(f"  rows {rows:4d}: tiles {tiles:8.1f} ({flop / tiles / 1e3:5.1f})   "
                  f"OpenBLAS {blas:8.1f} ({flop / blas / 1e3:5.1f})   tiles / OpenBLAS time {tiles / blas:.2f}")
            kv += [f"rows{rows}_tiles_us={tiles:.1f}", f"rows{rows}_blas_us={blas:.1f}"]
    print(" ".join(kv))


if __name__ == "__main__":
    main()
