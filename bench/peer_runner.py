"""Checks and timings of the peers runner (the CLI is peers.py).

For each workload: the same initial weights go to every implementation
(fastmlp, NumPy, PyTorch eager, torch.compile, JAX jit; on a GPU PyTorch with
CUDA graphs); each takes one step and is compared with the NumPy float64
reference (P3, a CNN: with torch float64); then each warms up and the timed
runs are interleaved, with those of the GEMM floor (gemm_floor.py) at every
BLAS thread count from 1 to --threads. An implementation that fails (import,
build, check or fit) is reported and left out; the others go on (torch.compile,
JAX and CUDA graphs, when their first step fails, are skipped with the reason).
With --only, one implementation runs (peer_isolate.py starts one such process each). On P3, profiled runs of fastmlp then split its
step by kind of op: once as it runs (its convolutions one chunked kernel each way,
backend/cpu/conv_act_pool.py) and once with the chunked kernels off, so that im2col, col2im,
the GEMMs and the pooling run as separate, timed calls on the same chunks.

Shape vocabulary: N samples, B batch, D inputs of a layer, M outputs; images
C channels, H x W pixels, K kernel side.
"""
import gc
import math
import os
import platform
import statistics
import time
import dataclasses
from dataclasses import dataclass

import numpy as np

import flops
import peer_report
from gemm_floor import GemmFloor, blas_threads
from jax_peer import JaxMLP, load_jax
from numpy_peer import NumpyMLP
from peer_data import load_catvnoncat, load_mnist_t10k, resolve_data_dir
from torch_peer import TorchCNN, TorchCompiledMLP, TorchCudaGraphMLP, TorchMLP, load_torch

CHECK_TOL = 1e-4      # relative error allowed on loss and weights after one step
TF32_CHECK_TOL = 5e-2 # with --tf32: TF32 keeps 10 mantissa bits of each GEMM operand
GPU_MAX_STEPS = 400   # --device cuda: the CPU's NumPy peer runs the same steps
CHECK_BATCH = 64      # samples of the one-step check for mini-batch workloads
P2_SIZES = [784, 256, 256, 10]
P2_TRAIN = 8000       # the first 8,000 MNIST t10k images are the training split
# P3, seed 004's small CNN (the layer tuples of flops.py and TorchCNN)
P3_LAYERS = [("conv", 1, 16, 3, 1), ("relu",), ("pool", 2), ("conv", 16, 32, 3, 1), ("relu",),
             ("pool", 2), ("flatten",), ("dense", 1568, 256), ("relu",), ("dense", 256, 10)]
P3_IMAGE = (1, 28, 28)
P3_ARCH = ("conv3x3(1->16, pad 1)+ReLU+maxpool2 -> conv3x3(16->32, pad 1)+ReLU+maxpool2 -> "
           "dense(1568->256)+ReLU -> dense(256->10)")
P3_MIN_RUN_S = 1.0    # a timed run of P3 is at least this long: its steps are slow and noisy


@dataclass
class Plan:
    reps: int
    target_s: float       # aim of one timed run of one implementation
    peak_repeats: int
    widths: tuple
    batches: tuple
    min_steps: int = 3
    max_steps: int = 5000


QUICK = Plan(reps=3, target_s=0.25, peak_repeats=5,
             widths=(64, 256, 1024, 4096), batches=(1, 8, 64, 512, 4096))
FULL = Plan(reps=5, target_s=1.0, peak_repeats=10,
            widths=tuple(2 ** k for k in range(6, 13)), batches=tuple(2 ** k for k in range(13)))


@dataclass
class Workload:
    key: str              # names its figures: "p1", "p2_128", "w1024", "b64"
    title: str
    sizes: list           # layer widths [D_0, ..., M_last]
    loss: str             # "bce" or "softmax_xent"
    lr: float
    X: np.ndarray         # (N, D_0) float32
    y: np.ndarray         # (N, 1) float32 of 0/1, or (N,) int64 labels
    batch_size: object    # int, or None for the full batch
    epochs: int           # per timed run
    layers: list = None   # a CNN's layer tuples (P3); X is then (N, C, H, W)

    @property
    def net(self):
        return "mlp" if self.layers is None else "cnn"

    @property
    def arch(self):
        return str(self.sizes) if self.layers is None else P3_ARCH

    @property
    def n(self):
        return len(self.X)

    @property
    def steps_per_epoch(self):
        return 1 if self.batch_size is None else math.ceil(self.n / self.batch_size)

    @property
    def steps(self):
        return self.epochs * self.steps_per_epoch

    @property
    def samples(self):
        return self.epochs * self.n

    @property
    def flops_per_sample(self):
        if self.layers is not None:
            return flops.cnn_train_step_flops(self.layers, self.X.shape[1:], 1)
        return flops.train_step_flops(self.sizes, 1)   # the count is linear in N


WIDE_SIZES = [784, 4096, 4096, 4096, 4096, 10]


def _repeated(X, y, n):
    """The first n rows of X, y repeated as often as needed (n may exceed len(X))."""
    idx = np.arange(n) % len(X)
    return np.ascontiguousarray(X[idx]), np.ascontiguousarray(y[idx])


def init_weights(sizes, seed=0):
    """He-normal W (D, M) and zero b (M,), float32: given to every implementation."""
    rng = np.random.default_rng(seed)
    weights = []
    for d, m in zip(sizes[:-1], sizes[1:]):
        weights.append((rng.standard_normal((d, m)) * np.sqrt(2.0 / d)).astype(np.float32))
        weights.append(np.zeros(m, dtype=np.float32))
    return weights


def init_cnn_weights(layers, seed=0):
    """He-normal conv W (M, C, K, K), dense W (D, M), zero biases, float32."""
    rng = np.random.default_rng(seed)
    weights = []
    for op, *a in layers:
        if op == "conv":
            c, m, k, _ = a
            shape, fan_in = (m, c, k, k), c * k * k
        elif op == "dense":
            (fan_in, m), shape = a, tuple(a)
        else:
            continue
        weights.append((rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32))
        weights.append(np.zeros(m, dtype=np.float32))
    return weights


def planned_steps(sizes, batch, plan, peak_gflops):
    # enough steps for about plan.target_s, guessing 30 % of the sgemm peak
    # plus 0.1 ms of Python per step
    guess_s = flops.train_step_flops(sizes, batch) / (0.3 * peak_gflops * 1e9) + 1e-4
    return int(min(plan.max_steps, max(plan.min_steps, round(plan.target_s / guess_s))))


def make_workloads(names, plan, peak_gflops, data_dir):
    """The workloads selected by name, and notes on the data they use."""
    out, notes = [], []
    if "p1" in names:
        X, y, note = load_catvnoncat(data_dir)
        notes.append(note)
        sizes = [12288, 20, 7, 5, 1]
        steps = planned_steps(sizes, len(X), plan, peak_gflops)
        out.append(Workload("p1", f"P1 cat/non-cat, full batch {len(X)} x {X.shape[1]}",
                            sizes, "bce", 0.0075, X, y, None, steps))
    if not {"p2", "width", "batch", "p3", "p2big", "wide"} & set(names):
        return out, notes
    X, y, note = load_mnist_t10k(data_dir)
    notes.append(note)
    X, y = X[:P2_TRAIN], y[:P2_TRAIN]
    if "p2" in names:
        for b in (64, 128, 256):
            steps = planned_steps(P2_SIZES, b, plan, peak_gflops)
            epochs = max(1, round(steps / math.ceil(len(X) / b)))
            out.append(Workload(f"p2_{b}", f"P2 784-256-256-10, batch {b}, {len(X)} images",
                                P2_SIZES, "softmax_xent", 0.1, X, y, b, epochs))
    if "p2big" in names:  # the GPU's batches: every batch full (MNIST repeated to 2 batches)
        for b in (1024, 8192):
            Xb, yb = _repeated(X, y, 2 * b)
            steps = planned_steps(P2_SIZES, b, plan, peak_gflops)
            out.append(Workload(f"p2_{b}", f"P2 784-256-256-10, batch {b}, {len(Xb)} images",
                                P2_SIZES, "softmax_xent", 0.1, Xb, yb, b, max(1, round(steps / 2))))
    if "wide" in names:  # cuBLAS-bound: 4 hidden layers of 4096, batch 4096
        b, sizes = 4096, WIDE_SIZES
        Xb, yb = _repeated(X, y, 2 * b)
        steps = planned_steps(sizes, b, plan, peak_gflops)
        # at least 20 steps a timed run: fit's per-call work (checking and copying X to the
        # device) is then a small part of the time, as it is in real training
        out.append(Workload("wide", f"wide MLP 784-4x4096-10, batch {b}, {len(Xb)} images",
                            sizes, "softmax_xent", 0.01, Xb, yb, b, max(10, round(steps / 2))))
    sweeps = []
    if "width" in names:
        sweeps += [(f"w{w}", f"width sweep 784-{w}-{w}-10, batch 128", [784, w, w, 10], 128)
                   for w in plan.widths]
    if "batch" in names:
        sweeps += [(f"b{b}", f"batch sweep 784-256-256-10, batch {b}", P2_SIZES, b)
                   for b in plan.batches]
    if "p3" in names:
        # N = 64 * (steps per epoch), every batch full; guess 20 % of the peak (the convs'
        # im2col and layout kernels are not GEMMs) and at least P3_MIN_RUN_S a run
        b = 64
        fps = flops.cnn_train_step_flops(P3_LAYERS, P3_IMAGE, b)
        steps = round(max(plan.target_s, P3_MIN_RUN_S) / (fps / (0.2 * peak_gflops * 1e9) + 1e-3))
        per_epoch = max(1, min(steps, len(X) // b))
        out.append(Workload("p3", f"P3 small CNN on 28x28, batch {b}, {b * per_epoch} images",
                            [784, 10], "softmax_xent", 0.05,
                            np.ascontiguousarray(X[:b * per_epoch].reshape((-1,) + P3_IMAGE)),
                            y[:b * per_epoch], b, max(1, round(steps / per_epoch)), P3_LAYERS))
    for key, title, sizes, b in sweeps:
        # N = B * (steps per epoch), so that every batch is full
        steps = planned_steps(sizes, b, plan, peak_gflops)
        per_epoch = min(steps, max(1, len(X) // b))
        n = b * per_epoch
        out.append(Workload(key, title, sizes, "softmax_xent", 0.01, X[:n], y[:n], b,
                            max(1, round(steps / per_epoch))))
    return out, notes


# ---------------------------------------------------------------- the contestants

def build_fastmlp(fm, sizes, loss, lr, device):
    layers = []
    for d, m in zip(sizes[:-1], sizes[1:]):
        layers += [fm.Dense(d, m), fm.ReLU()]
    loss_obj = fm.BinaryCrossEntropy() if loss == "bce" else fm.SoftmaxCrossEntropy()
    return fm.Sequential(layers[:-1], loss=loss_obj, optimizer=fm.SGD(lr=lr),
                         device=device, dtype="float32", seed=0)


class FastmlpImpl:
    name = "fastmlp"

    def __init__(self, ctx, w, weights):
        self.w = w
        self.device = ctx.device
        self.model = build_fastmlp(ctx.fm, w.sizes, w.loss, w.lr, ctx.device)
        self.model.set_weights(weights)

    def fit(self, epochs):
        self.model.fit(self.w.X, self.w.y, epochs=epochs, batch_size=self.w.batch_size,
                       shuffle=True, verbose=0)

    def one_step(self, X, y):
        loss = float(self.model.loss_and_grads(X, y)[0])
        self.model.fit(X, y, epochs=1, batch_size=None, shuffle=False, verbose=0)
        return loss, [np.asarray(a) for a in self.model.get_weights()]


class FastmlpPlainImpl(FastmlpImpl):
    """fastmlp without the full-batch row-space path (fastmlp/gram.py): every step
    runs both first-layer GEMMs, as the peers do. Shown for full-batch workloads."""
    name = "fastmlp-plain"

    def __init__(self, ctx, w, weights):
        super().__init__(ctx, w, weights)
        self.model.full_batch_gram = False


def build_fastmlp_cnn(fm, layers, lr, device, dtype="float32"):
    made = []
    for op, *a in layers:
        made.append({"conv": lambda: fm.Conv2D(a[0], a[1], a[2], padding=a[3]),
                     "relu": fm.ReLU, "pool": lambda: fm.MaxPool2D(a[0]), "flatten": fm.Flatten,
                     "dense": lambda: fm.Dense(a[0], a[1])}[op]())
    return fm.Sequential(made, loss=fm.SoftmaxCrossEntropy(), optimizer=fm.SGD(lr=lr),
                         device=device, dtype=dtype, seed=0, input_shape=P3_IMAGE)


class FastmlpCNNImpl(FastmlpImpl):
    """fastmlp's Conv2D / MaxPool2D / Flatten / Dense, trained through fit."""

    def __init__(self, ctx, w, weights, dtype="float32"):
        self.w = w
        self.device = ctx.device
        self.model = build_fastmlp_cnn(ctx.fm, w.layers, w.lr, ctx.device, dtype)
        self.model.set_weights(weights)


class NumpyImpl:
    name = "numpy"
    device = "cpu"

    def __init__(self, ctx, w, weights, dtype=np.float32):
        self.w = w
        self.peer = NumpyMLP(weights, w.loss, w.lr, dtype)
        self.rng = np.random.default_rng(0)

    def fit(self, epochs):
        self.peer.fit(self.w.X, self.w.y, epochs, self.w.batch_size, self.rng)

    def one_step(self, X, y):
        return self.peer.step(X, y), self.peer.get_weights()


class TorchImpl:
    name = "torch"

    def __init__(self, ctx, w, weights, dtype="float32"):
        self.w = w
        self.device = ctx.device
        self.peer = TorchMLP(ctx.torch, weights, w.loss, w.lr, dtype, ctx.device)
        self.x, self.t = self.peer.to_tensors(w.X, w.y)
        self.generator = ctx.torch.Generator().manual_seed(0)

    def fit(self, epochs):
        self.peer.fit(self.x, self.t, epochs, self.w.batch_size, self.generator)

    def one_step(self, X, y):
        x, t = self.peer.to_tensors(X, y)
        return self.peer.step(x, t).item(), self.peer.get_weights()


class TorchCNNImpl(TorchImpl):
    def __init__(self, ctx, w, weights, dtype="float32"):
        self.w = w
        self.device = ctx.device
        self.peer = TorchCNN(ctx.torch, w.layers, weights, w.lr, dtype, ctx.device)
        self.x, self.t = self.peer.to_tensors(w.X, w.y)
        self.generator = ctx.torch.Generator().manual_seed(0)


class TorchCompiledImpl(TorchImpl):
    """The whole step under torch.compile (torch_peer.TorchCompiledMLP)."""
    name = "torch.compile"
    peer_class = TorchCompiledMLP

    def __init__(self, ctx, w, weights, dtype="float32"):
        self.w = w
        self.device = ctx.device
        self.peer = self.peer_class(ctx.torch, weights, w.loss, w.lr, dtype, ctx.device)
        self.x, self.t = self.peer.to_tensors(w.X, w.y)
        self.generator = ctx.torch.Generator().manual_seed(0)


class TorchCudaGraphImpl(TorchCompiledImpl):
    """The whole step captured as CUDA graphs (torch_peer.TorchCudaGraphMLP)."""
    name = "torch-cudagraph"
    peer_class = TorchCudaGraphMLP


class JaxImpl:
    """The whole step under jax.jit (jax_peer.JaxMLP); X and y go to the device
    on the first fit (the one-step check needs only its batch there)."""
    name = "jax"
    device = "cpu"

    def __init__(self, ctx, w, weights, dtype="float32"):
        self.w = w
        self.peer = JaxMLP(ctx.jax, weights, w.loss, w.lr, dtype)
        self.data = None
        self.rng = np.random.default_rng(0)

    def fit(self, epochs):
        if self.data is None:
            self.data = self.peer.to_device(self.w.X, self.w.y)
        self.peer.fit(*self.data, epochs, self.w.batch_size, self.rng)

    def one_step(self, X, y):
        return self.peer.step(*self.peer.to_device(X, y)), self.peer.get_weights()


class FloorImpl:
    """The GEMM floor (gemm_floor.py) of an MLP workload, its BLAS on `threads`
    threads (CPU; on a CUDA device, torch.matmul and no thread count)."""

    def __init__(self, ctx, w, threads):
        self.threads = threads
        self.name = "floor" if ctx.device != "cpu" else f"floor@{threads}"
        self.device = ctx.device
        self.floor = GemmFloor(w.sizes, w.n, w.batch_size, ctx.device, ctx.torch)
        assert self.floor.steps_per_epoch == w.steps_per_epoch

    def fit(self, epochs):
        if self.device != "cpu":
            self.floor.run(epochs)
            return
        with blas_threads(self.threads):
            self.floor.run(epochs)


# the peers fastmlp is measured against: its "vs best peer" is against the fastest of them
PEERS = ("numpy", "torch", "torch.compile", "jax", "torch-cudagraph")
# what `--only NAME` runs (--isolate starts one process per name)
ONLY = {"fastmlp": ("fastmlp", "fastmlp-plain"), "numpy": ("numpy",), "torch": ("torch",),
        "torch.compile": ("torch.compile",), "jax": ("jax",),
        "torch-cudagraph": ("torch-cudagraph",), "floor": ("floor",)}


@dataclass
class Context:
    fm: object            # the fastmlp module, or None
    torch: object         # the torch module, or None
    device: str
    skipped: dict         # implementation name -> why it does not run
    jax: object = None    # the jax module, or None
    only: str = None      # --only: the one implementation (group) this process runs
    threads: int = 1      # --threads: the GEMM floor is timed at 1 .. threads

    def wants(self, name):
        return name not in self.skipped and (self.only is None or name in ONLY[self.only])

    def makers(self, w=None):
        """(name, constructor) of every implementation that can run workload w
        (a CNN has neither a NumPy peer nor a full-batch variant), less those
        skipped and, with --only, those not selected."""
        if w is not None and w.net == "cnn":
            out = ([("fastmlp", FastmlpCNNImpl)] if self.fm is not None else []) + \
                  ([("torch", TorchCNNImpl)] if self.torch is not None else [])
            return [(n, m) for n, m in out if self.wants(n)]
        out = []
        if self.fm is not None:
            out.append(("fastmlp", FastmlpImpl))
            out.append(("fastmlp-plain", FastmlpPlainImpl))
        if not (w is not None and w.key == "wide" and self.device == "cuda"):
            out.append(("numpy", NumpyImpl))  # 1.3 TFLOP a step: seconds on a CPU
        if self.torch is not None:
            out.append(("torch", TorchImpl))
            out.append(("torch.compile", TorchCompiledImpl))
            if self.device == "cuda":
                out.append(("torch-cudagraph", TorchCudaGraphImpl))
        if self.jax is not None:
            out.append(("jax", JaxImpl))
        return [(n, m) for n, m in out if self.wants(n)]

    def floors(self, w):
        """The GEMM floor's timed variants for workload w: one per BLAS thread
        count 1 .. --threads on the CPU (one on a CUDA device); none for a CNN."""
        if w.net == "cnn" or not self.wants("floor") or (self.device != "cpu" and self.torch is None):
            return []
        counts = range(1, self.threads + 1) if self.device == "cpu" else (1,)
        return [lambda ctx, w, weights, t=t: FloorImpl(ctx, w, t) for t in counts]


# ---------------------------------------------------------------- check, then time

def rel_err(a, ref):
    # norm-wise relative error; the floor keeps all-zero references finite
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(a - ref) / max(np.linalg.norm(ref), 1e-30))


def check_one_step(ctx, w, weights):
    """One SGD step of each implementation from `weights` against the NumPy
    float64 reference: relative errors of the loss, of the weights after the
    step, and of the update (weights after minus before, which shows a wrong
    gradient that a small lr would hide in the weights). torch float64 is an
    independent check of the reference itself."""
    n = w.n if w.batch_size is None else min(CHECK_BATCH, w.n)
    X, y = w.X[:n], w.y[:n]
    y64 = y.astype(np.float64) if w.loss == "bce" else y
    candidates = [(name, lambda m=maker: m(ctx, w, weights)) for name, maker in ctx.makers(w)]
    if w.net == "cnn":
        # no NumPy CNN: torch float64 is the reference, fastmlp float64 a second opinion
        if ctx.torch is None:
            return {"n": n, "ref_loss": math.nan, "tol": _check_tol(), "reference": "none",
                    "results": {"all": {"ok": False, "error": "P3's reference is torch float64: "
                                        "torch is not importable"}}}
        ref = TorchCNNImpl(ctx, w, weights, dtype="float64")
        ref_loss, ref_weights = ref.one_step(X, y64)
        ref_name = "torch float64"
        if ctx.fm is not None and ctx.wants("fastmlp"):
            candidates.append(("fastmlp float64",
                               lambda: FastmlpCNNImpl(ctx, w, weights, dtype="float64")))
    else:
        ref = NumpyMLP(weights, w.loss, w.lr, np.float64)
        ref_loss = ref.step(X.astype(np.float64), y64)
        ref_weights = ref.get_weights()
        ref_name = "NumPy float64"
        if ctx.torch is not None and ctx.only in (None, "torch"):
            candidates.append(("torch float64",
                               lambda: TorchImpl(ctx, w, weights, dtype="float64")))
        if ctx.jax is not None and ctx.only in (None, "jax"):
            # float64 through jax_enable_x64, turned on around this check only
            candidates.append(("jax float64", lambda: JaxImpl(ctx, w, weights, dtype="float64")))
    results = {}
    for name, make in candidates:
        try:
            loss, after = make().one_step(X, y64 if name.endswith("float64") else y)
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            if name in OPTIONAL_PEERS:
                # e.g. torch.compile without a working C++ compiler: skipped, not a failed check
                ctx.skipped[name] = f"skipped: its first step failed: {why}"
                print(f"{name}: {ctx.skipped[name]}")
            else:
                results[name] = {"ok": False, "error": why}
            continue
        loss_rel = abs(loss - ref_loss) / max(abs(ref_loss), 1e-30)
        weights_rel = max(rel_err(a, r) for a, r in zip(after, ref_weights))
        update_rel = max(rel_err(np.asarray(a, np.float64) - w0, r - w0)
                         for a, r, w0 in zip(after, ref_weights, weights))
        results[name] = {"loss_rel": loss_rel, "weights_rel": weights_rel,
                         "update_rel": update_rel,
                         "ok": bool(loss_rel <= _check_tol() and weights_rel <= _check_tol())}
    return {"n": n, "ref_loss": ref_loss, "tol": _check_tol(), "reference": ref_name,
            "results": results}


# the stronger peers that need a compiler or a device: skipped (not failed) when they cannot run
OPTIONAL_PEERS = ("torch.compile", "jax", "torch-cudagraph")


def _check_tol():
    return TF32_CHECK_TOL if os.environ.get("CUPY_TF32") == "1" else CHECK_TOL


def timed(fn):
    """Seconds that fn() takes, with the garbage collector held off."""
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    finally:
        gc.enable()


def warmup_epochs(w):
    # one epoch (a few steps for the full batch): JIT compiles, workspaces,
    # BLAS thread start
    return min(w.epochs, 3) if w.batch_size is None else 1


def run_workload(ctx, w, weights, reps, errors):
    """Warm up, then time every implementation interleaved. Returns
    {name: [seconds of each timed run]}; failures go to errors[name]."""
    impls = []
    makers = [(name, maker) for name, maker in ctx.makers(w)
              # fastmlp-plain is the same as "fastmlp" unless the batch is full
              if not (name == "fastmlp-plain" and w.batch_size is not None)]
    makers += [("floor", maker) for maker in ctx.floors(w)]
    for name, maker in makers:
        try:
            impl = maker(ctx, w, weights)
            impl.fit(warmup_epochs(w))
            impls.append(impl)
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
    times = {impl.name: [] for impl in impls}
    for _ in range(reps):
        for impl in list(impls):
            try:
                times[impl.name].append(timed(lambda: impl.fit(w.epochs)))
            except Exception as exc:
                errors[impl.name] = f"{type(exc).__name__}: {exc}"
                impls.remove(impl)
                del times[impl.name]
    return times


def figures(w, seconds, peak_gflops):
    """Median figures of one implementation on one workload."""
    med = statistics.median(seconds)
    gflops = w.flops_per_sample * w.samples / med / 1e9
    return {"times_s": seconds, "median_s": med, "ms_per_step": 1e3 * med / w.steps,
            "samples_per_s": w.samples / med, "gflops": gflops,
            "frac_peak": gflops / peak_gflops}


def describe(w):
    return {"key": w.key, "title": w.title, "sizes": w.layers or w.sizes, "arch": w.arch,
            "loss": w.loss, "lr": w.lr,
            "n": w.n, "batch_size": w.batch_size, "epochs": w.epochs, "steps": w.steps,
            "samples": w.samples, "flops_per_sample": w.flops_per_sample,
            "flops_per_step": w.flops_per_sample * w.samples / w.steps}


# ---------------------------------------------------------------- the whole run

def open_contestants(args):
    """Import fastmlp, torch and jax (with --only, those that implementation
    needs); whichever fails is skipped with its reason."""
    only = getattr(args, "only", None)
    need = (lambda *names: only is None or only in names)
    skipped = {}
    fm = None
    if need("fastmlp"):
        try:
            import fastmlp as fm
            if not hasattr(fm, "Sequential"):   # e.g. a checkout without fastmlp/__init__.py
                raise ImportError(f"fastmlp at {list(fm.__path__)} has no Sequential")
        except Exception as exc:
            fm = None
            skipped["fastmlp"] = f"not importable: {type(exc).__name__}: {exc}"
    torch = None
    torch_names = ("torch", "torch.compile", "torch-cudagraph")
    # fastmlp's P3 check runs against torch float64; the GPU's GEMM floor runs on torch
    if need(*torch_names) or (only == "fastmlp" and "p3" in args.workloads) or \
            (only == "floor" and args.device == "cuda"):
        torch, why = load_torch(args.threads)
        if torch is not None and args.device == "cuda" and not torch.cuda.is_available():
            torch, why = None, "skipped: torch has no CUDA device"
        if torch is None:
            skipped.update(dict.fromkeys(torch_names, why))
        elif args.device != "cuda":
            skipped["torch-cudagraph"] = "skipped: CUDA graphs need --device cuda"
    jax = None
    if need("jax"):
        jax, why = load_jax()
        if jax is None:
            skipped["jax"] = why
        elif args.device == "cuda" and jax.default_backend() != "gpu":
            skipped["jax"] = (f"skipped: jax runs on {jax.default_backend()} here, not on the GPU "
                              f"(a jax[cuda] install would)")
            jax = None
    if only is not None:   # report only what this process was asked to run
        skipped = {n: why for n, why in skipped.items() if n in ONLY[only]}
    return Context(fm, torch, args.device, skipped, jax, only, args.threads)


def machine_info(args, ctx):
    info = {"python": platform.python_version(), "numpy": np.__version__,
            "cpu": peer_report.cpu_name(), "cores": peer_report.core_count(),
            "threads": args.threads, "device": args.device, "quick": args.quick,
            "blas": peer_report.blas_name(), "flop_count_rule": flops.COUNT_RULE,
            "load_average_start": os.getloadavg()[0]}
    if ctx.torch is not None:
        info["torch"] = ctx.torch.__version__
    if ctx.jax is not None:
        info["jax"] = ctx.jax.__version__
    if ctx.fm is not None:
        info["fastmlp"] = getattr(ctx.fm, "__version__", "unknown")
    return info


def plan_of(args):
    plan = QUICK if args.quick else FULL
    if args.device == "cuda":  # steps are planned at the GPU's pace; the CPU peer must keep up
        plan = dataclasses.replace(plan, max_steps=GPU_MAX_STEPS)
    return plan


def measure_peaks(args, plan, torch):
    """The sgemm peaks {"cpu": ..., "cuda": ...} (given by --peak / --gpu-peak in
    an --isolate child, so that every process plans the same steps) and the runs."""
    peak_runs = []
    if getattr(args, "peak", None):
        peak = args.peak
        print(f"sgemm peak, 2048^3 float32: {peak:.1f} GFLOP/s (measured by the parent process)")
    else:
        peak, peak_runs = flops.sgemm_peak(2048, plan.peak_repeats)
        print(f"sgemm peak, 2048^3 float32, best of {plan.peak_repeats}: {peak:.1f} GFLOP/s "
              f"(runs {', '.join(f'{g:.0f}' for g in peak_runs)})")
    peaks = {"cpu": peak}
    if args.device == "cuda" and torch is not None:
        tf32 = bool(getattr(args, "tf32", False))
        peaks["cuda"] = getattr(args, "gpu_peak", None) or \
            flops.sgemm_peak_torch_cuda(2048, plan.peak_repeats, tf32=tf32)[0]
        print(f"GPU sgemm peak (torch, TF32 {'on' if tf32 else 'off'}): {peaks['cuda']:.1f} GFLOP/s")
        # the same arithmetic for both: torch's cuDNN convolutions default to TF32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    return peaks, peak_runs


def run(args):
    if getattr(args, "isolate", False):
        from peer_isolate import run_isolated
        return run_isolated(args)
    plan = plan_of(args)
    reps = args.reps or plan.reps
    if getattr(args, "tf32", False):  # read by CuPy when it is imported (fastmlp imports it lazily)
        os.environ["CUPY_TF32"] = "1"
    ctx = open_contestants(args)
    info = machine_info(args, ctx)
    peer_report.print_header(info, ctx.skipped)
    peaks, peak_runs = measure_peaks(args, plan, ctx.torch)
    peak = peaks["cpu"]

    data_dir, source = resolve_data_dir(args.data)
    print(f"data: {data_dir} ({source})" if data_dir else f"note: {source}; random data")
    workloads, notes = make_workloads(args.workloads, plan, peaks.get(args.device, peak), data_dir)
    for note in notes:
        print(("note: " if "random" in note else "data: ") + note)
    print(f"FLOP count: {flops.COUNT_RULE}")

    results, checked = [], {}
    for w in workloads:
        if ctx.only is not None and not ctx.makers(w) and not ctx.floors(w):
            continue   # e.g. --only numpy on P3, which has no NumPy peer
        weights = init_weights(w.sizes) if w.layers is None else init_cnn_weights(w.layers)
        arch = (tuple(w.layers or w.sizes), w.loss, w.lr, w.batch_size is None)
        if arch not in checked:
            checked[arch] = check_one_step(ctx, w, weights)
            peer_report.print_check(w, checked[arch])
        check = checked[arch]
        errors = {}
        times = run_workload(ctx, w, weights, reps, errors)
        impls = {name: figures(w, secs, peaks.get(impl_device(name, args.device), math.nan))
                 for name, secs in times.items()}
        result = describe(w) | {"reps": reps, "errors": errors, "check": check}
        compare(result, impls)
        if w.net == "cnn" and "fastmlp" in impls and args.device == "cpu":
            result["profile"] = profile_fastmlp(ctx, w, weights, chunked=True)
            result["profile_ops"] = profile_fastmlp(ctx, w, weights, chunked=False)
        if ctx.torch is not None and "torch.compile" in impls:
            result["torch_compile_graphs"] = TorchCompiledMLP.graphs()
        results.append(result)
        if ctx.only is None:
            peer_report.print_workload(result)

    if ctx.only is None:
        peer_report.print_summary(results)
    info["load_average_end"] = peer_report.print_load(info["cores"])
    if args.json:
        peer_report.write_json(args.json, info | {"peaks_gflops": peaks,
                                                  "peak_runs_gflops": peak_runs,
                                                  "skipped": ctx.skipped, "data": notes},
                               results)
        print(f"wrote {args.json}")
    print(peer_report.key_values(results, peak, args.threads))
    return 0


def compare(result, impls):
    """Split the GEMM floor's variants (floor@T) from the implementations and
    add the comparisons to result: "impls", "floor" (the fastest variant, with
    every variant under "variants"), each implementation's "x_floor" (its step
    time / the floor's), "speedup" (peer time / fastmlp time), "best_peer" (the
    fastest of PEERS) and "vs_best_peer" (its time / fastmlp's)."""
    floors = {n: f for n, f in impls.items() if n.startswith("floor")}
    impls = {n: f for n, f in impls.items() if not n.startswith("floor")}
    result["impls"] = impls
    if floors:
        best = min(floors, key=lambda n: floors[n]["median_s"])
        threads = best.partition("@")[2]
        result["floor"] = floors[best] | {"variant": best,
                                          "threads": int(threads) if threads else None,
                                          "variants": floors}
        for f in impls.values():
            f["x_floor"] = f["median_s"] / floors[best]["median_s"]
    result["speedup"] = speedups(impls)
    peers = [n for n in PEERS if n in impls]
    if "fastmlp" in impls and peers:
        best = min(peers, key=lambda n: impls[n]["median_s"])
        result["best_peer"] = best
        result["vs_best_peer"] = impls[best]["median_s"] / impls["fastmlp"]["median_s"]
    return result


# fastmlp.backend.cpu ops by kind, for the split of a CNN step
PROFILE_GROUPS = {
    "im2col": ("im2col",), "col2im": ("col2im",), "gemm": ("matmul",),
    "conv bias + layout": ("conv_bias_forward", "conv_bias_backward", "transpose"),
    "maxpool": ("maxpool_forward", "maxpool_backward"),
    "conv+act+pool fused": ("conv_bias_act_pool_forward", "conv_bias_act_pool_backward"),
    "relu": ("act_forward", "act_backward", "bias_act_forward", "act_backward_bias_grad"),
    "loss + update + gather": ("softmax_xent", "sgd_update", "gather_rows"),
}
CHUNKED_GROUP = {"conv chunked kernels": ("conv_act_pool_forward", "conv_act_pool_backward")}


def profile_fastmlp(ctx, w, weights, chunked=True):
    """Seconds per step of each group of fastmlp.backend.cpu ops in one epoch of w, timed by
    wrapping every op with perf_counter (as bench/profile_step.py does; about 1 us a call).
    "python" is the rest: the layer loop, argument checks, the wrappers. chunked=False
    turns the chunked conv kernels off (cpu.fused_conv_chunks): the same ops on the same
    chunks then run as separate calls, each timed."""
    from fastmlp.backend import cpu
    groups = PROFILE_GROUPS | (CHUNKED_GROUP if chunked and cpu.fused_conv_chunks else {})
    saved = cpu.fused_conv_chunks
    cpu.fused_conv_chunks = saved and chunked
    try:
        impl = FastmlpCNNImpl(ctx, w, weights)
        impl.fit(1)                                     # warm-up
        return _profile_epoch(cpu, impl, w, groups)
    finally:
        cpu.fused_conv_chunks = saved


def _profile_epoch(cpu, impl, w, groups):
    spent = dict.fromkeys(groups, 0.0)
    originals = {}
    for group, names in groups.items():
        for name in names:
            fn = originals[name] = getattr(cpu, name)

            def wrapped(*a, _fn=fn, _group=group, **kw):
                t = time.perf_counter()
                try:
                    return _fn(*a, **kw)
                finally:
                    spent[_group] += time.perf_counter() - t
            setattr(cpu, name, wrapped)
    try:
        total = timed(lambda: impl.fit(1))
    finally:
        for name, fn in originals.items():
            setattr(cpu, name, fn)
    steps = w.steps_per_epoch
    spent["python"] = max(0.0, total - sum(spent.values()))
    return {"step_ms": 1e3 * total / steps,
            "ms_per_step": {k: 1e3 * v / steps for k, v in spent.items()},
            "share": {k: v / total for k, v in spent.items()}}


def impl_device(name, device):
    return "cpu" if name == "numpy" else device


def speedups(impls):
    """fastmlp's speed-up over each peer: peer time / fastmlp time."""
    if "fastmlp" not in impls:
        return {}
    ours = impls["fastmlp"]["median_s"]
    return {name: f["median_s"] / ours for name, f in impls.items() if name != "fastmlp"}
