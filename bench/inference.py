"""Inference side by side: latency and throughput of predict, fastmlp against NumPy, PyTorch and onnxruntime.

    python bench/inference.py                      # both networks, batch 1, 32, 256, 1 and 2 threads
    python bench/inference.py --quick              # fewer calls (a smoke test)
    python bench/inference.py --network p2 --seconds 2

Networks (float32, the same weights in every implementation):
  p2   784-256-256-10, ReLU, softmax
  cnn  conv3x3(1->16, pad 1)+ReLU+maxpool 2, conv3x3(16->32, pad 1)+ReLU+maxpool 2,
       1568-256-10, softmax (P3's network), 28x28 inputs

Implementations: fastmlp ``model.predict``; NumPy from scratch (p2 only: a plain forward pass
and softmax); PyTorch eager under ``torch.inference_mode``; onnxruntime on the same network
exported by ``fastmlp.export_onnx``. PyTorch and onnxruntime are optional: missing,
their rows are skipped with the reason. Every implementation is first checked against a
NumPy float64 forward pass on the same inputs; then each is warmed up, and the timed calls
are interleaved (a round of each in turn) so that the drifts of a shared machine hit all alike.

Latency: one call at a time, median and 99th percentile in microseconds. Throughput: 1 and 2
Python threads calling predict on one shared model (one session, one module) at batch 32 for
a fixed time, calls a second; the ratio is the scaling. Then calls far apart (10 and 100 ms
between calls: the thread pools have gone to sleep), and fastmlp's latency from a request
thread after the main thread predicted, as it is and after ``fm.release_prediction_threads()``.
The last line printed is machine-readable key=value pairs.
"""
import argparse
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import fastmlp as fm  # noqa: E402

BATCHES = (1, 32, 256)


# ---------------------------------------------------------------------- the networks

def build(network, seed=0):
    """The fastmlp model of ``network`` with its weights drawn from ``seed``."""
    if network == "p2":
        layers = [fm.Dense(784, 256), fm.ReLU(), fm.Dense(256, 256), fm.ReLU(), fm.Dense(256, 10)]
        shape = (784,)
    else:
        layers = [fm.Conv2D(1, 16, 3, padding=1), fm.ReLU(), fm.MaxPool2D(2), fm.Conv2D(16, 32, 3, padding=1),
                  fm.ReLU(), fm.MaxPool2D(2), fm.Flatten(), fm.Dense(1568, 256), fm.ReLU(), fm.Dense(256, 10)]
        shape = (1, 28, 28)
    model = fm.Sequential(layers, loss="softmax_crossentropy", seed=seed, input_shape=shape)
    rng = np.random.default_rng(seed)
    model.set_weights([w + 0.01 * rng.standard_normal(w.shape) for w in model.get_weights()])  # nonzero biases
    return model, shape


def reference(model, x):
    """Softmax probabilities of ``model`` on x, a NumPy float64 forward pass of its weights."""
    w = [a.astype(np.float64) for a in model.get_weights()]
    a = x.astype(np.float64)
    if len(w) == 6:                                    # p2
        for k in (0, 2):
            a = np.maximum(a @ w[k] + w[k + 1], 0)
        z = a @ w[4] + w[5]
    else:
        for k in (0, 2):
            a = np.maximum(_conv_same(a, w[k], w[k + 1]), 0)
            n, c, h, ww = a.shape
            a = a.reshape(n, c, h // 2, 2, ww // 2, 2).max(axis=(3, 5))
        a = np.maximum(a.reshape(len(a), -1) @ w[4] + w[5], 0)
        z = a @ w[6] + w[7]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _conv_same(x, W, b):
    # x (N, C, H, W) * W (M, C, 3, 3), zero padding 1, stride 1
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, W.shape[0], h, w))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,mc->nmhw", xp[:, :, i:i + h, j:j + w], W[:, :, i, j])
    return out + b[None, :, None, None]


class NumpyMLP:
    """The p2 forward pass as a user would write it in NumPy (float32)."""

    def __init__(self, model):
        self.w = model.get_weights()

    def predict(self, x):
        w = self.w
        a = np.maximum(x @ w[0] + w[1], 0)
        a = np.maximum(a @ w[2] + w[3], 0)
        z = a @ w[4] + w[5]
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z


def torch_module(model, network):
    """(torch module with the same weights, None) or (None, why not)."""
    try:
        import torch
    except ImportError as e:
        return None, f"PyTorch not installed ({e}); pip install torch"
    nn = torch.nn
    w = model.get_weights()
    if network == "p2":
        mod = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10),
                            nn.Softmax(dim=1))
        linears = [mod[0], mod[2], mod[4]]
        convs = []
    else:
        mod = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                            nn.Linear(1568, 256), nn.ReLU(), nn.Linear(256, 10), nn.Softmax(dim=1))
        convs, linears = [mod[0], mod[3]], [mod[7], mod[9]]
    arrays = iter(w)
    with torch.no_grad():
        for conv in convs:
            conv.weight.copy_(torch.from_numpy(next(arrays)))
            conv.bias.copy_(torch.from_numpy(next(arrays)))
        for lin in linears:
            lin.weight.copy_(torch.from_numpy(next(arrays).T.copy()))   # ours is (in, out)
            lin.bias.copy_(torch.from_numpy(next(arrays)))
    return mod.eval(), None


class TorchPredict:
    def __init__(self, mod):
        import torch
        self.torch, self.mod = torch, mod

    def predict(self, x):
        with self.torch.inference_mode():
            return self.mod(self.torch.from_numpy(x)).numpy()


def onnx_session(model, folder):
    """(onnxruntime predict object, None) or (None, why not): the model exported by
    fastmlp's own ``export_onnx`` (no PyTorch in the process)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        return None, f"onnxruntime not installed ({e}); pip install onnx onnxruntime"
    path = Path(folder) / "net.onnx"
    try:
        fm.export_onnx(model, path)
    except ImportError as e:
        return None, f"onnx not installed ({e}); pip install onnx onnxruntime"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    class Session:
        def predict(self, x):
            return sess.run(None, {name: x})[0]
    return Session(), None


# ---------------------------------------------------------------------- timing

# OpenBLAS's worker threads spin on a core for about 0.1 s after each multi-threaded product
# (the reference check's, the NumPy implementation's), and the other libraries' pools spin a
# while too: the timed calls start this long after the warm-up, and a round this long after
# another implementation's round, on a machine where no other implementation's threads spin.
# What OpenBLAS's spinning does to each is measured on its own (after_numpy).
QUIET_S = 0.25
AFTER_CALLS = 300


def latency(impls, x, calls, rounds):
    """{name: (median us, p99 us)} of one call at a time, rounds interleaved."""
    times = {name: [] for name in impls}
    per_round = max(1, calls // rounds)
    for _ in range(rounds):
        for name, impl in impls.items():
            if len(impls) > 1:
                time.sleep(QUIET_S)
            t = times[name]
            for _ in range(per_round):
                t0 = time.perf_counter()
                impl.predict(x)
                t.append(time.perf_counter() - t0)
    return {name: (1e6 * float(np.median(t)), 1e6 * float(np.percentile(t, 99))) for name, t in times.items()}


def after_numpy(impl, x, calls, rounds, rng):
    """(median us, p99 us, mean us) of the ``calls`` calls right after a multi-threaded NumPy
    product (a 256x784 @ 784x256 float32 GEMM, as a server's own preprocessing might run),
    ``rounds`` times: while OpenBLAS's worker spins on one of the cores."""
    a = rng.random((256, 784), dtype=np.float32)
    b = rng.random((784, 256), dtype=np.float32)
    t = []
    for _ in range(rounds):
        time.sleep(QUIET_S)
        a @ b
        for _ in range(calls):
            t0 = time.perf_counter()
            impl.predict(x)
            t.append(time.perf_counter() - t0)
    us = 1e6 * np.array(t)
    return float(np.median(us)), float(np.percentile(us, 99)), float(us.mean())


# Requests far apart, a server's usual traffic: each call this long after the last. Thread
# pools asleep by then wake for the call (fastmlp's own rule: backend/cpu/team_wake.py).
PAUSES_S = (0.01, 0.1)


def far_apart(impls, x, pause, calls):
    """{name: (median us, largest us)} of ``calls`` calls, each ``pause`` s after the last
    one of any implementation (a call of each in turn)."""
    times = {name: [] for name in impls}
    for _ in range(calls):
        for name, impl in impls.items():
            time.sleep(pause)
            t0 = time.perf_counter()
            impl.predict(x)
            times[name].append(time.perf_counter() - t0)
    return {name: (1e6 * float(np.median(t)), 1e6 * float(np.max(t))) for name, t in times.items()}


def request_thread(model, x, calls):
    """(median us of ``calls`` predictions from a new thread while the main thread owns the
    parallel predictions, the same after the main thread hands them over)."""
    def timed():
        for _ in range(100):
            model.predict(x)
        t = []
        for _ in range(calls):
            t0 = time.perf_counter()
            model.predict(x)
            t.append(time.perf_counter() - t0)
        return 1e6 * float(np.median(t))

    medians = []
    for release in (False, True):
        model.predict(x)                   # the main thread predicts: it owns the cores
        if release:
            fm.release_prediction_threads()
        time.sleep(QUIET_S)
        worker = threading.Thread(target=lambda: medians.append(timed()))
        worker.start()
        worker.join()
    return medians[0], medians[1]


def throughput(impl, x, threads, seconds):
    """Calls a second of ``threads`` threads calling impl.predict(x) for ``seconds``."""
    counts = [0] * threads
    stop = time.perf_counter() + seconds
    start = threading.Barrier(threads + 1)

    def work(k):
        start.wait()
        n = 0
        while time.perf_counter() < stop:
            impl.predict(x)
            n += 1
        counts[k] = n

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for th in pool:
        th.start()
    t0 = time.perf_counter()
    start.wait()
    for th in pool:
        th.join()
    return sum(counts) / (time.perf_counter() - t0)


def run_network(network, args, out, kv):
    import tempfile
    model, shape = build(network)
    impls = {"fastmlp": model}
    skipped = {}
    if network == "p2":
        impls["numpy"] = NumpyMLP(model)
    # --only: the peers not measured are not built either: with PyTorch loaded and run once
    # in the process, fastmlp's predict at batch 1 took 44 against 30 us
    wanted = lambda name: not args.only or name in args.only  # noqa: E731
    if wanted("torch"):
        mod, why = torch_module(model, network)
        if mod is not None:
            impls["torch"] = TorchPredict(mod)
        else:
            skipped["torch"] = why
    with tempfile.TemporaryDirectory() as folder:
        if wanted("onnxruntime"):
            sess, why = onnx_session(model, folder)
            if sess is not None:
                impls["onnxruntime"] = sess
            else:
                skipped["onnxruntime"] = why
        rng = np.random.default_rng(1)
        x = rng.random((64,) + shape, dtype=np.float32)
        ref = reference(model, x)
        out(f"\n{network}: check against a NumPy float64 forward pass on 64 inputs (tolerance 1e-4)")
        for name, impl in impls.items():
            err = float(np.abs(np.asarray(impl.predict(x), np.float64) - ref).max())
            out(f"  {name:12s} largest difference {err:.1e}  {'ok' if err < 1e-4 else 'FAILED'}")
            if err >= 1e-4:
                raise SystemExit(f"{network}: {name} disagrees with the reference by {err}")
        for name, why in skipped.items():
            out(f"  {name:12s} skipped: {why}")
        if args.only:   # measured alone in this process: no other implementation's threads spin
            impls = {n: impl for n, impl in impls.items() if n in args.only}
        for name, impl in impls.items():        # warm-up: JIT, workspaces, thread pools
            for b in BATCHES:
                impl.predict(x[:b] if b <= len(x) else rng.random((b,) + shape, dtype=np.float32))
        time.sleep(QUIET_S)
        out(f"\n{network}: latency of one call, microseconds (median / p99), one thread at a time")
        out("  " + f"{'batch':>6s}" + "".join(f"{name:>22s}" for name in impls) + "   fastmlp vs each")
        for b in BATCHES:
            xb = rng.random((b,) + shape, dtype=np.float32)
            calls = args.calls if b < 256 else max(20, args.calls // 8)
            lat = latency(impls, xb, calls, args.rounds)
            cells = "".join(f"{lat[n][0]:>13.1f} / {lat[n][1]:>6.1f}" for n in impls)
            ratios = " ".join(f"{n} {lat[n][0] / lat['fastmlp'][0]:.2f}x" for n in impls
                              if n != "fastmlp" and "fastmlp" in lat)
            out(f"  {b:>6d}{cells}   {ratios}")
            for n in impls:
                kv[f"{network}_{n}_b{b}_us"] = round(lat[n][0], 1)
                kv[f"{network}_{n}_b{b}_p99_us"] = round(lat[n][1], 1)
                if n != "fastmlp" and "fastmlp" in lat:
                    kv[f"{network}_b{b}_vs_{n}"] = round(lat[n][0] / lat["fastmlp"][0], 2)
        out(f"\n{network}: the {AFTER_CALLS} calls right after a NumPy product (OpenBLAS's worker spinning "
            f"on a core), {args.rounds} times, microseconds (median / p99 / mean)")
        for b in (1, 32):
            xb = rng.random((b,) + shape, dtype=np.float32)
            cells = []
            for n, impl in impls.items():
                med, p99, mean = after_numpy(impl, xb, AFTER_CALLS, args.rounds, rng)
                cells.append(f"{n} {med:.1f} / {p99:.1f} / {mean:.1f}")
                kv[f"{network}_{n}_b{b}_after_numpy_us"] = round(med, 1)
                kv[f"{network}_{n}_b{b}_after_numpy_p99_us"] = round(p99, 1)
                kv[f"{network}_{n}_b{b}_after_numpy_mean_us"] = round(mean, 1)
            out(f"  {b:>6d}   " + "   ".join(cells))
        far = max(5, args.calls // 50)
        out(f"\n{network}: {far} calls far apart (a pause before each), microseconds (median / largest)")
        for b in (1, 32):
            xb = rng.random((b,) + shape, dtype=np.float32)
            for pause in PAUSES_S:
                lat = far_apart(impls, xb, pause, far)
                cells = "   ".join(f"{n} {lat[n][0]:.1f} / {lat[n][1]:.1f}" for n in impls)
                out(f"  {b:>6d}  {pause * 1e3:>4.0f} ms   {cells}")
                for n in impls:
                    key = f"{network}_{n}_b{b}_apart{pause * 1e3:.0f}ms"
                    kv[key + "_us"] = round(lat[n][0], 1)
                    kv[key + "_max_us"] = round(lat[n][1], 1)
        out(f"\n{network}: throughput at batch 32, calls a second, {args.seconds:g} s per run, one shared "
            "model / session")
        xb = rng.random((32,) + shape, dtype=np.float32)
        for name, impl in impls.items():
            time.sleep(QUIET_S)
            one = throughput(impl, xb, 1, args.seconds)
            two = throughput(impl, xb, 2, args.seconds)
            out(f"  {name:12s} 1 thread {one:>9,.0f}   2 threads {two:>9,.0f}   scaling {two / one:.2f}x")
            kv[f"{network}_{name}_1t_calls_s"] = round(one)
            kv[f"{network}_{name}_2t_calls_s"] = round(two)
            kv[f"{network}_{name}_2t_scaling"] = round(two / one, 2)
        if "fastmlp" in impls:
            alone, handed = request_thread(impls["fastmlp"], xb, args.calls)
            out(f"\n{network}: fastmlp at batch 32 from a request thread after the warm-up in the main "
                f"thread, median us: {alone:.1f} as it is, {handed:.1f} after fm.release_prediction_threads()")
            kv[f"{network}_fastmlp_b32_request_thread_us"] = round(alone, 1)
            kv[f"{network}_fastmlp_b32_request_thread_released_us"] = round(handed, 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", default="p2,cnn", help="comma-separated: p2, cnn")
    p.add_argument("--calls", type=int, default=2000, help="timed calls per implementation and batch")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds the calls are split into")
    p.add_argument("--seconds", type=float, default=2.0, help="length of each throughput run")
    p.add_argument("--quick", action="store_true", help="200 calls, 0.5 s throughput runs")
    p.add_argument("--only", type=lambda t: t.split(","), default=None,
                   help="measure only these implementations (comma-separated), e.g. one per process: "
                        "the thread pools of the others (OpenBLAS's, onnxruntime's, Numba's) then never "
                        "spin beside it")
    args = p.parse_args(argv)
    if args.quick:
        args.calls, args.seconds = 200, 0.5
    networks = [n.strip() for n in args.network.split(",") if n.strip()]
    for n in networks:
        if n not in ("p2", "cnn"):
            p.error(f"expected networks p2 and/or cnn, got {n!r}")
    import numba
    print(f"inference: python {platform.python_version()}, numpy {np.__version__}, fastmlp {fm.__version__}, "
          f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), numba threads "
          f"{numba.get_num_threads()}")
    kv = {}
    for n in networks:
        run_network(n, args, print, kv)
    print()
    print(" ".join(f"{k}={v}" for k, v in kv.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
