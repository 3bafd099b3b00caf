"""Plain SGD steps without the undo copy where a bound proves them finite (backend/cpu/in_place_sgd.py)."""
import warnings

import numpy as np
import pytest

import fastmlp as fm
from fastmlp.backend import cpu, reference
from fastmlp.backend.cpu import in_place_sgd, optim
from fastmlp.params import FlatParameters
from fastmlp.layers import ParamSpec

DTYPES = [np.float32, np.float64]
UNDO_FREE = cpu.undo_free


def _bits(a):
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def _flat(dtype, sizes=(300, 17, 40000, 5), l1=(0.0, 0.0, 1e-3, 0.0), l2=(0.0, 0.0, 2e-3, 0.0)):
    specs = []
    for i, (n, a, b) in enumerate(zip(sizes, l1, l2)):
        specs.append(ParamSpec("W" if i % 2 == 0 else "b", (n,), a, b))
    return FlatParameters(cpu, dtype, [specs[:2], specs[2:]], ())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("twin", ["serial", "parallel"])
def test_the_kernel_gives_sgd_updates_bits(dtype, twin):
    rng = np.random.default_rng(0)
    flat = _flat(dtype)
    flat.params[...] = rng.standard_normal(flat.size).astype(dtype)
    flat.grads[...] = rng.standard_normal(flat.size).astype(dtype)
    # signed zeros where the unregularised shortcut (0 * w for _reg(w, 0, 0)) must agree
    flat.params[:8] = [-0.0, 0.0, -0.0, 0.0, -1.0, 1.0, -0.0, 0.0]
    flat.grads[:8] = [-0.0, -0.0, 0.0, 0.0, -0.0, -0.0, 1.0, -1.0]
    start, stop, l1, l2 = flat.seg
    for s in range(len(start)):        # outside the segments: padding, never touched
        flat.params[stop[s]:(start[s + 1] if s + 1 < len(start) else flat.size)] = 7.0
    w0, g = flat.params.copy(), flat.grads.copy()
    want, prev, bad = w0.copy(), np.zeros_like(w0), np.zeros(1, np.int64)
    optim.sgd_update(want, prev, np.zeros_like(w0), bad, g, start, stop, l1, l2, 0.05, 0.0, False)
    ref = w0.astype(np.float64)
    reference.sgd_update(ref, np.zeros_like(ref), np.zeros_like(ref), np.zeros(1, np.int64), g.astype(np.float64),
                         start, stop, l1, l2, 0.05, 0.0, False)
    lo, hi, pl1, pl2 = in_place_sgd.pieces(*flat.seg)
    kernel = getattr(in_place_sgd.sgd_in_place_twins, twin)
    got = w0.copy()
    seen = int(kernel(got, flat.bad, g, lo, hi, pl1, pl2, 0.05))
    assert np.array_equal(_bits(got), _bits(want))                 # the same bits, zeros' signs too
    np.testing.assert_allclose(got, ref, rtol=1e-6 if dtype == np.float32 else 1e-14, atol=1e-7)
    assert flat.bad[0] == 0
    # what it returns bounds what it wrote, tightly
    e = in_place_sgd.log2_bound(seen, dtype)
    inside = np.concatenate([got[a:b] for a, b in zip(start, stop)])
    assert np.abs(inside).max() < 2.0 ** e <= 2 * np.abs(inside).max()


@pytest.mark.parametrize("dtype", DTYPES)
def test_exponent_bits_bound_every_value_and_flag_nan_and_inf(dtype):
    rng = np.random.default_rng(1)
    flat = _flat(dtype)
    lo, hi, _, _ = in_place_sgd.pieces(*flat.seg)
    for scale in (1e-30, 1e-3, 1.0, 3.0, 1e20):
        flat.grads[...] = (rng.standard_normal(flat.size) * scale).astype(dtype)
        for twin in ("serial", "parallel"):
            bits = int(getattr(in_place_sgd.exponent_bits_twins, twin)(flat.grads, lo, hi))
            e = in_place_sgd.log2_bound(bits, dtype)
            top = np.abs(flat.grads).max()
            assert top < 2.0 ** e <= 2 * top
            inside = np.concatenate([flat.grads[a:b] for a, b in zip(lo, hi)])
            assert e == reference.exponent_bound(inside)            # the NumPy spec
    flat.grads[...] = 0
    e = in_place_sgd.log2_bound(in_place_sgd.exponent_bits(flat.grads, lo, hi), dtype)
    assert e == reference.exponent_bound(flat.grads) == np.finfo(dtype).minexp
    for bad in (np.nan, np.inf, -np.inf):
        flat.grads[hi[-1] - 1] = bad
        assert in_place_sgd.log2_bound(in_place_sgd.exponent_bits(flat.grads, lo, hi), dtype) is None
        flat.grads[hi[-1] - 1] = 0
    # padding is not read: a NaN there is not seen
    flat.grads[hi[0]] = np.nan if hi[0] not in set(lo.tolist()) else 0
    assert in_place_sgd.log2_bound(in_place_sgd.exponent_bits(flat.grads, lo, hi), dtype) is not None


def _mnist_like(n=512, d=60, k=4, seed=0):
    rng = np.random.default_rng(seed)
    X = np.where(rng.random((n, d)) < 0.3, rng.random((n, d)), 0.0).astype(np.float32)
    return X, rng.integers(0, k, n)


def _model(opt=None, l2=0.0, dtype="float32", extra=()):
    layers = [fm.Dense(60, 32, l2=l2), fm.ReLU(), *extra, fm.Dense(32, 4)]
    return fm.Sequential(layers, loss=fm.SoftmaxCrossEntropy(), optimizer=opt or fm.SGD(0.1), seed=3, dtype=dtype)


def _fit_both(monkeypatch, make, **kw):
    """(weights with the undo-free steps, weights with the copy each step, the UndoFreeSGD objects made)."""
    X, y = _mnist_like()
    made = []
    monkeypatch.setattr(cpu, "undo_free", lambda f, s: made.append(UNDO_FREE(f, s)) or made[-1])
    a = make()
    a.fit(X, y, verbose=0, **kw)
    monkeypatch.setattr(cpu, "undo_free", lambda f, s: None)
    b = make()
    b.fit(X, y, verbose=0, **kw)
    return a.get_weights(), b.get_weights(), made


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("l2", [0.0, 1e-3])
def test_a_fit_in_place_gives_the_copying_fits_bits(monkeypatch, dtype, l2):
    wa, wb, made = _fit_both(monkeypatch, lambda: _model(l2=l2, dtype=dtype), epochs=3, batch_size=32)
    assert len(made) == 1 and made[0].in_place == made[0].steps == 3 * 16
    assert all(np.array_equal(_bits(p), _bits(q)) for p, q in zip(wa, wb))


def test_only_where_nothing_else_needs_the_copy(monkeypatch):
    class Batchwise(fm.Callback):
        def on_train_batch_end(self, batch, logs=None):
            pass

    cases = {"momentum": (lambda: _model(fm.SGD(0.1, momentum=0.9)), {}),
             "adam": (lambda: _model(fm.Adam()), {}),
             "batch callback": (lambda: _model(), {"callbacks": [Batchwise()]}),
             "batchnorm": (lambda: _model(extra=(fm.BatchNorm(32),)), {})}
    for name, (make, kw) in cases.items():
        wa, wb, made = _fit_both(monkeypatch, make, epochs=2, batch_size=64, **kw)
        assert sum(u.in_place for u in made) == 0, name
        assert all(np.array_equal(p, q) for p, q in zip(wa, wb)), name
    # an epoch-level callback may write the weights: each epoch reads their bound again
    reads = []

    class Shrink(fm.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.set_weights([w * 0.5 for w in self.model.get_weights()])

    real_bits = in_place_sgd.exponent_bits
    monkeypatch.setattr(in_place_sgd, "exponent_bits", lambda a, lo, hi: reads.append(a) or real_bits(a, lo, hi))
    wa, wb, made = _fit_both(monkeypatch, _model, epochs=3, batch_size=64, callbacks=[Shrink()])
    assert made[0].in_place == made[0].steps == 3 * 8
    assert sum(1 for a in reads if a is made[0].flat.params) == 3      # once an epoch
    assert all(np.array_equal(p, q) for p, q in zip(wa, wb))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_overflowing_step_takes_the_copy_and_is_undone(dtype):
    # weights near the dtype's largest value: the bound refuses, the copying kernel runs, the
    # step overflows and the trainer puts back the weights from before it
    big = 1e37 if dtype == "float32" else 1e307
    X, y = _mnist_like(64)
    model = _model(fm.SGD(1e3), dtype=dtype)
    model.build((60,))
    model.set_weights([w * 0 + big * (i == 0) for i, w in enumerate(model.get_weights())])
    before = model.get_weights()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(fm.NonFiniteLossError):
            model.fit(X, y, epochs=1, batch_size=64, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before))


def test_a_bound_that_lets_everything_through_is_caught(monkeypatch):
    # planted: the bound says yes to every step. The overflowing step then runs in place and
    # cannot be undone: the weights after the error are not those from before (what the
    # previous test checks), so that test fails with such a bound
    monkeypatch.setattr(in_place_sgd.UndoFreeSGD, "safe", lambda self, lr, g: True)
    X, y = _mnist_like(64)
    model = _model(fm.SGD(1e3))
    model.build((60,))
    model.set_weights([w * 0 + 1e37 * (i == 0) for i, w in enumerate(model.get_weights())])
    before = model.get_weights()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(fm.NonFiniteLossError):
            model.fit(X, y, epochs=1, batch_size=64, verbose=0)
    assert not all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before))


@pytest.mark.parametrize("dtype,lr,ok", [("float32", 0.1, True), ("float32", 1e40, False),
                                         ("float64", 1e300, True), ("float32", 1e30, False)])
def test_the_bound_refuses_rates_and_gradients_that_could_overflow(dtype, lr, ok):
    flat = _flat(np.dtype(dtype))
    u = in_place_sgd.UndoFreeSGD(flat, np.zeros(2))
    u.w_log2 = 0                       # |w| < 1
    assert u.safe(lr, 90 if dtype == "float32" else -250) is ok
    assert not u.safe(0.1, 130 if dtype == "float32" else 1030)
