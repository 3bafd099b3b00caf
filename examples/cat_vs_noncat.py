"""The first write-up's experiment: a 4-layer MLP on the 64x64x3 cat / non-cat set.

Layers [12288, 20, 7, 5, 1] (``--hidden``), ReLU hidden, sigmoid output with binary
cross-entropy from logits, full-batch gradient descent at lr 0.0075 for
10,000 iterations; with ``--init course --seed 1`` the weights are drawn as
in the deeplearning.ai code (the article reports 100 % train, 78 % test).

    python examples/cat_vs_noncat.py [--data DIR] [--iterations 10000]
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

import fastmlp as fm
from fastmlp.data import load_h5

FILES = ("train_catvnoncat.h5", "test_catvnoncat.h5")


def find_data(arg):
    if arg:  # an explicit folder is the only place looked in
        candidates = [Path(arg), Path(arg) / "catvnoncat"]
    else:
        candidates = [Path(os.environ["FASTMLP_DATA"]) / "catvnoncat"] if os.environ.get("FASTMLP_DATA") else []
        candidates.append(Path("..") / "shared" / "data" / "catvnoncat")
    for c in candidates:
        if all((c / f).is_file() for f in FILES):
            return c
    sys.exit("cat / non-cat data not found. Put train_catvnoncat.h5 and test_catvnoncat.h5 "
             "(the deeplearning.ai course files) in a folder and pass --data DIR, or set "
             "FASTMLP_DATA to a folder holding catvnoncat/. Looked in: "
             + ", ".join(str(c) for c in candidates))


def build(args):
    dims = [12288] + [int(h) for h in args.hidden.split(",")] + [1]
    layers = []
    for i, (d, m) in enumerate(zip(dims, dims[1:])):
        layers.append(fm.Dense(d, m, init=args.init, l2=args.l2))
        if i < len(dims) - 2:
            layers.append(fm.ReLU())
    return fm.Sequential(layers, loss=fm.BinaryCrossEntropy(), optimizer=fm.SGD(lr=args.lr),
                         device=args.device, dtype=args.dtype, seed=args.seed)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="folder with train_catvnoncat.h5 and test_catvnoncat.h5")
    p.add_argument("--iterations", type=int, default=10_000)
    p.add_argument("--hidden", default="20,7,5", help="hidden layer sizes (default 20,7,5: the article's)")
    p.add_argument("--lr", type=float, default=0.0075)
    p.add_argument("--l2", type=float, default=0.0)
    p.add_argument("--class-weight", default=None, choices=["balanced"],
                   help="weigh the classes' losses (balanced: n / (2 * count), scikit-learn's)")
    p.add_argument("--init", default="course", help="course, he, glorot or lecun")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float64",
                   help="float64 (default: the course code's arithmetic) or float32")
    args = p.parse_args(argv)

    root = find_data(args.data)
    X_train, y_train, classes = load_h5(root / FILES[0])
    X_test, y_test, _ = load_h5(root / FILES[1])
    # flatten and scale to [0, 1] once; the model reads it in place every iteration
    X_train = X_train.reshape(len(X_train), -1).astype(args.dtype) / 255
    X_test = X_test.reshape(len(X_test), -1).astype(args.dtype) / 255

    model = build(args)
    model.summary()
    model.fit(X_train[:8], y_train[:8], epochs=1, batch_size=None, verbose=0)  # JIT warm-up
    model = build(args)  # fresh weights: the warm-up must not change the experiment
    t0 = time.perf_counter()
    history = model.fit(X_train, y_train, epochs=args.iterations, batch_size=None, verbose=0,
                        class_weight=args.class_weight)
    seconds = time.perf_counter() - t0
    for i in range(0, args.iterations, max(1, args.iterations // 10)):
        print(f"iteration {i:6d}: loss {history['loss'][i]:.6f}")
    train_acc = model.evaluate(X_train, y_train)["accuracy"]
    test_acc = model.evaluate(X_test, y_test)["accuracy"]
    ms = 1000 * seconds / max(1, args.iterations)
    print(f"train accuracy {train_acc:.3f}, test accuracy {test_acc:.3f}")
    print(f"{args.iterations} iterations in {seconds:.2f} s ({ms:.3f} ms per iteration)")
    p = float(model.predict(X_test[:1])[0, 0])
    label = classes[int(p > 0.5)] if classes else int(p > 0.5)
    truth = classes[int(y_test[0])] if classes else int(y_test[0])
    print(f"test image 0: predicted {label!r} (p(cat) = {p:.3f}), true {truth!r}")
    print(f"train_acc={train_acc:.3f} test_acc={test_acc:.3f} ms_per_iter={ms:.3f} seconds={seconds:.2f}")


if __name__ == "__main__":
    main()
