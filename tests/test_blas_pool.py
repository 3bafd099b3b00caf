"""OpenBLAS's parallel jobs on Numba's threads while a model trains (cpu/blas_pool.py).

A product through the callback must give the bits OpenBLAS's own pool gives (the same jobs),
run every job at once (the jobs of a threaded GEMM wait for each other: a missing thread
hangs), take one call at a time (the jobs share OpenBLAS's static buffers), and leave the
process as it found it: OpenBLAS's own pool after the fit, and in a forked child.
"""
import os
import threading

import numba
import numpy as np
import pytest

import fastmlp as fm
from fastmlp.backend.cpu import blas_pool, blas_threads


def _usable():
    if not blas_pool.install():
        return False
    blas_pool.uninstall()
    return True


needs_pool = pytest.mark.skipif(not _usable(), reason=f"the callback can't be used here: {blas_pool.reason}")
needs_two = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="one Numba thread: no parallel jobs")


@pytest.fixture
def two_blas_threads():
    before = blas_threads.current()
    blas_threads.set_count(2)
    yield
    blas_threads.set_count(before)


@pytest.fixture
def pool():
    assert blas_pool.install()
    yield
    blas_pool.uninstall()


SHAPES = [(128, 784, 256), (784, 128, 256), (128, 256, 256), (256, 128, 256), (300, 301, 302)]


@needs_pool
@needs_two
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n", SHAPES)
@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True)])
def test_a_product_through_the_callback_has_the_bits_of_openblas_own_pool(dtype, m, k, n, ta, tb, rng,
                                                                           two_blas_threads):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    a, b = (a.T if ta else a), (b.T if tb else b)
    own = a @ b
    before = blas_pool.calls()
    assert blas_pool.install()
    try:
        assert blas_pool.active()
        got = a @ b
    finally:
        blas_pool.uninstall()
    assert blas_pool.calls() >= before + 1          # OpenBLAS handed its jobs to the callback
    assert np.array_equal(got, own)
    want = a.astype(np.float64) @ b.astype(np.float64)
    assert np.abs(got - want).max() <= (1e-4 if dtype == np.float32 else 1e-11) * np.abs(want).max() * 10


@needs_pool
@needs_two
def test_uninstall_gives_openblas_its_own_pool_back(rng, two_blas_threads):
    a = rng.standard_normal((300, 300)).astype(np.float32)
    assert blas_pool.install() and blas_pool.install()      # nested: the outer one still holds
    blas_pool.uninstall()
    n = blas_pool.calls()
    a @ a
    assert blas_pool.calls() == n + 1 and blas_pool.active()
    blas_pool.uninstall()
    assert not blas_pool.active() and blas_pool._state["slot"].value is None
    a @ a
    assert blas_pool.calls() == n + 1


@needs_pool
@needs_two
def test_a_thread_with_fewer_numba_threads_than_jobs_does_not_hang(rng, two_blas_threads, pool):
    # the jobs of one product wait for each other: the callback raises the calling thread's
    # team to the jobs for the call (run in a thread, so a hang fails the test instead of the run)
    a = rng.standard_normal((400, 400)).astype(np.float32)
    own_bits = []
    out = {}

    def work():
        numba.set_num_threads(1)
        out["got"] = a @ a
        out["team"] = numba.get_num_threads()

    blas_pool.uninstall()
    own_bits.append(a @ a)
    assert blas_pool.install()
    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "a product with more jobs than the thread's Numba threads hung"
    assert np.array_equal(out["got"], own_bits[0]) and out["team"] == 1


@needs_pool
@needs_two
def test_products_from_four_threads_at_once_are_each_right(rng, two_blas_threads, pool):
    # one call at a time: the jobs of two calls would share OpenBLAS's per-job buffers
    mats = [rng.standard_normal((256, 256)).astype(np.float32) for _ in range(4)]
    blas_pool.uninstall()
    want = [m @ m.T for m in mats]
    assert blas_pool.install()
    wrong = []

    def work(i):
        for _ in range(40):
            if not np.array_equal(mats[i] @ mats[i].T, want[i]):
                wrong.append(i)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(4)]
    n = blas_pool.calls()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert wrong == [] and blas_pool.calls() == n + 160


@needs_pool
@needs_two
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_gets_openblas_own_pool_back(rng, two_blas_threads, pool):
    a = rng.standard_normal((300, 300)).astype(np.float32)
    a @ a                                   # the parent's team has run
    pid = os.fork()
    if pid == 0:                            # the child: its products run, on OpenBLAS's pool
        try:
            ok = (blas_pool._state["slot"].value is None and not blas_pool.active()
                  and np.allclose(a @ a, a.astype(np.float64) @ a, rtol=1e-4, atol=1e-3))
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert blas_pool._state["slot"].value is not None     # the parent's callback stays


def test_the_callback_is_refused_with_a_reason(monkeypatch):
    monkeypatch.setenv(blas_pool.ENV, "0")
    assert not blas_pool.install() and not blas_pool.active()
    assert blas_pool.ENV in blas_pool.reason
    monkeypatch.delenv(blas_pool.ENV)
    if blas_pool._state["setter"] is not None:      # found here: more jobs than Numba's threads refused
        monkeypatch.setattr(blas_threads, "current", lambda: blas_pool.MAX_THREADS + 1)
        assert not blas_pool.install() and "NUMBA_NUM_THREADS" in blas_pool.reason


def _mlp(seed=0):
    layers = [fm.Dense(784, 256, init="he"), fm.ReLU(), fm.Dense(256, 256, init="he"), fm.ReLU(),
              fm.Dense(256, 10)]
    return fm.Sequential(layers, loss=fm.SoftmaxCrossEntropy(), optimizer=fm.SGD(0.05), seed=seed)


@needs_pool
@needs_two
def test_a_fit_runs_its_products_on_numbas_threads_repeatably(rng, monkeypatch):
    # P2's step: layer 0's dW through the callback, the other layers' dW and dx side by side,
    # the forward on the register tiles where the CPU has them, the kernels between them in
    # parallel: the same bits on every run, OpenBLAS's own pool's result to float32 rounding;
    # the pool is gone after the fit
    X = rng.random((1024, 784), dtype=np.float32)
    y = rng.integers(0, 10, 1024)
    monkeypatch.setenv("FASTMLP_THREADS", "2")
    monkeypatch.setenv(blas_pool.ENV, "0")
    own = _mlp()
    own.fit(X, y, epochs=2, batch_size=128, verbose=0)
    monkeypatch.delenv(blas_pool.ENV)
    runs = []
    for _ in range(2):
        n = blas_pool.calls()
        model = _mlp()
        model.fit(X, y, epochs=2, batch_size=128, verbose=0)
        assert blas_pool.calls() >= n + 2 * 8           # 16 steps, layer 0's dW through the callback
        assert not blas_pool.active() and blas_pool._state["slot"].value is None
        runs.append(model.get_weights())
    for a, b, c in zip(runs[0], runs[1], own.get_weights()):
        assert np.array_equal(a, b)
        assert np.abs(a - c).max() <= 1e-5 * np.abs(c).max()


@needs_pool
@needs_two
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_two_products_side_by_side_are_each_one_single_threaded_product(dtype, rng, two_blas_threads, pool):
    # a Dense layer's dW = x.T @ dz and dx = dz @ W.T at once, one OpenBLAS thread each:
    # the bits of the same products on one thread, one after the other
    from fastmlp.backend import cpu
    from fastmlp.backend.cpu import openblas
    from threadpoolctl import threadpool_limits
    x = rng.standard_normal((128, 256)).astype(dtype)
    dz = rng.standard_normal((128, 300)).astype(dtype)
    W = rng.standard_normal((256, 300)).astype(dtype)
    dW, dx = np.full((256, 300), np.nan, dtype), np.full((128, 256), np.nan, dtype)
    assert numba.get_num_threads() >= 2
    assert openblas.pair(dW, x.T, dz, dx, dz, W.T)
    with threadpool_limits(1, "blas"):
        want_dW, want_dx = x.T @ dz, dz @ W.T
    assert np.array_equal(dW, want_dW) and np.array_equal(dx, want_dx)
    dW[...] = dx[...] = np.nan
    cpu.matmul_pair(dW, x.T, dz, dx, dz, W.T)            # the op takes the same path in a fit
    assert np.array_equal(dW, want_dW) and np.array_equal(dx, want_dx)
    dz_t = np.ascontiguousarray(dz.T)
    assert not openblas.pair(dW, x.T, dz, dx, dz_t.T, W.T)     # two transposed operands: refused


def test_two_products_run_one_after_the_other_outside_a_fit(rng):
    from fastmlp.backend import cpu
    a, b = rng.standard_normal((70, 40)), rng.standard_normal((40, 30))
    c, d = rng.standard_normal((30, 70)), rng.standard_normal((70, 20))
    out1, out2 = np.empty((70, 30)), np.empty((30, 20))
    assert not blas_pool.active()
    cpu.matmul_pair(out1, a, b, out2, c, d)
    assert np.array_equal(out1, a @ b) and np.array_equal(out2, c @ d)


@pytest.fixture
def fit_threads():
    # what StepThreads.start does on two threads: Numba's and OpenBLAS's counts, then the callback
    before = (numba.get_num_threads(), blas_threads.current())
    numba.set_num_threads(2)
    blas_threads.set_count(2)
    assert blas_pool.install()
    yield
    blas_pool.uninstall()
    numba.set_num_threads(before[0])
    blas_threads.set_count(before[1])


def _spy_pair(monkeypatch):
    from fastmlp.backend.cpu import openblas
    taken = []
    real = openblas.pair
    monkeypatch.setattr(openblas, "pair", lambda *a: taken.append(real(*a)) or taken[-1])
    return taken


@needs_pool
@needs_two
def test_matmul_pair_matches_the_reference_on_both_paths(rng, monkeypatch, fit_threads):
    from fastmlp.backend import cpu, reference
    taken = _spy_pair(monkeypatch)
    x, dz, W = rng.standard_normal((96, 80)), rng.standard_normal((96, 70)), rng.standard_normal((80, 70))
    want1, want2 = np.empty((80, 70)), np.empty((96, 80))
    reference.matmul_pair(want1, x.T, dz, want2, dz, W.T)
    for big in (True, False):      # side by side (each product over PAIR_MACS), then one after the other
        if not big:
            monkeypatch.setattr(cpu.blas, "PAIR_MACS", 10 ** 9)
        got1, got2 = np.full((80, 70), np.nan), np.full((96, 80), np.nan)
        cpu.matmul_pair(got1, x.T, dz, got2, dz, W.T)
        np.testing.assert_allclose(got1, want1, rtol=1e-12, atol=1e-12 * np.abs(want1).max())
        np.testing.assert_allclose(got2, want2, rtol=1e-12, atol=1e-12 * np.abs(want2).max())
    assert taken == [True]           # the first call went side by side, the second did not ask


@needs_pool
@needs_two
def test_dense_gradients_hold_with_dw_and_dx_side_by_side(rng, monkeypatch, fit_threads):
    from fastmlp.backend import cpu
    from fastmlp.gradcheck import gradcheck_layer
    taken = _spy_pair(monkeypatch)
    layer = fm.Dense(64, 64, activation="tanh")    # 64 x 64 x 64 multiply-adds a product: PAIR_MACS
    layer.build((64,), cpu, np.float64)
    params = [rng.standard_normal(s.shape) * 0.3 for s in layer.param_specs()]
    layer.bind(params, [np.zeros_like(p) for p in params])
    layer.needs_dx = True
    err = gradcheck_layer(layer, rng.standard_normal((64, 64)), rng.standard_normal((64, 64)))
    assert taken and all(taken)      # the backward ran its products side by side
    assert err <= 1e-6
