"""The second write-up's pipeline: a dense network on a folder of cat and dog photos.

Images are read from class sub-folders (``ROOT/cats/*.jpg``, ``ROOT/dogs/*.jpg``,
the Kaggle "Dogs vs. Cats" layout; classes are the sorted folder names),
resized to 96 x 96 grayscale, flattened to 9,216 features, scaled to [0, 1]
and standardised photo by photo (zero mean, unit variance: brightness and
contrast taken out; ``--no-standardize`` keeps [0, 1]); labels are one-hot for a softmax output with cross-entropy; the
network is the write-up's, 9216 -> 256 -> 64 -> 2 with ReLU, with Dropout 0.3
after each hidden layer (``--dropout``; chosen on the validation set, see
docs/dogs_vs_cats.md).

The split: a ROOT holding ``train/`` and ``test/`` (each of class sub-folders,
as ../shared/data/dogs-vs-cats) is the given split: 80 % of ``train/`` trains,
20 % validates (stratified, drawn with the seed), ``test/`` tests. Any other
folder is split by fractions (``--val``, ``--test``). The epoch kept is the one
with the best validation accuracy (the test set never chooses anything); the
train / validation curves are written as a PNG.

Photos are decoded once into an HDF5 cache ($FASTMLP_CACHE_DIR, else
~/.cache/fastmlp; ``--cache-dir``, ``--no-cache``): a second run reads that
file instead of thousands of JPEGs.

    python examples/dogs_vs_cats_dense.py --data ../shared/data/dogs-vs-cats [--seeds 0,1,2]
    python examples/dogs_vs_cats_dense.py --data ROOT --epochs 20 --no-augment --curves curves.png
"""
import argparse
import sys
import time

_STARTED = time.perf_counter()

from pathlib import Path  # noqa: E402  (the start time comes first: the cache's "starts training" figure)

import numpy as np  # noqa: E402

from fastmlp import photo_compare as pc  # noqa: E402


def parse(argv):
    r = pc.RECIPES["dense"]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a folder with train/ and test/, or one folder of class "
                                                 "sub-folders of JPG/PNG images")
    p.add_argument("--size", type=int, default=r["side"], help="images are resized to SIZE x SIZE")
    p.add_argument("--hidden", default=",".join(map(str, r["hidden"])), help="hidden layer sizes, comma-separated")
    p.add_argument("--epochs", type=int, default=r["epochs"], help="at most this many epochs")
    p.add_argument("--patience", type=int, default=r["patience"],
                   help="stop after this many epochs without a better validation accuracy")
    p.add_argument("--batch-size", type=int, default=r["batch_size"])
    p.add_argument("--lr", type=float, default=r["lr"], help="Adam's initial rate (cosine decay over the epochs)")
    p.add_argument("--dropout", type=float, default=r["dropout"], help="dropout after each hidden layer")
    p.add_argument("--l2", type=float, default=r["l2"], help="L2 penalty on the weights (Keras)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=r["flip"] or r["shift"] > 0,
                   help="random left-right flips of each training batch")
    p.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=r["standardize"] == "samples",
                   help="each photo to zero mean, unit variance over its own pixels (after scaling to [0, 1])")
    p.add_argument("--val", type=float, default=pc.VAL, help="validation fraction of the training photos")
    p.add_argument("--test", type=float, default=pc.TEST, help="test fraction (a folder without test/)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, one run each (split, weights, "
                                                "augmentation)")
    p.add_argument("--curves", default="dogs_vs_cats_curves.png", help="where to write the curves (first seed)")
    p.add_argument("--cache-dir", default=None, help="the cache folder (default $FASTMLP_CACHE_DIR or "
                                                     "~/.cache/fastmlp)")
    p.add_argument("--no-cache", action="store_true", help="decode every photo, write no cache")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        args.hidden = tuple(int(t) for t in args.hidden.split(",") if t.strip())
        args.seeds = tuple(int(t) for t in args.seeds.split(",") if t.strip())
    except ValueError:
        p.error(f"--hidden and --seeds expect comma-separated integers, got {args.hidden!r}, {args.seeds!r}")
    if not args.seeds or args.epochs < 1 or args.batch_size < 1 or not 0 < args.val < 1 \
            or not 0 <= args.test < 1 or args.val + args.test >= 1:
        p.error("expected --seeds, --epochs >= 1, --batch-size >= 1, 0 < --val < 1, 0 <= --test < 1, "
                "--val + --test < 1")
    return args


def main(argv=None):
    args = parse(argv)
    root = Path(args.data)
    if not root.is_dir():
        sys.exit(f"image folder not found: {root}. Arrange the photos as ROOT/cats/*.jpg and ROOT/dogs/*.jpg "
                 "(any class names: one sub-folder each), or ROOT/train/<class>/ and ROOT/test/<class>/, "
                 "and pass --data ROOT.")
    recipe = {**pc.RECIPES["dense"], "side": args.size, "hidden": args.hidden, "lr": args.lr,
              "batch_size": args.batch_size, "patience": args.patience, "dropout": args.dropout,
              "l2": args.l2, "standardize": "samples" if args.standardize else None}
    if not args.augment:
        recipe.update(flip=False, shift=0.0, rotate=0.0)
    cache = False if args.no_cache else (args.cache_dir or True)
    runs = []
    for i, seed in enumerate(args.seeds):
        t0 = time.perf_counter()
        data = pc.load_photos(root, "dense", seed, cache=cache, recipe=recipe, val=args.val, test=args.test)
        X, y = data["train"]
        print(f"read {len(X) + len(data['val'][0]) + len(data['test'][0])} images of {len(data['classes'])} "
              f"classes ({', '.join(data['classes'])}) in {time.perf_counter() - t0:.1f} s; split "
              f"{data['split']}: train {len(X)}, validation {len(data['val'][0])}, test {len(data['test'][0])}; "
              f"training counts {np.bincount(y).tolist()}")
        if i == 0:
            pc.build("dense", len(data["classes"]), seed, args.device, recipe).summary()
            print(f"training starts {time.perf_counter() - _STARTED:.2f} s after the start of the script")
        run = pc.train("dense", data, seed, epochs=args.epochs, device=args.device, recipe=recipe, verbose=2)
        model = run["model_object"]
        Xtr, Ttr = pc.model_input("dense", X, recipe), y
        run["train_acc_kept"] = float(np.mean(model.predict(Xtr).argmax(1) == Ttr))
        print(f"seed {seed}: epoch kept {run['best_epoch']} of {run['epochs_run']} (best validation accuracy "
              f"{run['val_acc']:.3f}); train {run['train_acc_kept']:.3f}, test {run['test_acc']:.3f}; "
              f"{run['train_seconds']:.1f} s of training, {run['train_samples_per_s']:,.0f} samples/s")
        if i == 0:
            try:
                from fastmlp import plot
                plot.history(run["history"], args.curves,
                             title=f"Dense network, {args.size}x{args.size} grayscale ({len(X)} training "
                                   f"images, seed {seed})")
                print(f"curves: {args.curves}")
            except ImportError as e:
                print(f"no curves: {e}")
        runs.append(run)
    mean = lambda key: float(np.mean([r[key] for r in runs]))  # noqa: E731
    if len(runs) > 1:
        accs = ", ".join(f"{r['test_acc']:.3f}" for r in runs)
        print(f"test accuracy over seeds {list(args.seeds)}: {accs}; mean {mean('test_acc'):.3f}")
    print(f"train_acc={mean('train_acc_kept'):.4f} val_acc={mean('val_acc'):.4f} test_acc={mean('test_acc'):.4f} "
          f"epochs={runs[0]['epochs_run']} seconds={mean('fit_seconds'):.2f}")


if __name__ == "__main__":
    main()
