"""Numerical robustness: extreme logits, saturating activations, divergence.

Losses take logits, so a confident wrong prediction must cost about the size
of the logit (1e4 for a logit of 1e4), never Inf or NaN, in float32 as in
float64, through the backend ops and through ``evaluate``. Activations
saturate without overflow warnings. A learning rate that makes training
diverge ends in ``NonFiniteLossError`` with the last finite weights kept.
"""
import math
import warnings

import numpy as np
import pytest

import fastmlp as fm
from fastmlp.backend import get_backend
from fastmlp.backend import reference as ref
from fastmlp.backend.codes import SIGMOID, TANH

from conftest import DEVICES

DTYPES = ["float32", "float64"]
BIG = 1e4


class _strict:
    """Every floating-point warning is an error, from NumPy and from Python's warnings
    (``underflow=False``: except underflow to 0, which exp(-2e4) does by design)."""

    def __init__(self, underflow=True):
        self.under = "raise" if underflow else "ignore"

    def __enter__(self):
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("error")
        self._e = np.errstate(all="raise", under=self.under)
        self._e.__enter__()

    def __exit__(self, *exc):
        self._e.__exit__(*exc)
        self._w.__exit__(*exc)


def _softmax_xent_exact(logits, labels):
    # log-sum-exp in Python floats around the max: exact enough for any finite logits
    out = []
    for row, k in zip(np.asarray(logits, np.float64), labels):
        m = max(row)
        out.append(m + math.log(sum(math.exp(v - m) for v in row)) - row[k])
    return np.array(out)


def _bce_exact(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))


LOGITS = np.array([[BIG, 0.0, -BIG], [-BIG, BIG, 0.0], [0.0, 0.0, BIG], [BIG, BIG, -BIG], [-BIG, -BIG, -BIG]])
LABELS = np.array([1, 1, 0, 0, 2])          # wrong, right, wrong, a tie, all equal


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_at_huge_logits(device, dtype):
    be = get_backend(device)
    n, c = LOGITS.shape
    logits = be.to_device(LOGITS, dtype)
    labels = be.to_device(LABELS.astype(np.int64))
    dlogits = be.empty((n, c), dtype)
    stats = be.zeros(2, np.float64)
    with _strict():
        be.softmax_xent(dlogits, stats, logits, labels, 1.0 / n)
        probs = be.empty((n, c), dtype)
        be.softmax_forward(probs, logits)
    s, g, p = be.to_host(stats), be.to_host(dlogits), be.to_host(probs)
    expected = _softmax_xent_exact(LOGITS, LABELS)
    print(f"{device} {dtype}: per-sample exact {expected}, mean fastmlp {s[0] / n}, exact {expected.mean()}")
    assert expected[0] == pytest.approx(BIG) and expected[2] == pytest.approx(BIG)
    assert np.isfinite(s).all() and s[0] / n == pytest.approx(expected.mean(), rel=1e-12)
    assert np.isfinite(g).all() and np.abs(g).max() <= 1.0 / n + 1e-7
    assert np.isfinite(p).all() and np.allclose(p.sum(axis=1), 1.0)
    ref_stats = np.zeros(2)
    with _strict(underflow=False):
        ref.softmax_xent(np.empty((n, c)), ref_stats, LOGITS.copy(), LABELS, 1.0 / n)
    assert ref_stats[0] / n == pytest.approx(expected.mean(), rel=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_at_huge_logits(device, dtype):
    be = get_backend(device)
    x = np.array([[BIG], [-BIG], [BIG], [-BIG], [0.0], [1e30 if dtype == "float32" else 1e300]])
    y = np.array([[0.0], [1.0], [1.0], [0.0], [1.0], [0.0]])
    n = len(x)
    dlogits, stats = be.empty((n, 1), dtype), be.zeros(2, np.float64)
    with _strict():
        be.bce_logits(dlogits, stats, be.to_device(x, dtype), be.to_device(y, dtype), 1.0 / n)
    expected = _bce_exact(x.astype(dtype), y)
    s, g = be.to_host(stats), be.to_host(dlogits)
    print(f"{device} {dtype}: exact per sample {expected.ravel()}, fastmlp mean {s[0] / n}")
    assert expected[0, 0] == BIG and expected[1, 0] == BIG and expected[2, 0] == 0.0
    assert np.isfinite(s).all() and s[0] / n == pytest.approx(expected.mean(), rel=1e-12)
    assert np.isfinite(g).all() and np.abs(g).max() <= 1.0 / n + 1e-7


@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_logits_through_evaluate_and_predict(dtype):
    X = np.array([[1.0], [-1.0], [0.5]])
    # softmax: logits = X @ [[1e4, 0]] -> (1e4, 0), (-1e4, 0), (5e3, 0)
    soft = fm.Sequential([fm.Dense(1, 2)], loss="softmax_crossentropy", dtype=dtype, seed=0)
    soft.set_weights([np.array([[BIG, 0.0]]), np.zeros(2)])
    y = np.array([1, 0, 0])
    logits = np.array([[BIG, 0.0], [-BIG, 0.0], [BIG / 2, 0.0]])
    with _strict():
        got = soft.evaluate(X, y)
        p = soft.predict(X)
    expected = _softmax_xent_exact(logits, y).mean()
    print(f"{dtype} softmax: evaluate {got}, exact loss {expected}")
    assert got["loss"] == pytest.approx(expected, rel=1e-12) and got["accuracy"] == pytest.approx(1 / 3)
    assert np.isfinite(p).all() and np.allclose(p.sum(axis=1), 1.0)
    # sigmoid + BCE
    bce = fm.Sequential([fm.Dense(1, 1)], loss="bce", dtype=dtype, seed=0)
    bce.set_weights([np.array([[BIG]]), np.zeros(1)])
    yb = np.array([0, 0, 1])
    with _strict():
        got = bce.evaluate(X, yb)
        p = bce.predict(X)
    per_sample = _bce_exact(X * BIG, yb[:, None])
    expected = per_sample.mean()
    print(f"{dtype} bce: evaluate {got}, exact loss {expected}, probabilities {p.ravel()}")
    assert per_sample[0, 0] == BIG           # a wrong logit of 1e4 costs 1e4
    assert got["loss"] == pytest.approx(expected, rel=1e-12)
    assert np.array_equal(p.ravel(), np.array([1.0, 0.0, 1.0], dtype=dtype))


EXTREMES = [-np.inf, -1e300, -1e30, -BIG, -100.0, -20.0, -1e-30, 0.0, 1e-30, 20.0, 100.0, BIG, 1e30, 1e300]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_and_tanh_saturate_without_warnings(device, dtype):
    be = get_backend(device)
    info = np.finfo(dtype)
    host = np.array([v for v in EXTREMES if np.isinf(v) or abs(v) <= float(info.max)] + [info.max, -info.max],
                    dtype=dtype).reshape(1, -1)
    finite = host[np.isfinite(host)]
    for code, lo, hi in [(SIGMOID, 0.0, 1.0), (TANH, -1.0, 1.0)]:
        x = be.to_device(host)
        y = be.empty(host.shape, dtype)
        z = be.to_device(host[:, np.isfinite(host[0])])
        with _strict():
            be.act_forward(y, x, code, 0.0)
            be.bias_act_forward(z, be.zeros(z.shape[1], dtype), code, 0.0)
            dx = be.empty(host.shape, dtype)
            be.act_backward(dx, be.to_device(np.ones(host.shape, dtype)), y, code, 0.0)
            r = ref.act(host.astype(np.float64), code)
        out, zf, g = be.to_host(y), be.to_host(z), be.to_host(dx)
        print(f"{device} {dtype} code {code}: {out.ravel()}")
        assert np.all((out >= lo) & (out <= hi)) and np.isfinite(g).all()
        assert out[0, 0] == lo and out[0, -3] == hi and out[0, -1] == lo and out[0, -2] == hi
        assert np.array_equal(zf.ravel(), out[np.isfinite(host)].ravel())
        np.testing.assert_allclose(out.ravel(), r.ravel(), rtol=0, atol=float(info.eps))
        assert finite.size and np.all(np.isfinite(r))


@pytest.mark.parametrize("dtype", DTYPES)
def test_saturated_network_predicts_without_warnings(dtype):
    model = fm.Sequential([fm.Dense(2, 3), fm.Sigmoid(), fm.Dense(3, 3), fm.Tanh(), fm.Dense(3, 1)],
                          loss="bce", dtype=dtype, seed=0)
    model.set_weights([np.full((2, 3), 1e30 if dtype == "float32" else 1e200), np.zeros(3),
                       np.full((3, 3), 1e4), np.zeros(3), np.full((3, 1), BIG), np.zeros(1)])
    X = np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    with _strict():
        p = model.predict(X)
        loss = model.evaluate(X, np.array([1, 0, 1]))["loss"]
        l2, grads = model.loss_and_grads(X, np.array([1, 0, 1]))
    print(f"{dtype}: probabilities {p.ravel()}, loss {loss}")
    assert np.isfinite(p).all() and math.isfinite(loss) and l2 == loss
    assert all(np.isfinite(g).all() for g in grads)


# --------------------------------------------------------------------------- divergence

class _Record(fm.Callback):
    def on_train_begin(self, logs=None):
        self.weights = [self.model.get_weights()]

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_divergence_keeps_the_last_finite_weights(dtype, opt):
    r = np.random.default_rng(0)
    X = r.standard_normal((64, 5)) * 10
    y = r.standard_normal(64) * 1e3
    make = {"sgd": lambda: fm.SGD(lr=1e3), "momentum": lambda: fm.SGD(lr=1e3, momentum=0.99),
            "adam": lambda: fm.Adam(lr=1e100)}[opt]
    model = fm.Sequential([fm.Dense(5, 16), fm.ReLU(), fm.Dense(16, 1)], loss="mse", optimizer=make(),
                          dtype=dtype, seed=0)
    rec = _Record()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # NumPy's matmul may warn of the overflow
        with pytest.raises(fm.NonFiniteLossError) as info:
            model.fit(X, y, epochs=1000, batch_size=None, callbacks=[rec])
    e = info.value
    ws = model.get_weights()
    print(f"{dtype} {opt}: {e}; largest |w| kept {max(np.abs(w).max() for w in ws):.3g}")
    assert all(np.isfinite(w).all() for w in ws)
    # full batch: one step per epoch; the kept weights are those after the last finite step
    kept = rec.weights[e.epoch]
    assert all(np.array_equal(a, b) for a, b in zip(ws, kept))


@pytest.mark.parametrize("dtype", DTYPES)
def test_minibatch_divergence_leaves_a_usable_model(dtype, tmp_path):
    r = np.random.default_rng(1)
    X = r.standard_normal((256, 5)) * 10
    y = r.integers(0, 3, 256)
    model = fm.Sequential([fm.Dense(5, 16), fm.ReLU(), fm.Dense(16, 3)], loss="softmax_crossentropy",
                          optimizer=fm.SGD(lr=1e8, momentum=0.9), dtype=dtype, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(fm.NonFiniteLossError):
            model.fit(X, y, epochs=100, batch_size=16)
    assert all(np.isfinite(w).all() for w in model.get_weights())
    model.save(tmp_path / "after.fmlp")                      # and it can still be saved and loaded
    back = fm.load_model(tmp_path / "after.fmlp")
    assert all(np.array_equal(a, b) for a, b in zip(back.get_weights(), model.get_weights()))
    assert back.optimizer.t == 0                             # the optimizer restarted (its state held NaN)



@pytest.mark.parametrize("planted", ["nan_loss", "inf_variance"])
@pytest.mark.parametrize("bs", [None, 4])
def test_divergence_restores_the_layer_state_too(planted, bs, tmp_path):
    """A diverging step has already written NaN into BatchNorm's running statistics when it is
    undone (nan_loss: a batch mean that overflows makes the loss NaN), or a finite loss comes
    with an Inf running variance (inf_variance). Either way fit undoes the step: weights and
    running statistics come back, the model predicts as before, and its file loads
    (load_model refuses non-finite running statistics)."""
    r = np.random.default_rng(2)
    X, y = r.standard_normal((16, 5)), r.standard_normal(16)
    model = fm.Sequential([fm.BatchNorm(5), fm.Dense(5, 8), fm.ReLU(), fm.Dense(8, 1)], loss="mse",
                          optimizer=fm.SGD(lr=0.01, momentum=0.9), dtype="float64", seed=0)
    model.fit(X, y, epochs=2, batch_size=bs)
    weights, state, pred = model.get_weights(), model.layers[0].get_state(), model.predict(X)
    huge = X.copy()
    if planted == "nan_loss":
        huge[:2] = 1.7e308        # their sum overflows: mean Inf, then NaN everywhere
    else:
        huge[:2] = [[1e200], [-1e200]]   # finite mean, variance 1e400 = Inf, output (and loss) finite
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(fm.NonFiniteLossError) as info:
            model.fit(huge, y, epochs=3, batch_size=bs, shuffle=False)
    print(f"{planted} batch_size={bs}: {info.value}")
    assert info.value.epoch == 0 and info.value.step == 0
    for k, v in model.layers[0].get_state().items():
        np.testing.assert_array_equal(v, state[k])
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.predict(X), pred)
    model.save(tmp_path / "diverged.fmlp")
    np.testing.assert_array_equal(fm.load_model(tmp_path / "diverged.fmlp").predict(X), pred)
