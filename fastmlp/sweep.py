"""Sweeps: configurations times seeds, each run in its own worker process.

    rows = fm.sweep({"lr": [1e-3, 3e-3], "hidden": [[256], [256, 256]]}, seeds=[0, 1],
                    base={"data": "shapes", "epochs": 5}, workers=2, out="sweep")
    fastmlp sweep sweep.toml [--workers N] [--scheduler tcp://HOST:8786] [--out DIR]

``configs`` is a list of dicts, or a dict of lists (a grid: every combination);
each configuration starts from ``base``. Each (configuration, seed) runs as
``run(config, seed) -> {metric: value}`` in a worker process: local processes
by default (``concurrent.futures.ProcessPoolExecutor``, spawned, so each has its
own interpreter and threads), or the workers of an existing Dask cluster
(``scheduler="tcp://HOST:8786"``: ``dask.distributed.Client``). The default
``run`` is ``train_mlp``: ``fastmlp train``'s model and data on the keys of
``CONFIG_KEYS``.

A run that raises is recorded with its error and the sweep goes on. Every
finished row is written at once, atomically, to ``out/results.json`` and
``out/results.csv``, so a sweep started again with the same ``out`` skips the
rows already there (failed ones too, unless ``retry_failed=True``). At the end:
a Markdown table of the configurations (mean and spread over the seeds), a
plot of accuracy per configuration (``out/sweep.png``, when matplotlib is
installed) and the closing ``key=value`` line.
"""
import csv
import functools
import io
import itertools
import json
import math
import os
import time
import traceback
from pathlib import Path

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
PLOT_FILE = "sweep.png"
_DASK_EXTRA = 'pip install "fastmlp[sweep]"'

# train_mlp's configuration keys and their defaults (those of fastmlp train's options)
CONFIG_KEYS = {
    "data": "shapes", "samples": 2000, "image_size": None, "max_samples": None,
    "val_split": 0.1, "test_split": 0.2, "standardize": False,
    "hidden": [256, 256], "activation": "relu", "loss": "auto", "l1": 0.0, "l2": 0.0, "dtype": "float32",
    "optimizer": "adam", "lr": None, "momentum": 0.0, "epochs": 5, "batch_size": 128,
    "early_stopping": None, "rotate": 0.0, "shift": 0.0, "flip_h": False, "flip_v": False,
    "device": "cpu",
}


# ---------------------------------------------------------------------- configurations

def grid(axes, base=None):
    """Every combination of the lists in ``axes`` ({key: [values]}), each over ``base``."""
    if not isinstance(axes, dict):
        raise TypeError(f"expected a grid as a dict of lists, got {type(axes).__name__}")
    keys = list(axes)
    for k in keys:
        if not isinstance(axes[k], (list, tuple)) or not axes[k]:
            raise ValueError(f"expected grid[{k!r}] to be a non-empty list of values, got {axes[k]!r}")
    return [dict(base or {}, **dict(zip(keys, values))) for values in itertools.product(*(axes[k] for k in keys))]


def configurations(configs, base=None):
    """[(name, config)] from a list of dicts or a grid dict, each over ``base``; names are
    the ``name`` key, else the keys that differ from ``base``."""
    if isinstance(configs, dict):
        configs = grid(configs, base)
    elif isinstance(configs, (list, tuple)):
        for i, c in enumerate(configs):
            if not isinstance(c, dict):
                raise TypeError(f"expected configuration {i} to be a dict, got {type(c).__name__}")
        configs = [dict(base or {}, **c) for c in configs]
    else:
        raise TypeError(f"expected configs as a list of dicts or a dict of lists, got {type(configs).__name__}")
    if not configs:
        raise ValueError("expected at least one configuration, got none")
    out, seen = [], set()
    for c in configs:
        c = dict(c)
        name = c.pop("name", None)
        if name is None:
            changed = {k: v for k, v in c.items() if (base or {}).get(k, object()) != v}
            name = ", ".join(f"{k}={_short(v)}" for k, v in changed.items()) or "base"
        name = str(name)
        if name in seen:
            raise ValueError(f"expected distinct configuration names, got {name!r} twice")
        seen.add(name)
        try:
            json.dumps(c)
        except TypeError as e:
            raise TypeError(f"configuration {name!r}: expected JSON values (numbers, strings, lists), got {e}") from None
        out.append((name, c))
    return out


def _short(v):
    return "x".join(map(str, v)) if isinstance(v, list) else str(v)


def _check_seeds(seeds):
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ValueError(f"expected seeds as a non-empty list of ints >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"expected distinct seeds, got {seeds!r}")
    return seeds


# ---------------------------------------------------------------------- one run (in a worker)

def run_one(run, name, config, seed):
    """One row: ``run(config, seed)``'s metrics, or the error it raised (never raises)."""
    t0 = time.perf_counter()
    row = {"name": name, "seed": seed, "status": "ok", "error": "", "config": config,
           "worker": f"{os.uname().nodename}:{os.getpid()}" if hasattr(os, "uname") else str(os.getpid())}
    try:
        metrics = run(config, seed)
        if not isinstance(metrics, dict):
            raise TypeError(f"expected run() to return a dict of metrics, got {type(metrics).__name__}")
        row.update({k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items() if k not in row})
    except Exception as e:   # recorded; the sweep goes on
        row["status"] = "error"
        row["error"] = f"{type(e).__name__}: {e}"
        row["traceback"] = traceback.format_exc(limit=6)
    row["seconds"] = time.perf_counter() - t0
    return row


def train_mlp(config, seed):
    """An MLP as ``fastmlp train`` builds it, trained on ``config`` (keys of CONFIG_KEYS):
    {train_acc, val_acc, test_acc, epochs, params}. Softmax cross-entropy on integer labels."""
    import numpy as np

    from .augment import Augment
    from .callbacks import EarlyStopping
    from .layers import Dense, activation
    from .losses import SoftmaxCrossEntropy
    from .model import Sequential
    from .optimizers import SGD, Adam
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"unknown configuration key(s) {unknown}; expected some of {sorted(CONFIG_KEYS)}")
    c = dict(CONFIG_KEYS, **config)
    hidden = [c["hidden"]] if isinstance(c["hidden"], int) else list(c["hidden"])
    sets, shape = load_splits(str(c["data"]), int(c["samples"]), c["image_size"], float(c["val_split"]),
                              float(c["test_split"]), bool(c["standardize"]), seed)
    if c["max_samples"]:
        sets["train"] = tuple(a[:int(c["max_samples"])] for a in sets["train"])
    X, y = sets["train"]
    k = int(max(yy.max() for _, yy in sets.values())) + 1
    init = "he" if c["activation"] in ("relu", "leaky_relu") else "glorot"
    layers, width = [], X.shape[1]
    for size in hidden:
        layers += [Dense(width, size, init=init, l1=c["l1"], l2=c["l2"]), activation(c["activation"])]
        width = size
    layers.append(Dense(width, k, init="glorot", l1=c["l1"], l2=c["l2"]))
    if c["optimizer"] == "adam":
        opt = Adam(lr=c["lr"] or 1e-3)
    elif c["optimizer"] == "sgd":
        opt = SGD(lr=c["lr"] or 0.01, momentum=c["momentum"])
    else:
        raise ValueError(f"expected optimizer 'adam' or 'sgd', got {c['optimizer']!r}")
    model = Sequential(layers, loss=SoftmaxCrossEntropy(), optimizer=opt, device=c["device"],
                          dtype=c["dtype"], seed=seed)
    augment = None
    if c["rotate"] or c["shift"] or c["flip_h"] or c["flip_v"]:
        augment = Augment(rotate=c["rotate"], shift=c["shift"], flip_h=c["flip_h"], flip_v=c["flip_v"],
                             image_shape=shape)
    callbacks = []
    if c["early_stopping"]:
        if "val" not in sets:
            raise ValueError("early_stopping needs validation data: keep val_split above 0")
        callbacks.append(EarlyStopping("val_loss", patience=int(c["early_stopping"]), restore_best_weights=True))
    h = model.fit(X, y, epochs=int(c["epochs"]), batch_size=c["batch_size"], callbacks=callbacks,
                  validation_data=sets.get("val"), augment=augment, verbose=0)
    out = {"epochs": len(h.epoch), "params": model.count_params()}
    for part, (Xp, yp) in sets.items():
        out[f"{part}_acc"] = model.evaluate(Xp, yp)["accuracy"]
    if not all(np.isfinite(v) for v in out.values()):
        raise FloatingPointError(f"non-finite result {out}")
    return out


@functools.lru_cache(maxsize=4)
def load_splits(source, samples, image_size, val, test, standardize, seed):
    """({"train", "val", "test": (X float32 (N, F), y)}, (H, W)) of a data source, as
    ``fastmlp train`` reads it: "shapes", a MedMNIST .npz, an MNIST t10k folder or an .h5
    file; pixels scaled to [0, 1] (and standardised with the training split's statistics)."""
    import numpy as np

    from . import data
    from .preprocessing import Standardizer, scale_to_unit, train_val_test_split
    path = Path(source)
    if source == "shapes":
        X, y, _ = data.make_shapes(samples, size=image_size or 28, seed=seed, centered=True)
        parts = train_val_test_split(X, y, val=val, test=test, seed=seed)
    elif path.is_file() and path.suffix.lower() == ".npz":
        parts = [a for split in ("train", "val", "test") for a in data.load_medmnist(path, split)]
    elif path.is_dir():
        Xtr, ytr, Xte, yte = data.load_mnist_t10k(path)
        parts = list(train_val_test_split(Xtr, ytr, val=val, test=0.0, seed=seed))[:4] + [Xte, yte]
    elif path.is_file():
        X, y, _ = data.load_h5(path)
        parts = train_val_test_split(X, y, val=val, test=test, seed=seed)
    else:
        raise FileNotFoundError(f"data not found: {source} (expected 'shapes', a MedMNIST .npz, an MNIST "
                                "t10k folder or an .h5 file)")
    names = ("train", "val", "test")
    raw = {n: (parts[2 * i], parts[2 * i + 1]) for i, n in enumerate(names) if len(parts[2 * i])}
    shape = tuple(raw["train"][0].shape[1:3])

    def flat(X):
        X = scale_to_unit(X) if X.dtype == np.uint8 else np.asarray(X, dtype=np.float32)
        return np.ascontiguousarray(X.reshape(len(X), -1), dtype=np.float32)
    sets = {n: (flat(X), np.asarray(y).reshape(-1)) for n, (X, y) in raw.items()}
    if standardize:
        st = Standardizer("global").fit(sets["train"][0])
        sets = {n: (st.transform(X).astype(np.float32), y) for n, (X, y) in sets.items()}
    return sets, shape


class FromFile:
    """A run function defined in a script loaded by path (an example, a notebook's file):
    picklable by (path, name), so that worker processes load the script themselves (its
    ``if __name__ == "__main__"`` part does not run there)."""

    _loaded = {}   # path -> module, per process

    def __init__(self, path, name):
        self.path, self.name = os.path.abspath(os.fspath(path)), str(name)

    def __call__(self, config, seed):
        module = FromFile._loaded.get(self.path)
        if module is None:
            import importlib.util
            spec = importlib.util.spec_from_file_location(f"_sweep_script_{len(FromFile._loaded)}", self.path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            FromFile._loaded[self.path] = module
        return getattr(module, self.name)(config, seed)

    def __repr__(self):
        return f"FromFile({self.path!r}, {self.name!r})"


def _worker_init(threads):
    """A local worker's threads: its share of the cores (Numba and BLAS)."""
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


# ---------------------------------------------------------------------- the results on disk

class Results:
    """The rows of a sweep, written whole (JSON and CSV, atomically) after each new row."""

    def __init__(self, out):
        self.out = None if out is None else Path(out)
        self.rows = {}
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            path = self.out / RESULTS_JSON
            if path.is_file():
                try:
                    saved = json.loads(path.read_text(encoding="utf-8"))["rows"]
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}: expected the results of an earlier sweep, got unreadable JSON "
                                     f"({e}); move it away to start afresh") from None
                for row in saved:
                    self.rows[row_key(row["config"], row["seed"])] = row

    def done(self, config, seed, retry_failed):
        row = self.rows.get(row_key(config, seed))
        return row is not None and (row["status"] == "ok" or not retry_failed)

    def add(self, row):
        self.rows[row_key(row["config"], row["seed"])] = row
        if self.out is not None:
            from .atomic import atomic_write
            rows = list(self.rows.values())
            text = json.dumps({"rows": rows}, indent=1, default=str)
            atomic_write(self.out / RESULTS_JSON, lambda f: f.write(text.encode("utf-8")))
            csv_text = to_csv(rows)
            atomic_write(self.out / RESULTS_CSV, lambda f: f.write(csv_text.encode("utf-8")))


def row_key(config, seed):
    return json.dumps(config, sort_keys=True) + f"#seed={seed}"


def to_csv(rows):
    fixed = ["name", "seed", "status", "error", "train_acc", "val_acc", "test_acc", "epochs", "params",
             "seconds", "worker"]
    extra = sorted({k for r in rows for k in r} - set(fixed) - {"config", "traceback"})
    keys = sorted({k for r in rows for k in r["config"]})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(fixed + extra + [f"config.{k}" for k in keys])
    for r in rows:
        w.writerow([r.get(k, "") for k in fixed + extra]
                   + [json.dumps(r["config"][k]) if k in r["config"] else "" for k in keys])
    return buf.getvalue()


# ---------------------------------------------------------------------- running

def sweep(configs, seeds=(0,), *, base=None, run=None, workers=None, scheduler=None, out=None,
          retry_failed=False, plot=True, print_fn=print):
    """Run every configuration with every seed; returns the rows (dicts) in sweep order.

    ``run(config, seed) -> {metric: value}`` (default ``train_mlp``) must be importable by
    the workers (a module-level function). ``workers``: local processes (default: the CPU
    count, at most the number of runs); ``scheduler``: a Dask scheduler address instead.
    ``out``: the folder of results.json / results.csv / sweep.png (resumable)."""
    runs = [(name, cfg, seed) for name, cfg in configurations(configs, base) for seed in _check_seeds(seeds)]
    run = train_mlp if run is None else run
    if not callable(run):
        raise TypeError(f"expected run to be a function (config, seed) -> dict, got {run!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"expected workers to be an int >= 1, got {workers!r}")
    if scheduler is not None and not isinstance(scheduler, str):
        raise TypeError(f"expected scheduler as an address like 'tcp://HOST:8786', got {scheduler!r}")
    results = Results(out)
    todo = [r for r in runs if not results.done(r[1], r[2], retry_failed)]
    skipped = len(runs) - len(todo)
    t0 = time.perf_counter()
    if skipped:
        print_fn(f"sweep: {skipped} of {len(runs)} runs already in {Path(out) / RESULTS_JSON}; running the other {len(todo)}")
    if todo:
        if scheduler is not None:
            _run_dask(run, todo, scheduler, results, print_fn)
        else:
            _run_local(run, todo, workers, results, print_fn)
    seconds = time.perf_counter() - t0
    rows = [results.rows[row_key(cfg, seed)] for _, cfg, seed in runs]
    print_fn("")
    print_fn(markdown(rows))
    plotted = ""
    if plot and out is not None:
        try:
            plot_sweep(rows, Path(out) / PLOT_FILE)
            plotted = f" (plot: {Path(out) / PLOT_FILE})"
        except ImportError as e:
            plotted = f" (no plot: {e})"
    print_fn("")
    print_fn(f"sweep: {len(rows)} runs, {sum(r['status'] != 'ok' for r in rows)} failed{plotted}")
    print_fn(closing_line(rows, seconds, skipped))
    return rows


def _report(print_fn, row, done, total):
    what = (f"test {row['test_acc']:.4f}" if "test_acc" in row else
            ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float) and k != "seconds"))
    if row["status"] != "ok":
        what = f"FAILED: {row['error']}"
    print_fn(f"[{done}/{total}] {row['name']} seed {row['seed']}: {what} ({row['seconds']:.1f} s)")


def _run_local(run, todo, workers, results, print_fn):
    import concurrent.futures as cf
    import multiprocessing
    workers = min(workers or os.cpu_count() or 1, len(todo))
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                initargs=(threads,)) as pool:
        futures = {pool.submit(run_one, run, name, cfg, seed): (name, cfg, seed) for name, cfg, seed in todo}
        for done, fut in enumerate(cf.as_completed(futures), start=1):
            row = _result(fut, *futures[fut])
            results.add(row)
            _report(print_fn, row, done, len(todo))


def _run_dask(run, todo, scheduler, results, print_fn):
    try:
        from dask.distributed import Client, as_completed
    except ImportError as e:
        raise ImportError(f"--scheduler needs Dask ({e}); {_DASK_EXTRA}") from e
    with Client(scheduler) as client:
        futures = {client.submit(run_one, run, name, cfg, seed, pure=False): (name, cfg, seed)
                   for name, cfg, seed in todo}
        for done, fut in enumerate(as_completed(list(futures)), start=1):
            row = _result(fut, *futures[fut])
            results.add(row)
            _report(print_fn, row, done, len(todo))


def _result(fut, name, cfg, seed):
    """The future's row, or an error row when the worker itself failed (killed, unpicklable run)."""
    try:
        return fut.result()
    except Exception as e:
        return {"name": name, "seed": seed, "status": "error", "error": f"{type(e).__name__}: {e}",
                "config": cfg, "worker": "", "seconds": 0.0}


# ---------------------------------------------------------------------- the report

def _metric(rows):
    for key in ("test_acc", "val_acc", "train_acc"):
        if any(key in r for r in rows):
            return key
    return None


def by_configuration(rows):
    """[(name, [rows of its seeds])] in sweep order."""
    groups = {}
    for r in rows:
        groups.setdefault(r["name"], []).append(r)
    return list(groups.items())


def _mean_sd(values):
    if not values:
        return math.nan, math.nan
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def markdown(rows):
    """One line per configuration: the seeds that finished, mean ± sd of each accuracy, time, errors."""
    keys = [k for k in ("train_acc", "val_acc", "test_acc") if any(k in r for r in rows)]
    head = ["#", "configuration", "seeds ok"] + [k.replace("_", " ") for k in keys] + ["s / run", "error"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, (name, group) in enumerate(by_configuration(rows)):
        ok = [r for r in group if r["status"] == "ok"]
        cells = [str(i), name, f"{len(ok)}/{len(group)}"]
        for k in keys:
            m, sd = _mean_sd([r[k] for r in ok if k in r])
            cells.append("-" if math.isnan(m) else f"{m:.4f} ± {sd:.4f}" if len(ok) > 1 else f"{m:.4f}")
        secs = [r["seconds"] for r in ok]
        cells.append(f"{sum(secs) / len(secs):.1f}" if secs else "-")
        errors = sorted({r["error"] for r in group if r["status"] != "ok"})
        cells.append("; ".join(e.replace("|", "/")[:80] for e in errors) or "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def closing_line(rows, seconds, skipped=0):
    metric = _metric([r for r in rows if r["status"] == "ok"])
    pairs = [f"runs={len(rows)}", f"ok={sum(r['status'] == 'ok' for r in rows)}",
             f"failed={sum(r['status'] != 'ok' for r in rows)}", f"skipped={skipped}"]
    if metric:
        best, best_mean = None, -math.inf
        for i, (name, group) in enumerate(by_configuration(rows)):
            m, _ = _mean_sd([r[metric] for r in group if r["status"] == "ok" and metric in r])
            if not math.isnan(m) and m > best_mean:
                best, best_mean = i, m
        if best is not None:
            pairs += [f"best_config={best}", f"best_{metric}={best_mean:.4f}"]
    pairs.append(f"seconds={seconds:.1f}")
    return " ".join(pairs)


def plot_sweep(rows, path):
    """Accuracy per configuration: each seed as a dot, the mean as a bar with its spread."""
    from .plot import _figure, _save
    metric = _metric([r for r in rows if r["status"] == "ok"]) or "test_acc"
    groups = by_configuration(rows)
    fig = _figure(figsize=(max(6.0, 0.6 * len(groups) + 2), 4.5), layout="constrained")
    ax = fig.subplots()
    for i, (name, group) in enumerate(groups):
        values = [r[metric] for r in group if r["status"] == "ok" and metric in r]
        if not values:
            ax.plot([i], [0], "rx")
            continue
        m, sd = _mean_sd(values)
        ax.bar(i, m, color="#9ecae1", width=0.6)
        ax.errorbar(i, m, yerr=[[m - min(values)], [max(values) - m]], color="#08519c", capsize=4)
        ax.plot([i] * len(values), values, "o", color="#08519c", markersize=3)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([name for name, _ in groups], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel(metric.replace("_", " ") + " (bar: mean; line: min..max over seeds)")
    ax.set_title(f"sweep: {len(groups)} configurations x seeds")
    return _save(fig, path, 110)


# ---------------------------------------------------------------------- sweep files (TOML)

def load_toml(path):
    """{"configs", "base", "seeds", "out", "workers", "scheduler"} from a sweep file:

    ```toml
    seeds = [0, 1, 2]            # optional, default [0]
    out = "sweep-out"            # optional (the folder of results; relative to the file)
    [base]                       # every configuration starts from these
    data = "shapes"
    epochs = 5
    [grid]                       # every combination of these lists ...
    lr = [1e-3, 3e-3]
    [[config]]                   # ... and/or configurations one by one
    name = "tanh"
    activation = "tanh"
    ```
    """
    import tomllib
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    allowed = {"seeds", "out", "workers", "scheduler", "base", "grid", "config"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {unknown}; expected some of {sorted(allowed)}")
    base = spec.get("base", {})
    configs = []
    if "grid" in spec:
        configs += grid(spec["grid"])
    configs += list(spec.get("config", []))
    if not configs:
        configs = [{"name": "base"}]
    out = spec.get("out")
    if out is not None and not os.path.isabs(out):
        out = str(path.parent / out)
    return {"configs": configs, "base": base, "seeds": spec.get("seeds", [0]), "out": out,
            "workers": spec.get("workers"), "scheduler": spec.get("scheduler")}
