"""The one-call prediction of an MLP (fastmlp/inference.py, backend/cpu/dense_chain.py): the
same probabilities as the NumPy float64 reference and as the layer-by-layer path, for every
activation, output and dtype; which models take it; its row blocks; its input checks."""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp.backend import cpu
from fastmlp.backend.cpu import dense_chain, team_wake, thread_count
from fastmlp.inference import DenseChain

needs_chain = pytest.mark.skipif(cpu.dense_chain_kernels() is None, reason="NumPy's OpenBLAS symbols were not found: "
                                 "predict runs layer by layer (backend/cpu/openblas.py)")

ACTS = {"relu": lambda z: np.maximum(z, 0), "leaky_relu": lambda z: np.where(z > 0, z, 0.01 * z),
        "tanh": np.tanh, "sigmoid": lambda z: 1 / (1 + np.exp(-z)), None: lambda z: z}


def _model(act, loss, dtype, outputs=4, dropout=False, seed=0):
    layers = [fm.Dense(13, 24, activation=act), fm.Dense(24, 9)]
    if act is not None:
        layers.insert(2, {"relu": fm.ReLU, "leaky_relu": fm.LeakyReLU, "tanh": fm.Tanh, "sigmoid": fm.Sigmoid}[act]())
    if dropout:
        layers.insert(1, fm.Dropout(0.3))
    layers.append(fm.Dense(9, outputs))
    model = fm.Sequential(layers, loss=loss, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)
    model.set_weights([w + 0.1 * rng.standard_normal(w.shape) for w in model.get_weights()])
    return model


def _reference(model, act, loss, x):
    # the float64 forward pass of the model's weights: act after the first two Dense layers
    w = [a.astype(np.float64) for a in model.get_weights()]
    a = x.astype(np.float64)
    for k in (0, 2):
        a = ACTS[act](a @ w[k] + w[k + 1])
    z = a @ w[4] + w[5]
    if loss == "softmax_crossentropy":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return 1 / (1 + np.exp(-z)) if loss == "binary_crossentropy" else z


@needs_chain
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("loss", ["softmax_crossentropy", "binary_crossentropy", "mse"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("tiles", [True, False], ids=["tiles", "blas"])
def test_one_call_prediction_matches_the_reference_and_the_layer_path(act, loss, dtype, tiles, monkeypatch):
    # tiles: small blocks by tile_gemm.py where the CPU has AVX-512; blas: every block by OpenBLAS
    monkeypatch.setattr(dense_chain, "TILES", tiles and dense_chain.TILES)
    model = _model(act, loss, dtype, dropout=act == "tanh")
    assert model._dense_chain is not None
    rng = np.random.default_rng(1)
    tol = 1e-12 if dtype == "float64" else 2e-6
    for n in (1, 7, 8, 16, 33, 100, 1030):
        x = rng.standard_normal((n, 13)).astype(dtype)
        p = model.predict(x)
        assert p.dtype == np.dtype(dtype) and p.shape == (n, 4)
        np.testing.assert_allclose(p, _reference(model, act, loss, x), rtol=tol, atol=tol)
        np.testing.assert_allclose(p, model._predict(x, None), rtol=tol, atol=tol)
    x = rng.standard_normal((300, 13)).astype(dtype)
    np.testing.assert_allclose(model.predict(x, batch_size=64), _reference(model, act, loss, x), rtol=tol, atol=tol)


@needs_chain
def test_which_models_predict_in_one_call():
    assert DenseChain.plan(_model("relu", "softmax_crossentropy", "float32")) is not None
    assert DenseChain.plan(_model("relu", "softmax_crossentropy", "float32", dropout=True)) is not None
    others = [
        fm.Sequential([fm.Dense(4, 8), fm.BatchNorm(8), fm.Dense(8, 2)], loss="mse"),          # BatchNorm
        fm.Sequential([fm.ReLU(), fm.Dense(4, 2)], loss="mse", input_shape=(4,)),              # a lone activation
        fm.Sequential([fm.Flatten(), fm.Dense(4, 2)], loss="mse", input_shape=(2, 2)),         # not Dense first
        fm.Sequential([fm.Conv2D(1, 2, 3), fm.Flatten(), fm.Dense(2, 2)], loss="mse", input_shape=(1, 3, 3)),
    ]
    for model in others:
        assert DenseChain.plan(model) is None, model.layers
        assert model.predict(np.ones((3,) + model.input_shape, np.float32)).shape == (3, 2)

    class Loss(fm.losses.MeanSquaredError):      # probabilities of its own: layer by layer
        def probabilities(self, be, out, logits):
            be.act_forward(out, logits, 4, 0.0)
    model = fm.Sequential([fm.Dense(4, 2)], loss=Loss())
    assert DenseChain.plan(model) is None
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(model.predict(x), 1 / (1 + np.exp(-(x @ model.get_weights()[0]))), rtol=1e-6)


@needs_chain
def test_a_changed_loss_is_seen():
    model = _model("relu", "softmax_crossentropy", "float64")
    x = np.random.default_rng(2).standard_normal((5, 13))
    model.loss = fm.losses.get_loss("mse")
    np.testing.assert_allclose(model.predict(x), _reference(model, "relu", "mse", x), rtol=1e-12)


def test_row_blocks_are_whole_multiples_of_eight_rows():
    for n in range(1, 300):
        for threads in (1, 2, 3, 4):
            e = dense_chain.row_edges(n, threads)
            assert e[0] == 0 and e[-1] == n and np.all(np.diff(e) > 0)
            assert np.all(e[1:-1] % dense_chain.ALIGN == 0)
            assert len(e) - 1 == max(1, min(threads, n // dense_chain.ALIGN))


def _blocks_keep_apart(view, shapes):
    # for every batch, thread count and set of layer widths: the cells that ``view(scratch, n,
    # lo, hi, m)`` gives block lo .. hi in all the layers, no cell of another block's
    for n in (16, 50, 64, 209):
        for threads in (2, 3, 4):
            edges = dense_chain.row_edges(n, threads)
            for widest, widths in shapes:
                for spare in (0, 5):          # a buffer kept from a larger batch is longer
                    scratch = np.arange(n * widest + spare * n, dtype=np.float64)
                    owned = []
                    for lo, hi in zip(edges[:-1], edges[1:]):
                        cells = set()
                        for m in widths:
                            span = view(scratch, n, lo, hi, m)
                            assert span.shape == (hi - lo, m)
                            cells.update(span.ravel().tolist())
                        owned.append(cells)
                    for a in range(len(owned)):
                        for b in range(a + 1, len(owned)):
                            assert not owned[a] & owned[b], (n, threads, widths)


def test_blocks_keep_to_their_own_scratch_spans():
    # every layer of block t, whatever its width, stays inside block t's span of a scratch
    # buffer, so blocks running at once never write what another block reads
    _blocks_keep_apart(dense_chain.block_span, ((20, (20, 7, 5)), (256, (256, 256)), (9, (3, 9, 1, 9))))


@needs_chain
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("widths", [(128,), (20, 7, 5)])
def test_parallel_and_serial_blocks_give_the_same_bits(dtype, widths):
    # (20, 7, 5): hidden layers of different widths share a scratch buffer (the cat model's)
    sizes = (300,) + widths + (10,)
    model = fm.Sequential([fm.Dense(a, b, activation="relu") for a, b in zip(sizes[:-2], sizes[1:-1])] +
                          [fm.Dense(sizes[-2], sizes[-1])], loss="softmax_crossentropy", dtype=dtype, seed=3)
    chain = model._dense_chain
    x = np.random.default_rng(3).standard_normal((257, 300)).astype(dtype)
    from fastmlp.backend.cpu import blas_threads
    blas_threads.hold()
    try:
        outs = []
        for parallel in (False,) + (True, False) * 20:
            out = np.empty((257, 10), dtype)
            edges = dense_chain.row_edges(257, 4)
            dense_chain.dense_chain_forward(out, x, chain.params, chain.layout, chain.alphas, chain.final,
                                            chain._scratch(257), edges, parallel, dense_chain.uses_blas(edges), 4,
                                            len(chain.layout))
            outs.append(out)
    finally:
        blas_threads.release()
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    np.testing.assert_allclose(outs[0], model._predict(x, None), rtol=1e-5 if dtype == "float32" else 1e-12,
                               atol=1e-6 if dtype == "float32" else 1e-12)


def test_column_parts_cover_each_layer_once():
    for m in (1, 10, 31, 32, 33, 100, 256, 257, 1000):
        for parts in (1, 2, 3, 4, 8):
            width, count = dense_chain.column_parts(64, 4096, m, parts)
            cols = [c for t in range(count) for c in range(t * width, min(m, (t + 1) * width))]
            assert cols == list(range(m)), (m, parts)             # every column once, in order
            assert 1 <= count <= parts and (count == 1 or width % dense_chain.COLUMN_STEP == 0)
            assert all(t * width < m for t in range(count))          # no empty part
    # a layer under PARALLEL_MACS multiply-adds stays whole: a parallel region costs more
    assert dense_chain.column_parts(1, 64, 64, 2) == (64, 1)
    assert dense_chain.column_parts(1, 784, 256, 2) == (128, 2)


@needs_chain
@pytest.mark.skipif(not dense_chain.TILES, reason="the CPU has no AVX-512 (or FASTMLP_TILE_GEMM=0): "
                    "every prediction calls BLAS")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_column_parts_give_the_bits_of_row_blocks(dtype):
    # a tiles-only call cuts each layer's columns over the threads (widths not multiples of
    # COLUMN_STEP included) up to its row phase, then runs the row blocks; every part count,
    # every first layer of the row phase, parallel or not, gives the bits of the row blocks
    # on the tiles, and the layer path's values
    sizes = (300, 100, 37, 10)
    model = fm.Sequential([fm.Dense(a, b, activation="tanh") for a, b in zip(sizes[:-2], sizes[1:-1])] +
                          [fm.Dense(sizes[-2], sizes[-1])], loss="softmax_crossentropy", dtype=dtype, seed=5)
    chain = model._dense_chain
    rng = np.random.default_rng(5)
    for n in (1, 7, 8, 33, 100):
        x = rng.standard_normal((n, 300)).astype(dtype)
        edges = dense_chain.row_edges(n, 2)
        assert not dense_chain.uses_blas(edges)
        rows = np.empty((n, 10), dtype)
        dense_chain.dense_chain_twins.serial(rows, x, chain.params, chain.layout, chain.alphas, chain.final,
                                             chain._scratch(n), edges, True,
                                             dense_chain._GEMM[np.dtype(dtype).char])
        for parts in (1, 2, 3, 4):
            for first in range(len(sizes)):
                for parallel in (False, True):
                    out = np.full((n, 10), np.nan, dtype)
                    scratch = np.full((2, n * chain.widest), np.nan, dtype)   # nothing left from the last call
                    dense_chain.dense_chain_forward(out, x, chain.params, chain.layout, chain.alphas, chain.final,
                                                    scratch, dense_chain.row_edges(n, parts), parallel, False,
                                                    parts, first)
                    np.testing.assert_array_equal(out, rows, err_msg=f"{n} rows, {parts} parts, row phase from "
                                                                     f"layer {first}, parallel {parallel}")
        np.testing.assert_allclose(rows, model._predict(x, None), rtol=1e-5 if dtype == "float32" else 1e-12,
                                   atol=1e-6 if dtype == "float32" else 1e-12)


def test_row_phase_rows_keep_to_their_blocks():
    # a row phase's block writes rows lo .. hi of every layer it runs (strided_rows), whatever
    # the layer's width: no cell another block's rows own, in the other layers either
    _blocks_keep_apart(lambda scratch, n, lo, hi, m: dense_chain.strided_rows(scratch, n, m)[lo:hi],
                       ((20, (20, 7, 5)), (9, (3, 9, 1, 9)), (256, (256, 10))))


def _layout(*sizes):
    # a layer_layout of Dense layers of these widths (offsets don't matter to the rules)
    return np.array([(0, d, m, 0, 1) for d, m in zip(sizes[:-1], sizes[1:])], dtype=np.int64)


def test_row_phase_rule():
    p2 = _layout(784, 256, 256, 10)
    assert dense_chain.row_phase(32, p2, 4, 2) == 1          # the 784x256 layer by columns
    assert dense_chain.row_phase(8, p2, 4, 2) == 3           # one row block: no row phase
    assert dense_chain.row_phase(32, p2, 4, 1) == 3
    assert dense_chain.row_phase(32, _layout(100, 128, 128, 128, 5), 4, 2) == 0   # all small: by rows
    # the layers after the first over ROW_PHASE_BYTES: only the last ones fit
    assert dense_chain.row_phase(32, _layout(100, 1024, 1024, 10), 4, 2) == 2
    assert dense_chain.row_phase(32, _layout(100, 1024, 1024, 10), 8, 2) == 2
    assert dense_chain.row_phase(32, _layout(100, 2048, 2048, 2048), 4, 2) == 3   # none fits
    # how many threads the call keeps busy: its column parts, or its row phase's blocks
    assert dense_chain.parallel_parts(32, p2, 2, 1) == 2
    assert dense_chain.parallel_parts(1, p2, 2, 3) == 2                          # 784x256 cut in two
    assert dense_chain.parallel_parts(1, _layout(50, 64, 5), 2, 2) == 1
    assert dense_chain.parallel_parts(64, _layout(50, 64, 5), 4, 0) == 4        # 4 row blocks


def test_one_thread_at_a_time_runs_parallel_predictions(monkeypatch):
    # the first thread to ask owns Numba's prediction team while it lives; another thread
    # predicts on its own thread meanwhile, and takes over once the owner has ended
    import threading
    from fastmlp.backend.cpu import blas
    monkeypatch.setattr(blas, "_team_owner", [None])
    assert blas.inference_parallel()                      # this thread claims it
    seen = []
    other = threading.Thread(target=lambda: seen.append(blas.inference_parallel()))
    other.start()
    other.join()
    assert seen == [False]
    blas._team_owner[0] = other                           # an owner that has ended
    later = threading.Thread(target=lambda: seen.append((blas.inference_parallel(), blas.inference_parallel())))
    later.start()
    later.join()
    assert seen[1] == (True, True) and blas._team_owner[0] is later
    assert blas.inference_parallel() and blas._team_owner[0] is threading.current_thread()   # it has ended
    blas._team_owner[0] = None
    monkeypatch.setattr(blas, "_concurrent", [2])          # another prediction is running
    assert not blas.inference_parallel()


@needs_chain
def test_inputs_are_checked_and_converted():
    model = _model("relu", "softmax_crossentropy", "float32")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((20, 13)).astype(np.float32)
    p = model.predict(x)
    np.testing.assert_array_equal(model.predict(x.astype(np.float64)), p)     # converted once
    np.testing.assert_array_equal(model.predict(x.tolist()), p)
    wide = np.zeros((20, 26), np.float32)
    wide[:, ::2] = x
    np.testing.assert_array_equal(model.predict(wide[:, ::2]), p)              # not contiguous
    bad = x.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="finite"):
        model.predict(bad)
    with pytest.raises(ValueError, match="13"):
        model.predict(np.ones((2, 12), np.float32))


@needs_chain
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_the_kernel_refuses_a_non_finite_input_on_either_path(dtype, value):
    # the kernel checks X itself: the tiles path (a few rows), the row blocks with BLAS
    # (hundreds of rows), and a later batch of several (its rows named)
    model = _model("relu", "softmax_crossentropy", dtype)
    rng = np.random.default_rng(6)
    for n, where, batch_size, rows in ((1, (0, 0), None, "0 to 0"), (20, (19, 12), None, "0 to 19"),
                                       (600, (599, 0), None, "0 to 599"), (50, (33, 5), 16, "32 to 47")):
        x = rng.standard_normal((n, 13)).astype(dtype)
        assert np.isfinite(model.predict(x, batch_size=batch_size)).all()
        x[where] = value
        with pytest.raises(ValueError, match=f"finite values in X, got NaN or Inf \\(in rows {rows}\\)"):
            model.predict(x, batch_size=batch_size)


@needs_chain
def test_a_model_without_a_loss_predicts_its_raw_outputs_in_one_call():
    model = fm.Sequential([fm.Dense(5, 7, activation="tanh"), fm.Dense(7, 3)], seed=0)
    assert model._dense_chain is not None
    x = np.random.default_rng(5).standard_normal((9, 5)).astype(np.float32)
    w = model.get_weights()
    np.testing.assert_allclose(model.predict(x), np.tanh(x @ w[0] + w[1]) @ w[2] + w[3], rtol=1e-5, atol=1e-6)


@needs_chain
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_request_goes_straight_to_one_kernel_call_with_the_same_bits(dtype, monkeypatch):
    # predict(X) of a C-contiguous array of the model's dtype, at most EVAL_BATCH rows, skips
    # _predict_chain (Sequential._predict_request); anything else goes through it; the same
    # bits either way
    from fastmlp.model import EVAL_BATCH
    model = _model("relu", "softmax_crossentropy", dtype)
    rng = np.random.default_rng(8)
    inputs = {n: rng.standard_normal((n, 13)).astype(dtype) for n in (1, 7, 32, 100, EVAL_BATCH, EVAL_BATCH + 1)}
    general = {n: model.predict(x, batch_size=EVAL_BATCH) for n, x in inputs.items()}
    through = []
    real = model._predict_chain
    monkeypatch.setattr(model, "_predict_chain", lambda *a: through.append(a[1].shape[0]) or real(*a))
    for n, x in inputs.items():
        np.testing.assert_array_equal(model.predict(x), general[n], err_msg=f"{n} rows")
    assert through == [EVAL_BATCH + 1]                       # the only one that isn't a request
    model.predict(inputs[7].astype(np.float64 if dtype == "float32" else np.float32))
    model.predict(np.asfortranarray(inputs[7]))
    model.predict(inputs[7], batch_size=4)
    assert through == [EVAL_BATCH + 1, 7, 7, 7]


@needs_chain
def test_a_stalled_parallel_call_is_told_apart_from_a_slow_one():
    # stalled: over thread_count.STALL_FACTOR times what the call should take (the fastest of
    # its row count so far, at most its multiply-adds at STALL_MACS_S) plus STALL_S; a stalled
    # call is not taken as the fastest, a call in time may be
    from fastmlp import inference
    model = _model("relu", "softmax_crossentropy", "float32")
    model.predict(np.zeros((1, 13), np.float32))
    chain = model._dense_chain
    told = []
    chain._stalled = lambda: told.append(True)
    macs = 13 * 24 + 24 * 9 + 9 * 4
    bound = 32 * macs / inference.STALL_MACS_S
    limit = thread_count.STALL_FACTOR * bound + thread_count.STALL_S
    chain._fastest.clear()
    chain.timed(7, 1.0)                       # the chain's first parallel call: never a stall
    assert told == [] and chain._fastest == {7: 1.0}
    chain.timed(32, limit * 1.01)             # no call of 32 rows seen yet: against the bound
    assert told == [True] and 32 not in chain._fastest
    chain.timed(32, limit * 0.99)
    assert told == [True] and chain._fastest[32] == limit * 0.99
    fast = bound / 2                          # faster than the bound: the fastest rules
    chain.timed(32, fast)
    assert chain._fastest[32] == fast
    chain.timed(32, fast * thread_count.STALL_FACTOR + thread_count.STALL_S * 0.99)
    assert told == [True] and chain._fastest[32] == fast
    chain.timed(32, fast * thread_count.STALL_FACTOR + thread_count.STALL_S * 1.01)
    assert told == [True, True] and chain._fastest[32] == fast


@needs_chain
def test_a_parallel_call_is_timed_and_a_serial_one_is_not(monkeypatch):
    model = _model("relu", "softmax_crossentropy", "float32")
    x = np.random.default_rng(3).standard_normal((32, 13)).astype(np.float32)
    model.predict(x)
    chain = model._dense_chain
    seen = []
    monkeypatch.setattr(chain, "timed", lambda n, s: seen.append((n, s)))
    plan = chain.plan_rows(32)
    # the team awake (team_wake.py decides whether it is: tested below): the parallel call only
    monkeypatch.setattr(team_wake.TeamWake, "plan", lambda self, now: team_wake.PARALLEL)
    for parallel in (True, False):
        chain.run(x, plan, parallel)
    assert len(seen) == 1 and seen[0][0] == 32 and 0 < seen[0][1] < 1
    # a call that wakes the team is no yardstick, nor one the team's state sends to this thread
    for mode in (team_wake.WAKE, team_wake.SERIAL):
        monkeypatch.setattr(team_wake.TeamWake, "plan", lambda self, now, mode=mode: mode)
        chain.run(x, plan, True)
    assert len(seen) == 1


def _burn(seconds):
    # a thread of this process keeping a core busy (as OpenBLAS's spinning worker does)
    import time
    stop = time.monotonic() + seconds
    n = 0
    while time.monotonic() < stop:
        n += 1
    return n


def test_after_a_stall_predictions_run_on_one_thread_while_a_thread_of_ours_is_busy(monkeypatch):
    import threading
    import time
    monkeypatch.setenv(thread_count.ENV, "auto")
    monkeypatch.setattr(thread_count, "_predict_look", [-1.0, 1])
    monkeypatch.setattr(thread_count, "_stall", [None])
    busy = threading.Thread(target=_burn, args=(0.3,))
    busy.start()
    try:
        thread_count.prediction_stalled()
        assert thread_count.prediction_threads() == 1
        for _ in range(3):                  # looked at every STALL_LOOK_S: still busy
            time.sleep(2 * thread_count.STALL_LOOK_S)
            assert thread_count.prediction_threads() == 1 and thread_count._stall[0] is not None
    finally:
        busy.join()
    # a look over a quiet while ends the stall: within OpenBLAS's 0.1 s of spinning after an
    # earlier test's NumPy product, and the OpenMP workers' spinning after its last region
    for _ in range(40):
        time.sleep(3 * thread_count.STALL_LOOK_S)
        before = time.monotonic()
        thread_count.prediction_threads()
        if thread_count._stall[0] is None:
            break
    assert thread_count._stall[0] is None
    assert thread_count._predict_look[0] > before   # and the machine was looked at afresh then


def test_a_look_that_finds_a_core_taken_looks_again_soon(monkeypatch):
    import time
    if thread_count.most() < 2:
        pytest.skip("one core: nothing to take")
    monkeypatch.setenv(thread_count.ENV, "auto")
    monkeypatch.setattr(thread_count, "_stall", [None])
    for others, threads, again in ((1, thread_count.most() - 1, thread_count.STALL_LOOK_S),
                                   (0, thread_count.most(), thread_count.PREDICT_LOOK_S)):
        monkeypatch.setattr(thread_count, "_predict_look", [-1.0, 1])
        monkeypatch.setattr(thread_count, "others_running", lambda: others)
        before = time.monotonic()
        assert thread_count.prediction_threads() == threads
        assert before + again <= thread_count._predict_look[0] <= time.monotonic() + again


def test_a_stall_leaves_a_fixed_thread_count(monkeypatch):
    monkeypatch.setenv(thread_count.ENV, "2")
    monkeypatch.setattr(thread_count, "_predict_look", [-1.0, 1])
    monkeypatch.setattr(thread_count, "_stall", [None])
    assert thread_count.prediction_threads() == min(2, thread_count.numba.config.NUMBA_NUM_THREADS)
    thread_count.prediction_stalled()
    assert thread_count._stall[0] is None
    assert thread_count.prediction_threads() == min(2, thread_count.numba.config.NUMBA_NUM_THREADS)


@needs_chain
def test_the_owner_of_parallel_predictions_hands_them_over(monkeypatch):
    # release_prediction_threads: the thread that runs parallel predictions frees its team
    # and the next thread to predict alone takes them, with the same bits; from any other
    # thread it hands over nothing
    import threading
    from fastmlp.backend.cpu import blas
    monkeypatch.setattr(blas, "_team_owner", [None])
    model = fm.Sequential([fm.Dense(256, 512, activation="relu"), fm.Dense(512, 10)],
                          loss="softmax_crossentropy", seed=4)        # big enough to run in parallel
    x = np.random.default_rng(4).standard_normal((64, 256)).astype(np.float32)
    before = model.predict(x)
    assert blas.inference_parallel() and blas._team_owner[0] is threading.current_thread()
    seen = []

    def other(release):
        seen.append((fm.release_prediction_threads() if release else None, model.predict(x),
                     blas.inference_parallel()))

    worker = threading.Thread(target=other, args=(True,))
    worker.start()
    worker.join()
    assert seen[0][0] is False and seen[0][2] is False           # not its to hand over
    np.testing.assert_array_equal(seen[0][1], before)
    assert fm.release_prediction_threads() is True
    assert blas._team_owner[0] is None
    np.testing.assert_array_equal(model.predict(x), before)        # a new team for this thread
    assert fm.release_prediction_threads() is True
    assert fm.release_prediction_threads() is False                # nothing left to hand over
    worker = threading.Thread(target=other, args=(False,))
    worker.start()
    worker.join()
    assert seen[1][2] is True and blas._team_owner[0] is worker    # the next thread took them
    np.testing.assert_array_equal(seen[1][1], before)
    np.testing.assert_array_equal(model.predict(x), before)
    assert blas.inference_parallel() and blas._team_owner[0] is threading.current_thread()   # it ended


# ------------------------------------------------------------ a CNN's head as a chain

def _cnn(dtype, head=None, loss="softmax_crossentropy"):
    if head is None:
        head = [fm.Dense(4 * 4 * 4, 16, activation="relu"), fm.Dropout(0.2), fm.Dense(16, 3)]
    layers = [fm.Conv2D(1, 4, 3, padding=1), fm.ReLU(), fm.MaxPool2D(2), fm.Flatten(), *head]
    model = fm.Sequential(layers, loss=loss, dtype=dtype, seed=4, input_shape=(1, 8, 8))
    rng = np.random.default_rng(4)
    model.set_weights([w + 0.1 * rng.standard_normal(w.shape) for w in model.get_weights()])
    return model


@needs_chain
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", ["softmax_crossentropy", "binary_crossentropy", "mse"])
def test_a_cnn_head_runs_as_one_chain_after_the_layers_before_it(dtype, loss, monkeypatch):
    # the layers before the head one by one, then the head's Dense layers, their activations
    # and the output step in one kernel call: the layer path's probabilities
    model = _cnn(dtype, loss=loss)
    assert model._dense_chain is None
    start, tail = model._dense_tail
    assert start == 4 and [d.out_features for d in tail.dense] == [16, 3]
    calls = []
    real = DenseChain.finish
    monkeypatch.setattr(DenseChain, "finish", lambda self, *a: calls.append(a[1].shape) or real(self, *a))
    rng = np.random.default_rng(5)
    tol = 1e-12 if dtype == "float64" else 2e-6
    for n, batch in ((1, None), (7, None), (33, None), (300, None), (45, 16)):
        x = rng.standard_normal((n, 1, 8, 8)).astype(dtype)
        calls.clear()
        p = model.predict(x, batch_size=batch)
        assert calls and sum(c[0] for c in calls) == n and all(c[1] == 64 for c in calls)
        logits = model.forward(x, False)               # the whole model, layer by layer
        want = np.empty_like(p)
        model.loss.probabilities(model.be, want, logits)
        np.testing.assert_allclose(p, want, rtol=tol, atol=tol)
        assert np.array_equal(model.predict_classes(x, batch_size=batch), model.predict_classes(x[:n]))
        # and the NumPy float64 spec of the head, from what the layers before it hand over
        h = model.forward(x, False, model.layers[:start]).astype(np.float64)
        w = [a.astype(np.float64) for a in model.get_weights()[-4:]]
        z = np.maximum(h @ w[0] + w[1], 0) @ w[2] + w[3]
        if loss == "softmax_crossentropy":
            e = np.exp(z - z.max(axis=1, keepdims=True))
            z = e / e.sum(axis=1, keepdims=True)
        elif loss == "binary_crossentropy":
            z = 1 / (1 + np.exp(-z))
        np.testing.assert_allclose(p, z, rtol=1e-12 if dtype == "float64" else 1e-5,
                                   atol=1e-12 if dtype == "float64" else 1e-6)


@needs_chain
def test_the_longest_dense_tail_is_the_chain():
    # a head broken by a layer of another kind: the Dense layers after it; none at the end: no tail
    model = _cnn("float32", head=(fm.Dense(64, 16), fm.BatchNorm(16), fm.ReLU(), fm.Dense(16, 3)))
    start, tail = model._dense_tail
    assert type(model.layers[start]) is fm.Dense and start == len(model.layers) - 1
    x = np.random.default_rng(6).standard_normal((9, 1, 8, 8)).astype(np.float32)
    logits = model.forward(x, False)
    want = np.empty((9, 3), np.float32)
    model.loss.probabilities(model.be, want, logits)
    np.testing.assert_allclose(model.predict(x), want, rtol=2e-6, atol=2e-6)
    assert _cnn("float32", head=(fm.Dense(64, 3), fm.BatchNorm(3)))._dense_tail is None
    assert _model("relu", "mse", "float32")._dense_tail is None      # the whole model is a chain


@needs_chain
def test_a_head_fed_inf_falls_back_to_the_layer_path():
    # activations that overflowed before the head: the chain refuses them (it checks its
    # input), and the layers run one by one, as a model without a chain would
    model = _cnn("float32")
    w = model.get_weights()
    w[0] = np.full_like(w[0], 3e38)
    model.set_weights(w)
    x = np.ones((5, 1, 8, 8), np.float32)
    want = np.empty((5, 3), np.float32)
    with np.errstate(all="ignore"):
        model.loss.probabilities(model.be, want, model.forward(x, False))
        got = model.predict(x)
    assert not np.isfinite(want).all()
    np.testing.assert_array_equal(got, want)
