"""bench/step_bound.py: the least a step of separate kernels can take (its parts, their sum)."""
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
try:
    import step_bound
finally:
    sys.path.remove(str(ROOT / "bench"))


def test_bare_sgd_is_numpys_float32_update(rng):
    w = rng.standard_normal(1000).astype(np.float32)
    g = rng.standard_normal(1000).astype(np.float32)
    want = w - np.float32(0.05) * g
    step_bound.bare_sgd(w, g, 0.05)
    np.testing.assert_array_equal(w, want)


def test_bare_adam_is_torchs_adam_without_bias_correction(rng):
    w64 = rng.standard_normal(500)
    g64 = rng.standard_normal(500)
    m64, v64 = rng.standard_normal(500) * 0.1, np.abs(rng.standard_normal(500)) * 0.1
    w, g, m, v = (a.astype(np.float32) for a in (w64, g64, m64, v64))
    step_bound.bare_adam(w, m, v, g, 1e-3, 0.9, 0.999, 1e-8)
    m_want = 0.9 * m64 + 0.1 * g64
    v_want = 0.999 * v64 + 0.001 * g64 * g64
    w_want = w64 - 1e-3 * m_want / (np.sqrt(v_want) + 1e-8)
    np.testing.assert_allclose(m, m_want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(v, v_want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(w, w_want, rtol=1e-5, atol=1e-6)


def test_the_bound_has_every_part_and_is_above_its_floor():
    parts, engine, bare = step_bound.bound(32, "sgd", 1, repeats=5, n_data=256)
    assert list(parts) == ["GEMM floor", "gather", "bias + activation", "activation gradient + bias gradient",
                           "loss + gradient"]
    assert all(v > 0 for v in parts.values()) and engine > 0 and bare > 0
    parts, engine, bare = step_bound.bound(32, "adam", 1, repeats=5, n_data=256)
    assert engine > 0 and bare > 0


def test_report_line(capsys):
    step_bound.main(["--batch", "32", "--repeats", "5", "--threads", "1", "--steps", "10"])
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("batch=32 "))
    fields = dict(kv.split("=") for kv in line.split())
    floor, least = float(fields["floor_ms"]), float(fields["least_ms"])
    assert abs(least - (floor + float(fields["between_ms"]) + float(fields["bare_update_ms"]))) < 1e-3
    assert least > floor > 0
    assert "fastmlp's step" in out and "10 steps: at least" in out
