"""Side-by-side peers runner: fastmlp against a NumPy from-scratch MLP, PyTorch
(eager, torch.compile of the step, CUDA graphs on a GPU), JAX (jit of the step),
and the GEMM floor of the step.

    python bench/peers.py --quick                  # every workload, fewer reps and sizes
    python bench/peers.py --workload p1            # cat / non-cat only
    python bench/peers.py --workload p2,batch --threads 2 --json peers.json
    python bench/peers.py --quick --workload p2 --isolate --rounds 2   # a process each

Workloads (float32):
  p1     cat / non-cat, full batch 209 x 12288, [12288, 20, 7, 5, 1], ReLU,
         sigmoid/BCE, SGD lr 0.0075
  p2     784-256-256-10, softmax cross-entropy, SGD lr 0.1, batch 64, 128 and
         256, on the first 8,000 MNIST t10k images
  width  784-W-W-10, W = 64 ... 4096, batch 128, SGD lr 0.01
  batch  the p2 network, batch 1 ... 4096, SGD lr 0.01
  p3     the small CNN: conv3x3(1->16)+ReLU+pool2, conv3x3(16->32)+ReLU+pool2,
         dense 1568-256-10, SGD lr 0.05, batch 64, MNIST 28x28 (fastmlp and
         torch; checked against torch float64; fastmlp's step profiled)
  p2big  (GPU) the p2 network at batch 1024 and 8192 (MNIST repeated to 2 batches)
  wide   (GPU) 784-4096-4096-4096-4096-10, batch 4096, SGD lr 0.01 (no NumPy peer
         on --device cuda: a step is 1.3 TFLOP)
--tf32 lets both fastmlp (CUPY_TF32=1) and torch use TF32 tensor cores.
(The sweeps use lr 0.01 so that batch 1 and W 4096 stay finite; the learning
rate does not change the work of a step.)

Every implementation first takes one step from the same weights and is
checked against the NumPy float64 reference; then each warms up, and the
timed runs are interleaved (fastmlp, numpy, torch, ..., the GEMM floor at 1
.. --threads BLAS threads, fastmlp, ...) so that the drifts of a shared machine
hit all alike; medians are reported. Each MLP row gives its step time over
the floor's ("x floor"), and fastmlp's speed-up over the fastest peer. With
--isolate each implementation runs in its own process instead (peers.py
--only IMPL --json FILE, one after the other, --rounds times; medians over the
rounds). The last line printed is machine-readable key=value pairs.

This file only parses the command line and limits the threads; the work is in
peer_runner.py (checks and timing), peer_isolate.py (--isolate) and
peer_report.py (tables, JSON).
"""
import argparse
import os
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
WORKLOADS = ("p1", "p2", "width", "batch", "p3")
GPU_WORKLOADS = ("p2big", "wide")  # P2 at batch 1024 and 8192, 784-4x4096-10 at batch 4096
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMBA_NUM_THREADS")
ONLY_CHOICES = ("fastmlp", "numpy", "torch", "torch.compile", "jax", "torch-cudagraph", "floor")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python bench/peers.py",
        description="Time fastmlp against a NumPy from-scratch MLP, PyTorch (eager, compiled) "
                    "and JAX, and against the GEMM floor of its step, side by side.")
    p.add_argument("--quick", action="store_true",
                   help="fewer repetitions and sweep sizes (under ten minutes on 2 cores)")
    p.add_argument("--workload", default=",".join(WORKLOADS),
                   help=f"comma-separated subset of {','.join(WORKLOADS + GPU_WORKLOADS)} "
                        f"(default: {','.join(WORKLOADS)}; the last two are for --device cuda)")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="threads for BLAS, Numba and torch alike (default: all cores)")
    p.add_argument("--data", metavar="DIR",
                   help="data folder (default: $FASTMLP_DATA, else ../shared/data)")
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    p.add_argument("--reps", type=int,
                   help="timed runs per implementation (default: 3 with --quick, else 5)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="device of fastmlp and torch; the NumPy peer always runs on the CPU")
    p.add_argument("--tf32", action="store_true",
                   help="let cuBLAS use TF32 tensor cores for float32 GEMMs, in fastmlp (CUPY_TF32=1) "
                        "and torch alike (default: off, plain float32)")
    p.add_argument("--isolate", action="store_true",
                   help="run each implementation in its own process (peers.py --only IMPL), "
                        "interleaved over --rounds rounds; medians over the rounds "
                        "(default: all in this process, their timed runs interleaved)")
    p.add_argument("--rounds", type=int, default=2,
                   help="with --isolate: rounds of one process per implementation (default 2)")
    p.add_argument("--only", choices=ONLY_CHOICES,
                   help="run and check one implementation only (what --isolate starts; "
                        "write its figures with --json)")
    p.add_argument("--peak", type=float, help=argparse.SUPPRESS)      # --isolate's children:
    p.add_argument("--gpu-peak", type=float, help=argparse.SUPPRESS)  # the parent's peaks
    args = p.parse_args(argv)
    args.workloads = [w.strip() for w in args.workload.split(",") if w.strip()]
    unknown = [w for w in args.workloads if w not in WORKLOADS + GPU_WORKLOADS]
    if unknown or not args.workloads:
        p.error(f"--workload expects a subset of {','.join(WORKLOADS + GPU_WORKLOADS)}, got {args.workload!r}")
    if args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.isolate and args.only:
        p.error("--isolate starts one process per implementation; it cannot be given with --only")
    if args.reps is not None and args.reps < 1:
        p.error(f"--reps must be at least 1, got {args.reps}")
    return args


def limit_threads(n):
    # OpenBLAS, MKL and Numba read these once, when they load: this must run
    # before numpy, numba or torch is imported (torch gets set_num_threads too).
    if "numpy" in sys.modules:
        print(f"note: numpy was imported before --threads {n} could apply to it")
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    # XLA's CPU client (JAX) takes no thread count: one thread is its Eigen pool off,
    # more use every core (the JAX rows of a --threads below the cores say so)
    if n == 1 and "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false"
                                   " intra_op_parallelism_threads=1").strip()


def main(argv=None):
    args = parse_args(argv)
    limit_threads(args.threads)
    for path in (BENCH_DIR.parent, BENCH_DIR):   # bench/ first, then the checkout
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    from peer_runner import run  # imported only now: numpy must see the thread limits
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
