"""``fastmlp train``: a model from the options or a TOML stack, fitted on a data source,
its run folder written; Ctrl-C saves it and prints how to resume."""
import json
import os
import shlex
import sys
import time
from pathlib import Path

from . import options, runs, sources
from .errors import CommandError, INTERRUPTED


# The training defaults (--model auto: a CNN for images; Adam 1e-3, batch 64, 20 epochs) were
# chosen by 5-fold cross-validation on train_catvnoncat.h5 alone (the test file never read):
# every MLP tried (256-256 or smaller, Adam 1e-5..1e-3, SGD with and without momentum, batch
# 16..full, 10..1000 epochs, standardised or not, balanced class weights) stayed at or below the
# majority class in validation accuracy (0.60-0.67 against 0.656) and at 0.54-0.62 balanced
# accuracy, as did scikit-learn's logistic regression (0.58-0.64); the CNN below reached 0.80
# (balanced 0.80) around epoch 20. The recipe: bench/README.md, "CLI defaults".
DEFAULT_HIDDEN = {"mlp": [256, 256], "cnn": [64]}   # dense layers before the output, per model


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
                           f"({runs.PREPROCESS_FILE}): {shown}{hint}; pass the arguments of the interrupted run")


def _short(value, most=60):
    text = json.dumps(value, default=float)
    return text if len(text) <= most else text[:most - 3] + "..."


def _stack(args):
    """The hidden layers that --model, --hidden and the CNN options describe (fastmlp/layer_stack.py)."""
    from .. import layer_stack
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
    from ..layer_stack import build_stack
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


def run(args):
    """Train a model on DATA: a CNN for images and an MLP for feature rows (--model auto),
    or --model mlp / cnn / FILE.toml (any stack of layers); print per-epoch metrics; with --out, save the model, its
    preprocessing, the metrics (JSON) and the training curves (PNG)."""
    import numpy as np

    import fastmlp as fm
    from ..layer_stack import takes_images
    from ..preprocessing import Standardizer

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
        if not (out / runs.MODEL_FILE).is_file():
            raise CommandError(f"--resume: nothing to resume in {out} (no {runs.MODEL_FILE})")
    if args.test_data is not None:
        args.test_split = 0.0
    src = sources.load_source(args.data, args)
    if args.test_data is not None:
        src["test"] = sources.load_source(args.test_data, args, for_training=False)["test"]
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
    X = sources.prepare(Xtr_img, prep)
    if args.standardize:
        prep["standardize"] = Standardizer("global").fit(X.reshape(len(X), -1)).to_dict()
        X = sources.prepare(Xtr_img, prep)
    model, loss, targets = _build(args, stack, X.shape[1:], k)
    prep["loss"], prep["targets"] = loss, targets
    val = (sources.prepare(src["val"][0], prep), sources.targets(src["val"][1], prep)) if src["val"] else None
    test = (sources.prepare(src["test"][0], prep), sources.targets(src["test"][1], prep)) if src["test"] else None
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
        checkpoint = out / runs.MODEL_FILE
        prep_text = json.dumps(prep, indent=1, default=float)
        if args.resume and (out / runs.PREPROCESS_FILE).is_file():
            _check_resumed_preprocessing(out, json.loads((out / runs.PREPROCESS_FILE).read_text(encoding="utf-8")),
                                         json.loads(prep_text))
        if root:
            runs.atomic_text(out / runs.PREPROCESS_FILE, prep_text)
    t0 = time.perf_counter()
    try:
        h = model.fit(X, sources.targets(ytr, prep), epochs=args.epochs, batch_size=args.batch_size,
                      validation_data=val, test_data=test, callbacks=callbacks, verbose=args.verbose,
                      augment=augment, checkpoint=checkpoint, checkpoint_every=args.epochs,
                      resume=checkpoint if args.resume else None, comm=comm)
    except KeyboardInterrupt:
        if root:
            _report_interrupt(model, checkpoint, args)
        return INTERRUPTED
    seconds = time.perf_counter() - t0
    results = {"train": model.evaluate(X, sources.targets(ytr, prep))}
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
        model.save(out / runs.MODEL_FILE)
        runs.atomic_text(out / runs.METRICS_FILE, json.dumps(metrics, indent=1, default=str))
        try:
            from .. import plot
            plot.history(h, out / runs.CURVES_FILE, title=f"fastmlp train {Path(str(args.data)).name}")
            curves = f", {runs.CURVES_FILE}"
        except ImportError as e:
            curves = f" (no curves: {e})"
        print(f"saved {out / runs.MODEL_FILE}, {runs.PREPROCESS_FILE}, {runs.METRICS_FILE}{curves}")
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


def add(sub):
    t = sub.add_parser("train", help="train an MLP, a CNN or any stack of layers on a data set",
                       description=options.plain(run.__doc__), formatter_class=options.Formatter)
    t.add_argument("data", help="an .h5 file, a MedMNIST .npz, an MNIST IDX folder, an image folder "
                                "(class sub-folders) or 'shapes'")
    m = t.add_argument_group("model", "the output layer is added to what these describe: its size follows "
                             "from the classes and the loss")
    m.add_argument("--model", default="auto", metavar="auto|mlp|cnn|FILE.toml",
                   help="auto: cnn for images, mlp for flat feature rows; mlp: dense layers (--hidden); "
                        "cnn: conv blocks (--filters, --kernel, --batchnorm, --pool) then dense layers (--hidden); "
                        "FILE.toml: any stack, a [[layer]] table per layer "
                        "with type = \"Conv2D\" (or Dense, MaxPool2D, BatchNorm, Dropout, Flatten, ReLU, ...) and "
                        "its keyword arguments, the input side of each (in_features, in_channels, features) "
                        "taken from the layer before")
    m.add_argument("--hidden", type=options.hidden_sizes, default=None,
                   help="hidden dense layer sizes, comma-separated, 'none' for no hidden layer (default: "
                        + "; ".join(f"{','.join(map(str, v))} for {k}" for k, v in DEFAULT_HIDDEN.items()) + ")")
    m.add_argument("--filters", type=options.hidden_sizes, default="16,32", metavar="F,F,...",
                   help="cnn: output channels of each conv block")
    m.add_argument("--kernel", type=options.positive_int, default=3, help="cnn: kernel side of the convolutions "
                   "(padding 'same')")
    m.add_argument("--batchnorm", action="store_true", help="cnn: BatchNorm after each convolution")
    m.add_argument("--pool", type=options.positive_int, default=2,
                   help="cnn: max-pool side after each conv block (1: none)")
    m.add_argument("--activation", default="relu", choices=("relu", "leaky_relu", "tanh", "sigmoid"),
                   help="after each hidden layer")
    m.add_argument("--loss", default="auto", choices=("auto", "softmax", "bce", "mse"),
                   help="auto: bce (one sigmoid output) for 2 classes, else softmax cross-entropy")
    m.add_argument("--l1", type=options.number(0, 1), default=0.0, help="L1 penalty on the weights (Keras)")
    m.add_argument("--l2", type=options.number(0, 1), default=0.0, help="L2 penalty on the weights (Keras)")
    m.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="of the weights and data")
    o = t.add_argument_group("optimisation")
    o.add_argument("--optimizer", default="adam", choices=("sgd", "adam"), help="the update rule")
    o.add_argument("--lr", type=options.number(0, 10, lo_open=True), default=None,
                   help="learning rate (default 1e-3 for adam, 0.01 for sgd)")
    o.add_argument("--momentum", type=options.number(0, 1, hi_open=True), default=0.0, help="sgd momentum")
    o.add_argument("--epochs", type=options.positive_int, default=20, help="passes over the training split")
    o.add_argument("--batch-size", type=options.batch_size, default=64, help="an int, or 'full' (full batch)")
    o.add_argument("--early-stopping", type=options.positive_int, default=None, metavar="PATIENCE",
                   help="stop when the validation loss has not improved for PATIENCE epochs "
                        "(the best weights are kept; default: train all --epochs)")
    p = t.add_argument_group("data and preprocessing")
    p.add_argument("--val-split", type=options.number(0, 1, hi_open=True), default=0.1,
                   help="validation fraction of the training data (where the source has none)")
    p.add_argument("--test-split", type=options.number(0, 1, hi_open=True), default=0.2,
                   help="test fraction for sources without a test split (.h5, image folders, shapes)")
    p.add_argument("--test-data", default=None, metavar="DATA",
                   help="test on all of this source instead of a split (e.g. test_catvnoncat.h5; "
                        "default: the source's test split, else --test-split)")
    p.add_argument("--standardize", action="store_true",
                   help="zero mean, unit variance (statistics of the training split), after scaling "
                        "uint8 pixels to [0, 1]")
    options.add_data_options(p)
    a = t.add_argument_group("augmentation", "random transforms of each training batch, drawn from --seed; "
                             "pixels from outside the image are 0 (with --standardize: the mean pixel)")
    a.add_argument("--flip-h", action="store_true", help="random left-right flips")
    a.add_argument("--flip-v", action="store_true", help="random top-bottom flips")
    a.add_argument("--rotate", type=options.number(0, 180), default=0.0, metavar="DEG",
                   help="random rotations up to DEG degrees either way")
    a.add_argument("--shift", type=options.number(0, 1, hi_open=True), default=0.0, metavar="FRAC",
                   help="random shifts up to FRAC of the image size")
    a.add_argument("--interpolation", default="bilinear", choices=("bilinear", "nearest"),
                   help="how rotated and shifted pixels are read")
    r = t.add_argument_group("output")
    r.add_argument("--out", default=None, metavar="DIR",
                   help=f"write {runs.MODEL_FILE}, {runs.PREPROCESS_FILE}, {runs.METRICS_FILE} and "
                        f"{runs.CURVES_FILE} here (default: nothing is written)")
    r.add_argument("--verbose", type=options.verbose, default="auto", choices=("auto", 0, 1, 2),
                   help="auto: a bar redrawn per batch on a terminal, else a line an epoch; 0 quiet, 1 bar, "
                        "2 a line an epoch")
    r.add_argument("--resume", action="store_true",
                   help="continue the run that Ctrl-C stopped, from DIR/model.fmlp (--out DIR), with the "
                        "same arguments; --epochs stays the total")
    t.set_defaults(func=run)
