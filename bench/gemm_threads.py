"""One BLAS thread or all of them: the GEMM shapes of the workloads, timed both ways.

    python bench/gemm_threads.py

The results set ``SMALL_MACS`` in fastmlp/backend/cpu/blas.py: below it a
GEMM runs on one thread. Each line gives the multiply-adds, the best time of
several runs on one thread and on all threads, and which is faster.
"""
import time

import numpy as np
from threadpoolctl import ThreadpoolController

SHAPES = [  # (m, k, n): forward X @ W, backward A.T @ dZ and dZ @ W.T of the peers' networks
    (64, 784, 256), (64, 256, 256), (64, 256, 10), (784, 64, 256), (64, 256, 784),
    (128, 784, 256), (128, 256, 256), (784, 128, 256), (256, 128, 256), (128, 256, 784),
    (256, 784, 256), (784, 256, 256), (1024, 784, 256), (4096, 784, 256), (784, 4096, 256),
    (209, 12288, 20), (12288, 209, 20), (128, 784, 1024), (128, 1024, 1024), (2048, 2048, 2048),
]


def best_of(fn, reps=7):
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ctl = ThreadpoolController().select(user_api="blas").lib_controllers[0]
    most = ctl.get_num_threads()
    rng = np.random.default_rng(0)
    print(f"BLAS {ctl.internal_api} {ctl.version}, {most} threads")
    print(f"{'m x k x n':>20} {'MACs':>12} {'1 thread ms':>12} {f'{most} threads ms':>14}  faster")
    for m, k, n in SHAPES:
        a = rng.random((m, k), dtype=np.float32)
        b = rng.random((k, n), dtype=np.float32)
        out = np.empty((m, n), np.float32)
        times = []
        for threads in (1, most):
            ctl.set_num_threads(threads)
            times.append(best_of(lambda: np.matmul(a, b, out=out), 3 if m * k * n > 1e9 else 7))
        ctl.set_num_threads(most)
        faster = "1" if times[0] <= times[1] else str(most)
        print(f"{f'{m}x{k}x{n}':>20} {m * k * n:>12,} {times[0] * 1e3:>12.3f} {times[1] * 1e3:>14.3f}  {faster}")


if __name__ == "__main__":
    main()
