"""P2's plain SGD step with and without the undo copy (backend/cpu/in_place_sgd.py).

    python bench/undo_free.py                 # batches of 64, 128 and 256
    python bench/undo_free.py --quick         # fewer epochs (a smoke test)

P2 (784-256-256-10, SGD 0.1) on MNIST t10k's first 8,000 images (random pixels with a note
where the files are missing), in one process: two models from the same weights, one whose
fit may update in place where the bound allows (the default) and one whose fit keeps the
copy each step (the backend's ``undo_free`` made to return None for its fits), an epoch of
each in turn, medians of the epochs' ms a step; then whether their weights agree bit for
bit, and how many of the steps ran in place. Alternating in one process is what separates a
few per cent from this VM's drift between processes.

The last line printed is machine-readable key=value pairs.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fastmlp as fm  # noqa: E402
from fastmlp.backend import cpu  # noqa: E402
from fastmlp.data import load_mnist_t10k  # noqa: E402

UNDO_FREE = cpu.undo_free


def mnist():
    try:
        X, y = load_mnist_t10k()[:2]
        return (X.reshape(len(X), -1) / 255.0).astype(np.float32)[:8000], y[:8000], "MNIST t10k, first 8,000 images"
    except FileNotFoundError as e:
        rng = np.random.default_rng(0)
        return (rng.random((8000, 784), dtype=np.float32), rng.integers(0, 10, 8000),
                f"random pixels (MNIST t10k not found: {e})")


def p2():
    layers = [fm.Dense(784, 256), fm.ReLU(), fm.Dense(256, 256), fm.ReLU(), fm.Dense(256, 10)]
    return fm.Sequential(layers, loss=fm.SoftmaxCrossEntropy(), optimizer=fm.SGD(0.1), seed=0)


def steps(X, y, batch, epochs):
    """(ms a step in place where allowed, ms a step with the copy, bitwise equal weights,
    steps run in place / steps)."""
    made = []

    def fit(model, in_place):
        cpu.undo_free = (lambda f, s: made.append(UNDO_FREE(f, s)) or made[-1]) if in_place else \
            (lambda f, s: None)
        try:
            t = time.perf_counter()
            model.fit(X, y, epochs=1, batch_size=batch, verbose=0)
            return (time.perf_counter() - t) / -(-len(X) // batch) * 1e3
        finally:
            cpu.undo_free = UNDO_FREE

    free, copy = p2(), p2()
    fit(free, True)
    fit(copy, False)                       # warm-up: kernels compiled, workspaces made
    made.clear()
    times = {True: [], False: []}
    for e in range(epochs):
        order = ((free, True), (copy, False)) if e % 2 == 0 else ((copy, False), (free, True))
        for model, in_place in order:
            times[in_place].append(fit(model, in_place))
    same = all(np.array_equal(a, b) for a, b in zip(free.get_weights(), copy.get_weights()))
    share = sum(u.in_place for u in made) / max(1, sum(u.steps for u in made))
    return statistics.median(times[True]), statistics.median(times[False]), same, share


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--batches", default="64,128,256")
    args = p.parse_args(argv)
    X, y, note = mnist()
    epochs = 4 if args.quick else 16
    print(f"data: {note}; P2, SGD 0.1, {epochs} epochs of each, alternated")
    print(f"{'batch':>6} {'in place ms':>12} {'copy ms':>9} {'ratio':>6} {'same bits':>10} {'in place':>9}")
    out = []
    for b in (int(v) for v in args.batches.split(",")):
        free, copy, same, share = steps(X, y, b, epochs)
        print(f"{b:>6} {free:>12.4f} {copy:>9.4f} {free / copy:>6.3f} {str(same):>10} {share:>9.0%}")
        out += [f"b{b}_in_place_ms={free:.4f}", f"b{b}_copy_ms={copy:.4f}", f"b{b}_ratio={free / copy:.3f}",
                f"b{b}_same_bits={int(same)}", f"b{b}_in_place_share={share:.3f}"]
    print(" ".join(out))


if __name__ == "__main__":
    main()
