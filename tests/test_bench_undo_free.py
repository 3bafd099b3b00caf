"""bench/undo_free.py: P2's plain SGD step with and without the undo copy."""
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
try:
    import undo_free
finally:
    sys.path.remove(str(ROOT / "bench"))


def test_both_fits_are_timed_and_agree_bit_for_bit(rng):
    X = rng.random((256, 784), dtype=np.float32)
    free_ms, copy_ms, same, share = undo_free.steps(X, rng.integers(0, 10, 256), 64, 2)
    assert free_ms > 0 and copy_ms > 0
    assert same and share == 1.0
    assert undo_free.cpu.undo_free is undo_free.UNDO_FREE       # the backend put back
