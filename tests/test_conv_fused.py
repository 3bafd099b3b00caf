"""Conv2D fused with the activation and MaxPool2D after it: the kernels against the float64
reference, the fused model against the same layers unfused, finite differences, no allocation.

Tolerances as tests/test_conv.py: float64 kernels to 1e-12 (relative to the largest
reference value), float32 to 1e-5; the argmax exactly (ties to the first maximum in
row-major window order, a NaN the maximum); fused against unfused float64 models to 1e-12;
gradients against centred differences to 1e-6; a planted wrong backward fails.
"""

import numpy as np
import pytest

import fastmlp as fm
from fastmlp.backend import codes, cpu, cuda_available, get_backend
from fastmlp.backend import reference as R
from fastmlp.backend.cpu import conv as cpu_conv
from fastmlp.backend.cpu.reduce import REDUCTION_BLOCKS
from fastmlp.conv import Conv2D, MaxPool2D
from fastmlp.gradcheck import gradcheck
from fastmlp.layers import Activation

from conftest import train_step_growth

KERNEL_TOL = {np.float64: 1e-12, np.float32: 1e-5}
TWINS = [0, 1]   # serial, parallel
_CUDA_OK, _CUDA_WHY = cuda_available()
CODES = [(codes.IDENTITY, 0.0), (codes.RELU, 0.0), (codes.LEAKY_RELU, 0.1), (codes.TANH, 0.0),
         (codes.SIGMOID, 0.0)]
# (N, M, OH, OW, K, S): the 2x2 path, odd sizes (a row and column no window covers),
# overlapping windows, gaps between windows
POOLS = [(2, 3, 8, 6, 2, 2), (2, 2, 7, 9, 2, 2), (1, 2, 9, 7, 3, 2), (2, 2, 6, 6, 3, 1), (1, 1, 8, 8, 2, 3)]


def _rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(float(np.abs(want).max()), 1e-300) if want.size else 1.0
    return float(np.abs(got - want).max() / scale) if want.size else 0.0


def _scratch(m):
    # the Numba backward's (BLOCKS, M) float64 partial sums (the op passes its own)
    return np.full((REDUCTION_BLOCKS, m), np.nan)


def _pooled(oh, ow, k, s):
    return (oh - k) // s + 1, (ow - k) // s + 1


def _case(rng, shape, dtype, ties):
    n, m, oh, ow, k, s = shape
    # z transposed, zt (N*L, M), as the fused kernels take it
    if ties:   # small integers: many equal values in a window, before and after the activation
        z = rng.integers(-2, 3, (n * oh * ow, m)).astype(dtype)
        b = rng.integers(-1, 2, m).astype(dtype)
    else:
        z = rng.standard_normal((n * oh * ow, m)).astype(dtype)
        b = rng.standard_normal(m).astype(dtype)
    return z, b, (n, m) + _pooled(oh, ow, k, s)


def _reference(z, b, yshape, oh, ow, code, alpha, k, s, dy):
    y, arg = np.empty(yshape), np.empty(yshape, np.int64)
    R.conv_bias_act_pool_forward(y, arg, z, b, oh, ow, code, alpha, k, s)
    dz, db = np.empty(z.shape), np.empty(b.shape)
    R.conv_bias_act_pool_backward(dz, db, dy, y, arg, oh, ow, code, alpha, k, s)
    return y, arg, dz, db


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("code,alpha", CODES)
@pytest.mark.parametrize("shape", POOLS, ids=[f"N{p[0]}M{p[1]}-{p[2]}x{p[3]}-k{p[4]}s{p[5]}" for p in POOLS])
@pytest.mark.parametrize("ties", [False, True])
def test_fused_kernels_match_reference(shape, code, alpha, twin, dtype, ties, rng):
    n, m, oh, ow, k, s = shape
    z, b, yshape = _case(rng, shape, dtype, ties)
    y, arg = np.full(yshape, np.nan, dtype), np.full(yshape, -1, np.int32)
    cpu_conv.conv_bias_act_pool_forward_twins[twin](y, arg, z, b, oh, ow, code, alpha, k, s)
    dy = rng.standard_normal(yshape).astype(dtype)
    want_y, want_arg, want_dz, want_db = _reference(z, b, yshape, oh, ow, code, alpha, k, s, dy)
    dz, db = np.full(z.shape, np.nan, dtype), np.full(m, np.nan, dtype)
    cpu_conv.conv_bias_act_pool_backward_twins[twin](dz, db, _scratch(m), dy, y, arg, oh, ow, code, alpha, k, s)
    errs = [_rel(y, want_y), _rel(dz, want_dz), _rel(db, want_db)]
    print(f"fused {shape} code={code} twin={twin} ties={ties} {dtype.__name__}: y, dz, db {errs}")
    np.testing.assert_array_equal(arg, want_arg)
    assert max(errs) <= KERNEL_TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("shape", [(9, 16), (144, 32), (1, 5), (3, 1)])
def test_transpose_kernel(shape, twin, dtype, rng):
    # the fused conv forms dW.T (C*KH*KW, M) and puts it in W's layout (M, C*KH*KW)
    a = rng.standard_normal(shape).astype(dtype)
    want = np.empty(shape[::-1])
    R.transpose(want, a)
    out = np.full(shape[::-1], np.nan, dtype)
    cpu_conv.transpose_twins[twin](out, a)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("shape", [(1, 2, 4, 4, 2, 2), (1, 1, 5, 5, 3, 1)])
def test_fused_nan_is_the_maximum(shape, rng):
    # the first NaN of a window wins, in the 2x2 path's planes and in the general one
    n, m, oh, ow, k, s = shape
    z, b, yshape = _case(rng, shape, np.float64, False)
    z[1, 0] = np.nan
    z[oh * ow - 1, 0] = np.nan
    z[ow + 1, m - 1] = np.nan
    want_y, want_arg, _, _ = _reference(z, b, yshape, oh, ow, codes.RELU, 0.0, k, s, np.ones(yshape))
    for twin in TWINS:
        y, arg = np.empty(yshape), np.empty(yshape, np.int32)
        cpu_conv.conv_bias_act_pool_forward_twins[twin](y, arg, z, b, oh, ow, codes.RELU, 0.0, k, s)
        np.testing.assert_array_equal(arg, want_arg)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(want_y))
        assert np.isnan(y).any()


def test_fused_parallel_twin_is_bitwise_serial(rng):
    shape = (8, 6, 12, 10, 2, 2)
    n, m, oh, ow, k, s = shape
    z, b, yshape = _case(rng, shape, np.float32, False)
    dy = rng.standard_normal(yshape).astype(np.float32)
    out = []
    for twin in TWINS:
        y, arg = np.empty(yshape, np.float32), np.empty(yshape, np.int32)
        cpu_conv.conv_bias_act_pool_forward_twins[twin](y, arg, z, b, oh, ow, codes.RELU, 0.0, k, s)
        dz, db = np.empty_like(z), np.empty(m, np.float32)
        cpu_conv.conv_bias_act_pool_backward_twins[twin](dz, db, _scratch(m), dy, y, arg, oh, ow, codes.RELU,
                                                         0.0, k, s)
        out.append((y, arg, dz, db))
    for a, c in zip(*out):
        np.testing.assert_array_equal(a, c)


def test_cuda_fused_kernels_match_reference(rng):
    if not _CUDA_OK:
        pytest.skip(f"no CUDA device: {_CUDA_WHY}")
    be = get_backend("cuda")
    for dtype in (np.float64, np.float32):
        for shape in POOLS:
            for code, alpha in CODES:
                for ties in (False, True):
                    n, m, oh, ow, k, s = shape
                    z, b, yshape = _case(rng, shape, dtype, ties)
                    dy = rng.standard_normal(yshape).astype(dtype)
                    want_y, want_arg, want_dz, want_db = _reference(z, b, yshape, oh, ow, code, alpha, k, s, dy)
                    y, arg = be.empty(yshape, dtype), be.empty(yshape, np.int32)
                    be.conv_bias_act_pool_forward(y, arg, be.to_device(z), be.to_device(b), oh, ow, code, alpha,
                                                  k, s)
                    dz, db = be.empty(z.shape, dtype), be.empty(m, dtype)
                    be.conv_bias_act_pool_backward(dz, db, be.to_device(dy), y, arg, oh, ow, code, alpha, k, s)
                    np.testing.assert_array_equal(be.to_host(arg), want_arg)
                    errs = [_rel(be.to_host(y), want_y), _rel(be.to_host(dz), want_dz),
                            _rel(be.to_host(db), want_db)]
                    assert max(errs) <= KERNEL_TOL[dtype], (shape, code, ties, dtype, errs)
        a = rng.standard_normal((144, 32)).astype(dtype)
        out = be.empty((32, 144), dtype)
        be.transpose(out, be.to_device(a))
        np.testing.assert_array_equal(be.to_host(out), a.T)


# --------------------------------------------------------------------------- the model

def _cnn(act, pool, device="cpu", dtype="float64", seed=3):
    layers = [fm.Conv2D(2, 3, 3, padding=1), act, pool, fm.Conv2D(3, 4, 3, padding=1), fm.ReLU(),
              fm.MaxPool2D(2), fm.Flatten()]
    h = ((8 - pool.k) // pool.stride + 1 - 2) // 2 + 1     # after the first pool, then the second
    layers.append(fm.Dense(4 * h * h, 3))
    return fm.Sequential(layers, loss="softmax_crossentropy", optimizer=fm.SGD(0.1, momentum=0.9),
                         dtype=dtype, seed=seed, input_shape=(2, 8, 8), device=device)


def _unfuse(model):
    """The same model with every layer running on its own (the path before the fusion;
    _cnn has no activation after a Dense, so none is left fused)."""
    for layer in model.layers:
        if isinstance(layer, Conv2D):
            layer.fuse_pool(codes.IDENTITY, 0.0, None)
        if isinstance(layer, (MaxPool2D, Activation)):
            layer.fused = False
    return model


ACTS = [fm.ReLU, lambda: fm.LeakyReLU(0.2), fm.Tanh, fm.Sigmoid]


@pytest.mark.parametrize("act", ACTS, ids=["relu", "leaky", "tanh", "sigmoid"])
@pytest.mark.parametrize("k,s", [(2, 2), (3, 1), (2, 3)])
def test_fused_model_equals_unfused(act, k, s, device, rng):
    fused, plain = (_cnn(act(), fm.MaxPool2D(k, stride=s), device=device) for _ in range(2))
    assert fused.layers[0].pool is fused.layers[2] and fused.layers[1].fused and fused.layers[2].fused
    _unfuse(plain)
    assert plain.layers[0].pool is None and not plain.layers[2].fused
    X, y = rng.standard_normal((6, 2, 8, 8)), rng.integers(0, 3, 6)
    (lf, gf), (lp, gp) = fused.loss_and_grads(X, y), plain.loss_and_grads(X, y)
    errs = [abs(lf - lp) / abs(lp)] + [_rel(a, c) for a, c in zip(gf, gp)]
    fused.fit(X, y, epochs=3, batch_size=4, shuffle=True)
    plain.fit(X, y, epochs=3, batch_size=4, shuffle=True)
    errs += [_rel(a, c) for a, c in zip(fused.get_weights(), plain.get_weights())]
    print(f"fused vs unfused k={k} s={s}: loss, grads, weights after 3 epochs: max rel err {max(errs):.1e}")
    assert max(errs) <= 1e-12


def test_fused_model_float32_close_to_unfused(rng):
    fused, plain = (_cnn(fm.ReLU(), fm.MaxPool2D(2), dtype="float32") for _ in range(2))
    _unfuse(plain)
    X, y = rng.standard_normal((8, 2, 8, 8)), rng.integers(0, 3, 8)
    fused.fit(X, y, epochs=2, batch_size=4)
    plain.fit(X, y, epochs=2, batch_size=4)
    err = max(_rel(a, c) for a, c in zip(fused.get_weights(), plain.get_weights()))
    print(f"float32 fused vs unfused after 2 epochs: {err:.1e}")
    assert err <= 1e-5


@pytest.mark.parametrize("act", [fm.ReLU, fm.Tanh], ids=["relu", "tanh"])
def test_fused_model_gradients(act, device, rng):
    model = _cnn(act(), fm.MaxPool2D(2), device=device)
    assert model.layers[0].pool is not None
    X, y = rng.standard_normal((3, 2, 8, 8)), rng.integers(0, 3, 3)
    err = gradcheck(model, X, y)
    print(f"fused Conv-{act.__name__}-Pool model: rel err {err:.2e}")
    assert err <= 1e-6


def test_planted_wrong_fused_backward_fails(monkeypatch, rng):
    original = cpu.conv_bias_act_pool_backward

    def corner(dz, db, dy, y, argmax, oh, ow, code, alpha, k, stride):
        original(dz, db, dy, y, np.zeros_like(argmax), oh, ow, code, alpha, k, stride)

    model = _cnn(fm.Tanh(), fm.MaxPool2D(2))
    X, y = rng.standard_normal((3, 2, 8, 8)), rng.integers(0, 3, 3)
    monkeypatch.setattr(cpu, "conv_bias_act_pool_backward", corner)
    monkeypatch.setattr(cpu, "fused_conv_chunks", False)     # the kernels one by one (the chunked
    # kernel's own planted test is in test_cpu_threads.py)
    err = gradcheck(model, X, y, verbose=False)
    print(f"every pooled gradient to the plane's corner: rel err {err:.2e}")
    assert err > 1e-2


def test_which_patterns_fuse():
    def built(layers, shape=(1, 8, 8)):
        return fm.Sequential(layers + [fm.Flatten(), fm.Dense(int(np.prod(_out(layers, shape))), 2)],
                             input_shape=shape, dtype="float64")

    def _out(layers, shape):
        for layer in layers:
            shape = layer.compute_output_shape(shape)
        return shape

    conv, pool = fm.Conv2D(1, 2, 3), fm.MaxPool2D(2)
    m = built([conv, pool])                                   # no activation: identity
    assert conv.pool is pool and pool.fused and conv.act_code == codes.IDENTITY
    conv, act, pool = fm.Conv2D(1, 2, 3), fm.LeakyReLU(0.3), fm.MaxPool2D(2)
    m = built([conv, act, pool])
    assert conv.pool is pool and act.fused and pool.fused and (conv.act_code, conv.alpha) == (codes.LEAKY_RELU, 0.3)
    assert "(fused)" in m.summary(print_fn=None)
    conv, act = fm.Conv2D(1, 2, 3), fm.ReLU()                 # no pool: nothing fused
    built([conv, act])
    assert conv.pool is None and not act.fused
    conv, bn, act, pool = fm.Conv2D(1, 2, 3), fm.BatchNorm(2), fm.ReLU(), fm.MaxPool2D(2)
    built([conv, bn, act, pool])                              # batch norm in between
    assert conv.pool is None and not act.fused and not pool.fused
    conv, a1, a2, pool = fm.Conv2D(1, 2, 3), fm.ReLU(), fm.Tanh(), fm.MaxPool2D(2)
    built([conv, a1, a2, pool])                               # two activations
    assert conv.pool is None and not pool.fused


def test_fused_model_memory_report_counts_what_it_holds(rng):
    model = _cnn(fm.ReLU(), fm.MaxPool2D(2), dtype="float32")
    X, y = rng.standard_normal((16, 2, 8, 8)), rng.integers(0, 3, 16)
    model.fit(X, y, epochs=1, batch_size=16, shuffle=False)
    held = sum(layer.workspace_bytes() for layer in model.layers)
    assert model.memory_report(16)["workspaces"] == held


def test_fused_cnn_train_step_allocates_nothing(rng):
    X, y = rng.random((128, 2, 8, 8), dtype=np.float32), rng.integers(0, 3, 128)
    model = _cnn(fm.ReLU(), fm.MaxPool2D(2), dtype="float32")
    assert model.layers[0].pool is not None and model.layers[3].pool is not None
    growth, batch_bytes = train_step_growth(model, X, y)
    print(f"peak traced growth over 10 fused CNN steps: {growth} bytes")
    assert growth < 4096 < batch_bytes
