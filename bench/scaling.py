"""Data-parallel scaling of P2, measured on this machine and modelled for N nodes.

    python bench/scaling.py [--batches 256,1024] [--epochs 4] [--data DIR] [--json FILE]

P2: the 784-256-256-10 MLP on MNIST t10k (first 8,000 images), float32, SGD lr 0.1.
Measured, for each global batch B:
- 1 process of 2 threads (Numba and OpenBLAS at 2), ``fit`` without comm;
- 2 ranks of 1 thread each under ``mpiexec -n 2``, ``fit(..., comm=comm)``;
both in samples/s over the epochs after the first (JIT and warm-up); each rank
also times the flat-gradient reduction alone (MPI Allreduce of the (NP,) float32
buffer, 50 times) and 1 rank of 1 thread's step at B/2, so that the step splits
into compute and reduction.

Modelled (ring all-reduce, no overlap of reduction and compute): a step on N
nodes with per-rank batch b costs t_sample * b + T(N), with
T(N) = 2 (N-1)/N * bytes / bandwidth + 2 (N-1) * latency, bytes the flat
gradient (NP * 4). Efficiency t_sample * b / (t_sample * b + T(N)) >= 90 % needs
b >= 9 T(N) / t_sample: printed for 10 and 100 Gbit/s links (latency 5 us).
The model is checked against the 2-rank measurement: with T(2) = the measured
reduction and t_sample from the 1-thread step, it predicts the 2-rank
samples/s, printed beside the measured one.

Ends with the key=value line. Validates first: a 2-rank step equals one process's
on the same global batch (1e-5 relative in float32) before anything is timed.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = [784, 256, 256, 10]
TRAIN = 8000
LINKS_GBIT = (10, 100)
LATENCY_S = 5e-6
NODES = (2, 8, 64)


def set_threads(n):
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def load(data_dir):
    import numpy as np

    from fastmlp.data import load_mnist_t10k
    from fastmlp.preprocessing import scale_to_unit
    X, y, _, _ = load_mnist_t10k(data_dir)
    X = np.ascontiguousarray(scale_to_unit(X[:TRAIN]).reshape(TRAIN, -1), dtype=np.float32)
    return X, y[:TRAIN]


def model(seed=0):
    import fastmlp as fm
    layers = [fm.Dense(784, 256, init="he"), fm.ReLU(), fm.Dense(256, 256, init="he"), fm.ReLU(),
              fm.Dense(256, 10)]
    return fm.Sequential(layers, loss=fm.SoftmaxCrossEntropy(), optimizer=fm.SGD(lr=0.1), seed=seed)


def samples_per_s(h, n):
    """Median samples/s of the epochs after the first."""
    import numpy as np
    secs = h.history["seconds"][1:] or h.history["seconds"]
    return n / float(np.median(secs))


def worker(args):
    """Under mpiexec (or alone): one measurement, as JSON on stdout (the root's)."""
    import numpy as np

    import fastmlp as fm
    from fastmlp.distributed.reduce import gradient_reducer
    comm = fm.distributed.init()
    X, y = load(args.data)
    out = {"size": comm.size, "threads": int(os.environ.get("NUMBA_NUM_THREADS", "0")), "batches": {}}
    for b in args.batches:
        m = model()
        h = m.fit(X, y, epochs=args.epochs, batch_size=b, comm=comm if comm.size > 1 else None, verbose=0)
        row = {"samples_per_s": samples_per_s(h, TRAIN), "steps_per_epoch": -(-TRAIN // b)}
        row["step_s"] = 1.0 / row["samples_per_s"] * b
        if comm.size > 1:
            grads = m.flat.grads
            red = gradient_reducer(comm, m.be, grads)
            for _ in range(5):
                red(grads)
            comm.barrier()
            t0 = time.perf_counter()
            for _ in range(50):
                red(grads)
            row["reduce_s"] = comm.sum([(time.perf_counter() - t0) / 50])[0] / comm.size
            row["reduce_share"] = row["reduce_s"] / row["step_s"]
        out["batches"][b] = row
    out["grad_bytes"] = int(m.flat.grads.nbytes)
    if comm.size > 1:
        # validation: a 2-rank step against one process's on the same global batch
        single, dp = model(), model()
        single.fit(X[:512], y[:512], epochs=1, batch_size=256, shuffle=False, verbose=0)
        dp.fit(X[:512], y[:512], epochs=1, batch_size=256, shuffle=False, comm=comm, verbose=0)
        a = np.concatenate([w.ravel() for w in dp.get_weights()])
        s = np.concatenate([w.ravel() for w in single.get_weights()])
        out["check_rel_err"] = float(np.max(np.abs(a - s)) / np.max(np.abs(s)))
    if comm.is_root:
        print("RESULT " + json.dumps(out), flush=True)


def run(cmd, threads):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    line = next(l for l in r.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def ring_seconds(nodes, nbytes, gbit, latency=LATENCY_S):
    """Ring all-reduce of nbytes over nodes: 2 (N-1)/N of the buffer through each link, 2 (N-1) hops."""
    return 2 * (nodes - 1) / nodes * nbytes / (gbit * 1e9 / 8) + 2 * (nodes - 1) * latency


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="256,1024", help="global batch sizes")
    p.add_argument("--epochs", type=int, default=4, help="epochs a run (the first is not timed)")
    p.add_argument("--data", default=None, help="the mnist-t10k folder (default $FASTMLP_DATA or ../shared/data)")
    p.add_argument("--json", default=None, help="write every figure here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.data is None:
        base = os.environ.get("FASTMLP_DATA") or str(ROOT.parent / "shared" / "data")
        args.data = str(Path(base) / "mnist-t10k")
    if args.worker:
        return worker(args)
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    if mpiexec is None:
        sys.exit('mpiexec not found: pip install "fastmlp[distributed]"')
    me = [sys.executable, __file__, "--worker", "--batches", ",".join(map(str, args.batches)),
          "--epochs", str(args.epochs), "--data", args.data]
    print(f"P2 784-256-256-10 on MNIST t10k ({TRAIN} images), float32, SGD; {os.cpu_count()} CPUs "
          f"(load average {os.getloadavg()[0]:.2f} at the start: a busy machine gives lower, noisier figures)")
    one = run(me, threads=2)                          # 1 process of 2 threads
    two = run([mpiexec, "-n", "2"] + me, threads=1)   # 2 ranks of 1 thread
    half = run(me[:4] + [",".join(str(b // 2) for b in args.batches)] + me[5:], threads=1)  # 1 thread, B/2
    nbytes = two["grad_bytes"]
    print(f"validation: 2 ranks vs 1 process after 2 steps, relative error {two['check_rel_err']:.1e}")
    if two["check_rel_err"] > 1e-5:
        sys.exit("the 2-rank result differs from one process's: not timing")
    print(f"flat gradient: {nbytes / 1e6:.2f} MB a step\n")
    print("| global batch | 1 proc x 2 threads | 2 ranks x 1 thread | ratio | reduction ms | share of step "
          "| model: 2-rank samples/s |")
    print("|---|---|---|---|---|---|---|")
    figures = {"one": one, "two": two, "half": half, "grad_bytes": nbytes, "model": {}}
    pairs = []
    for b in args.batches:
        s1 = one["batches"][str(b)]["samples_per_s"]
        r2 = two["batches"][str(b)]
        s2 = r2["samples_per_s"]
        compute = half["batches"][str(b // 2)]["step_s"]           # 1 thread, per-rank batch
        predicted = b / (compute + r2["reduce_s"])
        figures["model"][b] = {"t_sample_s": compute / (b // 2), "predicted_2rank_samples_per_s": predicted}
        print(f"| {b} | {s1:,.0f} | {s2:,.0f} | {s2 / s1:.2f}x | {r2['reduce_s'] * 1e3:.2f} | "
              f"{100 * r2['reduce_share']:.1f} % | {predicted:,.0f} ({s2 / predicted:.2f} of it measured) |")
        pairs += [f"ratio_{b}={s2 / s1:.3f}", f"reduce_share_{b}={r2['reduce_share']:.3f}",
                  f"model_vs_measured_{b}={s2 / predicted:.3f}"]
    t_sample = min(v["t_sample_s"] for v in figures["model"].values())
    print(f"\nring all-reduce model, {nbytes / 1e6:.2f} MB a step, latency {LATENCY_S * 1e6:.0f} us a hop, "
          f"compute {t_sample * 1e6:.1f} us a sample on 1 thread:")
    print("| link | nodes | all-reduce ms | per-rank batch for 90 % efficiency |")
    print("|---|---|---|---|")
    for gbit in LINKS_GBIT:
        for nodes in NODES:
            t = ring_seconds(nodes, nbytes, gbit)
            need = 9 * t / t_sample
            print(f"| {gbit} Gbit/s | {nodes} | {t * 1e3:.2f} | {need:,.0f} |")
            figures["model"][f"{gbit}gbit_{nodes}"] = {"allreduce_s": t, "batch_for_90": need}
        pairs.append(f"batch90_{gbit}gbit={9 * ring_seconds(64, nbytes, gbit) / t_sample:.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    print(" ".join(pairs))


if __name__ == "__main__":
    main()
