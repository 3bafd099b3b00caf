"""bench/zero_skip.py: the first layer's products with and without the batch's zeros."""
import sys
from pathlib import Path

import numpy as np
import pytest

from fastmlp.backend.cpu import zero_tiles

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
try:
    import zero_skip
finally:
    sys.path.remove(str(ROOT / "bench"))

pytestmark = pytest.mark.skipif(not zero_tiles.available(), reason="the register tiles need AVX-512")


def _images(rng, n=512):
    live = rng.random(784) < 0.4
    return np.where(live & (rng.random((n, 784)) < 0.5), rng.random((n, 784)), 0).astype(np.float32)


def test_the_products_are_timed_on_a_batch_with_zeros_to_skip(rng):
    blas, plan, fwd, wg, density = zero_skip.products(_images(rng), 32, 3, rng)
    assert min(blas, plan, fwd, wg) > 0 and 0 < density <= zero_tiles.SKIP_DENSITY


def test_the_step_comparison_trains_one_model_of_each_kind(rng):
    X = _images(rng)
    skip_ms, blas_ms, used = zero_skip.steps(X, rng.integers(0, 10, len(X)), 64, 1)
    assert skip_ms > 0 and blas_ms > 0 and used
