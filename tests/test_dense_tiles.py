"""A Dense layer's forward in training on the register tiles (cpu/dense_tiles.py, cpu.dense_forward).

During a fit whose OpenBLAS jobs run on Numba's threads, dense_forward computes act(x @ W + b)
on the tiles, its columns cut over the threads: checked against the float64 reference for every
activation, every element written (the output starts as NaN), the same bits on 1, 2 and 3
threads, the product-then-epilogue path outside a fit or past TRAIN_TILE_ROWS rows, and the
layer's gradients against finite differences with the tiles in use.
"""
import numba
import numpy as np
import pytest

import fastmlp as fm
from fastmlp.backend import codes, cpu, reference
from fastmlp.backend.cpu import blas_pool, blas_threads, dense_tiles
from fastmlp.gradcheck import gradcheck_layer

needs_tiles = pytest.mark.skipif(not dense_tiles.TILES, reason="no AVX-512 (or FASTMLP_TILE_GEMM=0): the product runs on BLAS")


@pytest.fixture
def in_a_fit():
    # what StepThreads.start does: the step's thread count, and OpenBLAS's jobs on Numba's threads
    before = (numba.get_num_threads(), blas_threads.current())
    if not blas_pool.install():
        pytest.skip(f"the callback can't be used here: {blas_pool.reason}")
    yield
    blas_pool.uninstall()
    numba.set_num_threads(before[0])
    blas_threads.set_count(before[1])


def _threads(n):
    n = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    blas_threads.set_count(n)
    return n


def _case(rows, d, m, dtype, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, d)).astype(dtype), (rng.standard_normal((d, m)) * 0.2).astype(dtype),
            rng.standard_normal(m).astype(dtype))


def _reference(x, W, b, code, alpha):
    z = x.astype(np.float64) @ W.astype(np.float64)
    reference.bias_act_forward(z, b.astype(np.float64), code, alpha)
    return z


@needs_tiles
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("code", sorted(codes.ACTIVATION_CODES.values()))
def test_the_tiles_match_the_reference_and_write_every_element(dtype, code, in_a_fit):
    tol = 1e-12 if dtype == "float64" else 3e-6
    alpha = 0.01 if code == codes.ACTIVATION_CODES.get("leaky_relu") else 0.0
    for rows, d, m in [(1, 784, 256), (7, 50, 10), (64, 256, 256), (128, 784, 37), (256, 300, 100)]:
        x, W, b = _case(rows, d, m, dtype, seed=rows + m + code)
        want = _reference(x, W, b, code, alpha)
        scale = max(1.0, float(np.abs(x.astype(np.float64) @ W + b).max()))   # the pre-activations' size
        for n in (1, 2, 3):
            _threads(n)
            a = np.full((rows, m), np.nan, dtype)
            assert dense_tiles.forward(a, x, W, b, code, alpha)
            np.testing.assert_allclose(a, want, rtol=tol, atol=tol * scale,
                                       err_msg=f"rows={rows} d={d} m={m} threads={n}")
            if n == 1:
                first = a.copy()
            assert np.array_equal(a, first), "the tiles gave other bits on another thread count"


@needs_tiles
def test_the_op_takes_the_tiles_only_inside_a_fit_and_for_small_batches(rng):
    x, W, b = _case(dense_tiles.TRAIN_TILE_ROWS + 8, 40, 30, "float32", seed=1)
    a = np.empty((x.shape[0], 30), np.float32)
    assert not blas_pool.active() and not dense_tiles.forward(a[:8], x[:8], W, b, codes.RELU, 0.0)
    want = x @ W
    cpu.bias_act_forward(want, b, codes.RELU, 0.0)
    cpu.dense_forward(a, x, W, b, codes.RELU, 0.0)          # outside a fit: product, then epilogue
    assert np.array_equal(a, want)
    if blas_pool.install():
        try:
            assert not dense_tiles.forward(a, x, W, b, codes.RELU, 0.0)           # too many rows
            assert not dense_tiles.forward(a[:, :20], x, W[:, :20], b[:20], codes.RELU, 0.0)  # W a strided view
            cpu.dense_forward(a, x, W, b, codes.RELU, 0.0)
            assert np.array_equal(a, want)
        finally:
            blas_pool.uninstall()


@needs_tiles
@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid"])
def test_dense_gradients_hold_with_the_tiles_in_use(name, rng, in_a_fit):
    _threads(2)
    layer = fm.Dense(9, 20, activation=name)
    layer.build((9,), cpu, np.float64)
    params = [rng.standard_normal(s.shape) for s in layer.param_specs()]
    layer.bind(params, [np.zeros_like(p) for p in params])
    layer.needs_dx = True
    x = rng.standard_normal((6, 9))
    a = np.full((6, 20), np.nan)
    assert dense_tiles.forward(a, x, params[0], params[1], layer.act_code, layer.alpha)
    err = gradcheck_layer(layer, x, rng.standard_normal((6, 20)))
    assert err <= 1e-6
