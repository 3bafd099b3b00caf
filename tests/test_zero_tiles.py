"""The first layer's training products without the batch's zeros (backend/cpu/zero_tiles.py)."""
import numba
import numpy as np
import pytest

import fastmlp as fm
from fastmlp.backend import cpu, reference
from fastmlp.backend.cpu import zero_tiles
from fastmlp.gradcheck import gradcheck

pytestmark = pytest.mark.skipif(not zero_tiles.available(), reason="the register tiles need AVX-512 "
                                "(backend/cpu/tile_gemm.py): the first layer multiplies the whole batch")


def _sparse(rng, n, d, density, dtype):
    # a batch like images: about ``density`` of its values nonzero, all in 40 % of the columns
    # (an image's middle), with an all-zero row and column
    live = rng.random(d) < 0.4
    x = np.where(live & (rng.random((n, d)) < density / 0.4), rng.standard_normal((n, d)), 0.0).astype(dtype)
    x[n // 2] = 0
    x[:, d // 3] = 0
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,d,m", [(64, 784, 256), (13, 37, 29), (1, 9, 5), (8, 8, 8), (30, 100, 1), (200, 64, 70)])
def test_the_products_match_numpy_in_float64(n, d, m, dtype):
    rng = np.random.default_rng(n * 1000 + d)
    x = _sparse(rng, n, d, 0.2, dtype)
    w = rng.standard_normal((d, m)).astype(dtype)
    dz = rng.standard_normal((n, m)).astype(dtype)
    skip = zero_tiles.ZeroSkip()
    skip.plan(x)
    z = np.full((n, m), np.nan, dtype)
    dw = np.full((d, m), np.nan, dtype)
    skip.forward(z, x, w)
    skip.weight_grad(dw, x, dz)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    want_z, want_dw = np.empty((n, m)), np.empty((d, m))        # the NumPy float64 spec
    reference.zero_skip_forward(want_z, x.astype(np.float64), w.astype(np.float64))
    reference.zero_skip_weight_grad(want_dw, x.astype(np.float64), dz.astype(np.float64))
    np.testing.assert_allclose(z, want_z, atol=tol * max(1, d) ** 0.5, rtol=tol)
    np.testing.assert_allclose(dw, want_dw, atol=tol * max(1, n) ** 0.5, rtol=tol)
    assert not dw[d // 3].any()              # a column of x that is all zeros: its row of dW is 0


def test_a_batch_of_zeros_gives_zeros_and_a_dense_one_is_left_to_blas():
    rng = np.random.default_rng(0)
    skip = zero_tiles.ZeroSkip()
    x = np.zeros((16, 40), np.float32)
    assert skip.plan(x)
    z, dw = np.full((16, 7), 5.0, np.float32), np.full((40, 7), 5.0, np.float32)
    skip.forward(z, x, rng.standard_normal((40, 7)).astype(np.float32))
    skip.weight_grad(dw, x, rng.standard_normal((16, 7)).astype(np.float32))
    assert not z.any() and not dw.any()
    # the share of the row blocks' columns with a nonzero decides
    x = np.zeros((8, 100), np.float32)
    x[0, :int(zero_tiles.SKIP_DENSITY * 100)] = 1
    assert skip.plan(x)
    x[0, :int(zero_tiles.SKIP_DENSITY * 100) + 1] = 1
    assert not skip.plan(x)


def test_a_batch_without_zeros_to_skip_spares_the_next_ones_the_look(monkeypatch):
    rng = np.random.default_rng(5)
    skip = zero_tiles.ZeroSkip()
    looks = []
    real = zero_tiles._lists
    monkeypatch.setattr(zero_tiles, "_lists", lambda *a: looks.append(1) or real(*a))
    dense = rng.standard_normal((16, 40)).astype(np.float32)
    sparse = np.zeros((16, 40), np.float32)
    assert not skip.plan(dense) and len(looks) == 1
    for _ in range(zero_tiles.RECHECK - 1):      # BLAS for these, without reading them
        assert not skip.plan(sparse)
    assert len(looks) == 1
    assert skip.plan(sparse) and len(looks) == 2


def test_the_lists_grow_with_the_batch_not_with_rows_times_features():
    # a wide first layer (P1's 12,288 inputs) in batches of 64: lists of 64 rows per feature
    # block and 12,288 columns per row block, not 12,288 entries for each of 1,536 blocks
    (cr, cw), (rr, rw) = zero_tiles.list_shapes(64, 12288)
    assert (cr, cw) == (8, 12288 + zero_tiles.PREFETCH_ROWS) and (rr, rw) == (1536, 64 + zero_tiles.PREFETCH_ROWS)


def test_the_same_bits_on_any_thread_count():
    rng = np.random.default_rng(1)
    x = _sparse(rng, 96, 300, 0.25, np.float32)
    w = rng.standard_normal((300, 64)).astype(np.float32)
    dz = rng.standard_normal((96, 64)).astype(np.float32)
    got = []
    before = numba.get_num_threads()
    for threads in sorted({1, before}):
        numba.set_num_threads(threads)
        try:
            skip = zero_tiles.ZeroSkip()
            skip.plan(x)
            z, dw = np.empty((96, 64), np.float32), np.empty((300, 64), np.float32)
            skip.forward(z, x, w)
            skip.weight_grad(dw, x, dz)
            got.append((z, dw))
        finally:
            numba.set_num_threads(before)
    for z, dw in got[1:]:
        np.testing.assert_array_equal(z, got[0][0])
        np.testing.assert_array_equal(dw, got[0][1])


def _images_model(dtype="float64", seed=0):
    return fm.Sequential([fm.Dense(48, 16), fm.Tanh(), fm.Dense(16, 3)], loss="softmax_crossentropy",
                         dtype=dtype, seed=seed)


def test_gradients_through_the_skipping_layer_match_finite_differences():
    rng = np.random.default_rng(2)
    X = _sparse(rng, 20, 48, 0.15, np.float64)
    y = rng.integers(0, 3, 20)
    model = _images_model()
    err = gradcheck(model, X, y)
    assert model.layers[0].skipping, "the check did not go through the skipping products"
    assert err <= 1e-6


@pytest.mark.parametrize("which", ["forward", "weight_grad"])
def test_a_planted_wrong_product_fails_the_gradient_check(monkeypatch, which):
    rng = np.random.default_rng(3)
    X = _sparse(rng, 20, 48, 0.15, np.float64)
    y = rng.integers(0, 3, 20)
    real = getattr(zero_tiles.ZeroSkip, which)

    def wrong(self, out, x, other):
        real(self, out, x, other)
        out[1] *= 1.1                         # one row of z, or of dW, 10 % off
    monkeypatch.setattr(zero_tiles.ZeroSkip, which, wrong)
    assert gradcheck(_images_model(), X, y) > 1e-3


def test_training_skips_zeros_like_the_dense_products_and_repeats_bitwise():
    rng = np.random.default_rng(4)
    X = _sparse(rng, 512, 784, 0.19, np.float32)
    y = rng.integers(0, 10, 512)

    def fit(skip):
        model = fm.Sequential([fm.Dense(784, 64, activation="relu"), fm.Dense(64, 10)],
                              loss="softmax_crossentropy", seed=5)
        if not skip:
            model.layers[0].zeros = None      # the backend's zero_skip unasked: BLAS's products
        model.fit(X, y, epochs=2, batch_size=64, verbose=0)
        return model.layers[0].skipping, model.get_weights()

    skipped, a = fit(True)
    again = fit(True)[1]
    dense_used, b = fit(False)
    assert skipped and not dense_used
    for wa, wagain, wb in zip(a, again, b):
        np.testing.assert_array_equal(wa, wagain)
        np.testing.assert_allclose(wa, wb, atol=2e-5)


def test_only_the_first_layer_in_training_skips(rng):
    X = _sparse(rng, 64, 48, 0.15, np.float32)
    model = _images_model("float32")
    model.fit(X, rng.integers(0, 3, 64), epochs=1, batch_size=32, verbose=0)
    assert model.layers[0].skipping and not model.layers[2].skipping
    model.layers[0].forward(X, False)         # not training: the whole batch, through BLAS
    assert not model.layers[0].skipping


def test_the_cpu_backend_offers_it():
    assert isinstance(cpu.zero_skip(), zero_tiles.ZeroSkip)


# ------------------------------------------------------------ any layer's forward on a small batch

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,d,m", [(64, 256, 256), (7, 50, 64), (33, 100, 17), (256, 784, 16), (1, 300, 40)])
def test_the_dense_forward_matches_numpy_in_float64_on_any_thread_count(n, d, m, dtype):
    rng = np.random.default_rng(n + d + m)
    x = rng.standard_normal((n, d)).astype(dtype)
    w = rng.standard_normal((d, m)).astype(dtype)
    want = np.empty((n, m))                                   # the NumPy float64 spec
    reference.zero_skip_forward(want, x.astype(np.float64), w.astype(np.float64))
    got = []
    before = numba.get_num_threads()
    for threads in sorted({1, before}):
        numba.set_num_threads(threads)
        try:
            z = np.full((n, m), np.nan, dtype)
            zero_tiles.ZeroSkip().dense_forward(z, x, w)
            got.append(z)
        finally:
            numba.set_num_threads(before)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got[0], want, rtol=tol, atol=tol * d ** 0.5)
    for z in got[1:]:
        np.testing.assert_array_equal(z, got[0])


def test_the_dense_forward_is_for_small_batches_of_wide_enough_layers():
    worth = zero_tiles.ZeroSkip.dense_worth
    assert worth(64, 256, 256) and worth(zero_tiles.DENSE_ROWS, 784, 16)
    assert not worth(zero_tiles.DENSE_ROWS + 1, 784, 256)     # a big batch: BLAS
    assert not worth(64, 256, 10)                              # a narrow head: BLAS
    assert not worth(64, 20, 20)                               # a tiny product: BLAS


def test_training_forwards_small_batches_on_the_tiles_with_correct_gradients(monkeypatch):
    rng = np.random.default_rng(6)
    X = rng.standard_normal((64, 40))                  # no zeros to skip: the dense forward
    y = rng.integers(0, 3, 64)
    calls = []
    real = zero_tiles.ZeroSkip.dense_forward
    monkeypatch.setattr(zero_tiles.ZeroSkip, "dense_forward",
                        lambda self, z, x, w: calls.append(w.shape) or real(self, z, x, w))
    model = fm.Sequential([fm.Dense(40, 32), fm.Tanh(), fm.Dense(32, 32), fm.ReLU(), fm.Dense(32, 3)],
                          loss="softmax_crossentropy", dtype="float64", seed=1)
    assert gradcheck(model, X, y) <= 1e-6
    assert (40, 32) in calls and (32, 32) in calls and (32, 3) not in calls


def test_a_planted_wrong_dense_forward_fails_the_gradient_check(monkeypatch):
    rng = np.random.default_rng(7)
    X, y = rng.standard_normal((64, 40)), rng.integers(0, 3, 64)
    real = zero_tiles.ZeroSkip.dense_forward

    def wrong(self, z, x, w):
        real(self, z, x, w)
        z[1] *= 1.1
    monkeypatch.setattr(zero_tiles.ZeroSkip, "dense_forward", wrong)
    model = fm.Sequential([fm.Dense(40, 32), fm.Tanh(), fm.Dense(32, 3)], loss="softmax_crossentropy",
                          dtype="float64", seed=1)
    assert gradcheck(model, X, y) > 1e-3
