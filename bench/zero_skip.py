"""The first layer's training products with and without the batch's zeros (P2 on MNIST).

    python bench/zero_skip.py                 # batches of 64, 128, 200 and 256
    python bench/zero_skip.py --quick         # fewer calls and epochs (a smoke test)

Two measurements, on MNIST t10k's first 8,000 images (pixels / 255, float32; random pixels
with a note where the files are missing: they have no zeros, and nothing is skipped):

1. The two products alone, medians of many calls on a batch of random rows: BLAS
   (np.matmul: x @ W and x.T @ dz, two threads) against backend/cpu/zero_tiles.py (``plan``,
   which finds each block's nonzero columns and rows, then ``forward`` and ``weight_grad``).
2. P2's training step (784-256-256-10, SGD 0.1) in one process: two models from the same
   weights, one skipping the zeros and one made to call BLAS (its first layer's ``zeros``
   None), an epoch of each in turn; medians of the epochs' ms a step. Alternating in one
   process is what separates a few per cent from this VM's drift between processes.

The last line printed is machine-readable key=value pairs.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fastmlp as fm  # noqa: E402
from fastmlp.backend.cpu import zero_tiles  # noqa: E402
from fastmlp.data import load_mnist_t10k  # noqa: E402


def mnist():
    try:
        X, y = load_mnist_t10k()[:2]
        return (X.reshape(len(X), -1) / 255.0).astype(np.float32), y, "MNIST t10k, first 8,000 images"
    except FileNotFoundError as e:
        rng = np.random.default_rng(0)
        return (rng.random((8000, 784), dtype=np.float32), rng.integers(0, 10, 8000),
                f"random pixels (MNIST t10k not found: {e})")


def median_us(fn, calls):
    for _ in range(10):
        fn()
    t = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return 1e6 * float(np.median(t))


def products(X, batch, calls, rng):
    """(BLAS us, plan us, forward us, weight_grad us, share of the blocks' columns nonzero)."""
    xb = np.ascontiguousarray(X[rng.choice(len(X), batch, replace=False)])
    w = (0.05 * rng.standard_normal((784, 256))).astype(np.float32)
    dz = rng.standard_normal((batch, 256)).astype(np.float32)
    z, dw = np.empty((batch, 256), np.float32), np.empty((784, 256), np.float32)
    skip = zero_tiles.ZeroSkip()
    skip.plan(xb)
    density = float(skip.ncols.sum()) / (skip.ncols.size * 784)
    blas = median_us(lambda: np.matmul(xb, w, out=z), calls) + median_us(lambda: np.matmul(xb.T, dz, out=dw), calls)
    return (blas, median_us(lambda: skip.plan(xb), calls), median_us(lambda: skip.forward(z, xb, w), calls),
            median_us(lambda: skip.weight_grad(dw, xb, dz), calls), density)


def steps(X, y, batch, epochs):
    """(ms a step skipping, ms a step through BLAS), epochs alternated in one process."""
    def make():
        return fm.Sequential([fm.Dense(784, 256, activation="relu"), fm.Dense(256, 256, activation="relu"),
                              fm.Dense(256, 10)], loss="softmax_crossentropy", optimizer=fm.SGD(0.1), seed=0)
    skipping, dense = make(), make()
    dense.layers[0].zeros = None          # never asks the backend: BLAS's products
    for m in (skipping, dense):           # warm-up: JIT, workspaces
        m.fit(X, y, epochs=1, batch_size=batch, verbose=0)
    times = {id(skipping): [], id(dense): []}
    for _ in range(epochs):
        for m in (skipping, dense):
            t0 = time.perf_counter()
            m.fit(X, y, epochs=1, batch_size=batch, verbose=0)
            times[id(m)].append(time.perf_counter() - t0)
    per = -(-len(X) // batch)
    return (1e3 * float(np.median(times[id(skipping)])) / per, 1e3 * float(np.median(times[id(dense)])) / per,
            skipping.layers[0].skipping)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="64,128,200,256")
    p.add_argument("--quick", action="store_true", help="50 calls, 2 epochs each")
    args = p.parse_args(argv)
    if not zero_tiles.available():
        print("zero_skip: the register tiles need AVX-512 (backend/cpu/tile_gemm.py): nothing is skipped here")
        return 0
    calls, epochs = (50, 2) if args.quick else (300, 8)
    X, y, note = mnist()
    X, y = X[:8000], y[:8000]
    print(f"zero_skip: {note}; numpy {np.__version__}")
    rng = np.random.default_rng(0)
    kv = {}
    print("\nthe first layer's two products alone, us (median of one call)")
    print(f"  {'batch':>5}  {'BLAS':>8}  {'plan':>6}  {'forward':>7}  {'dW':>6}  {'skipping':>8}  {'ratio':>6}  nonzero")
    for b in (int(v) for v in args.batches.split(",")):
        blas, plan, fwd, wg, density = products(X, b, calls, rng)
        skip = plan + fwd + wg
        print(f"  {b:>5}  {blas:>8.1f}  {plan:>6.1f}  {fwd:>7.1f}  {wg:>6.1f}  {skip:>8.1f}  {blas / skip:>5.2f}x  {density:.2f}")
        kv.update({f"b{b}_blas_us": round(blas, 1), f"b{b}_skip_us": round(skip, 1),
                   f"b{b}_products_ratio": round(blas / skip, 2)})
    print(f"\nP2's step, SGD, one process, an epoch of each in turn ({epochs} each), ms a step (median)")
    for b in (int(v) for v in args.batches.split(",")):
        s, d, used = steps(X, y, b, epochs)
        print(f"  {b:>5}  skipping {s:.3f}  BLAS {d:.3f}  {d / s:.2f}x{'' if used else '  (the last batch was not skipped)'}")
        kv.update({f"b{b}_step_skip_ms": round(s, 4), f"b{b}_step_blas_ms": round(d, 4), f"b{b}_step_ratio": round(d / s, 2)})
    print()
    print(" ".join(f"{k}={v}" for k, v in kv.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
