"""Kernel benchmarks (pytest-benchmark), each first checked against the reference.

    python -m pytest bench/test_kernels.py --benchmark-only            # all kernels
    python -m pytest bench/test_kernels.py --benchmark-only -k gather  # one family

Not part of the default test run (``testpaths = ["tests"]``). Each benchmark
checks its kernel's output against ``fastmlp/backend/reference.py`` (float32
to 1e-5 relative) before timing it, and reports GB/s of memory traffic in
``extra_info`` (these kernels are memory-bound; the GEMMs are in peers.py).
"""
import numpy as np
import pytest

from fastmlp.backend import codes, cpu
from fastmlp.backend import reference as R

SHAPES = [(128, 256), (4096, 256)]
RNG = np.random.default_rng(0)


def rel(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


def _record(benchmark, nbytes):
    benchmark.extra_info["bytes"] = nbytes
    benchmark.extra_info["GB/s"] = nbytes / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("code", [codes.RELU, codes.TANH], ids=["relu", "tanh"])
def test_bias_act_forward(benchmark, shape, code):
    z0 = RNG.standard_normal(shape).astype(np.float32)
    b = RNG.standard_normal(shape[1]).astype(np.float32)
    z, ref = z0.copy(), z0.astype(np.float64)
    cpu.bias_act_forward(z, b, code, 0.0)
    R.bias_act_forward(ref, b.astype(np.float64), code, 0.0)
    assert rel(z, ref) < 1e-5
    benchmark(cpu.bias_act_forward, z, b, code, 0.0)   # in place: values drift, work does not
    _record(benchmark, 2 * z.nbytes)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_act_backward_bias_grad(benchmark, shape):
    da = RNG.standard_normal(shape).astype(np.float32)
    a = np.maximum(RNG.standard_normal(shape), 0).astype(np.float32)
    dz, db = np.empty_like(da), np.empty(shape[1], np.float32)
    dz_ref, db_ref = np.empty(shape), np.empty(shape[1])
    cpu.act_backward_bias_grad(dz, db, da, a, codes.RELU, 0.0)
    R.act_backward_bias_grad(dz_ref, db_ref, da.astype(np.float64), a.astype(np.float64), codes.RELU, 0.0)
    assert rel(dz, dz_ref) < 1e-5 and rel(db, db_ref) < 1e-5
    benchmark(cpu.act_backward_bias_grad, dz, db, da, a, codes.RELU, 0.0)
    _record(benchmark, 3 * da.nbytes)


@pytest.mark.parametrize("n", [128, 4096])
@pytest.mark.parametrize("loss", ["softmax_xent", "bce_logits", "mse"])
def test_loss(benchmark, loss, n):
    c = 1 if loss == "bce_logits" else 10
    logits = RNG.standard_normal((n, c)).astype(np.float32)
    if loss == "softmax_xent":
        targets = RNG.integers(0, c, n).astype(np.int64)
    else:
        targets = (RNG.random((n, c)) > 0.5).astype(np.float32)
    d, stats = np.empty_like(logits), np.zeros(2)
    d_ref, stats_ref = np.empty(logits.shape), np.zeros(2)
    getattr(cpu, loss)(d, stats, logits, targets, 1.0 / n)
    getattr(R, loss)(d_ref, stats_ref, logits.astype(np.float64),
                     targets if loss == "softmax_xent" else targets.astype(np.float64), 1.0 / n)
    assert rel(d, d_ref) < 1e-5 and rel(stats, stats_ref) < 1e-5
    benchmark(getattr(cpu, loss), d, stats, logits, targets, 1.0 / n)
    _record(benchmark, 2 * logits.nbytes + targets.nbytes)


def _flat(p):
    seg = (np.array([0, p // 2], np.int64), np.array([p // 2, p], np.int64), np.array([1e-4, 0.0]),
           np.array([1e-3, 0.0]))
    params = RNG.standard_normal(p).astype(np.float32)
    grads = RNG.standard_normal(p).astype(np.float32)
    return params, grads, seg


@pytest.mark.parametrize("p", [269_322, 4_000_000])
@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_optimizer_update(benchmark, opt, p):
    params, grads, seg = _flat(p)
    prev, bad = np.empty_like(params), np.zeros(1, np.int64)
    s1, s2 = np.zeros_like(params), np.zeros_like(params)
    ref = params.astype(np.float64)
    r1, r2, rprev, rbad = np.zeros(p), np.zeros(p), np.empty(p), np.zeros(1, np.int64)
    if opt == "adam":
        args = (1e-3, 0.9, 0.999, 1e-8, np.array([1], np.int64))
        cpu.adam_update(params, prev, s1, s2, bad, grads, *seg, *args)
        R.adam_update(ref, rprev, r1, r2, rbad, grads.astype(np.float64), *seg, *args)
        fn, call = cpu.adam_update, (params, prev, s1, s2, bad, grads, *seg, *args)
        streams = 7
    else:
        mom = 0.9 if opt == "momentum" else 0.0
        cpu.sgd_update(params, prev, s1, bad, grads, *seg, 0.01, mom, False)
        R.sgd_update(ref, rprev, r1, rbad, grads.astype(np.float64), *seg, 0.01, mom, False)
        fn, call = cpu.sgd_update, (params, prev, s1, bad, grads, *seg, 0.01, mom, False)
        streams = 6 if mom else 4
    assert rel(params, ref) < 1e-5 and bad[0] == 0
    benchmark(fn, *call)
    _record(benchmark, streams * params.nbytes)


@pytest.mark.parametrize("b", [64, 128, 1024])
def test_gather_rows(benchmark, b):
    X = RNG.standard_normal((8000, 784)).astype(np.float32)
    idx = RNG.permutation(8000)[:b].astype(np.int64)
    out = np.empty((b, 784), np.float32)
    cpu.gather_rows(out, X, idx)
    np.testing.assert_array_equal(out, X[idx])
    benchmark(cpu.gather_rows, out, X, idx)
    _record(benchmark, 2 * out.nbytes)


@pytest.mark.parametrize("b", [64, 128, 1024])
def test_gather_rows_numpy_peer(benchmark, b):
    """What the write-ups do: X[idx], a fresh copy per batch (for comparison)."""
    X = RNG.standard_normal((8000, 784)).astype(np.float32)
    idx = RNG.permutation(8000)[:b].astype(np.int64)
    benchmark(X.__getitem__, idx)
    _record(benchmark, 2 * b * 784 * 4)


# P3's convolutions, batch 64: conv1 (1 -> 16 channels, 28x28) and conv2 (16 -> 32, 14x14),
# 3x3, padding 1, each followed by ReLU and a 2x2 max pool (fused)
P3_CONVS = [(1, 16, 28), (16, 32, 14)]   # C, M, H (= W)


@pytest.mark.parametrize("c,m,h", P3_CONVS, ids=["conv1", "conv2"])
@pytest.mark.parametrize("op", ["im2col", "col2im"])
def test_p3_im2col_col2im(benchmark, op, c, m, h):
    x = RNG.standard_normal((64, c, h, h)).astype(np.float32)
    cols = np.empty((c * 9, 64 * h * h), np.float32)
    ref = np.empty(cols.shape)
    R.im2col(ref, x, 3, 3, 1, 1)
    cpu.im2col(cols, x, 3, 3, 1, 1)
    assert rel(cols, ref) < 1e-5
    if op == "col2im":
        dx_ref = np.empty(x.shape)
        R.col2im(dx_ref, ref, 3, 3, 1, 1)
        cpu.col2im(x, cols, 3, 3, 1, 1)
        assert rel(x, dx_ref) < 1e-5
        benchmark(cpu.col2im, x, cols, 3, 3, 1, 1)
    else:
        benchmark(cpu.im2col, cols, x, 3, 3, 1, 1)
    _record(benchmark, cols.nbytes + x.nbytes)


@pytest.mark.parametrize("c,m,h", P3_CONVS, ids=["conv1", "conv2"])
@pytest.mark.parametrize("op", ["forward", "backward"])
def test_p3_conv_bias_act_pool(benchmark, op, c, m, h):
    zt = RNG.standard_normal((64 * h * h, m)).astype(np.float32)
    b = RNG.standard_normal(m).astype(np.float32)
    shape = (64, m, h // 2, h // 2)
    y, argmax = np.empty(shape, np.float32), np.empty(shape, np.int32)
    y_ref, arg_ref = np.empty(shape), np.empty(shape, np.int64)
    R.conv_bias_act_pool_forward(y_ref, arg_ref, zt, b, h, h, codes.RELU, 0.0, 2, 2)
    cpu.conv_bias_act_pool_forward(y, argmax, zt, b, h, h, codes.RELU, 0.0, 2, 2)
    assert rel(y, y_ref) < 1e-5 and np.array_equal(argmax, arg_ref)
    if op == "backward":
        dy = RNG.standard_normal(shape).astype(np.float32)
        dzt, db = np.empty_like(zt), np.empty(m, np.float32)
        dzt_ref, db_ref = np.empty(zt.shape), np.empty(m)
        R.conv_bias_act_pool_backward(dzt_ref, db_ref, dy, y_ref, arg_ref, h, h, codes.RELU, 0.0, 2, 2)
        cpu.conv_bias_act_pool_backward(dzt, db, dy, y, argmax, h, h, codes.RELU, 0.0, 2, 2)
        assert rel(dzt, dzt_ref) < 1e-5 and rel(db, db_ref) < 1e-5
        benchmark(cpu.conv_bias_act_pool_backward, dzt, db, dy, y, argmax, h, h, codes.RELU, 0.0, 2, 2)
    else:
        benchmark(cpu.conv_bias_act_pool_forward, y, argmax, zt, b, h, h, codes.RELU, 0.0, 2, 2)
    _record(benchmark, zt.nbytes + y.nbytes + argmax.nbytes)


def _p3_conv_layer(c, m, h):
    import fastmlp as fm
    model = fm.Sequential([fm.Conv2D(c, m, 3, padding=1, init="he"), fm.ReLU(), fm.MaxPool2D(2), fm.Flatten(),
                           fm.Dense(m * (h // 2) ** 2, 10)], loss="softmax_crossentropy", seed=0,
                          input_shape=(c, h, h))
    x = RNG.standard_normal((64, c, h, h)).astype(np.float32)
    model.predict(x)                        # builds the workspaces and sets the GEMM threads
    return model.layers[0], x


@pytest.mark.parametrize("c,m,h", P3_CONVS, ids=["conv1", "conv2"])
@pytest.mark.parametrize("chunked", [True, False], ids=["chunked-kernel", "ops-one-by-one"])
def test_p3_conv_layer_step(benchmark, monkeypatch, chunked, c, m, h):
    """A fused Conv2D's forward + backward on P3's shapes: the chunked Numba kernels
    (backend/cpu/conv_act_pool.py) or the same ops on the same chunks as separate calls."""
    layer, x = _p3_conv_layer(c, m, h)
    layer.needs_dx = c > 1
    dy = RNG.standard_normal((64, m, h // 2, h // 2)).astype(np.float32)
    runs = []
    for on in (True, False):                # both paths agree before either is timed
        monkeypatch.setattr(cpu, "fused_conv_chunks", on and cpu.fused_conv_chunks)
        y = np.array(layer.forward(x, True))
        dx = layer.backward(dy)
        runs.append([y, np.array(layer.grads[0])] + ([np.array(dx)] if dx is not None else []))
    for a, b in zip(*runs):
        assert rel(a, b) < 1e-5
    monkeypatch.setattr(cpu, "fused_conv_chunks", chunked and cpu_blas_available())

    def step():
        layer.forward(x, True)
        layer.backward(dy)
    benchmark(step)
    flops = 2 * 64 * h * h * c * 9 * m * (3 if c > 1 else 2)
    benchmark.extra_info["GFLOP/s"] = flops / benchmark.stats.stats.median / 1e9


def cpu_blas_available():
    from fastmlp.backend.cpu import openblas
    return openblas.available()
