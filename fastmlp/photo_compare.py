"""The second write-up's dense network against a small CNN, on a folder of photos.

    fastmlp compare --data ../shared/data/dogs-vs-cats        # both models, seeds 0 1 2
    from fastmlp.photo_compare import compare_photos, table
    result = compare_photos("../shared/data/dogs-vs-cats", seeds=(0, 1, 2), log=print)
    print(table(result))

The data: a folder holding ``train/`` and ``test/`` (each of class sub-folders,
the Kaggle Dogs vs. Cats layout) is the given split: ``train/`` is split into
training and validation (stratified, ``VAL`` of it, drawn with the seed) and
``test/`` is the test set. Any other folder of class sub-folders is split by
fractions (``VAL`` validation, ``TEST`` test). Photos are read through the
image-folder cache (``load_image_folder(cache=...)``).

The models (``RECIPES``; see docs/dogs_vs_cats.md for how they were chosen):

- ``dense``: the write-up's network: 96 x 96 grayscale photos flattened to
  9,216 values in [0, 1], each photo then standardised over its own pixels,
  Dense 256, ReLU, Dropout 0.3, Dense 64, ReLU, Dropout 0.3, Dense K, softmax
  cross-entropy on one-hot labels; random left-right flips of each batch.
- ``cnn``: 64 x 64 colour photos, NCHW in [0, 1], four blocks [Conv 3x3
  (padding 1), BatchNorm, ReLU, MaxPool 2] of 16, 32, 64, 128 filters, global
  average pooling, Dropout, Dense K; integer labels; random flips and shifts
  of each batch.

Both train with Adam and a cosine learning-rate decay over the epochs; the epoch kept is the one
with the best validation accuracy (``EarlyStopping(restore_best_weights)``, the
earlier on ties); the test set is evaluated once, with those weights.
Training samples/s counts the training batches only (a callback times each
epoch's batches; the validation pass after it is left out).

Shape vocabulary: N images, C channels, S image side, K classes.
"""
import math
import time
from pathlib import Path

import numpy as np

from .callbacks import Callback

MODELS = ("dense", "cnn")
VAL, TEST = 0.2, 0.2          # validation fraction of train/; test fraction of a folder without test/
SEEDS = (0, 1, 2)

# per model: input (side, grayscale, per-photo standardisation), Adam's initial rate, epochs (quick:
# a smoke test), batch, early-stopping patience, augmentation, the net's own sizes and regularisers
RECIPES = {
    "dense": {"side": 96, "grayscale": True, "standardize": "samples", "lr": 1e-4, "epochs": 30,
              "quick_epochs": 2, "batch_size": 32, "patience": 30, "flip": True, "shift": 0.0, "rotate": 0.0,
              "hidden": (256, 64), "dropout": 0.3, "l2": 0.0},
    "cnn": {"side": 64, "grayscale": False, "standardize": None, "lr": 1e-3, "epochs": 30, "quick_epochs": 2,
            "batch_size": 32, "patience": 30, "flip": True, "shift": 0.1, "rotate": 0.0,
            "filters": (16, 32, 64, 128), "dropout": 0.3, "l2": 0.0},
}


def describe(kind, classes=2, recipe=None):
    r = recipe or RECIPES[kind]
    if kind == "dense":
        sizes = " -> ".join(str(v) for v in (r["side"] ** 2, *r["hidden"], classes))
        std = ", each photo standardised" if r.get("standardize") == "samples" else ""
        return (f"{r['side']}x{r['side']} grayscale flattened{std}, Dense {sizes}, ReLU, softmax on one-hot labels"
                + (f", Dropout {r['dropout']}" if r["dropout"] else "") + (f", L2 {r['l2']:g}" if r["l2"] else ""))
    blocks = ", ".join(str(f) for f in r["filters"])
    return (f"{r['side']}x{r['side']} colour, [Conv 3x3 pad 1, BatchNorm, ReLU, MaxPool 2] x {len(r['filters'])} "
            f"({blocks} filters), global average pool, Dropout {r['dropout']}, Dense {r['filters'][-1]} -> {classes}")


def _recipe_text(r, epochs):
    aug = ", ".join(a for a, on in (("flips", r["flip"]), (f"shifts {r['shift']:g}", r["shift"]),
                                    (f"rotations {r['rotate']:g} deg", r["rotate"])) if on)
    return (f"Adam {r['lr']:g}, cosine decay over {epochs} epochs, batch {r['batch_size']}, "
            f"augmentation: {aug or 'none'}; epoch chosen by validation accuracy")


# ---------------------------------------------------------------------- data

def load_photos(root, kind, seed=0, cache=True, progress=True, recipe=None, val=VAL, test=TEST):
    """{"train", "val", "test": (X, y), "classes", "split"} for model ``kind``: X uint8
    (N, S, S) grayscale or (N, S, S, 3) colour as loaded, y int64. ``val``: the validation
    fraction of the training photos; ``test``: the test fraction of a folder without test/."""
    from .data import load_image_splits
    from .preprocessing import train_val_test_split
    r = recipe or RECIPES[kind]
    d = load_image_splits(root, size=(r["side"], r["side"]), grayscale=r["grayscale"], cache=cache,
                          progress=progress)
    X, y = d["train"]
    if d["test"] is not None:
        Xtr, ytr, Xv, yv, _, _ = train_val_test_split(X, y, val=val, test=0.0, seed=seed)
        held, split = d["test"], f"given: train/ ({len(X)}: {1 - val:.0%} training, {val:.0%} validation), test/"
    else:
        Xtr, ytr, Xv, yv, Xte, yte = train_val_test_split(X, y, val=val, test=test, seed=seed)
        held, split = (Xte, yte), f"fractions of one folder: {val:.0%} validation, {test:.0%} test"
    return {"train": (Xtr, ytr), "val": (Xv, yv), "test": held, "classes": d["classes"], "split": split}


def model_input(kind, X, recipe=None):
    """Loaded uint8 images -> the model's float32 input: (N, S*S) for dense, (N, C, S, S) for cnn,
    scaled to [0, 1]; then, where the recipe says ``standardize="samples"``, each photo to zero
    mean and unit variance over its own pixels (``standardize_samples``)."""
    from .preprocessing import standardize_samples
    r = recipe or RECIPES[kind]
    X = np.asarray(X)
    if kind == "dense":
        X = np.ascontiguousarray(X.reshape(len(X), -1), dtype=np.float32) / np.float32(255)
        return standardize_samples(X) if r.get("standardize") == "samples" else X
    if X.ndim == 3:
        X = X[..., None]
    X = np.ascontiguousarray(X.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)
    return standardize_samples(X) if r.get("standardize") == "samples" else X


# ---------------------------------------------------------------------- models

def build(kind, classes=2, seed=0, device="cpu", recipe=None):
    """The ``kind`` model of ``recipe`` (default ``RECIPES[kind]``), softmax cross-entropy, Adam."""
    from .conv import Conv2D, MaxPool2D
    from .layers import Dense, ReLU
    from .losses import SoftmaxCrossEntropy
    from .model import Sequential
    from .normalization import BatchNorm, Dropout
    from .optimizers import Adam
    from .pooling import GlobalAveragePooling2D
    if kind not in MODELS:
        raise ValueError(f"expected a model kind in {MODELS}, got {kind!r}")
    r = recipe or RECIPES[kind]
    layers = []
    if kind == "dense":
        width = r["side"] ** 2 * (1 if r["grayscale"] else 3)
        shape = (width,)
        for size in r["hidden"]:
            layers += [Dense(width, size, init="he", l2=r["l2"]), ReLU()]
            if r["dropout"]:
                layers.append(Dropout(r["dropout"]))
            width = size
        layers.append(Dense(width, classes, l2=r["l2"]))
    else:
        c = 1 if r["grayscale"] else 3
        shape = (c, r["side"], r["side"])
        for m in r["filters"]:
            layers += [Conv2D(c, m, 3, padding=1, init="he", l2=r["l2"]), BatchNorm(m), ReLU(),
                       MaxPool2D(2)]
            c = m
        layers.append(GlobalAveragePooling2D())
        if r["dropout"]:
            layers.append(Dropout(r["dropout"]))
        layers.append(Dense(c, classes))
    return Sequential(layers, loss=SoftmaxCrossEntropy(), optimizer=Adam(lr=r["lr"]),
                         device=device, seed=seed, input_shape=shape)


def augment(kind, recipe=None):
    """The recipe's random flips / shifts / rotations of each training batch, or None."""
    from .augment import Augment
    r = recipe or RECIPES[kind]
    if not (r["flip"] or r["shift"] or r["rotate"]):
        return None
    image_shape = (r["side"], r["side"]) if kind == "dense" else None
    return Augment(flip_h=r["flip"], shift=r["shift"], rotate=r["rotate"], image_shape=image_shape)


def _callbacks(r, epochs, patience):
    """(early stopping on validation accuracy, batch timer, cosine decay of the rate)."""
    from .callbacks import EarlyStopping, LearningRateScheduler
    lr = r["lr"]
    stop = EarlyStopping(monitor="val_accuracy", patience=patience, restore_best_weights=True)
    cosine = LearningRateScheduler(lambda epoch, _: max(lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs)),
                                                           lr * 1e-3))
    return stop, BatchTimer(), cosine


class BatchTimer(Callback):
    """Seconds spent in training batches: from each epoch's start to its last batch's end
    (the validation pass that follows is left out)."""

    def on_train_begin(self, logs=None):
        self.seconds, self.start, self.last = 0.0, None, None

    def on_epoch_begin(self, epoch, logs=None):
        self.start = self.last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds += self.last - self.start


def train(kind, data, seed=0, epochs=None, quick=False, device="cpu", targets=None, verbose=0, log=None,
          recipe=None):
    """Train one ``kind`` model on ``load_photos`` data; its figures as a dict, plus
    ``"model"``, ``"history"`` and the test predictions ``"test_pred"`` (K-column probabilities).

    ``targets``: "one_hot" or "labels" (default: one-hot for dense, as in the write-up);
    ``recipe``: a full recipe dict in place of ``RECIPES[kind]``."""
    r = recipe or RECIPES[kind]
    epochs = epochs or (r["quick_epochs"] if quick else r["epochs"])
    patience = min(r["patience"], epochs)
    k = len(data["classes"])
    targets = targets or ("one_hot" if kind == "dense" else "labels")
    from .preprocessing import one_hot

    def prep(part):
        X, y = data[part]
        return model_input(kind, X, r), (one_hot(y, k) if targets == "one_hot" else y)
    (X, T), val, test = prep("train"), prep("val"), prep("test")
    warm = build(kind, k, seed, device, r)       # JIT and workspaces, outside the timed run
    warm.fit(X[:2 * r["batch_size"]], T[:2 * r["batch_size"]], epochs=1, batch_size=r["batch_size"],
             augment=augment(kind, r), validation_data=(val[0][:8], val[1][:8]))
    del warm
    model = build(kind, k, seed, device, r)
    stop, timer, cosine = _callbacks(r, epochs, patience)
    t0 = time.perf_counter()
    h = model.fit(X, T, epochs=epochs, batch_size=r["batch_size"], validation_data=val, augment=augment(kind, r),
                  callbacks=[stop, timer, cosine], verbose=verbose)
    seconds = time.perf_counter() - t0
    best = stop.best_epoch
    probs = model.predict(test[0])
    y_test = data["test"][1]
    out = {"model": kind, "seed": seed, "params": model.count_params(), "epochs": epochs,
           "epochs_run": len(h.epoch), "best_epoch": best + 1, "val_acc": h["val_accuracy"][best],
           "train_acc": h["accuracy"][best], "test_acc": float(np.mean(probs.argmax(1) == y_test)),
           "fit_seconds": seconds, "train_seconds": timer.seconds,
           "train_samples_per_s": len(X) * len(h.epoch) / timer.seconds,
           "n_train": len(X), "n_val": len(val[0]), "n_test": len(test[0]),
           "recipe": _recipe_text(r, epochs), "description": describe(kind, k, r)}
    if log:
        log(f"  {kind} seed {seed}: test {out['test_acc']:.4f} at epoch {out['best_epoch']} "
            f"(validation {out['val_acc']:.4f}), {out['params']:,} params, {timer.seconds:.1f} s of "
            f"training, {out['train_samples_per_s']:,.0f} samples/s")
    return {**out, "model_object": model, "history": h.history, "test_pred": probs}


# ---------------------------------------------------------------------- the comparison

def compare_photos(root, models=MODELS, seeds=SEEDS, epochs=None, quick=False, device="cpu", cache=True,
                   curves=None, gallery=None, log=None, recipes=None):
    """Each model of ``models`` trained once per seed on the photos in ``root``; a JSON-ready dict:
    {"data", "split", "classes", "runs": [per model and seed], "summary": {model: means}}.

    ``curves``: a PNG of the loss / accuracy curves of the first seed's runs; ``gallery``:
    a PNG of 60 test photos (drawn with the first seed) under the first seed's CNN, its
    mistakes tinted red with the true class. ``recipes``: {kind: recipe dict} in place of
    ``RECIPES``' entries."""
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"expected models from {MODELS}, got {list(models)}")
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("expected at least one seed, got none")
    root = Path(root)
    log = log or (lambda *a, **k: None)
    started = time.perf_counter()
    result = {"data": str(root), "quick": bool(quick), "device": device, "runs": [], "summary": {},
              "models": {}, "sgemm_gflops_start": sgemm_rate()}
    histories = {}
    for kind in models:
        for seed in seeds:
            t0 = time.perf_counter()
            recipe = (recipes or {}).get(kind) or RECIPES[kind]
            data = load_photos(root, kind, seed, cache=cache, recipe=recipe)
            load_s = time.perf_counter() - t0
            if quick:
                data = _quick(data)
            result.update(split=data["split"], classes=data["classes"])
            result["models"][kind] = describe(kind, len(data["classes"]), recipe)
            log(f"{kind}, seed {seed}: {len(data['train'][0])} training, {len(data['val'][0])} validation, "
                f"{len(data['test'][0])} test photos (read in {load_s:.1f} s)")
            run = train(kind, data, seed, epochs, quick, device, log=log, recipe=recipe)
            if seed == seeds[0]:
                histories[kind] = run["history"]
                if kind == "cnn" and gallery is not None:
                    _gallery(gallery, data, run, seed)
            result["runs"].append({k: v for k, v in run.items()
                                   if k not in ("model_object", "history", "test_pred")})
        result["summary"][kind] = _summary([r for r in result["runs"] if r["model"] == kind])
    if curves is not None and histories:
        _curves(curves, histories, seeds[0])
    result["sgemm_gflops_end"] = sgemm_rate()
    result["seconds"] = time.perf_counter() - started
    return result


def sgemm_rate(n=512, seconds=0.2):
    """GFLOP/s of NumPy's float32 n x n GEMM, the median of calls for about ``seconds``: the
    machine's speed while the figures were measured (a shared machine's varies tenfold)."""
    import statistics
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a
    times, end = [], time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < end:
        t0 = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def _quick(data):
    """A smoke-test subset: 200 training, 100 validation and 200 test photos (class-balanced)."""
    def head(part, n):
        X, y = data[part]
        idx = np.concatenate([np.flatnonzero(y == c)[: n // 2] for c in np.unique(y)])
        return X[idx], y[idx]
    return {**data, "train": head("train", 200), "val": head("val", 100), "test": head("test", 200)}


def _summary(runs):
    acc = np.array([r["test_acc"] for r in runs])
    return {"seeds": len(runs), "test_acc_mean": float(acc.mean()), "test_acc_std": float(acc.std()),
            "test_acc_min": float(acc.min()), "test_acc_max": float(acc.max()),
            "params": runs[0]["params"],
            "best_epochs": [r["best_epoch"] for r in runs],
            "train_seconds_mean": float(np.mean([r["train_seconds"] for r in runs])),
            "train_samples_per_s_mean": float(np.mean([r["train_samples_per_s"] for r in runs]))}


def _gallery(path, data, run, seed):
    from .plot import gallery
    X, y = data["test"]
    pick = np.random.default_rng(seed).permutation(len(X))[:60]
    gallery(X[pick], y[pick], run["test_pred"][pick], path, classes=data["classes"], negative_class=None,
            title=f"Small CNN, seed {seed}, 60 test photos")


def _curves(path, histories, seed):
    """Loss and accuracy per epoch of each model (train solid, validation dashed), side by side."""
    from .plot import _figure, _save
    fig = _figure(figsize=(11, 4), layout="constrained")
    ax_l, ax_a = fig.subplots(1, 2)
    for (kind, h), color in zip(histories.items(), ("C0", "C1")):
        e = np.arange(1, len(h["loss"]) + 1)
        for ax, m in ((ax_l, "loss"), (ax_a, "accuracy")):
            ax.plot(e, h[m], "-", color=color, label=f"{kind} train")
            ax.plot(e, h["val_" + m], "--", color=color, label=f"{kind} validation")
        best = int(np.argmax(h["val_accuracy"]))
        ax_a.plot(best + 1, h["val_accuracy"][best], "*", markersize=12, color="gold", markeredgecolor="k")
    for ax, m in ((ax_l, "loss"), (ax_a, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Dogs vs. Cats, seed {seed}: dense network against small CNN (star: epoch kept)")
    return _save(fig, Path(path), 100)


def table(result):
    """Per-seed rows and per-model means as text."""
    head = ("model", "seed", "params", "test acc", "epoch kept", "val acc", "train s", "train smp/s")
    rows = [head]
    for r in result["runs"]:
        rows.append((r["model"], str(r["seed"]), f"{r['params']:,}", f"{r['test_acc']:.4f}",
                     f"{r['best_epoch']}/{r['epochs_run']}", f"{r['val_acc']:.4f}",
                     f"{r['train_seconds']:.1f}", f"{r['train_samples_per_s']:,.0f}"))
    for kind, s in result["summary"].items():
        rows.append((kind, "mean", f"{s['params']:,}",
                     f"{s['test_acc_mean']:.4f}", "-", "-", f"{s['train_seconds_mean']:.1f}",
                     f"{s['train_samples_per_s_mean']:,.0f}"))
    w = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [f"Dogs vs. Cats photos in {result['data']}; split: {result.get('split', '?')}; NumPy sgemm "
             f"{result['sgemm_gflops_start']:.0f} GFLOP/s at the start, {result['sgemm_gflops_end']:.0f} at the end"]
    lines += [f"  {kind}: {text}" for kind, text in result["models"].items()]
    runs = {r["model"]: r for r in result["runs"]}
    lines += [f"  {kind} recipe: {r['recipe']}" for kind, r in runs.items()]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w[j]) if j < 1 else c.rjust(w[j]) for j, c in enumerate(row)))
        if i == 0:
            lines.append("-" * len(lines[-1]))
    return "\n".join(lines)


def key_values(result):
    """The closing key=value line: mean test accuracy, parameters and samples/s of each model."""
    out = []
    for kind, s in result["summary"].items():
        out += [f"{kind}_test_acc={s['test_acc_mean']:.4f}", f"{kind}_params={s['params']}",
                f"{kind}_train_sps={s['train_samples_per_s_mean']:.0f}"]
    return " ".join(out + [f"seeds={len(next(iter(result['summary'].values()))['best_epochs'])}"])


def is_photo_folder(path):
    """Whether ``path`` is a folder of class sub-folders of images, or holds train/ and test/ ones."""
    from .data import _IMAGE_EXTENSIONS, is_split_folder
    path = Path(path)
    if not path.is_dir():
        return False
    if is_split_folder(path):
        path = path / "train"
    return any(p.suffix.lower() in _IMAGE_EXTENSIONS for d in path.iterdir() if d.is_dir()
               for p in d.iterdir())


def run_from_cli(args):
    """``fastmlp compare --data PHOTOS``: the table, --json, --plot (the curves), --gallery, and the
    closing key=value line."""
    try:
        seeds = tuple(int(t) for t in args.seeds.split(",") if t.strip())
    except ValueError:
        seeds = ()
    if not seeds:
        raise ValueError(f"expected --seeds as comma-separated integers like 0,1,2, got {args.seeds!r}")
    result = compare_photos(args.data, seeds=seeds, epochs=args.epochs, quick=args.quick, device=args.device,
                            cache=not getattr(args, "no_cache", False), curves=args.plot,
                            gallery=args.gallery, log=lambda line: print(line, flush=True))
    print()
    print(table(result))
    for opt, what in (("json", "every figure"), ("plot", "the curves"), ("gallery", "the gallery")):
        if getattr(args, opt):
            if opt == "json":
                from .compare import write_json
                write_json(result, args.json)
            print(f"wrote {getattr(args, opt)} ({what})")
    print(key_values(result))
    return 0


__all__ = ["compare_photos", "train", "build", "load_photos", "model_input", "table", "key_values",
           "is_photo_folder", "RECIPES", "MODELS"]
