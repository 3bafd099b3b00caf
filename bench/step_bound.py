"""The least an MLP training step made of separate kernels can take on this machine.

    python bench/step_bound.py                          # P2 (784-256-256-10), SGD, batch 64 / 128 / 256
    python bench/step_bound.py --optimizer adam --batch 200 --steps 800   # the MNIST fit of sklearn_peer.py

A step is its GEMMs plus the work between them: the batch gather, each Dense
layer's bias and activation (forward) and activation gradient with the bias
gradient (backward), the loss with its gradient, and the update of every
parameter. This runs each of those alone, on buffers already in cache, as a
loop of the same call: the GEMMs as bench/gemm_floor.py's floor (the best
thread count), every other kernel as the faster of fastmlp's serial and
parallel twins. Their sum is a step with no Python, no hand-off between
kernels and no cache misses: a lower bound for any step that runs these as
separate kernels, fastmlp's included. Two updates are timed: fastmlp's
(which also keeps the undo copy of the parameters, training.py) and a bare
``w -= lr * g`` (SGD) or Adam without the copy (the least any update costs).

The report gives the bound's ratio to the floor: when it is above a target
ratio (issue #14's 1.3 / 1.2 / 1.15x at batch 64 / 128 / 256), no step of
separate kernels reaches the target here; only work fused into the GEMMs
(an epilogue, an update inside the weight-gradient product) could.
"""
import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit, prange

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gemm_floor import GemmFloor, blas_threads  # noqa: E402

import fastmlp as fm  # noqa: E402
from fastmlp.backend.codes import IDENTITY, RELU  # noqa: E402
from fastmlp.backend.cpu import data, dense, loss, optim  # noqa: E402
from fastmlp.backend.cpu.reduce import partial_sums  # noqa: E402

SIZES = [784, 256, 256, 10]
TARGETS = {64: 1.3, 128: 1.2, 256: 1.15}   # issue #14, P2 step over its GEMM floor


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def bare_sgd(w, g, lr):
    # w -= lr * g: two reads and one write a parameter, nothing kept for an undo
    lr = w.dtype.type(lr)
    for i in prange(w.size):
        w[i] = w[i] - lr * g[i]


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def bare_adam(w, m, v, g, lr, b1, b2, eps):
    # torch.optim.Adam's arithmetic without the bias corrections' scalars or an undo copy
    lr, b1, b2, eps = w.dtype.type(lr), w.dtype.type(b1), w.dtype.type(b2), w.dtype.type(eps)
    one = w.dtype.type(1.0)
    for i in prange(w.size):
        gi = g[i]
        mi = b1 * m[i] + (one - b1) * gi
        vi = b2 * v[i] + (one - b2) * gi * gi
        m[i] = mi
        v[i] = vi
        w[i] = w[i] - lr * mi / (math.sqrt(vi) + eps)


def timed(fn, repeats):
    """Median seconds of one call of fn, after a warm-up."""
    for _ in range(max(5, repeats // 10)):
        fn()
    ts = np.empty(repeats)
    for r in range(repeats):
        t = time.perf_counter()
        fn()
        ts[r] = time.perf_counter() - t
    return float(np.median(ts))


def fastest(twins, args, repeats):
    """The faster of a kernel's serial and parallel twins, seconds a call."""
    return min(timed(lambda k=k: k(*args), repeats) for k in (twins.serial, twins.parallel))


def floor_ms(batch, threads, repeats):
    """The GEMM floor of one step (bench/gemm_floor.py), best of 1..threads BLAS threads."""
    floor = GemmFloor(SIZES, batch, batch)   # one batch of `batch` rows: one step a run
    best = math.inf
    for t in range(1, threads + 1):
        with blas_threads(t):
            best = min(best, timed(floor.run, repeats))
    return best * 1e3


def bound(batch, optimizer, threads, repeats, n_data=8000):
    """{part: ms} of one step's parts alone, and the floor."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    layers = list(zip(SIZES[:-1], SIZES[1:]))
    parts = {"GEMM floor": floor_ms(batch, threads, repeats)}
    X = rng.random((n_data, SIZES[0]), dtype=f32)
    xb = np.empty((batch, SIZES[0]), f32)
    # the rows of an epoch's batches in turn, as fit reads them (not the same rows, in cache, each call)
    order = np.concatenate([rng.permutation(n_data) for _ in range(8)])
    batches = itertools.cycle([order[i:i + batch] for i in range(0, order.size - batch + 1, batch)])
    parts["gather"] = min(timed(lambda k=k: k(xb, X, next(batches)), repeats)
                          for k in (data.gather_rows_twins.serial, data.gather_rows_twins.parallel)) * 1e3
    act, grad = 0.0, 0.0
    for i, (_, m) in enumerate(layers):
        code = IDENTITY if i == len(layers) - 1 else RELU
        z = rng.standard_normal((batch, m)).astype(f32)
        b = np.zeros(m, f32)
        db = np.empty(m, f32)
        act += fastest(dense.bias_act_forward_twins, (z, b, code, 0.0), repeats)
        dz = rng.standard_normal((batch, m)).astype(f32)
        grad += fastest(dense.act_backward_bias_grad_twins, (dz, db, partial_sums(m), dz, z, code, 0.0), repeats)
    parts["bias + activation"] = act * 1e3
    parts["activation gradient + bias gradient"] = grad * 1e3
    logits = rng.standard_normal((batch, SIZES[-1])).astype(f32)
    dlogits = np.empty_like(logits)
    labels = rng.integers(0, SIZES[-1], batch)
    parts["loss + gradient"] = fastest(loss.softmax_xent_twins, (dlogits, np.zeros(2), logits, labels, 1.0 / batch),
                                       repeats) * 1e3
    n_params = sum(d * m + m for d, m in layers)
    w = rng.standard_normal(n_params).astype(f32)
    g = (rng.standard_normal(n_params) * 1e-3).astype(f32)
    prev, m1, m2 = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    seg = (np.array([0], np.int64), np.array([n_params], np.int64), np.zeros(1), np.zeros(1))
    bad = np.zeros(1, np.int64)
    if optimizer == "sgd":
        engine = fastest(optim.sgd_update_twins, (w, prev, prev, bad, g, *seg, 1e-3, 0.0, False), repeats)
        bare = timed(lambda: bare_sgd(w, g, 1e-3), repeats)
    else:
        step = np.array([1], np.int64)
        engine = fastest(optim.adam_update_twins, (w, prev, m1, m2, bad, g, *seg, 1e-3, 0.9, 0.999, 1e-8, step),
                         repeats)
        bare = timed(lambda: bare_adam(w, m1, m2, g, 1e-3, 0.9, 0.999, 1e-8), repeats)
    return parts, engine * 1e3, bare * 1e3


def step_ms(batch, repeats, n_data=8000):
    """fastmlp's own P2 step (SGD 0.1, the default threads), ms a step over whole epochs."""
    rng = np.random.default_rng(0)
    X = rng.random((n_data, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], n_data)
    model = fm.Sequential([fm.Dense(784, 256, activation="relu"), fm.Dense(256, 256, activation="relu"),
                           fm.Dense(256, 10)], loss=fm.SoftmaxCrossEntropy(), optimizer=fm.SGD(0.1), seed=0)
    model.fit(X, y, epochs=1, batch_size=batch, verbose=0)
    steps = -(-n_data // batch)
    epochs = max(1, repeats // steps)
    t = time.perf_counter()
    model.fit(X, y, epochs=epochs, batch_size=batch, verbose=0)
    return (time.perf_counter() - t) / (epochs * steps) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", default="64,128,256", help="batch sizes, comma-separated")
    ap.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    ap.add_argument("--threads", type=int, default=2, help="the most BLAS threads the floor tries")
    ap.add_argument("--repeats", type=int, default=400, help="timed calls of each part")
    ap.add_argument("--steps", type=int, default=0, help="also print the bound for this many steps (a fit)")
    args = ap.parse_args(argv)
    print(f"fastmlp {fm.__version__}, P2 {SIZES}, float32, {args.optimizer}; each part alone, in cache, "
          f"median of {args.repeats} calls (ms)")
    for batch in (int(b) for b in args.batch.split(",")):
        parts, engine, bare = bound(batch, args.optimizer, args.threads, args.repeats)
        floor = parts["GEMM floor"]
        between = sum(v for k, v in parts.items() if k != "GEMM floor")
        print(f"\nbatch {batch}")
        for name, ms in parts.items():
            print(f"  {name:38s} {ms:7.3f}")
        print(f"  {'update (fastmlp, with the undo copy)':38s} {engine:7.3f}")
        print(f"  {'update (bare, no copy)':38s} {bare:7.3f}")
        least = floor + between + bare
        line = f"  least step {least:.3f} ms = {least / floor:.2f}x the floor (fastmlp's update: " \
               f"{(floor + between + engine) / floor:.2f}x)"
        if args.optimizer == "sgd" and batch in TARGETS:
            line += f"; target {TARGETS[batch]}x = {TARGETS[batch] * floor:.3f} ms"
        print(line)
        if args.optimizer == "sgd":
            step = step_ms(batch, args.repeats)
            print(f"  fastmlp's step {step:.3f} ms = {step / floor:.2f}x the floor: {step - least:.3f} ms over the "
                  "least step (the kernels run slower in the step than alone: docs/benchmarks.md)")
        if args.steps:
            print(f"  {args.steps} steps: at least {least * args.steps / 1e3:.3f} s")
        print(f"batch={batch} floor_ms={floor:.4f} between_ms={between:.4f} update_ms={engine:.4f} "
              f"bare_update_ms={bare:.4f} least_ms={least:.4f} least_x_floor={least / floor:.3f}")


if __name__ == "__main__":
    main()
