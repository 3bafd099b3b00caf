"""The register-tile GEMM of predictions (backend/cpu/tile_gemm.py): act(a @ w + b) against
the NumPy float64 reference for every tile shape, a narrow last panel, every activation and
both dtypes; a row's bits the same in any batch, a column's whatever the width of its tile; no read past the end of W; and which
predictions hold BLAS at one thread (those that call it)."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numba import njit

import fastmlp as fm
from fastmlp.backend import codes, reference
from fastmlp.backend.cpu import blas_threads, dense_chain, tile_gemm

needs_tiles = pytest.mark.skipif(not tile_gemm.available(), reason="the CPU has no AVX-512 (or "
                                 "FASTMLP_TILE_GEMM=0): predictions call BLAS instead")

@njit(nogil=True)
def _dense_rows(z, a, w, b, code, alpha):
    buf = np.empty(tile_gemm.MR * tile_gemm.LDC, dtype=z.dtype)
    tile_gemm.dense_rows(z, a, w, b, code, alpha, buf)


def _reference(a, w, b, code, alpha):
    # reference.bias_act_forward on the float64 product
    z = a.astype(np.float64) @ w.astype(np.float64)
    reference.bias_act_forward(z, b.astype(np.float64), code, alpha)
    return z


def _case(rows, d, m, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, d)).astype(dtype), rng.standard_normal((d, m)).astype(dtype),
            rng.standard_normal(m).astype(dtype))


@needs_tiles
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("d", [1, 3, 784])
def test_every_tile_shape_matches_the_reference(dtype, d):
    # rows 1 .. 17 and 64 take every tile height (1 .. 8) and more than one tile; the widths
    # take full and narrow last panels of every tile width (16, 32, 48, 64, 128 floats)
    tol = 1e-12 if dtype == "float64" else 3e-6
    for rows in list(range(1, 18)) + [64]:
        for m in (1, 10, 15, 16, 17, 33, 48, 100, 129, 256):
            a, w, b = _case(rows, d, m, dtype, seed=rows * 1000 + m)
            z = np.full((rows, m), np.nan, dtype)
            _dense_rows(z, a, w, b, codes.RELU, 0.0)
            ref = _reference(a, w, b, codes.RELU, 0.0)
            np.testing.assert_allclose(z, ref, rtol=tol, atol=tol * max(1.0, np.abs(ref).max()),
                                       err_msg=f"rows={rows} d={d} m={m}")


@needs_tiles
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("code", sorted(codes.ACTIVATION_CODES.values()))
def test_every_activation_matches_the_reference(dtype, code):
    a, w, b = _case(11, 40, 37, dtype, seed=code)
    z = np.empty((11, 37), dtype)
    _dense_rows(z, a, w, b, code, 0.2)
    tol = 1e-12 if dtype == "float64" else 3e-6
    np.testing.assert_allclose(z, _reference(a, w, b, code, 0.2), rtol=tol, atol=tol)


@needs_tiles
def test_a_planted_wrong_weight_is_caught():
    # the comparison above can fail: one weight changed after the kernel ran moves the reference
    a, w, b = _case(9, 30, 20, "float64")
    z = np.empty((9, 20))
    _dense_rows(z, a, w, b, codes.IDENTITY, 0.0)
    w[7, 13] += 1e-6
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(z, _reference(a, w, b, codes.IDENTITY, 0.0), rtol=1e-12, atol=1e-12)


@needs_tiles
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_row_gives_the_same_bits_in_any_batch(dtype):
    # each output is one chain of multiply-adds over k in order, whatever tile holds its row
    a, w, b = _case(37, 300, 70, dtype)
    whole = np.empty((37, 70), dtype)
    _dense_rows(whole, a, w, b, codes.TANH, 0.0)
    for lo, hi in [(0, 1), (5, 6), (3, 10), (8, 16), (30, 37), (1, 37)]:
        part = np.empty((hi - lo, 70), dtype)
        _dense_rows(part, a[lo:hi], w, b, codes.TANH, 0.0)
        np.testing.assert_array_equal(part, whole[lo:hi])


@needs_tiles
def test_rows_of_a_wider_array_are_read_with_its_stride():
    a, w, b = _case(12, 50, 24, "float32")
    wide = np.zeros((12, 64), np.float32)
    wide[:, :50] = a
    z, z_ref = np.empty((12, 24), np.float32), np.empty((12, 24), np.float32)
    _dense_rows(z, wide[:, :50], w, b, codes.RELU, 0.0)
    _dense_rows(z_ref, a, w, b, codes.RELU, 0.0)
    np.testing.assert_array_equal(z, z_ref)


@njit(nogil=True)
def _dense_columns(z, a, w, b, code, alpha, c0, c1):
    buf = np.empty(tile_gemm.MR * tile_gemm.LDC, dtype=z.dtype)
    tile_gemm.dense_columns(z, a, w, b, code, alpha, buf, c0, c1)


@needs_tiles
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("code", [codes.IDENTITY, codes.RELU, codes.TANH])
def test_a_column_range_writes_those_columns_only(dtype, code):
    # identity and ReLU store from the registers into z (masked stores), the others through
    # buf: either way the columns outside c0 .. c1 keep what they held, in every row of a tile
    a, w, b = _case(13, 40, 100, dtype, seed=3)
    ref = _reference(a, w, b, code, 0.0)
    for c0, c1 in ((0, 100), (0, 37), (5, 60), (16, 32), (48, 100), (99, 100)):
        z = np.full((13, 100), np.nan, dtype)
        _dense_columns(z, a, w, b, code, 0.0, c0, c1)
        outside = np.ones(100, bool)
        outside[c0:c1] = False
        assert np.isnan(z[:, outside]).all(), (c0, c1)
        np.testing.assert_allclose(z[:, c0:c1], ref[:, c0:c1], rtol=2e-5 if dtype == "float32" else 1e-12,
                                   atol=2e-5 if dtype == "float32" else 1e-12)


@needs_tiles
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_column_has_the_same_bits_whatever_the_width_of_its_tile(dtype):
    # a last panel takes the fewest vectors that hold it (1 .. NVEC[rows]): the columns of a
    # range come out of tiles of other widths than in the whole layer, with the same bits
    vw = 64 // np.dtype(dtype).itemsize
    for rows in (1, 2, 8):
        widest = tile_gemm.NVEC[rows] * vw
        a, w, b = _case(rows, 70, 2 * widest, dtype, seed=rows)
        whole = np.empty((rows, 2 * widest), dtype)
        _dense_columns(whole, a, w, b, codes.RELU, 0.0, 0, 2 * widest)
        for nvec in range(1, tile_gemm.NVEC[rows] + 1):
            for c1 in (widest + (nvec - 1) * vw + 1, widest + nvec * vw):    # a panel of nvec vectors
                z = np.full((rows, 2 * widest), np.nan, dtype)
                _dense_columns(z, a, w, b, codes.RELU, 0.0, 0, c1)
                np.testing.assert_array_equal(z[:, :c1], whole[:, :c1], err_msg=f"rows={rows} c1={c1}")
                assert np.isnan(z[:, c1:]).all()


@needs_tiles
def test_the_last_panel_reads_nothing_past_the_end_of_w():
    # W ends exactly where an unreadable page begins: a load of the lanes past its last column
    # (the masked part of the last, narrow panel) would kill the process with SIGSEGV
    script = textwrap.dedent("""
        import ctypes, mmap
        import numpy as np
        from numba import njit
        from fastmlp.backend import codes
        from fastmlp.backend.cpu import tile_gemm

        @njit
        def run(z, a, w, b, buf):
            tile_gemm.dense_rows(z, a, w, b, codes.IDENTITY, 0.0, buf)

        page = mmap.PAGESIZE
        region = mmap.mmap(-1, 2 * page)
        base = ctypes.addressof(ctypes.c_char.from_buffer(region))
        libc = ctypes.CDLL(None)
        assert libc.mprotect(ctypes.c_void_p(base + page), page, 0) == 0      # PROT_NONE
        d, m = 3, 10                                   # one 16-float panel, 10 columns used
        flat = np.frombuffer(region, dtype=np.float32, count=page // 4)
        w = flat[page // 4 - d * m:].reshape(d, m)     # its last element is the page's last
        w[...] = np.arange(d * m).reshape(d, m)
        a = np.ones((5, d), np.float32)
        z = np.empty((5, m), np.float32)
        run(z, a, w, np.zeros(m, np.float32), np.empty(tile_gemm.MR * tile_gemm.LDC, np.float32))
        assert np.array_equal(z, np.tile(w.sum(axis=0), (5, 1))), z
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("FASTMLP_TILE_GEMM", "0")
    assert not tile_gemm.available()


@needs_tiles
@pytest.mark.skipif(dense_chain._GEMM["f"] is None, reason="NumPy's OpenBLAS symbols were not found")
def test_only_predictions_that_call_blas_hold_it(monkeypatch):
    holds = []
    real_hold = blas_threads.hold
    monkeypatch.setattr(blas_threads, "hold", lambda: (holds.append(1), real_hold())[1])
    model = fm.Sequential([fm.Dense(20, 16, activation="relu"), fm.Dense(16, 3)], loss="softmax_crossentropy")
    x = np.random.default_rng(0).standard_normal((600, 20)).astype(np.float32)
    expected = model._predict(x, None)
    small = model.predict(x[:40])                  # blocks of at most TILE_ROWS rows: tiles only
    assert holds == []
    big = model.predict(x)                         # blocks of hundreds of rows: OpenBLAS, held
    assert len(holds) == 1
    np.testing.assert_allclose(small, expected[:40], rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(big, expected, rtol=2e-6, atol=1e-7)
    assert not blas_threads.held()


@needs_tiles
@pytest.mark.skipif(dense_chain._GEMM["f"] is None, reason="NumPy's OpenBLAS symbols were not found")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_model_predicts_a_row_with_the_same_bits_alone_and_in_a_batch(dtype):
    # the cat model's shape: a wide first layer, narrowing hidden layers, a sigmoid output;
    # 50 rows are blocks of at most 64 rows on any thread count, so every row takes the tiles
    model = fm.Sequential([fm.Dense(3000, 20, activation="relu"), fm.Dense(20, 7, activation="tanh"),
                           fm.Dense(7, 1)], loss="binary_crossentropy", dtype=dtype, seed=0)
    x = np.random.default_rng(0).random((50, 3000)).astype(dtype)
    batch = model.predict(x)
    alone = np.concatenate([model.predict(x[i:i + 1]) for i in range(50)])
    np.testing.assert_array_equal(alone, batch)
    np.testing.assert_array_equal(model.predict(x[7:30]), batch[7:30])
