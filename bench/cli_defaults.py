"""How the defaults of `fastmlp train` were chosen: 5-fold cross-validation on the cat /
non-cat training file alone (the test file is never read).

Each candidate trains on four folds and is scored after every epoch on the fifth, by
accuracy and by balanced accuracy (the mean of the per-class recalls: the training file is
two-thirds non-cat, so plain accuracy rewards answering "non-cat"); the scores are averaged
over the folds. The candidates are the CLI's MLP (its old defaults and the variants that
might rescue it) and its CNN (--model cnn with its defaults).

    python bench/cli_defaults.py [--data ../shared/data/catvnoncat] [--quick]

Ends with a key=value line: the best epoch and validation accuracy of each candidate.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fastmlp as fm  # noqa: E402
from fastmlp.data import load_h5  # noqa: E402
from fastmlp.layer_stack import build_stack, cnn_stack, mlp_stack  # noqa: E402

# name: (stack, optimizer, batch size, epochs, images as (C, H, W))
CANDIDATES = {
    "mlp_adam1e-3_b64": (lambda: mlp_stack([256, 256]), lambda: fm.Adam(1e-3), 64, 20, False),
    "mlp_adam1e-4_b64": (lambda: mlp_stack([256, 256]), lambda: fm.Adam(1e-4), 64, 30, False),
    "mlp_adam1e-5_b64": (lambda: mlp_stack([256, 256]), lambda: fm.Adam(1e-5), 64, 30, False),
    "mlp_sgd1e-3_m0.9_b32": (lambda: mlp_stack([256, 256]), lambda: fm.SGD(1e-3, momentum=0.9), 32, 30, False),
    "cnn_adam1e-3_b64": (lambda: cnn_stack([16, 32], hidden=[64]), lambda: fm.Adam(1e-3), 64, 30, True),
}


class Scores(fm.Callback):
    """Accuracy and balanced accuracy on held-out rows after every epoch."""

    def __init__(self, X, y):
        self.X, self.y, self.acc, self.balanced = X, y, [], []

    def on_epoch_end(self, epoch, logs=None):
        p = (self.model.predict(self.X)[:, 0] > 0.5).astype(np.int64)
        self.acc.append(float(np.mean(p == self.y)))
        self.balanced.append(float(np.mean([np.mean(p[self.y == c] == c) for c in (0, 1)])))


def cross_validate(X, y, candidate, folds, epochs):
    stack, optimizer, batch, _, images = candidate
    Xin = X.transpose(0, 3, 1, 2) if images else X.reshape(len(X), -1)
    Xin = np.ascontiguousarray(Xin)
    acc, balanced = [], []
    for held in folds:
        train = np.setdiff1d(np.arange(len(X)), held)
        model = fm.Sequential(build_stack(stack(), Xin.shape[1:], 1), loss="bce", optimizer=optimizer(),
                              seed=0, input_shape=Xin.shape[1:])
        scores = Scores(Xin[held], y[held])
        model.fit(Xin[train], y[train], epochs=epochs, batch_size=batch, callbacks=[scores], verbose=0)
        acc.append(scores.acc)
        balanced.append(scores.balanced)
    return np.mean(acc, axis=0), np.mean(balanced, axis=0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "catvnoncat"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="3 epochs each (a smoke test)")
    args = ap.parse_args()
    X, y, _ = load_h5(Path(args.data) / "train_catvnoncat.h5")
    X = X.astype(np.float32) / 255.0          # what the CLI does to uint8 pixels
    folds = np.array_split(np.random.default_rng(0).permutation(len(X)), args.folds)
    print(f"{len(X)} training images, {np.mean(y == 0):.3f} non-cat (the majority answer's accuracy); "
          f"{args.folds}-fold cross-validation, the test file unread")
    best = []
    for name, candidate in CANDIDATES.items():
        t0 = time.perf_counter()
        acc, balanced = cross_validate(X, y, candidate, folds, 3 if args.quick else candidate[3])
        e, at = int(np.argmax(acc)), min(19, len(acc) - 1)   # the best epoch, and the CLI's 20th
        print(f"{name:24s} best epoch {e + 1:3d}: accuracy {acc[e]:.3f}, balanced {balanced[e]:.3f}; "
              f"at epoch {at + 1}: {acc[at]:.3f} / {balanced[at]:.3f} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
        best.append(f"{name}_epoch={e + 1} {name}_acc={acc[e]:.3f}")
    print(" ".join(best))


if __name__ == "__main__":
    main()
