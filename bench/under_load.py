"""Training speed on a quiet machine and beside one busy process: the default thread choice
(FASTMLP_THREADS=auto, backend/cpu/thread_count.py) against every fixed count.

    python bench/under_load.py                    # P2 (784-256-256-10, batch 128) and the demo
    python bench/under_load.py --workload p2 --rounds 3

Each setting trains in a fresh process (OpenBLAS and Numba read their thread counts once),
timed after a warm-up epoch; the busy process is a Python loop on one core that this script
starts before the loaded runs and stops after them. A third load, "numpy", times ten short
fits (20 steps each), each right after a NumPy product, whose OpenBLAS worker then spins on a
core for about 0.1 s: a thread of the training process itself. The settings are interleaved over
``--rounds`` rounds and the median samples/s is reported, with the default's ratio to the best
fixed count under the same load (the target: at least 0.95 both quiet and loaded). The last
line printed is machine-readable key=value pairs.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import fastmlp as fm
from fastmlp.backend.cpu import thread_count
workload = {workload!r}
if workload == "p2":
    from peer_data import load_mnist_t10k, resolve_data_dir
    X, y, _ = load_mnist_t10k(resolve_data_dir()[0])
    X, y = np.ascontiguousarray(X[:8000], np.float32), y[:8000]
    model = fm.Sequential([fm.Dense(784, 256), fm.ReLU(), fm.Dense(256, 256), fm.ReLU(), fm.Dense(256, 10)],
                          loss="softmax_crossentropy", optimizer=fm.SGD(0.1), seed=0)
    batch, epochs = 128, 3
else:   # the demo's network and data (python -m fastmlp demo)
    from fastmlp.data import make_shapes
    X, y, classes = make_shapes(10000, size=28, seed=0, centered=True)
    X = X.reshape(len(X), -1).astype(np.float32)
    model = fm.Sequential([fm.Dense(784, 256, init="he"), fm.ReLU(), fm.Dense(256, 256, init="he"), fm.ReLU(),
                           fm.Dense(256, len(classes))], loss="softmax_crossentropy",
                          optimizer=fm.SGD(0.01, momentum=0.9), seed=0)
    batch, epochs = 64, 3
model.fit(X, y, epochs=1, batch_size=batch, verbose=0)                 # warm-up: JIT, workspaces, threads
if {shadow!r}:   # short fits, each right after a NumPy product (OpenBLAS's worker then spins ~0.1 s)
    a, b = np.ones((256, 784), np.float32), np.ones((784, 256), np.float32)
    rows, seconds, threads = 20 * batch, 0.0, {{}}
    for _ in range(10):
        time.sleep(0.3)
        a @ b
        t0 = time.perf_counter()
        h = model.fit(X[:rows], y[:rows], epochs=1, batch_size=batch, verbose=0)
        seconds += time.perf_counter() - t0
        for k, v in h.threads.items():
            threads[str(k)] = threads.get(str(k), 0) + v
    print(json.dumps({{"samples_per_s": 10 * rows / seconds, "threads": threads}}))
else:
    t0 = time.perf_counter()
    h = model.fit(X, y, epochs=epochs, batch_size=batch, verbose=0)
    seconds = time.perf_counter() - t0
    print(json.dumps({{"samples_per_s": len(X) * epochs / seconds, "threads": {{str(k): v for k, v in h.threads.items()}}}}))
"""

BUSY = "while True: pass"


def run_worker(workload, threads, shadow=False):
    env = dict(os.environ)
    env["FASTMLP_THREADS"] = threads
    code = WORKER.format(root=str(ROOT), bench=str(ROOT / "bench"), workload=workload, shadow=shadow)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise RuntimeError(f"{workload} with FASTMLP_THREADS={threads} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python bench/under_load.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", default="p2,demo", help="comma-separated: p2, demo (default: both)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of every setting, interleaved (default 2)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from fastmlp.backend.cpu.cores import available_cores
    cores = available_cores()
    settings = ["auto"] + [str(n) for n in range(1, cores + 1)]
    print(f"{cores} cores available; settings: FASTMLP_THREADS={', '.join(settings)}; {args.rounds} round(s)")
    results, pairs = {}, []
    for load in ("quiet", "loaded", "numpy"):
        busy = subprocess.Popen([sys.executable, "-c", BUSY]) if load == "loaded" else None
        try:
            for workload in args.workload.split(","):
                runs = {s: [] for s in settings}
                for _ in range(args.rounds):
                    for s in settings:
                        runs[s].append(run_worker(workload, s, shadow=load == "numpy"))
                med = {s: statistics.median(r["samples_per_s"] for r in runs[s]) for s in settings}
                best = max((s for s in settings if s != "auto"), key=med.get)
                ratio = med["auto"] / med[best]
                chosen = runs["auto"][-1]["threads"]
                results[(load, workload)] = med
                print(f"{load:6s} {workload:5s} " + "  ".join(f"{s}: {med[s]:9,.0f}" for s in settings)
                      + f"  samples/s; auto / best fixed ({best}) = {ratio:.2f}; auto ran {chosen}")
                # every run, in the order they ran: a VM's neighbours can halve a run's speed
                # for seconds, and these show whether a median leans on such a run
                for s in settings:
                    print(f"{'':13s}{s:>4s} runs: " + ", ".join(f"{r['samples_per_s']:,.0f}" for r in runs[s]))
                pairs += [(f"{load}_{workload}_auto", f"{med['auto']:.0f}"),
                          (f"{load}_{workload}_best_fixed", f"{med[best]:.0f}"),
                          (f"{load}_{workload}_ratio", f"{ratio:.3f}")]
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    print(" ".join(f"{k}={v}" for k, v in pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
