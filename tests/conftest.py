"""Shared fixtures: a seeded rng, the real-data folder, the devices to run on.

Tests that run on every device take the ``device`` fixture (or parametrise
over ``DEVICES`` themselves); the "cuda" case is marked ``gpu`` and skips with
the reason ``fastmlp.backend.cuda_available()`` gives where no GPU is usable.
"""
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from fastmlp.backend import cuda_available
from fastmlp.backend.cpu.cores import most

# Training steps on all the cores whatever else the machine runs (the default, "auto", takes
# fewer under load: backend/cpu/thread_count.py), so that the tests comparing two runs bit
# for bit do not depend on the load; tests/test_step_threads.py tests "auto" itself.
os.environ.setdefault("FASTMLP_THREADS", str(most()))

_CUDA_OK, _CUDA_WHY = cuda_available()

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu,
                                pytest.mark.skipif(not _CUDA_OK, reason=f"no CUDA device: {_CUDA_WHY}")]),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def data_dir():
    """``$FASTMLP_DATA``, else ``../shared/data`` beside the repository; skips when absent."""
    env = os.environ.get("FASTMLP_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"data folder {path} not found (set FASTMLP_DATA to the folder holding catvnoncat/)")
    return path


def train_step_growth(model, X, y, batch_size=64, steps=10):
    """Peak bytes of Python objects traced over ``steps`` training steps of one batch,
    after a warm-up epoch and step (the no-per-step-allocation checks)."""
    model.fit(X, y, epochs=1, batch_size=batch_size)
    xb, tb = model.batch_buffers.get(batch_size, *model.prepare(X, y))
    model.train_step(xb, tb, model.stats)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(steps):
            model.train_step(xb, tb, model.stats)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base, xb.nbytes
