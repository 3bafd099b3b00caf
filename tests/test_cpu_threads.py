"""The CPU step on Numba's threads: GEMMs cut into blocks of NumPy's OpenBLAS calls
(cpu/openblas.py), Conv2D's fused path a chunk of images per thread (cpu/conv_act_pool.py),
and the model's choice between those and OpenBLAS's own threads (cpu/blas.py).

Every result is compared with np.matmul, or with the same layer run as separate kernels
chunk after chunk (the path the GPU takes): float64 to 1e-12, float32 to 1e-5, relative to
the largest value. Gradients against centred differences; a planted wrong chunked kernel fails.
"""
import os
import threading

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_info

import fastmlp as fm
from fastmlp.backend import cpu
from fastmlp.backend.cpu import blas_threads, openblas
from fastmlp.gradcheck import gradcheck

needs_blas = pytest.mark.skipif(not openblas.available(), reason="NumPy's OpenBLAS symbols not found")
TOL = {np.float64: 1e-12, np.float32: 1e-5}


def _rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-300))


def _numpy_blas_threads():
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


# --- openblas.py: big GEMMs in blocks --------------------------------------------------

@pytest.mark.parametrize("m, k, n, axis", [
    (12544, 144, 32, 0),      # P3's conv forward: tall output, rows
    (64, 1568, 256, 1),       # P3's dense forward: wide output, columns
    (9, 50176, 16, 2),        # P3's first conv dW: a 9x16 output, the inner dimension
    (144, 12544, 32, 2),      # P3's second conv dW
    (1568, 64, 256, 0),
])
def test_blocks_pick_the_axis_that_moves_least_and_cover_it(m, k, n, axis):
    got, edges = openblas.blocks(m, k, n, 2)
    assert got == axis
    size = (m, n, k)[axis]
    assert edges[0] == 0 and edges[-1] == size and np.all(np.diff(edges) >= 0)
    assert all(e % openblas.ALIGN == 0 for e in edges[1:-1])


@needs_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n", [(64, 1568, 256), (300, 7, 33), (9, 5000, 16), (144, 2000, 32),
                                     (257, 129, 65)])
@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_block_gemm_matches_numpy_in_every_layout(dtype, m, k, n, ta, tb, threads, rng):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    a, b = (a.T if ta else a), (b.T if tb else b)
    out = np.full((m, n), np.nan, dtype)
    if ta and tb:       # two transposed operands: declined (test_openblas_is_never_asked_for_two_...)
        assert not openblas.matmul(out, a, b, threads) and np.isnan(out).all()
        return
    assert openblas.matmul(out, a, b, threads)
    assert _rel(out, a.astype(np.float64) @ b.astype(np.float64)) < TOL[dtype] * 10


@needs_blas
def test_block_gemm_declines_what_blas_cannot_take(rng):
    a, b = rng.standard_normal((20, 30)), rng.standard_normal((30, 40))
    out = np.empty((20, 40))
    assert not openblas.matmul(out, a[:, ::2], b[::2], 2)                  # no unit stride
    assert not openblas.matmul(np.empty((20, 40), np.float32), a, b, 2)   # mixed dtypes
    assert not openblas.matmul(np.empty((20, 40), np.int64), a.astype(np.int64), b.astype(np.int64), 2)
    assert not openblas.matmul(np.empty((40, 20)).T, a, b, 2)             # a transposed output


@needs_blas
def test_numpys_openblas_is_found_through_a_symlinked_environment(tmp_path, monkeypatch):
    """A virtual environment reached through a symlink: NumPy's folder is the link, the loaded
    library's path is resolved. The two are compared as real paths (they were not: the fast
    conv path switched itself off without a word)."""
    site = os.path.dirname(os.path.dirname(np.__file__))
    link = tmp_path / "venv-link"
    link.symlink_to(site, target_is_directory=True)
    monkeypatch.setattr(np, "__file__", str(link / "numpy" / "__init__.py"))
    monkeypatch.setattr(openblas, "reason", openblas.reason)
    assert openblas._numpy_openblas() is not None, openblas.reason


def test_the_fast_path_says_why_it_is_off(monkeypatch):
    monkeypatch.setattr(openblas, "reason", openblas.reason)   # put back after the test
    monkeypatch.setenv("FASTMLP_NUMBA_BLAS", "0")
    assert openblas._numpy_openblas() is None and "FASTMLP_NUMBA_BLAS=0" in openblas.reason


@needs_blas
def test_single_threaded_from_two_threads_gives_the_thread_count_back():
    """Thread A holds OpenBLAS at 1 thread; thread B enters meanwhile and used to read back that
    1 as the count to restore, leaving OpenBLAS single-threaded for good after both returned."""
    before = blas_threads.count()
    blas_threads.set_count(2)
    try:
        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

        def run_a():
            openblas.single_threaded(lambda: (a_in.set(), b_in.wait(10)))
            a_out.set()

        def run_b():
            a_in.wait(10)
            openblas.single_threaded(lambda: (b_in.set(), a_out.wait(10)))

        threads = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        after = openblas._get_threads()
    finally:
        blas_threads.set_count(before)
    assert after == 2


@needs_blas
def test_a_count_chosen_while_blas_is_held_takes_effect_at_the_last_release():
    """A training step in one thread chooses its count while a prediction in another holds
    BLAS at one thread: the prediction keeps its one thread, the count comes at the release."""
    before = blas_threads.count()
    try:
        blas_threads.set_count(2)
        blas_threads.hold()
        blas_threads.hold()
        blas_threads.set_count(1)
        blas_threads.set_count(2)
        held = openblas._get_threads()
        blas_threads.release()
        still = openblas._get_threads()
        blas_threads.release()
        after = openblas._get_threads()
    finally:
        blas_threads.set_count(before)
    assert (held, still, after) == (1, 1, 2)


@needs_blas
def test_block_gemm_gives_numpys_blas_its_thread_count_back(rng):
    before = _numpy_blas_threads()
    a, b = rng.standard_normal((600, 500)), rng.standard_normal((500, 400))
    openblas.matmul(np.empty((600, 400)), a, b, 2)
    assert _numpy_blas_threads() == before


@needs_blas
def test_big_products_go_where_the_model_says(monkeypatch, rng):
    calls = []
    real = openblas.matmul
    monkeypatch.setattr(openblas, "matmul", lambda *args: calls.append(args[3]) or real(*args))
    monkeypatch.setattr(numba, "get_num_threads", lambda: 2)
    a, b = rng.standard_normal((300, 200)), rng.standard_normal((200, 300))
    out = np.empty((300, 300))
    try:
        cpu.use_numba_thread_gemms(False)
        cpu.matmul(out, a, b)
        assert calls == [] and _rel(out, a @ b) < 1e-12 and not cpu.numba_thread_gemms()
        cpu.use_numba_thread_gemms(True)
        cpu.matmul(out, a, b)
        assert calls == [2] and _rel(out, a @ b) < 1e-12 and cpu.numba_thread_gemms()
        cpu.matmul(np.empty((3, 3)), a[:3, :3], b[:3, :3])             # small: never split
        assert calls == [2]
    finally:
        cpu.use_numba_thread_gemms(False)


# --- Conv2D's fused path a chunk per thread -----------------------------------------

def _cnn(dtype, c=2, size=9, k=3, stride=1, pad=1, pool=2, pool_stride=None, act=None, seed=0):
    act = act or fm.ReLU()
    conv1 = fm.Conv2D(c, 3, k, stride=stride, padding=pad)
    kh, kw = (k, k) if isinstance(k, int) else k
    h, w = (size + 2 * pad - kh) // stride + 1, (size + 2 * pad - kw) // stride + 1
    ps = pool_stride or pool
    h, w = (h - pool) // ps + 1, (w - pool) // ps + 1
    layers = [conv1, act, fm.MaxPool2D(pool, ps), fm.Conv2D(3, 4, 3, padding=1), fm.Tanh(),
              fm.MaxPool2D(2), fm.Flatten()]
    h, w = (h - 2) // 2 + 1, (w - 2) // 2 + 1
    layers.append(fm.Dense(4 * h * w, 3))
    return fm.Sequential(layers, loss="softmax_crossentropy", optimizer=fm.SGD(0.1, momentum=0.9),
                         dtype=dtype, seed=seed, input_shape=(c, size, size))


def _run(model, X, y, chunked, budget, monkeypatch):
    """Loss, weights after two steps, and the first conv's output, on the chunked kernels or not."""
    monkeypatch.setattr(cpu, "fused_conv_chunks", chunked)
    monkeypatch.setattr(cpu, "conv_chunk_bytes", budget)
    model.fit(X, y, epochs=2, batch_size=len(X), shuffle=False)
    return model.get_weights(), np.array(model.layers[0].forward(X.astype(model.dtype), False))


GEOMETRIES = [dict(), dict(k=1, pad=0), dict(k=(3, 2), pad=2), dict(stride=2, size=11),
              dict(pool=3, pool_stride=2), dict(c=1, act=fm.LeakyReLU(0.1))]


@needs_blas
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("n, budget", [(7, 1), (13, 3000), (5, None)])
def test_chunked_kernels_match_the_kernels_run_chunk_by_chunk(dtype, geometry, n, budget, monkeypatch, rng):
    X = rng.standard_normal((n, geometry.get("c", 2), geometry.get("size", 9), geometry.get("size", 9)))
    y = rng.integers(0, 3, n)
    want = _run(_cnn(dtype, **geometry), X, y, False, budget, monkeypatch)
    got = _run(_cnn(dtype, **geometry), X, y, True, budget, monkeypatch)
    tol = TOL[np.dtype(dtype).type] * 100
    for g, w in zip(got[0], want[0]):
        assert _rel(g, w) < tol
    assert _rel(got[1], want[1]) < tol


@needs_blas
def test_chunks_do_not_change_the_result_beyond_rounding(monkeypatch, rng):
    X, y = rng.standard_normal((12, 2, 9, 9)), rng.integers(0, 3, 12)
    whole = _run(_cnn("float64"), X, y, True, None, monkeypatch)
    per_image = _run(_cnn("float64"), X, y, True, 1, monkeypatch)
    for a, b in zip(whole[0], per_image[0]):
        assert _rel(a, b) < 1e-12


@needs_blas
def test_chunked_results_do_not_depend_on_the_thread_count(monkeypatch, rng):
    monkeypatch.setattr(cpu, "conv_chunk_bytes", 1)                   # one image a chunk
    model = _cnn("float32")
    X = rng.standard_normal((16, 2, 9, 9)).astype(np.float32)
    model.predict(X)
    conv = model.layers[3]                                              # takes dx back too
    x = np.array(model.layers[0].forward(X, False))
    dy = rng.standard_normal(conv.forward(x, True).shape).astype(np.float32)     # the pooled shape
    runs = []
    before = numba.get_num_threads()
    try:
        for threads in (1, before):
            numba.set_num_threads(threads)
            y = np.array(conv.forward(x, True))
            dx = np.array(conv.backward(dy))
            runs.append([y, dx] + [np.array(g) for g in conv.grads])
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@needs_blas
@pytest.mark.parametrize("geometry", [dict(), dict(k=1, pad=0), dict(k=(3, 2)), dict(stride=2, size=11)])
def test_chunked_gradients_match_finite_differences(geometry, monkeypatch, rng):
    # tanh before the pools: ReLU's zeros tie in the windows, where the loss has kinks
    monkeypatch.setattr(cpu, "conv_chunk_bytes", 1)
    c, size = geometry.get("c", 2), geometry.get("size", 9)
    model = _cnn("float64", act=fm.Tanh(), **geometry)
    X, y = rng.standard_normal((3, c, size, size)), rng.integers(0, 3, 3)
    assert gradcheck(model, X, y, verbose=False) < 1e-6


@needs_blas
def test_planted_wrong_chunked_backward_fails(monkeypatch, rng):
    real = cpu.conv_act_pool_backward

    def corner(dx, dwt, db, cols, dzt, x, w2, dy, y, argmax, *rest):
        real(dx, dwt, db, cols, dzt, x, w2, dy, y, np.zeros_like(argmax), *rest)

    monkeypatch.setattr(cpu, "conv_act_pool_backward", corner)
    monkeypatch.setattr(cpu, "conv_chunk_bytes", 1)
    model = _cnn("float64", act=fm.Tanh())
    X, y = rng.standard_normal((3, 2, 9, 9)), rng.integers(0, 3, 3)
    err = gradcheck(model, X, y, verbose=False)
    print(f"every pooled gradient to the plane's corner: rel err {err:.2e}")
    assert err > 1e-2


@needs_blas
def test_models_choose_the_gemm_threads_they_need(rng):
    cnn = _cnn("float32")
    mlp = fm.Sequential([fm.Dense(5, 4), fm.ReLU(), fm.Dense(4, 2)], loss="softmax_crossentropy", seed=0)
    unfused = fm.Sequential([fm.Conv2D(1, 2, 3), fm.Flatten(), fm.Dense(2 * 7 * 7, 2)],
                            loss="softmax_crossentropy", seed=0, input_shape=(1, 9, 9))
    try:
        cnn.predict(rng.standard_normal((2, 2, 9, 9)))
        assert cpu.numba_thread_gemms()
        mlp.predict(rng.standard_normal((2, 5)))
        assert not cpu.numba_thread_gemms()
        unfused.predict(rng.standard_normal((2, 1, 9, 9)))         # no fused Conv2D: OpenBLAS's
        assert not cpu.numba_thread_gemms()
    finally:
        cpu.use_numba_thread_gemms(False)


@needs_blas
def test_chunked_cnn_step_allocates_nothing(rng):
    from conftest import train_step_growth
    X, y = rng.random((128, 2, 9, 9), dtype=np.float32), rng.integers(0, 3, 128)
    growth, batch_bytes = train_step_growth(_cnn("float32"), X, y)
    print(f"peak traced growth over 10 chunked CNN steps: {growth} bytes")
    assert growth < 4096 < batch_bytes


@needs_blas
def test_chunked_kernels_refuse_scratch_without_a_row_per_thread(rng):
    # the kernel's thread t writes row t of the scratch: too few rows would write past them
    before = numba.get_num_threads()
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba has one thread here")
    numba.set_num_threads(2)
    try:
        x, w2, b = rng.standard_normal((2, 1, 4, 4)), rng.standard_normal((3, 9)), np.zeros(3)
        y, argmax = np.empty((2, 3, 2, 2)), np.empty((2, 3, 2, 2), np.int32)
        one_row = (np.empty((1, 9 * 16)), np.empty((1, 16 * 3)))
        with pytest.raises(ValueError, match="a row per thread"):
            cpu.conv_act_pool_forward(y, argmax, *one_row, x, w2, b, np.array([0, 1, 2]), 3, 3, 1, 1, 4, 4,
                                      1, 0.0, 2, 2)
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("chunked", [True, False], ids=["chunked-kernel", "ops-one-by-one"])
@pytest.mark.parametrize("n, c, h, w, kh, kw, stride, pad, pool, edges", [
    (5, 2, 9, 8, 3, 3, 1, 1, 2, [0, 5]),
    (5, 2, 9, 8, 3, 3, 1, 1, 2, [0, 1, 2, 3, 4, 5]),
    (6, 3, 11, 11, 3, 2, 2, 2, 3, [0, 2, 3, 6]),
    (4, 1, 7, 7, 1, 1, 1, 0, 2, [0, 2, 4]),
])
def test_conv_act_pool_ops_match_the_reference(dtype, chunked, n, c, h, w, kh, kw, stride, pad, pool, edges,
                                              monkeypatch, rng):
    from fastmlp.backend import reference as R
    if chunked and not openblas.available():
        pytest.skip("NumPy's OpenBLAS symbols not found")
    monkeypatch.setattr(cpu, "fused_conv_chunks", chunked)
    m, edges = 4, np.array(edges, np.int64)
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    ph, pw = (oh - pool) // pool + 1, (ow - pool) // pool + 1
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    w2, b = rng.standard_normal((m, c * kh * kw)).astype(dtype), rng.standard_normal(m).astype(dtype)
    dy = rng.standard_normal((n, m, ph, pw)).astype(dtype)
    rows = int(np.diff(edges).max()) * oh * ow
    t = numba.get_num_threads()
    scratch = (np.full((t, c * kh * kw * rows), np.nan, dtype), np.full((t, rows * m), np.nan, dtype))
    geometry = (kh, kw, stride, pad, oh, ow, R.LEAKY_RELU, 0.1, pool, pool)
    y, arg = np.empty((n, m, ph, pw), dtype), np.empty((n, m, ph, pw), np.int32)
    y_ref, arg_ref = np.empty(y.shape), np.empty(y.shape, np.int64)
    cpu.conv_act_pool_forward(y, arg, *scratch, x, w2, b, edges, *geometry)
    R.conv_act_pool_forward(y_ref, arg_ref, None, None, x, w2, b, edges, *geometry)
    np.testing.assert_array_equal(arg, arg_ref)
    assert _rel(y, y_ref) < TOL[dtype]
    parts = (np.empty((len(edges) - 1, c * kh * kw, m), dtype), np.empty((len(edges) - 1, m), dtype))
    parts_ref = (np.empty(parts[0].shape), np.empty(parts[1].shape))
    dx, dx_ref = np.full(x.shape, np.nan, dtype), np.empty(x.shape)
    cpu.conv_act_pool_backward(dx, *parts, *scratch, x, w2, dy, y, arg, edges, *geometry)
    R.conv_act_pool_backward(dx_ref, *parts_ref, None, None, x, w2, dy, y_ref, arg_ref, edges, *geometry)
    for got, want in zip((dx, *parts), (dx_ref, *parts_ref)):
        assert _rel(got, want) < TOL[dtype] * 10
    cpu.conv_act_pool_forward(y, arg, *scratch, x, w2, b, edges, *geometry)   # backward follows its forward
    cpu.conv_act_pool_backward(None, *parts, *scratch, x, w2, dy, y, arg, edges, *geometry)   # no dx
    for got, want in zip(parts, parts_ref):
        assert _rel(got, want) < TOL[dtype] * 10


@pytest.mark.parametrize("module, compiled_in", [
    ("dense", ("dense", "activation", "reduce", "jit", "../codes")),
    ("conv", ("conv", "activation", "reduce", "jit", "../codes")),
    ("conv_act_pool", ("conv_act_pool", "conv", "openblas", "activation", "reduce", "jit", "../codes")),
])
def test_cached_kernels_stamp_covers_the_code_they_compile_in(module, compiled_in):
    # Numba stamps a cached kernel with its own file only; a kernel that compiles in other
    # modules' code (inlined helpers, other kernels, constants) must go stale when one of
    # those files changes, or an edit there alone runs stale machine code (jit.cover_dependencies)
    import importlib
    import os
    mod = importlib.import_module(f"fastmlp.backend.cpu.{module}")
    here = os.path.dirname(mod.__file__)
    stats = [os.stat(os.path.join(here, f + ".py")) for f in compiled_in]
    want = (max(st.st_mtime for st in stats), sum(st.st_size for st in stats))
    kernels = [k for v in vars(mod).values() for k in (v if isinstance(v, tuple) else (v,))
               if getattr(getattr(k, "py_func", None), "__module__", None) == mod.__name__
               and getattr(getattr(k, "_cache", None), "_cache_file", None) is not None]
    if not kernels or not hasattr(kernels[0]._cache._cache_file, "_source_stamp"):
        pytest.skip("this Numba's cache has no per-file stamp to extend")
    for kernel in kernels:
        assert kernel._cache._cache_file._source_stamp == want, kernel.py_func.__name__


# --- OpenBLAS from several threads: never two transposed operands ------------------------

@needs_blas
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_openblas_is_never_asked_for_two_transposed_operands(dtype, monkeypatch, rng):
    """OpenBLAS 0.3.31 (NumPy 2.4's): sgemm with both operands transposed, called at once from
    two threads on small products of different sizes, sometimes returns wrong values. The
    chunked conv kernels and the GEMM blocks must never ask for it. The kernels run here as
    Python (their ``py_func``) with every cblas call recorded, and still train as compiled."""
    from fastmlp.backend.cpu import conv_act_pool
    calls = []
    real = openblas.gemm_for

    def recording(dt):
        gemm = real(dt)

        def call(order, ta, tb, *rest):
            calls.append((ta, tb))
            gemm(order, ta, tb, *rest)
        return call
    monkeypatch.setattr(cpu, "conv_chunk_bytes", 3000)
    X, y = rng.standard_normal((13, 2, 11, 11)), rng.integers(0, 3, 13)
    want = _cnn(dtype, stride=2, size=11)
    want.fit(X, y, epochs=1, batch_size=len(X), shuffle=False)
    monkeypatch.setattr(openblas, "gemm_for", recording)
    monkeypatch.setattr(conv_act_pool, "_forward", conv_act_pool._forward.py_func)
    monkeypatch.setattr(conv_act_pool, "_backward", conv_act_pool._backward.py_func)
    got = _cnn(dtype, stride=2, size=11)
    got.fit(X, y, epochs=1, batch_size=len(X), shuffle=False)
    assert len(calls) >= 13 * 2 + 8 * 3                  # conv 1: 13 chunks, conv 2: 8 (and its dx)
    assert (openblas.TRANS, openblas.TRANS) not in calls
    for g, w in zip(got.get_weights(), want.get_weights()):
        assert _rel(g, w) < TOL[np.dtype(dtype).type] * 100
    a, b = rng.standard_normal((300, 200)), rng.standard_normal((400, 300))
    assert not openblas.matmul(np.empty((200, 400)), a.T, b.T, 2)        # declined: np.matmul does it


@needs_blas
def test_the_chunked_backward_gives_the_same_bits_on_every_call(monkeypatch, rng):
    """The case that found the race: chunks of 1 and 2 images on two threads. Run 1,500 times on
    the same inputs, the backward gave other values about once in 400 calls."""
    monkeypatch.setattr(cpu, "conv_chunk_bytes", 3000)
    model = _cnn("float32", stride=2, size=11)
    X = rng.standard_normal((13, 2, 11, 11)).astype(np.float32)
    model.predict(X)
    conv, x = model.layers[3], np.array(model.layers[0].forward(X, True))
    y = np.array(conv.forward(x, True))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    first = [np.array(a) for a in [conv.backward(dy)] + list(conv.grads)]
    for _ in range(1500):
        again = [np.array(a) for a in [conv.backward(dy)] + list(conv.grads)]
        for a, b in zip(again, first):
            np.testing.assert_array_equal(a, b)
