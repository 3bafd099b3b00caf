"""JIT start-up: seconds from ``import fastmlp`` to the first finished training step.

    python bench/startup.py            # cold (empty Numba cache) then warm (cached), 3 runs each

Each run is a fresh Python process with NUMBA_CACHE_DIR pointing at a
temporary folder: the first run compiles every kernel it touches and writes
the cache (cold), the later ones load it (warm). The target is warm < 2 s.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import time
t0 = time.perf_counter()
import numpy as np
import fastmlp as fm
t_import = time.perf_counter() - t0
X = np.random.default_rng(0).random((256, 784), dtype=np.float32)
y = np.arange(256) % 10
m = fm.Sequential([fm.Dense(784, 256), fm.ReLU(), fm.Dense(256, 256), fm.ReLU(), fm.Dense(256, 10)],
                  loss=fm.SoftmaxCrossEntropy(), optimizer=fm.SGD(0.1), seed=0)
m.fit(X, y, epochs=1, batch_size=256, verbose=0)
print(f"{t_import:.4f} {time.perf_counter() - t0:.4f}")
"""


def run_once(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                         check=True, timeout=600).stdout.split()
    return float(out[0]), float(out[1])


def main():
    with tempfile.TemporaryDirectory() as cache:
        cold = [run_once(cache)]
        warm = [run_once(cache) for _ in range(3)]
    warm_best = min(w[1] for w in warm)
    print(f"cold (empty Numba cache): import {cold[0][0]:.2f} s, first step done at {cold[0][1]:.2f} s")
    print(f"warm (cached), best of 3: import {min(w[0] for w in warm):.2f} s, first step done at {warm_best:.2f} s")
    print(json.dumps({"cold_s": cold[0][1], "warm_s": warm_best}))
    print(f"cold_s={cold[0][1]:.3f} warm_s={warm_best:.3f}")


if __name__ == "__main__":
    main()
