"""The third write-up's MLP experiments on 28 x 28 grayscale organ CT slices, as one table.

Dense networks with 0, 1 or 2 hidden layers of 256 units; ReLU, LeakyReLU,
tanh and sigmoid; L2 against L1 weight penalties; with and without
normalisation (uint8 pixels -> [0, 1] -> zero mean, unit variance with the
training split's statistics, against raw 0..255 values); with augmentation
(random rotations up to 10 degrees and shifts up to 10 %, bilinear, zero
fill, drawn per batch on the device); with early stopping on the validation
loss (best weights restored). Every row trains with Adam (lr 1e-3, batch 128)
from the same seed; one row changes one thing from the baseline.

The rows run through ``fm.sweep``: each in a worker process, ``--workers N`` of
them at once (default 1: one after the other), and with ``--out DIR`` every
finished row is kept in DIR/results.json, so an interrupted table started again
runs only the rows it lacks.

Data: a MedMNIST ``.npz`` (``--data organamnist.npz``: its train / val / test
splits), else the project's stand-in, MNIST t10k (``load_mnist_t10k``: first
8,000 images train, last 2,000 test; a stratified 10 % of train validates).

    python examples/organamnist_mlp.py [--data organamnist.npz] [--quick] [--only 2,9] [--workers 2]
"""
import argparse
import functools
import sys
import time
from types import SimpleNamespace

import numpy as np

import fastmlp as fm
from fastmlp.data import load_medmnist, load_mnist_t10k
from fastmlp.preprocessing import Standardizer, scale_to_unit, train_val_test_split
from fastmlp.sweep import FromFile

BASE = {"hidden": [256, 256], "act": "relu", "l1": 0.0, "l2": 0.0, "norm": True, "aug": False, "es": False}
ROWS = [
    ("softmax regression", {"hidden": []}),
    ("1 x 256 ReLU", {"hidden": [256]}),
    ("2 x 256 ReLU (baseline)", {}),
    ("2 x 256 LeakyReLU", {"act": "leaky_relu"}),
    ("2 x 256 tanh", {"act": "tanh"}),
    ("2 x 256 sigmoid", {"act": "sigmoid"}),
    ("baseline + L2 1e-4", {"l2": 1e-4}),
    ("baseline + L1 1e-5", {"l1": 1e-5}),
    ("baseline, no normalisation", {"norm": False}),
    ("baseline + augmentation", {"aug": True}),
    ("baseline + early stopping", {"es": True}),
]
BASELINE = 2


def load(args):
    """(train, val, test) pairs of uint8 (N, 28, 28) images and int labels, and a description."""
    if args.data:
        parts = [load_medmnist(args.data, s) for s in ("train", "val", "test")]
        name = f"MedMNIST {args.data}"
    else:
        try:
            Xtr, ytr, Xte, yte = load_mnist_t10k(args.mnist)
        except FileNotFoundError as e:
            sys.exit(f"{e}\nPass --data organamnist.npz (MedMNIST) or --mnist DIR (the t10k IDX files).")
        Xtr, ytr, Xv, yv, _, _ = train_val_test_split(Xtr, ytr, val=0.1, test=0.0, seed=args.seed)
        parts = [(Xtr, ytr), (Xv, yv), (Xte, yte)]
        name = "MNIST t10k (first 8000 train, last 2000 test)"
    if args.max_train:
        parts[0] = (parts[0][0][:args.max_train], parts[0][1][:args.max_train])
    for split, (X, y) in zip(("train", "val", "test"), parts):
        if X.ndim != 3:
            sys.exit(f"expected grayscale {split} images (N, H, W), got {X.shape}")
        if y.ndim != 1:
            sys.exit(f"expected single-label {split} labels (N,), got {y.shape} (a multi-label MedMNIST set?)")
    return parts, name


def features(parts, normalise):
    """Flat float32 inputs: standardised [0, 1] pixels (statistics of train only), or raw 0..255."""
    flat = [np.ascontiguousarray(X.reshape(len(X), -1), dtype=np.float32) for X, _ in parts]
    if not normalise:
        return flat
    flat = [scale_to_unit(X.reshape(len(X), -1)) for X, _ in parts]
    st = Standardizer("global").fit(flat[0])
    return [st.transform(X).astype(np.float32) for X in flat]


def build(cfg, d, k, seed, device):
    init = "he" if cfg["act"] in ("relu", "leaky_relu") else "glorot"
    layers, width = [], d
    for size in cfg["hidden"]:
        layers += [fm.Dense(width, size, init=init, l1=cfg["l1"], l2=cfg["l2"]), fm.activation(cfg["act"])]
        width = size
    layers.append(fm.Dense(width, k, l1=cfg["l1"], l2=cfg["l2"]))
    return fm.Sequential(layers, loss=fm.SoftmaxCrossEntropy(), optimizer=fm.Adam(1e-3),
                         device=device, seed=seed)


def run_row(cfg, data, hw, k, args):
    (Xtr, ytr), (Xv, yv), (Xte, yte) = data
    model = build(cfg, Xtr.shape[1], k, args.seed, args.device)
    aug = fm.Augment(rotate=10.0, shift=0.1, image_shape=hw) if cfg["aug"] else None
    callbacks, epochs = [], args.epochs
    if cfg["es"]:
        # early stopping gets twice the epochs and stops itself when validation stalls
        callbacks.append(fm.EarlyStopping("val_loss", patience=args.patience, restore_best_weights=True))
        epochs = 2 * args.epochs
    t0 = time.perf_counter()
    h = model.fit(Xtr, ytr, epochs=epochs, batch_size=128, validation_data=(Xv, yv),
                  callbacks=callbacks, augment=aug, verbose=0)
    seconds = time.perf_counter() - t0
    return {"epochs": len(h.epoch), "params": model.count_params(), "seconds": seconds,
            "train": model.evaluate(Xtr, ytr)["accuracy"], "val": model.evaluate(Xv, yv)["accuracy"],
            "test": model.evaluate(Xte, yte)["accuracy"]}


@functools.lru_cache(maxsize=2)
def _inputs(data, mnist, max_train, seed, norm):
    """(the three (X, y) splits as model inputs, (H, W), classes), once per worker process."""
    parts, _ = load(SimpleNamespace(data=data, mnist=mnist, max_train=max_train, seed=seed))
    X = features(parts, norm)
    k = int(max(y.max() for _, y in parts)) + 1
    return [(X[j], parts[j][1]) for j in range(3)], parts[0][0].shape[1:], k


def sweep_row(config, seed):
    """One row of the table in a sweep worker: config = {"row": i, "run": this script's options}."""
    opts = SimpleNamespace(**config["run"], seed=seed)
    cfg = dict(BASE, **ROWS[config["row"]][1])
    data, hw, k = _inputs(opts.data, opts.mnist, opts.max_train, seed, cfg["norm"])
    out = run_row(cfg, data, hw, k, opts)
    out["fit_seconds"] = out.pop("seconds")   # the sweep's "seconds" is the whole run's
    return out


def table(results):
    head = ["#", "configuration", "hidden", "activation", "penalty", "norm", "aug", "early stop",
            "epochs", "params", "train acc", "val acc", "test acc", "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, name, cfg, r in results:
        penalty = f"L1 {cfg['l1']:g}" if cfg["l1"] else (f"L2 {cfg['l2']:g}" if cfg["l2"] else "-")
        hidden = "x".join(map(str, cfg["hidden"])) or "-"
        act = cfg["act"] if cfg["hidden"] else "-"
        cells = [str(i), name, hidden, act, penalty, "yes" if cfg["norm"] else "no", "yes" if cfg["aug"] else "no",
                 "yes" if cfg["es"] else "no", str(r["epochs"]), f"{r['params']:,}", f"{r['train']:.4f}",
                 f"{r['val']:.4f}", f"{r['test']:.4f}", f"{r['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a MedMNIST .npz (e.g. organamnist.npz); default: MNIST t10k")
    p.add_argument("--mnist", help="folder of the t10k IDX files (default $FASTMLP_DATA/mnist-t10k "
                                   "or ../shared/data/mnist-t10k)")
    p.add_argument("--quick", action="store_true", help="3 epochs a row (early stopping: up to 6)")
    p.add_argument("--epochs", type=int, default=None, help="epochs a row (default 20, --quick 3)")
    p.add_argument("--patience", type=int, default=None, help="early stopping patience (default 3, --quick 1)")
    p.add_argument("--only", help="comma-separated row numbers to run (default all)")
    p.add_argument("--max-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=1, help="rows trained at once, each in a worker process")
    p.add_argument("--out", default=None, help="keep every finished row in OUT/results.json (resumable)")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers expects a positive integer, got {args.workers}")
    args.epochs = args.epochs or (3 if args.quick else 20)
    args.patience = args.patience or (1 if args.quick else 3)
    rows = list(range(len(ROWS)))
    if args.only:
        try:
            rows = sorted({int(t) for t in args.only.split(",")})
        except ValueError:
            p.error(f"--only expects row numbers like 2,9, got {args.only!r}")
        if not all(0 <= r < len(ROWS) for r in rows):
            p.error(f"--only expects row numbers in 0..{len(ROWS) - 1}, got {args.only!r}")

    parts, name = load(args)
    hw = parts[0][0].shape[1:]
    k = int(max(y.max() for _, y in parts)) + 1
    print(f"data: {name}; train {len(parts[0][1])}, validation {len(parts[1][1])}, test {len(parts[2][1])}, "
          f"{k} classes, {hw[0]}x{hw[1]} pixels; {args.epochs} epochs a row")
    # JIT warm-up on a few rows (compiled code is cached on disk for the workers), so that no
    # row's time includes compilation
    warm = features([(X[:256], y[:256]) for X, y in parts], True)
    build(BASE, warm[0].shape[1], k, args.seed, args.device).fit(
        warm[0], parts[0][1][:256], epochs=1, batch_size=128, verbose=0,
        validation_data=(warm[1], parts[1][1][:256]), augment=fm.Augment(rotate=10.0, image_shape=hw))

    opts = {key: getattr(args, key) for key in ("data", "mnist", "max_train", "epochs", "patience", "device")}
    configs = [{"name": ROWS[i][0], "row": i, "run": opts} for i in rows]
    t0 = time.perf_counter()
    progress = lambda line="": print(line, flush=True) if line.startswith("[") else None  # noqa: E731
    swept = fm.sweep(configs, seeds=[args.seed], run=FromFile(__file__, "sweep_row"), workers=args.workers,
                     out=args.out, plot=False, print_fn=progress)
    seconds = time.perf_counter() - t0
    failed = [r for r in swept if r["status"] != "ok"]
    if failed:
        sys.exit(f"{len(failed)} row(s) failed: " + "; ".join(f"{r['name']}: {r['error']}" for r in failed))
    results = []
    for i, r in zip(rows, swept):
        label, change = ROWS[i]
        r = dict(r, seconds=r["fit_seconds"])
        results.append((i, label, dict(BASE, **change), r))
        print(f"row {i:2d} {label:<28s} train {r['train']:.4f}  val {r['val']:.4f}  test {r['test']:.4f}  "
              f"({r['epochs']} epochs, {r['seconds']:.1f} s)")
    print()
    print(table(results))
    print()
    best = max(results, key=lambda t: t[3]["val"])
    print(f"best on validation: row {best[0]} ({best[1]}), test accuracy {best[3]['test']:.4f}")
    base = next((r for i, _, _, r in results if i == BASELINE), None)
    pairs = [f"rows={len(results)}"]
    if base is not None:
        pairs.append(f"baseline_test_acc={base['test']:.4f}")
    pairs += [f"best_row={best[0]}", f"best_val_acc={best[3]['val']:.4f}", f"best_test_acc={best[3]['test']:.4f}",
              f"seconds={seconds:.1f}"]
    print(" ".join(pairs))


if __name__ == "__main__":
    main()
