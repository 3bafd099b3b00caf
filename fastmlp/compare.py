"""MLP against CNN as images grow: parameters, FLOPs, activation memory, throughput, accuracy.

    import fastmlp as fm
    from fastmlp.compare import table, plot       # (fm.compare is the function, not this module)
    result = fm.compare(sizes=(28, 64, 128), device="cpu")       # a JSON-ready dict
    print(table(result)); plot(result, "mlp_vs_cnn.png")
    fm.compare(data="../shared/data/mnist-t10k")                   # with MNIST accuracies

The three models, on square single-channel images of side S and K classes:

- ``mlp``: the third write-up's MLP, S*S -> 256 -> 256 -> K, ReLU.
- ``cnn``: its CNN, [conv3x3 (padding 1) -> BatchNorm -> ReLU -> maxpool 2] with
  16 then 32 filters, Flatten, dense 256 + ReLU, dense K.
- ``cnn_pool``: the same two conv blocks, then a max pool over the whole
  (S/4 x S/4) map (global max pooling), Flatten, dense 256 + ReLU, dense K.
  Its parameter count does not grow with S, and a shifted object gives the
  same pooled features: it is the CNN trained on the shapes set, where it must
  beat the MLP on shifted objects with fewer parameters.

Every figure comes from the layer list (``model_spec``) by one walk over its
shapes (``analyse``), so the analytic columns exist for any S, even 1000 x 1000
where the MLP's first layer alone holds 256 M weights; the tests check the
parameter counts against ``Sequential.count_params``.

Counting rules (the peers runner's, ``bench/flops.py``):

- FLOPs: 2 per multiply-add of each GEMM-like op; a dense layer D -> M costs
  2*D*M per sample, a conv 2*M*C*KH*KW*OH*OW. A training step costs the
  forward, the weight gradient (the same again) and the input gradient (the
  same again) of every such layer except the first, which needs no input
  gradient: just under 3x the forward. Bias, BatchNorm, ReLU, pooling, the
  loss and the update are elementwise and not counted.
- Activation memory: float32 values per sample of the input and of every
  layer's output that training keeps for backward. Flatten is a view and a
  ReLU right after a Dense is fused into it (fastmlp keeps one array), so
  neither adds. The im2col matrix of each conv (C*KH*KW*OH*OW values) is
  fastmlp's own price for the GEMM and is a column of its own;
  ``workspace_per_sample`` is what ``Sequential.memory_report`` says the
  built model really holds (input gradients included).

Throughput is measured with ``predict`` (forward) and ``fit`` (training) on
two batches of random data after a warm-up: calls repeated for about 1.5 s
(``quick``: 0.05 s), samples/s from the median call.

Shape vocabulary: N batch, C channels, S image side, K classes.
"""
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np

MODELS = ("mlp", "cnn", "cnn_pool")
HIDDEN = 256            # MLP hidden width (both layers) and the CNNs' dense width
FILTERS = (16, 32)      # the two conv blocks
ANALYTIC_SIZES = (1000,)
FLOP_RULE = ("2 FLOPs per multiply-add of every dense/conv GEMM; training = forward + weight "
             "gradient + input gradient (none for the first layer); elementwise ops not counted")
ACTIVATION_RULE = ("float32 input and layer outputs kept for backward, per sample (Flatten and "
                   "a ReLU fused into its Dense add nothing); im2col buffers counted apart")

# Training recipes of the accuracy part, per model: (optimizer, initial lr, epochs, quick epochs);
# the lr follows a cosine decay over the epochs (set at each epoch's end).
RECIPES = {
    "mnist": {"mlp": ("adam", 1e-3, 10, 1), "cnn": ("adam", 1e-3, 6, 1)},
    "shapes": {"mlp": ("adam", 1e-3, 10, 2), "cnn_pool": ("adam", 1e-3, 10, 2)},
}
SHAPES_TRAIN, SHAPES_TEST = 4000, 1000   # quick: 400 and 200


# ---------------------------------------------------------------------- the models

def model_spec(kind, side, channels=1, classes=10):
    """The layer list of ``kind`` for (C, S, S) images: tuples (op, *sizes).

    ops: ("dense", D, M), ("relu",), ("conv", C, M, K, padding), ("bn", C),
    ("pool", K), ("flatten",). The MLP takes flat (N, C*S*S) input."""
    if kind not in MODELS:
        raise ValueError(f"expected a model kind in {MODELS}, got {kind!r}")
    if not isinstance(side, (int, np.integer)) or side < 4:
        raise ValueError(f"expected the image side S to be an int >= 4, got {side!r}")
    if kind == "mlp":
        d = channels * side * side
        return [("dense", d, HIDDEN), ("relu",), ("dense", HIDDEN, HIDDEN), ("relu",),
                ("dense", HIDDEN, classes)]
    spec, c = [], channels
    for m in FILTERS:
        spec += [("conv", c, m, 3, 1), ("bn", m), ("relu",), ("pool", 2)]
        c = m
    q = side // 4   # two 2x2 pools: S -> S // 2 -> S // 4
    if kind == "cnn_pool":
        spec += [("pool", q)]
        q = 1
    return spec + [("flatten",), ("dense", c * q * q, HIDDEN), ("relu",), ("dense", HIDDEN, classes)]


def input_shape(kind, side, channels=1):
    return (channels * side * side,) if kind == "mlp" else (channels, side, side)


def build_layers(spec):
    """fastmlp layers for a ``model_spec`` list (He init before a ReLU, Glorot on the logits)."""
    from . import conv, layers, normalization
    out = []
    for i, (op, *a) in enumerate(spec):
        if op == "dense":
            out.append(layers.Dense(a[0], a[1], init="glorot" if i == len(spec) - 1 else "he"))
        elif op == "relu":
            out.append(layers.ReLU())
        elif op == "conv":
            out.append(conv.Conv2D(a[0], a[1], a[2], padding=a[3], init="he"))
        elif op == "bn":
            out.append(normalization.BatchNorm(a[0]))
        elif op == "pool":
            out.append(conv.MaxPool2D(a[0]))
        elif op == "flatten":
            out.append(conv.Flatten())
        else:
            raise ValueError(f"unknown op {op!r} in a model spec")
    return out


def build_model(kind, side, channels=1, classes=10, optimizer=None, device="cpu", seed=0):
    from .losses import SoftmaxCrossEntropy
    from .model import Sequential
    from .optimizers import SGD
    return Sequential(build_layers(model_spec(kind, side, channels, classes)),
                      loss=SoftmaxCrossEntropy(), optimizer=optimizer or SGD(lr=0.01),
                      device=device, seed=seed, input_shape=input_shape(kind, side, channels))


def analyse(spec, in_shape):
    """Per-sample figures of a spec on input of shape ``in_shape`` (no model is built):
    {"params", "forward_flops", "train_flops", "activation_bytes", "im2col_bytes"}."""
    shape = tuple(in_shape)
    params = fwd = train = im2col = 0
    acts = int(np.prod(shape))          # the input is kept for the first layer's dW
    first_gemm = True
    for i, (op, *a) in enumerate(spec):
        if op == "dense":
            d, m = a
            params += d * m + m
            f = 2 * d * m
            shape = (m,)
        elif op == "conv":
            c, m, k, p = a
            h = (shape[1] + 2 * p - k) + 1
            w = (shape[2] + 2 * p - k) + 1
            params += m * c * k * k + m
            f = 2 * m * c * k * k * h * w
            im2col += c * k * k * h * w
            shape = (m, h, w)
        elif op == "bn":
            params += 2 * a[0]
        elif op == "pool":
            k = a[0]
            shape = (shape[0], shape[1] // k, shape[2] // k)
        elif op == "flatten":
            shape = (int(np.prod(shape)),)
        if op in ("dense", "conv"):
            fwd += f
            train += 2 * f if first_gemm else 3 * f
            first_gemm = False
        fused = op == "relu" and i > 0 and spec[i - 1][0] == "dense"
        if op != "flatten" and not fused:
            acts += int(np.prod(shape))
    return {"params": params, "forward_flops": fwd, "train_flops": train,
            "activation_bytes": 4 * acts, "im2col_bytes": 4 * im2col}


# ---------------------------------------------------------------------- throughput

def _median_rate(run, samples, target_s, min_calls=5):
    """Samples/s of ``run()`` (which processes ``samples``) from the median time of its calls,
    repeated for about ``target_s`` (at least ``min_calls`` times). The median, not the total:
    on a shared machine a call now and then waits tens of ms for a core."""
    times, t_end = [], time.perf_counter() + target_s
    while len(times) < min_calls or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return samples / statistics.median(times)


def measure(model, batch_size, target_s=1.0, seed=0, min_calls=5):
    """(forward samples/s, training samples/s) of a built model on random data, after a warm-up.

    Forward is ``predict`` on 2 batches; training is one ``fit`` epoch of 2 batches."""
    rng = np.random.default_rng(seed)
    n = 2 * batch_size
    X = rng.random((n,) + tuple(model.input_shape), dtype=np.float32)
    y = rng.integers(0, model.output_shape[0], n)
    fwd = lambda: model.predict(X, batch_size=batch_size)  # noqa: E731
    step = lambda: model.fit(X, y, epochs=1, batch_size=batch_size, shuffle=False, verbose=0)  # noqa: E731
    fwd()
    step()     # warm-up: JIT, workspaces, BLAS threads
    return _median_rate(fwd, n, target_s, min_calls), _median_rate(step, n, target_s, min_calls)


# ---------------------------------------------------------------------- accuracy

def _optimizer(name, lr):
    from .optimizers import SGD, Adam
    return Adam(lr=lr) if name == "adam" else SGD(lr=lr, momentum=0.9)


def _cosine_decay(lr, epochs):
    """A callback that sets the learning rate of epoch e + 1 to
    lr * (1 + cos(pi * (e + 1) / epochs)) / 2 (at least lr / 1000)."""
    from .callbacks import Callback

    class CosineDecay(Callback):
        def on_epoch_end(self, epoch, logs=None):
            cos = math.cos(math.pi * (epoch + 1) / epochs)
            self.model.optimizer.lr = max(lr * 0.5 * (1 + cos), lr * 1e-3)
    return CosineDecay()


def _load_accuracy_data(data, side, quick, seed):
    """(kind, description, train (X, y), {test name: (X, y)}) with X (N, 1, S, S) float32 in [0, 1]."""
    from .data import load_mnist_t10k, make_shapes
    if data is None:
        n_tr, n_te = (SHAPES_TRAIN // 10, SHAPES_TEST // 5) if quick else (SHAPES_TRAIN, SHAPES_TEST)
        Xtr, ytr, names = make_shapes(n_tr, size=side, seed=seed, centered=True)
        Xc, yc, _ = make_shapes(n_te, size=side, seed=seed + 1, centered=True)
        Xs, ys, _ = make_shapes(n_te, size=side, seed=seed + 2, centered=False)
        desc = (f"built-in shapes ({', '.join(names)}), {side}x{side}: trained on {n_tr} centred, "
                f"tested on {n_te} centred and {n_te} shifted (random position, size and rotation)")
        four = lambda X: X[:, None]  # noqa: E731
        return "shapes", desc, (four(Xtr), ytr), {"centred": (four(Xc), yc), "shifted": (four(Xs), ys)}
    if isinstance(data, (tuple, list)):
        Xtr, ytr, Xte, yte = data
        desc = "the given (X_train, y_train, X_test, y_test)"
    else:
        Xtr, ytr, Xte, yte = load_mnist_t10k(data)
        desc = f"MNIST t10k ({data}): first 8,000 train, last 2,000 test"
    if quick:
        Xtr, ytr, Xte, yte = Xtr[:1000], ytr[:1000], Xte[:500], yte[:500]
        desc += "; quick: first 1,000 train, first 500 test"

    def images(X):
        X = np.asarray(X)
        X = X / np.float32(255) if X.dtype == np.uint8 else X
        return np.ascontiguousarray(X.reshape(len(X), 1, X.shape[-2], X.shape[-1]), dtype=np.float32)
    return "mnist", desc, (images(Xtr), np.asarray(ytr)), {"test": (images(Xte), np.asarray(yte))}


def train_and_test(kind, train, tests, classes, batch_size, optimizer, lr, epochs, device, seed):
    """Train one model; its parameters, recipe, training speed and accuracy on each test set."""
    Xtr, ytr = train
    side = Xtr.shape[-1]
    flat = (lambda X: X.reshape(len(X), -1)) if kind == "mlp" else (lambda X: X)
    model = build_model(kind, side, 1, classes, _optimizer(optimizer, lr), device, seed)
    t0 = time.perf_counter()
    h = model.fit(flat(Xtr), ytr, epochs=epochs, batch_size=batch_size, verbose=0,
                  callbacks=[_cosine_decay(lr, epochs)])
    seconds = time.perf_counter() - t0
    out = {"model": kind, "params": model.count_params(), "optimizer": optimizer, "lr": lr,
           "schedule": "cosine decay per epoch",
           "epochs": epochs, "batch_size": batch_size, "train_seconds": seconds,
           "train_samples_per_s": len(Xtr) * epochs / seconds, "train_acc": h["accuracy"][-1]}
    for name, (X, y) in tests.items():
        out[f"{name}_acc"] = model.evaluate(flat(X), y)["accuracy"]
    return out


# ---------------------------------------------------------------------- the comparison

def _check_sizes(sizes, what):
    sizes = tuple(sizes)
    bad = [s for s in sizes if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 8]
    if bad:
        raise ValueError(f"expected {what} as image sides, ints >= 8, got {list(sizes)}")
    return tuple(int(s) for s in sizes)


def compare(sizes=(28, 64, 128), device="cpu", classes=10, batch_size=64, data=None, epochs=None,
            seed=0, train=True, quick=False, analytic_sizes=ANALYTIC_SIZES, models=MODELS, log=None):
    """MLP against CNN on square images of each side in ``sizes``; returns a dict (JSON-ready).

    ``rows``: one per (side, model): parameters (analytic, and ``count_params`` of the
    built model), FLOPs per sample, activation and im2col memory per sample, fastmlp's
    workspace per sample, forward and training samples/s on ``device`` at ``batch_size``.
    ``analytic_sizes`` (default 1000) get the analytic columns only.

    With ``train``: ``data=None`` trains ``mlp`` and ``cnn_pool`` on the built-in shapes
    at the smallest side, centred, and tests on centred and on shifted shapes;
    ``data`` = the MNIST t10k folder (or a tuple (X_train, y_train, X_test, y_test) of
    28x28 images) trains ``mlp`` and ``cnn`` on it. ``epochs`` (int) overrides the
    recipes in ``RECIPES``. ``classes`` is the output width of the table's models (the
    trained ones get their data's). ``quick``: short timings, a fraction of the data and epochs.
    ``log``: a callable given progress lines (e.g. ``print``)."""
    sizes = _check_sizes(sizes, "sizes")
    analytic_sizes = _check_sizes(analytic_sizes or (), "analytic_sizes")
    if not sizes and not analytic_sizes:
        raise ValueError("expected at least one image side in sizes or analytic_sizes, got none")
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"expected models from {MODELS}, got {list(models)}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 2:
        raise ValueError(f"expected batch_size to be an int >= 2 (BatchNorm needs 2), got {batch_size!r}")
    if epochs is not None and (not isinstance(epochs, (int, np.integer)) or epochs < 1):
        raise ValueError(f"expected epochs to be a positive int or None, got {epochs!r}")
    log = log or (lambda *a, **k: None)
    from .backend import get_backend
    be = get_backend(device)
    target_s = 0.05 if quick else 1.5
    started = time.perf_counter()
    result = {"device": be.name, "dtype": "float32", "batch_size": int(batch_size), "classes": classes,
              "quick": bool(quick), "threads": _threads(), "flop_rule": FLOP_RULE,
              "activation_rule": ACTIVATION_RULE, "models": {k: describe(k) for k in models},
              "load_average_start": _load(), "rows": []}
    for side in sorted(set(sizes) | set(analytic_sizes)):
        measured = side in sizes
        for kind in models:
            row = {"side": side, "model": kind, "measured": measured}
            row.update(analyse(model_spec(kind, side, 1, classes), input_shape(kind, side)))
            if measured:
                log(f"measuring {kind} at {side}x{side} on {be.name} ...")
                model = build_model(kind, side, 1, classes, device=device, seed=seed)
                row["params_counted"] = model.count_params()
                row["workspace_per_sample"] = model.memory_report(batch_size)["workspaces"] / batch_size
                row["forward_samples_per_s"], row["train_samples_per_s"] = measure(
                    model, batch_size, target_s, seed, 3 if quick else 5)
                del model
            result["rows"].append(row)
    if train:
        result["accuracy"] = accuracy(data, sizes, device, batch_size, epochs, seed, quick, log)
    result["load_average_end"] = _load()
    result["seconds"] = time.perf_counter() - started
    return result


def accuracy(data, sizes, device="cpu", batch_size=64, epochs=None, seed=0, quick=False, log=None):
    """The accuracy part of ``compare``: {"data", "description", "side", "results": {kind: {...}}}."""
    log = log or (lambda *a, **k: None)
    side = 28 if data is not None else min(sizes or (28,))
    kind_of_data, desc, train, tests = _load_accuracy_data(data, side, quick, seed)
    classes = int(max(train[1].max(), *(y.max() for _, y in tests.values()))) + 1
    out = {"data": kind_of_data, "description": desc, "side": int(train[0].shape[-1]), "results": {}}
    for kind, (opt, lr, full_epochs, quick_epochs) in RECIPES[kind_of_data].items():
        e = epochs or (quick_epochs if quick else full_epochs)
        log(f"training {kind} on {kind_of_data}: {opt} lr {lr}, {e} epochs, batch {batch_size} ...")
        r = train_and_test(kind, train, tests, classes, batch_size, opt, lr, e, device, seed)
        log("  " + ", ".join(f"{k} {v:.4f}" for k, v in r.items() if k.endswith("_acc"))
            + f"; {r['params']:,} params, {r['train_seconds']:.1f} s")
        out["results"][kind] = r
    return out


def describe(kind):
    return {"mlp": f"Dense(S*S, {HIDDEN}) ReLU, Dense({HIDDEN}, {HIDDEN}) ReLU, Dense({HIDDEN}, K)",
            "cnn": f"[Conv3x3 pad 1, BatchNorm, ReLU, MaxPool 2] x 2 ({FILTERS[0]}, {FILTERS[1]} filters), "
                   f"Flatten, Dense({FILTERS[1]}*(S/4)^2, {HIDDEN}) ReLU, Dense({HIDDEN}, K)",
            "cnn_pool": f"[Conv3x3 pad 1, BatchNorm, ReLU, MaxPool 2] x 2 ({FILTERS[0]}, {FILTERS[1]} "
                        f"filters), global MaxPool (S/4), Flatten, Dense({FILTERS[1]}, {HIDDEN}) ReLU, "
                        f"Dense({HIDDEN}, K)"}[kind]


def _load():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _threads():
    """{"blas": BLAS threads, "numba": Numba threads} of this process (None where unknown)."""
    out = {"blas": None, "numba": None}
    try:
        import numba
        out["numba"] = numba.get_num_threads()
        from threadpoolctl import threadpool_info
        out["blas"] = max((p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"),
                          default=None)
    except Exception:  # threadpoolctl missing: the BLAS count stays unknown
        pass
    return out


# ---------------------------------------------------------------------- reporting

def _si(v, unit=""):
    for div, p in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g} {p}{unit}"
    return f"{v:.3g} {unit}".rstrip()


def _bytes(v):
    for div, p in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if v >= div:
            return f"{v / div:.3g} {p}"
    return f"{v:.0f} B"


def table(result):
    """The comparison as a text table (and the accuracy part, if trained)."""
    head = ("side", "model", "params", "fwd FLOP", "train FLOP", "activ.", "im2col", "ws/sample",
            "fwd smp/s", "train smp/s")
    rows = [head]
    for r in result["rows"]:
        m = r["measured"]
        rows.append((f"{r['side']}", r["model"], f"{r['params']:,}", _si(r["forward_flops"]),
                     _si(r["train_flops"]), _bytes(r["activation_bytes"]),
                     _bytes(r["im2col_bytes"]) if r["im2col_bytes"] else "-",
                     _bytes(r["workspace_per_sample"]) if m else "-",
                     f"{r['forward_samples_per_s']:,.0f}" if m else "(analytic)",
                     f"{r['train_samples_per_s']:,.0f}" if m else "-"))
    w = [max(len(row[i]) for row in rows) for i in range(len(head))]
    th = result.get("threads") or {}
    lines = [f"MLP vs CNN on {result['device']}, float32, batch {result['batch_size']}, "
             f"{result['classes']} classes; per sample; threads: BLAS {th.get('blas')}, "
             f"Numba {th.get('numba')}"]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w[j]) if j < 2 else c.rjust(w[j]) for j, c in enumerate(row)))
        if i == 0:
            lines.append("-" * len(lines[-1]))
    lines += [f"models: {k}: {v}" for k, v in result["models"].items()]
    lines += [f"FLOPs: {result['flop_rule']}", f"activations: {result['activation_rule']}",
              f"load average (1 min): {result['load_average_start']:.2f} at start, "
              f"{result['load_average_end']:.2f} at end" if result.get("load_average_end") is not None
              else ""]
    acc = result.get("accuracy")
    if acc:
        lines += ["", f"accuracy: {acc['description']}"]
        for kind, r in acc["results"].items():
            accs = ", ".join(f"{k[:-4]} {v:.4f}" for k, v in r.items() if k.endswith("_acc"))
            lines.append(f"  {kind:9s} {r['params']:>9,} params  {r['optimizer']} lr {r['lr']:g}, "
                         f"{r['epochs']} epochs, batch {r['batch_size']}: {accs}  "
                         f"({r['train_seconds']:.1f} s, {r['train_samples_per_s']:,.0f} samples/s)")
    return "\n".join(lines)


def key_values(result):
    """The closing key=value line: test accuracy, parameters and training samples/s of both
    trained models (``cnn`` is whichever CNN was trained); the shifted test set for shapes."""
    acc = result.get("accuracy")
    if not acc:   # no training: the figures at the smallest measured side
        measured = [r for r in result["rows"] if r["measured"]]
        if not measured:
            return f"side={result['rows'][0]['side']} " + " ".join(
                f"{r['model']}_params={r['params']}" for r in result["rows"])
        side = min(r["side"] for r in measured)
        return f"side={side} " + " ".join(
            f"{r['model']}_params={r['params']} {r['model']}_train_sps={r['train_samples_per_s']:.0f}"
            for r in measured if r["side"] == side)
    test = "shifted_acc" if acc["data"] == "shapes" else "test_acc"
    pairs = []
    for name, key in (("mlp", "mlp"), ("cnn", [k for k in acc["results"] if k != "mlp"][0])):
        pairs.append((name, acc["results"][key]))
    out = [f"{n}_test_acc={r[test]:.4f}" for n, r in pairs]
    out += [f"{n}_params={r['params']}" for n, r in pairs]
    out += [f"{n}_train_sps={r['train_samples_per_s']:.0f}" for n, r in pairs]
    return " ".join(out)


def plot(result, path, dpi=100):
    """Parameters and samples/s against the image side (log scales), as a PNG; returns the path."""
    from .plot import _figure, _save
    fig = _figure(figsize=(11, 4), layout="constrained")
    from matplotlib.ticker import NullLocator
    ax_p, ax_t = fig.subplots(1, 2)
    kinds = list(result["models"])
    for kind, color in zip(kinds, ("C0", "C1", "C2")):
        rows = [r for r in result["rows"] if r["model"] == kind]
        ax_p.plot([r["side"] for r in rows], [r["params"] for r in rows], "o-", color=color, label=kind)
        meas = [r for r in rows if r["measured"]]
        sides = [r["side"] for r in meas]
        ax_t.plot(sides, [r["train_samples_per_s"] for r in meas], "o-", color=color, label=f"{kind} train")
        ax_t.plot(sides, [r["forward_samples_per_s"] for r in meas], "s--", color=color,
                  label=f"{kind} forward", alpha=0.7)
    for ax, ylabel in ((ax_p, "parameters"), (ax_t, f"samples/s ({result['device']}, batch "
                                                     f"{result['batch_size']})")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        sides = sorted({r["side"] for r in result["rows"] if ax is ax_p or r["measured"]})
        ax.set_xticks(sides, [str(v) for v in sides])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("image side S (S x S pixels)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    ax_p.set_title("parameters (analytic)")
    ax_t.set_title("throughput (measured)")
    return _save(fig, Path(path), dpi)


def write_json(result, path):
    import json

    from .atomic import atomic_write
    text = json.dumps(result, indent=1, default=float)
    return atomic_write(os.fspath(path), lambda f: f.write(text.encode("utf-8")))


__all__ = ["compare", "table", "key_values", "plot", "write_json", "model_spec", "analyse",
           "build_model", "measure", "accuracy", "MODELS"]
