"""The fastmlp command line (fastmlp --help, fastmlp COMMAND --help).

    fastmlp demo                          train on the built-in shapes (no download)
    fastmlp train DATA --out run          train a CNN (images) or an MLP (--model mlp, --hidden ...)
                                          or any stack (--model FILE.toml); model, metrics,
                                          curves in run/ (under mpiexec -n P: data-parallel)
    fastmlp evaluate run DATA             loss and accuracy of a saved model
    fastmlp predict run IMAGE... | DATA   class and probability of image files, or of a data
                                          set (with its accuracy)
    fastmlp export run OUT.onnx           the model as an ONNX file (--output logits)
    fastmlp info                          versions, devices, threads, BLAS, Numba cache
    fastmlp compare [--data DIR]          MLP vs CNN as images grow: parameters, FLOPs,
                                          memory, samples/s, accuracy
    fastmlp sweep FILE.toml [--workers N] configurations x seeds in worker processes
                                          (--scheduler tcp://HOST:8786: on Dask)

DATA is an HDF5 file (--x-key / --y-key name its datasets where they cannot be
guessed), a MedMNIST .npz, a folder of MNIST IDX files (the t10k pair), a folder
of class sub-folders of JPG/PNG images, or 'shapes' for the built-in set.
Commands that report a result end with one machine-readable key=value line.
"""
import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

# The training defaults (--model auto: a CNN for images; Adam 1e-3, batch 64, 20 epochs) were
# chosen by 5-fold cross-validation on train_catvnoncat.h5 alone (the test file never read):
# every MLP tried (256-256 or smaller, Adam 1e-5..1e-3, SGD with and without momentum, batch
# 16..full, 10..1000 epochs, standardised or not, balanced class weights) stayed at or below the
# majority class in validation accuracy (0.60-0.67 against 0.656) and at 0.54-0.62 balanced
# accuracy, as did scikit-learn's logistic regression (0.58-0.64); the CNN below reached 0.80
# (balanced 0.80) around epoch 20. The recipe: bench/README.md, "CLI defaults".
DEFAULT_HIDDEN = {"mlp": [256, 256], "cnn": [64]}   # dense layers before the output, per model

MODEL_FILE = "model.fmlp"
PREPROCESS_FILE = "preprocess.json"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"
INTERRUPTED = 130   # the exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it


class CommandError(Exception):
    """A problem with what the user asked for (data, files): printed without a traceback."""


# ---------------------------------------------------------------------- argument types

def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _hidden_sizes(text):
    """'256,256' -> [256, 256]; '' or 'none' -> [] (no hidden layer: softmax regression)."""
    if text.strip().lower() in ("", "none", "0"):
        return []
    try:
        return [_positive_int(t.strip()) for t in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive layer sizes like 256,256 (or 'none'), got {text!r}") from None


def _side(text):
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 8:
        raise argparse.ArgumentTypeError(f"expected an image side >= 8, got {text!r}")
    return v


def _verbose(text):
    return "auto" if text == "auto" else int(text) if text in ("0", "1", "2") else text


def _batch_size(text):
    if text.lower() == "full":
        return None
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'full', got {text!r}") from None


def _number(lo, hi, lo_open=False, hi_open=False):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if not ok:
            interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text!r}")
        return v
    return parse


# ---------------------------------------------------------------------- data

def _is_mnist_folder(path):
    names = {p.name for p in path.iterdir()}
    return any(n.startswith("t10k-images-idx3-ubyte") for n in names)


def _split(X, y, val, test, seed):
    from .preprocessing import train_val_test_split
    Xtr, ytr, Xv, yv, Xte, yte = train_val_test_split(X, y, val=val, test=test, seed=seed)
    return (Xtr, ytr), ((Xv, yv) if len(Xv) else None), ((Xte, yte) if len(Xte) else None)


def _load_h5(path, args):
    from . import data
    try:
        return data.load_h5(path, x_key=getattr(args, "x_key", None), y_key=getattr(args, "y_key", None))
    except ValueError as e:   # the loader's hint names its keyword arguments: name the options here
        raise CommandError(str(e).replace("pass x_key= and y_key= to choose",
                                          "pass --x-key NAME and --y-key NAME to choose")) from None


def load_source(source, args, for_training=True):
    """{"train", "val", "test": (X, y) or None, "classes": list, "kind": str}.

    Images come back as loaded, (N, H, W[, C]); splits the source does not
    provide are drawn from its training part (stratified, seeded)."""
    from . import data
    val = getattr(args, "val_split", 0.0) if for_training else 0.0
    test = getattr(args, "test_split", 0.0) if for_training else 0.0
    seed = args.seed
    if source == "shapes":
        X, y, classes = data.make_shapes(args.samples, size=args.image_size or 28, seed=seed, centered=True)
        if not for_training:
            return {"train": None, "val": None, "test": (X, y), "classes": classes, "kind": "shapes"}
        tr, va, te = _split(X, y, val, test, seed)
        return {"train": tr, "val": va, "test": te, "classes": classes, "kind": "shapes"}
    path = Path(source)
    if not path.exists():
        raise CommandError(f"data not found: {source} (expected an .h5 file, a MedMNIST .npz, a folder "
                           "of MNIST IDX files, a folder of class sub-folders of images, or 'shapes')")
    if path.is_file() and path.suffix.lower() == ".npz":
        splits = {s: data.load_medmnist(path, s) for s in ("train", "val", "test")}
        k = int(max(int(splits[s][1].max()) for s in splits)) + 1
        return {"train": splits["train"], "val": splits["val"], "test": splits["test"],
                "classes": [str(i) for i in range(k)], "kind": "medmnist"}
    if path.is_file():
        X, y, classes = _load_h5(path, args)
        kind = "h5"
    elif _is_mnist_folder(path):
        Xtr, ytr, Xte, yte = data.load_mnist_t10k(path)
        classes = [str(i) for i in range(10)]
        if not for_training:
            return {"train": None, "val": None, "test": (Xte, yte), "classes": classes, "kind": "mnist"}
        tr, va, _ = _split(Xtr, ytr, val, 0.0, seed)
        return {"train": tr, "val": va, "test": (Xte, yte), "classes": classes, "kind": "mnist"}
    elif data.is_split_folder(path):   # the given split: ROOT/train/<class>/, ROOT/test/<class>/
        size = args.image_size or 64
        d = data.load_image_splits(path, size=(size, size), grayscale=not args.color, cache=_cache(args))
        if not for_training:
            return {"train": None, "val": None, "test": d["test"], "classes": d["classes"], "kind": "folder"}
        tr, va, _ = _split(*d["train"], val, 0.0, seed)
        return {"train": tr, "val": va, "test": d["test"], "classes": d["classes"], "kind": "folder"}
    else:
        size = args.image_size or 64
        X, y, classes = data.load_image_folder(path, size=(size, size), grayscale=not args.color,
                                               cache=_cache(args))
        kind = "folder"
    classes = classes or [str(i) for i in range(int(y.max()) + 1)]
    if not for_training:
        return {"train": None, "val": None, "test": (X, y), "classes": classes, "kind": kind}
    tr, va, te = _split(X, y, val, test, seed)
    return {"train": tr, "val": va, "test": te, "classes": classes, "kind": kind}


def _cache(args):
    """The image-folder cache argument of ``load_image_folder``: the user cache folder unless
    --no-cache ($FASTMLP_CACHE_DIR moves it)."""
    return not getattr(args, "no_cache", False)


def _prepare(X, prep):
    """Loaded images -> the model's float32 input, as recorded in ``prep``: flat rows
    (N, F), or (N, C, H, W) images for a model with convolutions (layout "nchw")."""
    import numpy as np

    from .preprocessing import Standardizer, scale_to_unit
    shape = tuple(prep["image_shape"])
    if tuple(X.shape[1:]) != shape:
        raise CommandError(f"expected images of shape {shape} (as in training), got {tuple(X.shape[1:])}")
    X = scale_to_unit(X) if X.dtype == np.uint8 else np.asarray(X, dtype=np.float32)
    n, shape = len(X), (-1,)
    if prep.get("layout") == "nchw":   # (N, H, W) or channels-last (N, H, W, C) -> (N, C, H, W)
        X = X[:, None] if X.ndim == 3 else X.transpose(0, 3, 1, 2)
        shape = X.shape[1:]
    X = X.reshape(n, -1)
    if prep.get("standardize"):
        X = Standardizer.from_dict(prep["standardize"]).transform(X)
    return np.ascontiguousarray(X.reshape((n,) + shape), dtype=np.float32)


def _check_resumed_preprocessing(out, then, now):
    """Refuse to resume the run in ``out`` when its data or preprocessing (``then``, its
    preprocess.json) differ from this command's (``now``), naming what differs. A run
    written before CNNs came to the CLI has no "layout": its models took flat rows."""
    then = {"layout": "flat", **then}
    differ = sorted(k for k in set(then) | set(now) if then.get(k) != now.get(k))
    if differ:
        shown = "; ".join(f"{k}: {_short(then.get(k))} in the run, {_short(now.get(k))} now" for k in differ)
        hint = (" (--model auto trains a CNN on images: pass --model mlp to resume an MLP run)"
                if "layout" in differ and now.get("layout") == "nchw" else "")
        raise CommandError(f"--resume: the data or preprocessing differ from those of the run in {out} "
                           f"({PREPROCESS_FILE}): {shown}{hint}; pass the arguments of the interrupted run")


def _short(value, most=60):
    text = json.dumps(value, default=float)
    return text if len(text) <= most else text[:most - 3] + "..."


def _targets(y, prep):
    from .preprocessing import one_hot
    return one_hot(y, len(prep["classes"])) if prep["targets"] == "one_hot" else y


# ---------------------------------------------------------------------- model files

def _atomic_text(path, text):
    from .atomic import atomic_write
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _model_paths(where):
    p = Path(where)
    model = p / MODEL_FILE if p.is_dir() else p
    if not model.is_file():
        raise CommandError(f"model not found: {model} (pass the --out folder of 'fastmlp train' or its "
                           f"{MODEL_FILE})")
    prep = model.parent / PREPROCESS_FILE
    if not prep.is_file():
        raise CommandError(f"{PREPROCESS_FILE} not found beside {model}: it records how images are "
                           "scaled and shaped for this model ('fastmlp train --out DIR' writes it)")
    return model, prep


def _load_model(where, device):
    import fastmlp as fm
    model_path, prep_path = _model_paths(where)
    model = fm.load_model(model_path, device=device)
    prep = json.loads(prep_path.read_text(encoding="utf-8"))
    return model, prep


# ---------------------------------------------------------------------- commands

def cmd_demo(args):
    """Train an MLP on the built-in shapes (no download): squares, circles, triangles and
    crosses of random size, rotation and position in Gaussian noise. Accuracy climbs over the
    epochs, on the training images and on held-out test images; then accuracy and speed."""
    import numpy as np

    import fastmlp as fm
    from fastmlp.data import make_shapes

    # Shapes anywhere in the image (not centred) and noisy: a dense network has to learn every
    # position separately, so it takes several epochs, and the test accuracy stays below
    # the training accuracy (compare a CNN: fastmlp compare).
    X, y, classes = make_shapes(args.samples + args.test_samples, size=args.size, seed=args.seed,
                                centered=args.centered, noise=args.noise)
    X = X.reshape(len(X), -1).astype(np.float32)
    Xtr, ytr, Xte, yte = X[:args.samples], y[:args.samples], X[args.samples:], y[args.samples:]
    d = X.shape[1]
    model = fm.Sequential([fm.Dense(d, 256, init="he"), fm.ReLU(), fm.Dense(256, 256, init="he"),
                           fm.ReLU(), fm.Dense(256, len(classes))],
                          loss=fm.SoftmaxCrossEntropy(), optimizer=fm.SGD(lr=args.lr, momentum=0.9),
                          device=args.device, seed=args.seed)
    model.summary(batch_size=min(args.batch_size or args.samples, args.samples))
    t0 = time.perf_counter()
    h = model.fit(Xtr, ytr, epochs=args.epochs, batch_size=args.batch_size, test_data=(Xte, yte),
                  verbose=args.verbose)
    seconds = time.perf_counter() - t0
    test = model.evaluate(Xte, yte)
    sps = args.samples * len(h.epoch) / seconds
    print(f"classes: {', '.join(classes)}")
    print(f"{len(h.epoch)} epochs in {seconds:.2f} s ({sps:,.0f} samples/s, JIT warm-up included)")
    print(f"train_acc={h['accuracy'][-1]:.3f} test_acc={test['accuracy']:.3f} "
          f"samples_per_s={sps:.0f} seconds={seconds:.2f}")
    return 0


def _stack(args):
    """The hidden layers that --model, --hidden and the CNN options describe (fastmlp/layer_stack.py)."""
    from . import layer_stack
    if args.model in ("mlp", "cnn"):
        hidden = args.hidden if args.hidden is not None else DEFAULT_HIDDEN[args.model]
    if args.model == "mlp":
        return layer_stack.mlp_stack(hidden, args.activation, args.l1, args.l2)
    if args.model == "cnn":
        return layer_stack.cnn_stack(args.filters, args.kernel, args.batchnorm, args.pool, hidden,
                                     args.activation, args.l1, args.l2)
    path = Path(args.model)
    if not path.is_file():
        raise CommandError(f"--model: expected 'auto', 'mlp', 'cnn' or a TOML file of layers, got {args.model!r} "
                           "(no such file)")
    return layer_stack.load_stack_file(path)


def _build(args, stack, input_shape, k):
    import fastmlp as fm
    from .layer_stack import build_stack
    loss = args.loss
    if loss == "auto":
        loss = "bce" if k == 2 else "softmax"
    outputs = 1 if loss == "bce" and k == 2 else k
    source = "--model " + (args.model if args.model not in ("mlp", "cnn") else f"{args.model} (options)")
    try:
        layers = build_stack(stack, input_shape, outputs, source=source, l1=args.l1, l2=args.l2)
    except ValueError as e:
        raise CommandError(str(e)) from None
    lossfn = {"softmax": fm.SoftmaxCrossEntropy, "bce": fm.BinaryCrossEntropy, "mse": fm.MeanSquaredError}[loss]()
    if args.optimizer == "adam":
        opt = fm.Adam(lr=args.lr or 1e-3)
    else:
        opt = fm.SGD(lr=args.lr or 0.01, momentum=args.momentum)
    model = fm.Sequential(layers, loss=lossfn, optimizer=opt, device=args.device, dtype=args.dtype,
                          seed=args.seed, input_shape=tuple(input_shape))
    targets = "labels" if loss == "softmax" or outputs == 1 else "one_hot"
    return model, loss, targets


def cmd_train(args):
    """Train a model on DATA: a CNN for images and an MLP for feature rows (--model auto),
    or --model mlp / cnn / FILE.toml (any stack of layers); print per-epoch metrics; with --out, save the model, its
    preprocessing, the metrics (JSON) and the training curves (PNG)."""
    import numpy as np

    import fastmlp as fm
    from .layer_stack import takes_images
    from .preprocessing import Standardizer

    # under mpiexec / srun: data-parallel over the ranks, the root alone prints and writes
    comm = fm.distributed.init()
    root = comm.is_root
    if not root:
        sys.stdout = open(os.devnull, "w")
    if args.out is not None:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise CommandError(f"--out expects a folder, got an existing file: {out}")
    if args.resume:
        if args.out is None:
            raise CommandError("--resume needs --out DIR: the folder of the interrupted run")
        if not (out / MODEL_FILE).is_file():
            raise CommandError(f"--resume: nothing to resume in {out} (no {MODEL_FILE})")
    if args.test_data is not None:
        args.test_split = 0.0
    src = load_source(args.data, args)
    if args.test_data is not None:
        src["test"] = load_source(args.test_data, args, for_training=False)["test"]
    Xtr_img, ytr = src["train"]
    if args.max_samples:
        Xtr_img, ytr = Xtr_img[:args.max_samples], ytr[:args.max_samples]
    k = max(len(src["classes"]), int(ytr.max()) + 1)
    classes = list(src["classes"]) + [str(i) for i in range(len(src["classes"]), k)]
    prep = {"image_shape": list(Xtr_img.shape[1:]), "classes": classes, "data_kind": src["kind"],
            "grayscale": Xtr_img.ndim == 3, "scale": "unit" if Xtr_img.dtype == np.uint8 else "none",
            "standardize": None}
    auto = args.model == "auto"
    if auto:   # images -> a CNN, flat feature rows -> an MLP
        args.model = "cnn" if Xtr_img.ndim >= 3 else "mlp"
    stack = _stack(args)
    prep["layout"] = "nchw" if takes_images(stack) else "flat"
    if prep["layout"] == "nchw" and Xtr_img.ndim not in (3, 4):
        raise CommandError(f"--model {args.model}: convolutions need images, got samples of shape "
                           f"{tuple(Xtr_img.shape[1:])} from {args.data}")
    X = _prepare(Xtr_img, prep)
    if args.standardize:
        prep["standardize"] = Standardizer("global").fit(X.reshape(len(X), -1)).to_dict()
        X = _prepare(Xtr_img, prep)
    model, loss, targets = _build(args, stack, X.shape[1:], k)
    prep["loss"], prep["targets"] = loss, targets
    val = (_prepare(src["val"][0], prep), _targets(src["val"][1], prep)) if src["val"] else None
    test = (_prepare(src["test"][0], prep), _targets(src["test"][1], prep)) if src["test"] else None
    if args.early_stopping is not None and val is None:
        raise CommandError("--early-stopping needs validation data: keep --val-split above 0")

    augment = None
    if args.flip_h or args.flip_v or args.rotate or args.shift:
        augment = fm.Augment(flip_h=args.flip_h, flip_v=args.flip_v, rotate=args.rotate, shift=args.shift,
                             image_shape=tuple(Xtr_img.shape[1:3]), interpolation=args.interpolation)
    callbacks = []
    if args.early_stopping is not None:
        callbacks.append(fm.EarlyStopping(monitor="val_loss", patience=args.early_stopping,
                                          restore_best_weights=True))
    if args.verbose:
        model.summary(batch_size=min(args.batch_size or len(X), len(X)))
        if auto:
            why = "a CNN for images" if args.model == "cnn" else "an MLP for feature rows"
            print(f"model: {args.model} (--model auto: {why}; --model mlp / cnn / FILE.toml to choose)")
        print(f"data: {args.data} ({src['kind']}): train {len(X)}, validation "
              f"{len(val[0]) if val else 0}, test {len(test[0]) if test else 0}; classes: {', '.join(classes)}")
        if comm.size > 1:
            print(f"data-parallel over {comm.size} ranks: each takes its share of every global batch "
                  f"of {args.batch_size or 'all'} samples")
    checkpoint = None
    if args.out is not None:   # fit writes the model here when it ends, and on Ctrl-C
        out.mkdir(parents=True, exist_ok=True)
        checkpoint = out / MODEL_FILE
        prep_text = json.dumps(prep, indent=1, default=float)
        if args.resume and (out / PREPROCESS_FILE).is_file():
            _check_resumed_preprocessing(out, json.loads((out / PREPROCESS_FILE).read_text(encoding="utf-8")),
                                         json.loads(prep_text))
        if root:
            _atomic_text(out / PREPROCESS_FILE, prep_text)
    t0 = time.perf_counter()
    try:
        h = model.fit(X, _targets(ytr, prep), epochs=args.epochs, batch_size=args.batch_size,
                      validation_data=val, test_data=test, callbacks=callbacks, verbose=args.verbose,
                      augment=augment, checkpoint=checkpoint, checkpoint_every=args.epochs,
                      resume=checkpoint if args.resume else None, comm=comm)
    except KeyboardInterrupt:
        if root:
            _report_interrupt(model, checkpoint, args)
        return INTERRUPTED
    seconds = time.perf_counter() - t0
    results = {"train": model.evaluate(X, _targets(ytr, prep))}
    if val:
        results["val"] = model.evaluate(*val)
    if test:
        results["test"] = model.evaluate(*test)
    epochs_run = len(h.epoch)
    metrics = {"data": str(args.data), "data_kind": src["kind"], "classes": classes,
               "params": model.count_params(), "epochs_run": epochs_run, "seconds": seconds,
               "samples_per_s": len(X) * epochs_run / seconds if seconds > 0 else None,
               **results, "history": h.history,
               "args": {k_: v for k_, v in vars(args).items() if k_ not in ("func", "argv")}}
    if args.out is not None and root:
        model.save(out / MODEL_FILE)
        _atomic_text(out / METRICS_FILE, json.dumps(metrics, indent=1, default=str))
        try:
            from . import plot
            plot.history(h, out / CURVES_FILE, title=f"fastmlp train {Path(str(args.data)).name}")
            curves = f", {CURVES_FILE}"
        except ImportError as e:
            curves = f" (no curves: {e})"
        print(f"saved {out / MODEL_FILE}, {PREPROCESS_FILE}, {METRICS_FILE}{curves}")
    if args.verbose and h.history.get("accuracy"):
        # fit's epoch accuracy and evaluate's are different measurements: say which is which
        during = "augmented batches, " if augment is not None else ""
        print(f"train_acc below ({results['train']['accuracy']:.4f}) is the final model evaluated on the training "
              f"split; the last epoch's accuracy ({h['accuracy'][-1]:.4f}) is the running mean over that epoch's "
              f"{during}batches in training mode, while the weights were still changing (as Keras reports it)")
    line = [f"train_acc={results['train']['accuracy']:.4f}"]
    line += [f"{s}_acc={results[s]['accuracy']:.4f}" for s in ("val", "test") if s in results]
    line += [f"epochs={epochs_run}", f"seconds={seconds:.2f}"]
    print(" ".join(line))
    return 0


def cmd_evaluate(args):
    """Loss and accuracy of a saved model (a --out folder of train) on DATA: the test
    split of a MedMNIST .npz or MNIST t10k folder, else all of the file or folder."""
    model, prep = _load_model(args.model, args.device)
    args.image_size = args.image_size or prep["image_shape"][0]
    args.color = not prep.get("grayscale", True)
    src = load_source(args.data, args, for_training=False)
    X_img, y = src["test"]
    if args.max_samples:
        X_img, y = X_img[:args.max_samples], y[:args.max_samples]
    X = _prepare(X_img, prep)
    res = model.evaluate(X, _targets(y, prep))
    print(f"{args.data}: {len(X)} samples, loss {res['loss']:.4f}, accuracy {res['accuracy']:.4f}")
    print(f"loss={res['loss']:.6f} accuracy={res['accuracy']:.6f} n={len(X)}")
    return 0


def cmd_export(args):
    """Write a saved model (a --out folder of train, or any file of model.save) as an
    ONNX file: the graph of predict (probabilities, or --output logits), batch size dynamic."""
    import numpy as np

    import fastmlp as fm
    from .export_onnx import export_onnx
    p = Path(args.model)
    model_path = p / MODEL_FILE if p.is_dir() else p
    if not model_path.is_file():
        raise CommandError(f"model not found: {model_path} (pass the --out folder of 'fastmlp train' "
                           f"or a file written by model.save)")
    model = fm.load_model(model_path, device="cpu")
    export_onnx(model, args.out, output=args.output, opset=args.opset)
    shape = "x".join(map(str, ("N", *model.input_shape)))
    print(f"wrote {args.out}: input {shape} {np.dtype(model.dtype).name}, output {args.output}, opset {args.opset}")
    print(f"onnx={args.out} output={args.output} opset={args.opset} input_shape={shape} "
          f"bytes={os.path.getsize(args.out)}")
    return 0


_GREY_MODES = ("1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")


def _read_images(paths, prep):
    """Image files as the model's training images (size and colour of prep["image_shape"]),
    with a warning on stderr for each one converted (colour dropped or added, resized)."""
    import numpy as np

    from .data import _pil_to_array, _require_pillow
    Image, ImageOps = _require_pillow()
    shape = prep["image_shape"]
    h, w = shape[0], shape[1]
    mode = "L" if len(shape) == 2 else "RGB"
    arrays = []
    for p in paths:
        if not Path(p).is_file():
            raise CommandError(f"image not found: {p}")
        try:
            with Image.open(p) as img:   # as load_image_folder reads them (16-bit scaled, not clipped)
                img = ImageOps.exif_transpose(img)
                _warn_conversion(p, img, (w, h), mode)
                arrays.append(_pil_to_array(img, Image, (w, h), mode))
        except (OSError, ValueError, SyntaxError) as e:
            raise CommandError(f"cannot read image {p}: {e}") from None
    return np.stack(arrays)


def _warn_conversion(path, img, size, mode):
    """One line on stderr when an image is not what the model was trained on."""
    grey = img.mode in _GREY_MODES
    changes = []
    if mode == "L" and not grey:
        changes.append(f"colour ({img.mode}) converted to grayscale (the model was trained on grayscale images)")
    elif mode == "RGB" and grey:
        changes.append(f"grayscale ({img.mode}) repeated into 3 channels (the model was trained on colour images)")
    if "A" in img.mode or "transparency" in img.info:
        changes.append("transparency dropped")
    if img.size != size:
        how = f"resized from {img.size[0]}x{img.size[1]} to {size[0]}x{size[1]}"
        if img.size[0] * size[1] != img.size[1] * size[0]:
            how += " (stretched: the aspect ratio differs)"
        changes.append(how + " as in training")
    if changes:
        print(f"fastmlp predict: warning: {path}: " + "; ".join(changes), file=sys.stderr)


def _class_names(p, classes):
    """(class index, probability of it) of each row of predict's output, and the names."""
    import numpy as np
    if p.shape[1] == 1:      # one sigmoid output: p(class 1)
        k = (p[:, 0] > 0.5).astype(np.int64)
        prob = np.where(k == 1, p[:, 0], 1.0 - p[:, 0])
    else:
        k = np.argmax(p, axis=1)
        prob = p[np.arange(len(p)), k]
    return k, prob, [classes[i] if i < len(classes) else str(i) for i in k]


def _is_data_source(arg):
    path = Path(arg)
    return arg == "shapes" or path.is_dir() or path.suffix.lower() in (".h5", ".hdf5", ".npz")


def cmd_predict(args):
    """Class and probability of each IMAGE under a saved model (a --out folder of train),
    or of every sample of a data set (DATA: an .h5 file, a MedMNIST .npz (its test split),
    an MNIST IDX folder (t10k), a folder of class sub-folders, 'shapes') with its accuracy.
    Images whose colour or size differ from the training images are converted, with a
    warning. Ends with a key=value line: n, and accuracy for a data set."""
    import numpy as np
    model, prep = _load_model(args.model, args.device)
    what = "p" if prep.get("loss") != "mse" else "score"
    classes = prep["classes"]
    if len(args.inputs) == 1 and _is_data_source(args.inputs[0]):
        args.image_size = prep["image_shape"][0]
        args.color = not prep.get("grayscale", True)
        args.samples = getattr(args, "samples", 1000)
        src = load_source(args.inputs[0], args, for_training=False)
        X_img, y = src["test"]
        if args.max_samples:
            X_img, y = X_img[:args.max_samples], y[:args.max_samples]
        k, prob, names = _class_names(model.predict(_prepare(X_img, prep)), classes)
        for i in range(min(args.show, len(k))):
            truth = classes[y[i]] if y[i] < len(classes) else str(y[i])
            mark = "" if k[i] == y[i] else "  (wrong)"
            print(f"{i}: {names[i]} ({what}={prob[i]:.3f}), true {truth}{mark}")
        if len(k) > args.show:
            print(f"... {len(k) - args.show} more (--show N prints more)")
        acc = float(np.mean(k == y))
        counts = np.bincount(k, minlength=len(classes))
        print(f"{args.inputs[0]}: {len(k)} samples, accuracy {acc:.4f}; predicted: "
              + ", ".join(f"{classes[c] if c < len(classes) else c} {n}" for c, n in enumerate(counts) if n))
        print(f"n={len(k)} accuracy={acc:.6f}")
        return 0
    sets = [path for path in args.inputs if _is_data_source(path)]
    if sets:
        raise CommandError(f"{sets[0]} is a data set: pass it alone (fastmlp predict MODEL DATA), "
                           "or pass image files only")
    X = _prepare(_read_images(args.inputs, prep), prep)
    k, prob, names = _class_names(model.predict(X), classes)
    for path, name, pr in zip(args.inputs, names, prob):
        print(f"{path}: {name} ({what}={pr:.3f})")
    print(f"n={len(names)} predicted={','.join(n.replace(' ', '_').replace(',', '_') for n in names)}")
    return 0


def _report_interrupt(model, checkpoint, args):
    """One line on stderr after Ctrl-C in train: where the model was saved and how to resume."""
    pos = model.position
    where = "" if pos is None else (f" in epoch {pos['epoch'] + 1} after step {pos['step']}" if pos.get("step")
                                    else f" after epoch {pos['epoch']}")
    if checkpoint is None or pos is None or not Path(checkpoint).is_file():
        print(f"fastmlp train: interrupted{where}; nothing saved (pass --out DIR to keep what was trained)",
              file=sys.stderr)
        return
    argv = [a for a in args.argv if a != "--resume"]
    command = " ".join(shlex.quote(a) for a in ["fastmlp", *argv, "--resume"])
    print(f"fastmlp train: interrupted{where}; saved the model trained so far to {checkpoint}; "
          f"resume with: {command}", file=sys.stderr)


def _version(module):
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", "installed")
    except ImportError:
        return "not installed"
    except Exception as e:  # a broken install (CuPy without a driver) should not stop info
        return f"unusable ({type(e).__name__})"


def cmd_info(args):
    """Versions, devices, threads, BLAS and the Numba cache."""
    import numba
    import numpy as np

    import fastmlp as fm
    print(f"fastmlp {fm.__version__}  python {platform.python_version()}  {platform.machine()}")
    print(f"numpy {np.__version__}  numba {numba.__version__}")
    print("extras: " + "  ".join(f"{name} {_version(mod)}" for name, mod in
                                 (("cupy", "cupy"), ("matplotlib", "matplotlib"), ("pillow", "PIL"),
                                  ("onnx", "onnx"), ("scikit-learn", "sklearn"), ("mpi4py", "mpi4py"))))
    try:
        from threadpoolctl import threadpool_info
        for pool in threadpool_info():
            print(f"BLAS/threads: {pool.get('internal_api')} {pool.get('version')} "
                  f"{pool.get('architecture', '')} threads={pool.get('num_threads')}")
    except ImportError:
        print("BLAS: (install threadpoolctl to show the BLAS library and its threads)")
    print(f"numba threads: {numba.get_num_threads()}  threading layer: {numba.config.THREADING_LAYER}")
    from fastmlp.backend.cpu import openblas as cpu_blas
    print("conv on the CPU: " + ("chunked Numba kernels, GEMMs on Numba's threads (NumPy's OpenBLAS found)"
                                 if cpu_blas.available() else
                                 f"the fast path is off, separate kernels chunk after chunk: {cpu_blas.reason}"))
    from fastmlp.backend.cpu import tile_gemm
    print("MLP predictions: " + ("register tiles for blocks of up to 64 rows (AVX-512), OpenBLAS beyond"
                                 if tile_gemm.available() else
                                 "OpenBLAS (register tiles need AVX-512 and FASTMLP_TILE_GEMM unset or 1)"))
    print("first Dense layer in training: " + (
        "skips the batch's zeros on the register tiles when at most 70 % of each 8-row block's columns "
        "hold a nonzero (backend/cpu/zero_tiles.py), else OpenBLAS" if tile_gemm.available() else
        "OpenBLAS, the whole batch (skipping zeros needs the register tiles: AVX-512)"))
    print("Dense forward in training: " + (
        "register tiles for batches of up to 256 rows into 16 columns or more, OpenBLAS otherwise "
        "(backend/cpu/zero_tiles.py)" if tile_gemm.available() else "OpenBLAS"))
    print(f"numba cache dir: {numba.config.CACHE_DIR or '(beside the package: __pycache__)'}")
    devs = fm.devices()
    print(f"devices: cpu=yes cuda={'yes' if devs['cuda'] else 'no'} ({devs['cuda_reason']})")
    from fastmlp.backend.cpu import thread_count as step_threads
    from fastmlp.backend.cpu.cores import available_cores
    print(f"cpu cores: {os.cpu_count()} ({available_cores()} available to this process)")
    try:
        print(f"training threads: {step_threads.policy()}")
    except ValueError as e:
        print(f"training threads: {e}")
    from fastmlp.backend.cpu import blas_pool
    print(f"BLAS while training: {blas_pool.describe()}")
    return 0


def _sides(text):
    """'28,64,128' -> (28, 64, 128); each an image side >= 8."""
    try:
        sides = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        sides = ()
    if not sides or min(sides) < 8:
        raise argparse.ArgumentTypeError(f"expected comma-separated image sides >= 8 like 28,64,128, "
                                         f"got {text!r}")
    return sides


def cmd_compare(args):
    """MLP against CNN on square images of each side: parameters, FLOPs and activation
    memory per sample (analytic, also for 1000x1000), forward and training samples/s
    (measured), then test accuracy of both trained: on MNIST t10k with --data, else on
    the built-in shapes, trained centred and tested shifted (translation sensitivity).
    On a shared machine, OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 give steadier timings:
    a second thread that waits for its core stalls a whole GEMM."""
    import fastmlp as fm
    from .compare import key_values, plot, table, write_json
    for opt in ("json", "plot", "gallery"):
        target = getattr(args, opt)
        if target is not None and not Path(target).resolve().parent.is_dir():
            raise CommandError(f"--{opt}: folder not found for {target}")
    from .photo_compare import is_photo_folder, run_from_cli
    if args.data is not None and is_photo_folder(args.data):
        return run_from_cli(args)
    result = fm.compare(sizes=args.sizes, device=args.device, batch_size=args.batch_size, data=args.data,
                        epochs=args.epochs, seed=args.seed, train=not args.no_train, quick=args.quick,
                        analytic_sizes=args.analytic_sizes,
                        log=lambda line: print(line, flush=True))
    print()
    print(table(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        try:
            plot(result, args.plot)
            print(f"wrote {args.plot}")
        except ImportError as e:
            print(f"no plot: {e}")
    print(key_values(result))
    return 0


# ---------------------------------------------------------------------- parsers

class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default: the value, or what the help says it is; switches are off."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=32)

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is argparse.SUPPRESS or not action.option_strings or "default" in text:
            return text
        if action.default is False:
            return text + " (default: off)"
        if action.default is None:
            return text + " (default: none)"
        return text + " (default: %(default)s)"


def _plain(doc):
    """A docstring as plain help text: no reStructuredText markup (``code`` -> code)."""
    return (doc or "").replace("``", "")


_X_KEY_HELP = "HDF5: the dataset of the images (default: found by name, e.g. train_set_x, images, x)"
_Y_KEY_HELP = "HDF5: the dataset of the labels (default: found by name, e.g. train_set_y, labels, y)"


def add_demo(sub):
    d = sub.add_parser("demo", help="train on the built-in shapes (no download): accuracy and speed",
                       description=_plain(cmd_demo.__doc__), formatter_class=_Formatter)
    d.add_argument("--samples", type=_positive_int, default=8000, help="training images")
    d.add_argument("--test-samples", type=_positive_int, default=2000, help="test images (never trained on)")
    d.add_argument("--size", type=_side, default=28, help="image side in pixels")
    d.add_argument("--noise", type=_number(0, 1), default=0.25, help="std of the Gaussian noise on the pixels")
    d.add_argument("--centered", action="store_true", help="every shape in the centre (an easy task: "
                   "solved in one epoch)")
    d.add_argument("--epochs", type=_positive_int, default=8, help="passes over the training images")
    d.add_argument("--batch-size", type=_batch_size, default=128, help="an int, or 'full'")
    d.add_argument("--lr", type=_number(0, 10, lo_open=True), default=0.05, help="SGD learning rate "
                   "(momentum 0.9)")
    d.add_argument("--seed", type=int, default=0, help="of the images and the model")
    d.add_argument("--verbose", type=_verbose, default="auto", choices=("auto", 0, 1, 2),
                   help="auto: a bar redrawn per batch on a terminal, else a line an epoch")
    d.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="where to train")
    d.set_defaults(func=cmd_demo)


def _add_data_options(p, seed=0, seed_help="model, splits and augmentation seed"):
    p.add_argument("--image-size", type=_positive_int, default=None,
                   help="side of the square images: image folders are resized to it (default 64), "
                        "shapes are drawn at it (default 28)")
    p.add_argument("--color", action="store_true", help="image folders: keep RGB (default grayscale)")
    p.add_argument("--no-cache", action="store_true", help="image folders: decode every photo (by default "
                   "they are decoded once into $FASTMLP_CACHE_DIR, else ~/.cache/fastmlp)")
    p.add_argument("--samples", type=_positive_int, default=5000, help="shapes: images to draw")
    p.add_argument("--max-samples", type=_positive_int, default=None,
                   help="use only the first N samples, a quick run (default: all)")
    p.add_argument("--x-key", default=None, metavar="NAME", help=_X_KEY_HELP)
    p.add_argument("--y-key", default=None, metavar="NAME", help=_Y_KEY_HELP)
    p.add_argument("--seed", type=int, default=seed, help=seed_help)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="where to train and run")


def add_train(sub):
    t = sub.add_parser("train", help="train an MLP, a CNN or any stack of layers on a data set",
                       description=_plain(cmd_train.__doc__), formatter_class=_Formatter)
    t.add_argument("data", help="an .h5 file, a MedMNIST .npz, an MNIST IDX folder, an image folder "
                                "(class sub-folders) or 'shapes'")
    m = t.add_argument_group("model", "the output layer is added to what these describe: its size follows "
                             "from the classes and the loss")
    m.add_argument("--model", default="auto", metavar="auto|mlp|cnn|FILE.toml",
                   help="auto: cnn for images, mlp for flat feature rows; mlp: dense layers (--hidden); "
                        "cnn: conv blocks (--filters, --kernel, --batchnorm, --pool) then dense layers (--hidden); FILE.toml: any stack, a [[layer]] table per layer "
                        "with type = \"Conv2D\" (or Dense, MaxPool2D, BatchNorm, Dropout, Flatten, ReLU, ...) and "
                        "its keyword arguments, the input side of each (in_features, in_channels, features) "
                        "taken from the layer before")
    m.add_argument("--hidden", type=_hidden_sizes, default=None,
                   help="hidden dense layer sizes, comma-separated, 'none' for no hidden layer (default: "
                        + "; ".join(f"{','.join(map(str, v))} for {k}" for k, v in DEFAULT_HIDDEN.items()) + ")")
    m.add_argument("--filters", type=_hidden_sizes, default="16,32", metavar="F,F,...",
                   help="cnn: output channels of each conv block")
    m.add_argument("--kernel", type=_positive_int, default=3, help="cnn: kernel side of the convolutions "
                   "(padding 'same')")
    m.add_argument("--batchnorm", action="store_true", help="cnn: BatchNorm after each convolution")
    m.add_argument("--pool", type=_positive_int, default=2, help="cnn: max-pool side after each conv block (1: none)")
    m.add_argument("--activation", default="relu", choices=("relu", "leaky_relu", "tanh", "sigmoid"),
                   help="after each hidden layer")
    m.add_argument("--loss", default="auto", choices=("auto", "softmax", "bce", "mse"),
                   help="auto: bce (one sigmoid output) for 2 classes, else softmax cross-entropy")
    m.add_argument("--l1", type=_number(0, 1), default=0.0, help="L1 penalty on the weights (Keras)")
    m.add_argument("--l2", type=_number(0, 1), default=0.0, help="L2 penalty on the weights (Keras)")
    m.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="of the weights and data")
    o = t.add_argument_group("optimisation")
    o.add_argument("--optimizer", default="adam", choices=("sgd", "adam"), help="the update rule")
    o.add_argument("--lr", type=_number(0, 10, lo_open=True), default=None,
                   help="learning rate (default 1e-3 for adam, 0.01 for sgd)")
    o.add_argument("--momentum", type=_number(0, 1, hi_open=True), default=0.0, help="sgd momentum")
    o.add_argument("--epochs", type=_positive_int, default=20, help="passes over the training split")
    o.add_argument("--batch-size", type=_batch_size, default=64, help="an int, or 'full' (full batch)")
    o.add_argument("--early-stopping", type=_positive_int, default=None, metavar="PATIENCE",
                   help="stop when the validation loss has not improved for PATIENCE epochs "
                        "(the best weights are kept; default: train all --epochs)")
    p = t.add_argument_group("data and preprocessing")
    p.add_argument("--val-split", type=_number(0, 1, hi_open=True), default=0.1,
                   help="validation fraction of the training data (where the source has none)")
    p.add_argument("--test-split", type=_number(0, 1, hi_open=True), default=0.2,
                   help="test fraction for sources without a test split (.h5, image folders, shapes)")
    p.add_argument("--test-data", default=None, metavar="DATA",
                   help="test on all of this source instead of a split (e.g. test_catvnoncat.h5; "
                        "default: the source's test split, else --test-split)")
    p.add_argument("--standardize", action="store_true",
                   help="zero mean, unit variance (statistics of the training split), after scaling "
                        "uint8 pixels to [0, 1]")
    _add_data_options(p)
    a = t.add_argument_group("augmentation", "random transforms of each training batch, drawn from --seed; "
                             "pixels from outside the image are 0 (with --standardize: the mean pixel)")
    a.add_argument("--flip-h", action="store_true", help="random left-right flips")
    a.add_argument("--flip-v", action="store_true", help="random top-bottom flips")
    a.add_argument("--rotate", type=_number(0, 180), default=0.0, metavar="DEG",
                   help="random rotations up to DEG degrees either way")
    a.add_argument("--shift", type=_number(0, 1, hi_open=True), default=0.0, metavar="FRAC",
                   help="random shifts up to FRAC of the image size")
    a.add_argument("--interpolation", default="bilinear", choices=("bilinear", "nearest"),
                   help="how rotated and shifted pixels are read")
    r = t.add_argument_group("output")
    r.add_argument("--out", default=None, metavar="DIR",
                   help=f"write {MODEL_FILE}, {PREPROCESS_FILE}, {METRICS_FILE} and {CURVES_FILE} here "
                        "(default: nothing is written)")
    r.add_argument("--verbose", type=_verbose, default="auto", choices=("auto", 0, 1, 2),
                   help="auto: a bar redrawn per batch on a terminal, else a line an epoch; 0 quiet, 1 bar, "
                        "2 a line an epoch")
    r.add_argument("--resume", action="store_true",
                   help="continue the run that Ctrl-C stopped, from DIR/model.fmlp (--out DIR), with the "
                        "same arguments; --epochs stays the total")
    t.set_defaults(func=cmd_train)


def add_evaluate(sub):
    e = sub.add_parser("evaluate", help="loss and accuracy of a saved model", description=_plain(cmd_evaluate.__doc__),
                       formatter_class=_Formatter)
    e.add_argument("model", help=f"the --out folder of 'fastmlp train' (or its {MODEL_FILE})")
    e.add_argument("data", help="a data source, as for train")
    _add_data_options(e, seed=1, seed_help="shapes: the seed of the images drawn (train draws with 0)")
    e.set_defaults(func=cmd_evaluate)


def add_predict(sub):
    p = sub.add_parser("predict", help="classify image files or a data set with a saved model",
                       description=_plain(cmd_predict.__doc__), formatter_class=_Formatter)
    p.add_argument("model", help=f"the --out folder of 'fastmlp train' (or its {MODEL_FILE})")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DATA",
                   help="JPG/PNG files (converted to the training size and colour), or one data source")
    p.add_argument("--show", type=int, default=10, metavar="N", help="a data set: print the first N predictions")
    p.add_argument("--max-samples", type=_positive_int, default=None,
                   help="a data set: use only the first N samples (default: all)")
    p.add_argument("--x-key", default=None, metavar="NAME", help=_X_KEY_HELP)
    p.add_argument("--y-key", default=None, metavar="NAME", help=_Y_KEY_HELP)
    p.add_argument("--seed", type=int, default=1, help="shapes: the seed of the images drawn (train draws with 0)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="where to run the model")
    p.set_defaults(func=cmd_predict)


def add_export(sub):
    x = sub.add_parser("export", help="write a saved model as an ONNX file", description=_plain(cmd_export.__doc__),
                       formatter_class=_Formatter)
    x.add_argument("model", help=f"the --out folder of 'fastmlp train' (or its {MODEL_FILE})")
    x.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write")
    x.add_argument("--output", default="probabilities", choices=("probabilities", "logits"),
                   help="what the graph outputs: predict's probabilities or the last layer's logits")
    x.add_argument("--opset", type=_positive_int, default=17, help="the ONNX opset (at least 13)")
    x.set_defaults(func=cmd_export)


def add_info(sub):
    i = sub.add_parser("info", help="versions, devices, threads, BLAS and the Numba cache",
                       description=_plain(cmd_info.__doc__))
    i.set_defaults(func=cmd_info)


def add_compare(sub):
    c = sub.add_parser("compare", help="MLP vs CNN as images grow: parameters, FLOPs, memory, "
                       "samples/s, accuracy", description=_plain(cmd_compare.__doc__), formatter_class=_Formatter)
    c.add_argument("--sizes", type=_sides, default="28,64,128", metavar="S,S,...",
                   help="image sides to build and time")
    c.add_argument("--analytic-sizes", type=_sides, default="1000", metavar="S,S,...",
                   help="image sides given the analytic columns only")
    c.add_argument("--data", default=None, metavar="DIR",
                   help="the MNIST t10k folder: train and test on it (first 8,000 / last 2,000); a folder of "
                        "photos (train/ and test/ of class sub-folders, e.g. dogs-vs-cats): the write-up's dense "
                        "network against a small CNN over --seeds; default: the built-in shapes, trained "
                        "centred, tested shifted")
    c.add_argument("--seeds", default="0,1,2", metavar="S,S,...", help="photos: one run per model and seed")
    c.add_argument("--gallery", default=None, metavar="FILE", help="photos: a PNG of test photos under the "
                   "first seed's CNN, mistakes tinted red")
    c.add_argument("--epochs", type=_positive_int, default=None,
                   help="epochs of every trained model (default: per model, see fastmlp.compare.RECIPES)")
    c.add_argument("--batch-size", type=_positive_int, default=64)
    c.add_argument("--no-train", action="store_true", help="the table only, no accuracy part")
    c.add_argument("--json", default=None, metavar="FILE", help="write every figure as JSON")
    c.add_argument("--plot", default=None, metavar="FILE",
                   help="write a PNG of parameters and samples/s against the side (needs matplotlib)")
    c.add_argument("--quick", action="store_true",
                   help="short timings, a fraction of the data and of the epochs (a smoke test)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    c.set_defaults(func=cmd_compare)


def cmd_sweep(args):
    """Run the configurations x seeds of a sweep file (TOML: [base], [grid], [[config]], seeds,
    out) in worker processes, or on a Dask cluster with --scheduler; a Markdown table, a plot,
    results.csv / results.json in the output folder (a sweep started again skips finished rows)."""
    from .sweep import load_toml, sweep
    path = Path(args.file)
    if not path.is_file():
        raise CommandError(f"sweep file not found: {path} (expected a TOML file; see 'fastmlp sweep --help')")
    spec = load_toml(path)
    out = args.out or spec["out"] or str(path.with_suffix("")) + "-results"
    rows = sweep(spec["configs"], spec["seeds"], base=spec["base"], workers=args.workers or spec["workers"],
                 scheduler=args.scheduler or spec["scheduler"], out=out, retry_failed=args.retry_failed)
    return 0 if any(r["status"] == "ok" for r in rows) else 1


def add_sweep(sub):
    s = sub.add_parser("sweep", help="configurations x seeds in worker processes or on a Dask cluster",
                       description=_plain(cmd_sweep.__doc__), formatter_class=_Formatter)
    s.add_argument("file", metavar="FILE.toml", help="the sweep: [base], [grid], [[config]], seeds, out")
    s.add_argument("--workers", type=_positive_int, default=None, help="local worker processes (default: CPUs)")
    s.add_argument("--scheduler", default=None, metavar="ADDR",
                   help="a Dask scheduler (tcp://HOST:8786) to run on instead of local workers")
    s.add_argument("--out", default=None, metavar="DIR", help="results folder (default: the file's out, "
                   "else FILE-results)")
    s.add_argument("--retry-failed", action="store_true", help="run again the rows that failed last time")
    s.set_defaults(func=cmd_sweep)


# The subcommands, in --help order. A new one is an add_<name>(sub) that sets
# func=cmd_<name> on its parser, appended here.
COMMANDS = [add_demo, add_train, add_evaluate, add_predict, add_export, add_info, add_compare, add_sweep]


def build_parser():
    p = argparse.ArgumentParser(prog="fastmlp", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return p


def _world():
    """The data-parallel world this command joined (fastmlp.distributed.init), if larger than one."""
    from .distributed import comm
    world = comm._WORLD
    return world if world is not None and world.size > 1 else None


def main(argv=None):
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (CommandError, FileNotFoundError, ValueError, ImportError, FloatingPointError) as e:
        # bad data or files, a diverged run: say what, without a traceback (bugs still show theirs)
        world = _world()
        if world is None or world.is_root or not getattr(e, "collective", False):
            rank = "" if world is None else f" (rank {world.rank} of {world.size})"
            print(f"fastmlp {args.command}: error{rank}: {e}", file=sys.stderr)
        if world is not None:   # the other ranks may wait in a collective: end them all
            sys.stderr.flush()
            from .distributed.faults import end_world
            end_world(world, 1)   # after a pause: the launcher forwards the message first
        return 1
    except KeyboardInterrupt:   # Ctrl-C outside training (train handles its own)
        print(f"fastmlp {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
