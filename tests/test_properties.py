"""Property tests of input validation (hypothesis).

Over shapes, dtypes and values of X, y and weights, ``fit``, ``predict``,
``evaluate``, ``loss_and_grads`` and ``set_weights`` either return a clean
result or raise a ValueError/TypeError that says "expected ..., got ...",
and then the model is exactly as before: weights, optimizer state and step
count, generator state and layer state bitwise equal.
"""
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastmlp as fm

# 60 fixed examples per test keep the file under 30 s; FASTMLP_PROPERTY_EXAMPLES=2000 hunts deeper
EXAMPLES = int(os.environ.get("FASTMLP_PROPERTY_EXAMPLES", "60"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 60, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

D = 4  # input features of every model here

# float values: ordinary, edge, non-finite, and 1e39 (finite in float64, Inf in float32)
FLOATS = [0.0, 1.0, -1.0, 0.5, -2.25, 1e3, np.nan, np.inf, -np.inf, 1e39]
DTYPES = [np.float16, np.float32, np.float64, np.int8, np.uint8, np.int32, np.int64, np.bool_,
          np.complex64, np.dtype("U2"), np.dtype("m8[s]"), np.dtype(object)]


def _elements(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        vals = [v for v in FLOATS if not np.isfinite(v) or abs(v) <= float(np.finfo(dtype).max)]
        return st.sampled_from(vals)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return st.integers(max(int(info.min), -3), min(int(info.max), 5))
    if dtype.kind == "b":
        return st.booleans()
    if dtype.kind == "c":
        return st.sampled_from([0j, 1 + 1j, -2.0 + 0j])
    if dtype.kind == "U":
        return st.sampled_from(["a", "1", ""])
    if dtype.kind == "m":
        return st.integers(-3, 3).map(lambda v: np.timedelta64(v, "s"))
    return st.sampled_from([None, 1, "x", 2.5])


def _layout(draw, a):
    """The same values in another memory layout (all valid)."""
    layout = draw(st.sampled_from(["c", "c", "fortran", "strided", "list", "readonly"]))
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "strided" and a.ndim >= 1:
        return np.repeat(a, 2, axis=0)[::2]
    if layout == "list":
        return a.tolist()
    if layout == "readonly":
        a = a.copy()
        a.flags.writeable = False
    return a


@st.composite
def features(draw, n):
    """A valid X (N, 4) of a numeric dtype with ordinary values."""
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.uint8, np.int64, np.bool_]))
    elements = st.sampled_from([0.0, 1.0, -1.0, 0.5, -2.25, 3.0]) if np.dtype(dtype).kind == "f" \
        else _elements(dtype)
    return draw(hnp.arrays(dtype, (n, D), elements=elements))


@st.composite
def targets(draw, loss, n):
    """Valid labels for ``loss`` in one of their accepted layouts."""
    if loss == "softmax_crossentropy":
        y = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 2)))
        form = draw(st.sampled_from(["int", "float", "column", "onehot"]))
        return {"int": y, "float": y.astype(np.float64), "column": y[:, None],
                "onehot": np.eye(3, dtype=np.float32)[y]}[form]
    if loss == "bce":
        y = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 1)))
        form = draw(st.sampled_from(["int", "float", "column", "bool"]))
        return {"int": y, "float": y.astype(np.float32), "column": y[:, None], "bool": y.astype(bool)}[form]
    return draw(hnp.arrays(np.float64, (n, 2), elements=st.sampled_from([0.0, 1.0, -3.5, 100.0])))


BROKEN = [None, None, None, None, "x_dtype", "x_shape", "x_values", "x_type", "y_dtype", "y_shape",
          "y_values", "y_len", "batch_size", "epochs"]


@st.composite
def cases(draw, loss, what=("x", "y", "batch_size", "epochs")):
    """(X, y, batch_size, epochs, broken): valid, or with one thing wrong (``broken`` names it)."""
    n = draw(st.sampled_from([1, 2, 3, 5, 8, 33]))
    X, y = draw(features(n)), draw(targets(loss, n))
    bs = draw(st.sampled_from([None, 1, 2, 3, 32]))
    epochs = draw(st.sampled_from([0, 1, 2]))
    broken = draw(st.sampled_from([b for b in BROKEN if b is None or b.split("_")[0] in what
                                   or b in what]))
    if broken == "x_dtype":
        dtype = draw(st.sampled_from([np.complex64, np.dtype("U2"), np.dtype("m8[s]"), np.dtype(object)]))
        X = draw(hnp.arrays(dtype, (n, D), elements=_elements(dtype)))
    elif broken == "x_shape":
        X = draw(hnp.arrays(np.float64, draw(st.sampled_from([(), (n,), (0, D), (n, D + 1), (n, 3), (n, D, 2),
                                                                (n, 2, 3)])), elements=st.just(0.5)))
    elif broken == "x_values":
        X = X.astype(np.float64)
        X.flat[draw(st.integers(0, X.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e39]))
    elif broken == "x_type":
        X = draw(st.sampled_from([None, "abc", {"a": 1}, [[1, 2], [3]], 3.0]))
    elif broken == "y_dtype":
        dtype = draw(st.sampled_from([np.complex64, np.dtype("U2"), np.dtype(object)]))
        y = draw(hnp.arrays(dtype, np.shape(y), elements=_elements(dtype)))
    elif broken == "y_shape":
        y = np.zeros(draw(st.sampled_from([(), (n, 4), (n, 1, 1), (n, 5)])))
    elif broken == "y_values":
        y = np.asarray(y, dtype=np.float64).copy()
        y.flat[draw(st.integers(0, y.size - 1))] = draw(st.sampled_from(
            [np.nan, np.inf, 1e39] if loss == "mse" else [np.nan, -1.0, 0.5, 7.0, 1e39]))
    elif broken == "y_len":
        y = np.concatenate([y, y[:1]])
    elif broken == "batch_size":
        bs = draw(st.sampled_from([0, -1, 2.5, True, "8"]))
    elif broken == "epochs":
        epochs = draw(st.sampled_from([-1, 1.5, None, "2"]))
    if isinstance(X, np.ndarray) and X.ndim:
        X = _layout(draw, X)
    return X, y, bs, epochs, broken


LOSSES = ["softmax_crossentropy", "bce", "mse"]


def _model(loss, bn=False):
    k = {"softmax_crossentropy": 3, "bce": 1, "mse": 2}[loss]
    mid = [fm.BatchNorm(6)] if bn else []
    return fm.Sequential([fm.Dense(D, 6), fm.ReLU(), *mid, fm.Dense(6, k)], loss=loss,
                         optimizer=fm.Adam(0.01), seed=0)


_MODELS = {}


def _shared(loss, bn=False):
    """One model per kind for all examples: each example checks its own before/after."""
    key = (loss, bn)
    if key not in _MODELS:
        _MODELS[key] = _model(loss, bn)
    return _MODELS[key]


def _snapshot(m):
    return (m.get_weights(), [np.array(s) for s in m.flat.state], m.optimizer.t, m.rng.bit_generator.state,
            [layer.get_state() for layer in m.layers])


def _assert_unchanged(m, before):
    w, s, t, r, layers = before
    now = _snapshot(m)
    for a, b in zip(w, now[0]):
        assert a.dtype == b.dtype and np.array_equal(a, b), "weights changed"
    for a, b in zip(s, now[1]):
        assert np.array_equal(a, b, equal_nan=True), "optimizer state changed"
    assert t == now[2] and r == now[3], "step count or generator changed"
    for a, b in zip(layers, now[4]):
        for key in a:
            assert np.array_equal(a[key], b[key]), "layer state changed"


def _clean(call, model):
    """Run call(); a ValueError/TypeError must leave the model unchanged and say 'expected'."""
    before = _snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # NumPy's overflow warnings on huge inputs
        try:
            out = call()
        except (ValueError, TypeError) as e:
            _assert_unchanged(model, before)
            assert "expected" in str(e), f"unhelpful message: {type(e).__name__}: {e}"
            return None, e
        except fm.NonFiniteLossError:
            # huge but valid inputs may diverge: the last finite weights are kept
            assert all(np.isfinite(w).all() for w in model.get_weights())
            return None, None
    return out, None


def _expect(err, broken):
    """A valid case must work; a broken one must be refused (ValueError/TypeError)."""
    if broken is None:
        assert err is None, f"valid input refused: {type(err).__name__}: {err}"
    else:
        assert err is not None, f"{broken} accepted"


@SETTINGS
@given(st.sampled_from(LOSSES), st.booleans(), st.data())
def test_fit(loss, bn, data):
    model = _shared(loss, bn)
    X, y, bs, epochs, broken = data.draw(cases(loss), "case")
    out, err = _clean(lambda: model.fit(X, y, epochs=epochs, batch_size=bs), model)
    if bn and err is not None and "at least 2 values per feature" in str(err):
        assert (len(X) % (bs or len(X)) or bs or len(X)) == 1   # a batch of 1: refused before any step
        return
    _expect(err, broken)
    if out is not None:
        assert isinstance(out, fm.History) and len(out.epoch) == epochs
        assert all(np.isfinite(w).all() for w in model.get_weights())


@SETTINGS
@given(st.sampled_from(LOSSES), st.data())
def test_predict(loss, data):
    model = _shared(loss)
    X, _, bs, _, broken = data.draw(cases(loss, what=("x", "batch_size")), "case")
    out, err = _clean(lambda: model.predict(X, batch_size=bs), model)
    _expect(err, broken)
    if out is not None:
        assert out.shape == (np.shape(X)[0],) + model.output_shape and out.dtype == model.dtype
        assert np.isfinite(out).all()


@SETTINGS
@given(st.sampled_from(LOSSES), st.data())
def test_evaluate(loss, data):
    model = _shared(loss)
    X, y, bs, _, broken = data.draw(cases(loss, what=("x", "y", "batch_size")), "case")
    out, err = _clean(lambda: model.evaluate(X, y, batch_size=bs), model)
    _expect(err, broken)
    if out is not None:
        assert set(out) == {"loss", "accuracy"} and 0.0 <= out["accuracy"] <= 1.0
        assert np.isfinite(out["loss"])


@SETTINGS
@given(st.sampled_from(LOSSES), st.data())
def test_loss_and_grads(loss, data):
    model = _shared(loss)
    X, y, _, _, broken = data.draw(cases(loss, what=("x", "y")), "case")
    out, err = _clean(lambda: model.loss_and_grads(X, y), model)
    _expect(err, broken)
    if out is not None:
        value, grads = out
        assert isinstance(value, float) and np.isfinite(value)
        assert [g.shape for g in grads] == [w.shape for w in model.get_weights()]
        assert all(np.isfinite(g).all() for g in grads)


@st.composite
def weight_lists(draw, model):
    shapes = [w.shape for w in model.get_weights()]
    kind = draw(st.sampled_from(["right"] * 6 + ["short", "long", "tuple", "array", "none"]))
    if kind == "none":
        return None
    if kind == "array":
        return np.zeros(3)
    ws = []
    bad = draw(st.sampled_from([None, None, None, "dtype", "shape", "values"]))
    at = draw(st.integers(0, len(shapes) - 1))
    for i, s in enumerate(shapes):
        dtype = draw(st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int64]))
        shape = s
        if i == at and bad == "dtype":
            dtype = draw(st.sampled_from(DTYPES[7:]))   # bool, complex, str, timedelta, object
        if i == at and bad == "shape":
            shape = draw(st.sampled_from([s[::-1] if len(s) > 1 else s + (1,), s + (1,), (0,)]))
        elements = _elements(dtype) if i == at and bad == "values" else (
            st.sampled_from([0.0, 1.0, -0.5, 3.0]) if np.dtype(dtype).kind == "f" else _elements(dtype))
        ws.append(draw(hnp.arrays(dtype, shape, elements=elements)))
    if kind == "short":
        ws = ws[:-1]
    elif kind == "long":
        ws = ws + [np.zeros(2)]
    return tuple(ws) if kind == "tuple" else ws


@SETTINGS
@given(st.sampled_from(LOSSES), st.data())
def test_set_weights(loss, data):
    model = _model(loss)
    ws = data.draw(weight_lists(model), "weights")
    out, err = _clean(lambda: model.set_weights(ws), model)
    if err is None:
        got = model.get_weights()
        assert all(np.isfinite(w).all() for w in got)
        for new, w in zip(ws, got):
            np.testing.assert_array_equal(w, np.asarray(new).astype(model.dtype))


def test_the_properties_can_fail():
    """A planted gap (a fit that changes the weights and then raises) is caught."""
    model = _model("mse")

    def sloppy():
        model.set_weights([w + 1 for w in model.get_weights()])
        raise ValueError("expected nothing, got a planted bug")

    with pytest.raises(AssertionError, match="weights changed"):
        _clean(sloppy, model)
