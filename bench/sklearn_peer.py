"""fastmlp.sklearn.MLPClassifier against scikit-learn's MLPClassifier: fit time and accuracy.

The same estimator parameters, the same data, the same random_state (so the
same initial weights), in one process:

- load_digits (pixels / 16, float64): a stratified 75 / 25 split per seed, default
  parameters (hidden (100,), adam, up to 200 iterations, tol 1e-4), 5 seeds;
- MNIST t10k (pixels / 255, float32: both train in float32): the first 8,000
  images train, the last 2,000 test; hidden (256, 256), adam, 20 iterations,
  batch 200.

First it checks that the two agree: one epoch without shuffling on a digits
subset gives the same weights (scikit-learn's update rule, float64). Then it
warms both up (fastmlp compiles its kernels once per process) and times ``fit``,
each fit QUIET_S after the work before it.

    python bench/sklearn_peer.py [--data DIR] [--seeds 5] [--quick]

Ends with one key=value line.
"""
import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastmlp.data import load_mnist_t10k  # noqa: E402
from fastmlp.sklearn import MLPClassifier  # noqa: E402

try:
    from sklearn import neural_network
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
except ImportError as e:
    raise SystemExit('bench/sklearn_peer.py needs scikit-learn: pip install "fastmlp[sklearn]"') from e

PEERS = {"fastmlp": MLPClassifier, "sklearn": neural_network.MLPClassifier}


def check_same_updates(X, y):
    """Max |weights of fastmlp - scikit-learn's| after one epoch from the same weights."""
    params = dict(hidden_layer_sizes=(32,), batch_size=50, max_iter=1, shuffle=False, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours, theirs = (cls(**params).fit(X[:300], y[:300]) for cls in PEERS.values())
    return max(float(np.max(np.abs(a - b))) for a, b in zip(ours.coefs_ + ours.intercepts_,
                                                             theirs.coefs_ + theirs.intercepts_))


# OpenBLAS's worker threads spin on a core for about 0.1 s after each multi-threaded product
# (scikit-learn's fits and fastmlp's checks alike): a timed fit starts this long after the
# work before it, on a machine where the other library's threads no longer spin. Beside
# the spinning worker fastmlp's MNIST fit took 1.26-1.35 s against 1.11-1.22 after a pause.
QUIET_S = 0.3


def timed_fit(cls, params, Xtr, ytr, Xte, yte):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        time.sleep(QUIET_S)
        t0 = time.perf_counter()
        est = cls(**params).fit(Xtr, ytr)
        seconds = time.perf_counter() - t0
    return seconds, float(est.score(Xte, yte)), est.n_iter_


def digits(seeds, max_iter):
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    rows = {name: [] for name in PEERS}
    for cls in PEERS.values():   # warm-up (float64 kernels)
        timed_fit(cls, dict(max_iter=1), X[:200], y[:200], X[:10], y[:10])
    for seed in range(seeds):
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y, random_state=seed)
        for name, cls in PEERS.items():
            rows[name].append(timed_fit(cls, dict(random_state=seed, max_iter=max_iter), Xtr, ytr, Xte, yte))
    return rows


def mnist(data, max_iter, n_train):
    Xtr, ytr, Xte, yte = load_mnist_t10k(data)
    Xtr = (Xtr.reshape(len(Xtr), -1) / np.float32(255)).astype(np.float32)[:n_train]
    Xte = (Xte.reshape(len(Xte), -1) / np.float32(255)).astype(np.float32)
    ytr = ytr[:n_train]
    params = dict(hidden_layer_sizes=(256, 256), solver="adam", max_iter=max_iter, batch_size=200, random_state=0)
    for cls in PEERS.values():   # warm-up: fastmlp's kernels compile once per process
        timed_fit(cls, dict(params, max_iter=1), Xtr[:400], ytr[:400], Xte[:10], yte[:10])
    return {name: timed_fit(cls, params, Xtr, ytr, Xte, yte) for name, cls in PEERS.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="the folder holding mnist-t10k/ (default: $FASTMLP_DATA, "
                   "else ../shared/data)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="2 seeds, 30 digits iterations, 2,000 MNIST images")
    args = p.parse_args(argv)
    seeds, digits_iter, n_train = (2, 30, 2000) if args.quick else (args.seeds, 200, 8000)
    root = Path(args.data) / "mnist-t10k" if args.data else None

    X, y = load_digits(return_X_y=True)
    err = check_same_updates(X / 16.0, y)
    print(f"check: one epoch from the same weights, max |fastmlp - scikit-learn| = {err:.1e}")
    if err > 1e-10:
        raise SystemExit("fastmlp and scikit-learn disagree: not timing")

    d = digits(seeds, digits_iter)
    print(f"\nload_digits, stratified 75/25, {seeds} seeds, default parameters (max_iter={digits_iter})")
    print(f"{'':10s} {'fit s (mean)':>13s} {'iterations':>11s} {'test acc (mean)':>16s}")
    summary = {}
    for name, runs in d.items():
        s, acc, its = (np.mean([r[k] for r in runs]) for k in range(3))
        summary[name] = (s, acc)
        print(f"{name:10s} {s:13.2f} {its:11.1f} {acc:16.4f}")

    m = mnist(root, 20, n_train)
    print(f"\nMNIST t10k, {n_train:,} train / 2,000 test, hidden (256, 256), adam, 20 iterations, batch 200, float32")
    print(f"{'':10s} {'fit s':>8s} {'test acc':>9s}")
    for name, (s, acc, _) in m.items():
        print(f"{name:10s} {s:8.2f} {acc:9.4f}")
    speedup = m["sklearn"][0] / m["fastmlp"][0]
    print(f"fastmlp fits {speedup:.1f}x faster")
    print(f"digits_acc_fastmlp={summary['fastmlp'][1]:.4f} digits_acc_sklearn={summary['sklearn'][1]:.4f} "
          f"digits_fit_s_fastmlp={summary['fastmlp'][0]:.2f} digits_fit_s_sklearn={summary['sklearn'][0]:.2f} "
          f"mnist_acc_fastmlp={m['fastmlp'][1]:.4f} mnist_acc_sklearn={m['sklearn'][1]:.4f} "
          f"mnist_fit_s_fastmlp={m['fastmlp'][0]:.2f} mnist_fit_s_sklearn={m['sklearn'][0]:.2f} "
          f"mnist_speedup={speedup:.2f} check_max_abs={err:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
