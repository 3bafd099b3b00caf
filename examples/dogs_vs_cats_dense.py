"""The second write-up's pipeline: a dense network on a folder of cat and dog photos.

Images are read from class sub-folders (``ROOT/cats/*.jpg``, ``ROOT/dogs/*.jpg``,
the Kaggle "Dogs vs. Cats" layout; classes are the sorted folder names),
resized to 96 x 96 grayscale (``load_image_folder``), flattened to 9,216
features and scaled to [0, 1]; labels are one-hot for a softmax output with
cross-entropy. A stratified split keeps 20 % for validation and 10 % for the
test; the train / validation curves are written as a PNG.

    python examples/dogs_vs_cats_dense.py --data ROOT [--epochs 20] [--augment] [--curves curves.png]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

import fastmlp as fm
from fastmlp.data import load_image_folder
from fastmlp.preprocessing import one_hot, scale_to_unit, train_val_test_split


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder of class sub-folders of JPG/PNG images")
    p.add_argument("--size", type=int, default=96, help="images are resized to SIZE x SIZE")
    p.add_argument("--hidden", default="256,64", help="hidden layer sizes, comma-separated")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    p.add_argument("--augment", action="store_true", help="random left-right flips, 10 degree rotations, 10 %% shifts")
    p.add_argument("--curves", default="dogs_vs_cats_curves.png", help="where to write the train/validation curves")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        hidden = [int(t) for t in args.hidden.split(",") if t.strip()]
    except ValueError:
        p.error(f"--hidden expects sizes like 256,64, got {args.hidden!r}")

    root = Path(args.data)
    if not root.is_dir():
        sys.exit(f"image folder not found: {root}. Arrange the photos as ROOT/cats/*.jpg and ROOT/dogs/*.jpg "
                 "(any class names: one sub-folder each) and pass --data ROOT.")
    t0 = time.perf_counter()
    X, y, classes = load_image_folder(root, size=(args.size, args.size), grayscale=True)
    print(f"read {len(X)} images of {len(classes)} classes ({', '.join(classes)}) in "
          f"{time.perf_counter() - t0:.1f} s; counts {np.bincount(y).tolist()}")
    X = scale_to_unit(X.reshape(len(X), -1))            # (N, SIZE*SIZE) float32 in [0, 1]
    Xtr, ytr, Xv, yv, Xte, yte = train_val_test_split(X, y, val=0.2, test=0.1, seed=args.seed)
    Ytr, Yv, Yte = (one_hot(t, len(classes)) for t in (ytr, yv, yte))   # (N, K) for the softmax

    layers, width = [], X.shape[1]
    for size in hidden:
        layers += [fm.Dense(width, size, init="he"), fm.ReLU()]
        width = size
    layers.append(fm.Dense(width, len(classes)))
    model = fm.Sequential(layers, loss=fm.SoftmaxCrossEntropy(), optimizer=fm.Adam(args.lr),
                          device=args.device, seed=args.seed)
    model.summary()
    aug = fm.Augment(flip_h=True, rotate=10.0, shift=0.1, image_shape=(args.size, args.size)) \
        if args.augment else None
    t0 = time.perf_counter()
    h = model.fit(Xtr, Ytr, epochs=args.epochs, batch_size=args.batch_size, validation_data=(Xv, Yv),
                  augment=aug, verbose=2)
    seconds = time.perf_counter() - t0
    train_acc = model.evaluate(Xtr, Ytr)["accuracy"]
    val_acc = model.evaluate(Xv, Yv)["accuracy"]
    test_acc = model.evaluate(Xte, Yte)["accuracy"] if len(Xte) else float("nan")
    try:
        from fastmlp import plot
        plot.history(h, args.curves, title=f"Dense network, {args.size}x{args.size} grayscale "
                                           f"({len(Xtr)} training images)")
        print(f"curves: {args.curves}")
    except ImportError as e:
        print(f"no curves: {e}")
    print(f"train accuracy {train_acc:.3f}, validation {val_acc:.3f}, test {test_acc:.3f} "
          f"({len(h.epoch)} epochs in {seconds:.1f} s)")
    print(f"train_acc={train_acc:.4f} val_acc={val_acc:.4f} test_acc={test_acc:.4f} "
          f"epochs={len(h.epoch)} seconds={seconds:.2f}")


if __name__ == "__main__":
    main()
