"""Bad input fails early and clearly; valid but unusual input works; divergence is caught.

Every error must be a ValueError or TypeError that says what was expected
and what came in, raised before any weight (or optimizer state) changes.
"""
import json
import warnings

import numpy as np
import pytest

import fastmlp as fm


def _model(loss="softmax_crossentropy", k=3, **kw):
    kw.setdefault("seed", 0)
    return fm.Sequential([fm.Dense(4, 6), fm.ReLU(), fm.Dense(6, k)], loss=loss,
                         optimizer=fm.SGD(lr=0.1, momentum=0.9), **kw)


def _data(rng, n=10, loss="softmax_crossentropy", k=3):
    X = rng.standard_normal((n, 4))
    if loss == "softmax_crossentropy":
        return X, rng.integers(0, k, n)
    if loss == "bce":
        return X, rng.integers(0, 2, n)
    return X, rng.standard_normal(n if k == 1 else (n, k))


def _raises_unchanged(model, call, exc, *fragments):
    """call() raises exc whose message holds every fragment, and the model is untouched."""
    before = model.get_weights()
    t = model.optimizer.t
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    print(f"{type(info.value).__name__}: {msg}")
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert model.optimizer.t == t
    return msg


# --------------------------------------------------------------------------- construction

def test_layers_that_do_not_chain():
    with pytest.raises(ValueError) as info:
        fm.Sequential([fm.Dense(3, 20), fm.Dense(10, 5)])
    msg = str(info.value)
    print(msg)
    assert "expected" in msg and "(N, 10)" in msg and "(N, 20)" in msg and "layer 1" in msg


def test_unknown_device_dtype_activation_init():
    cases = [
        (lambda: fm.Sequential([fm.Dense(2, 1)], device="tpu"), ValueError, ["expected", "'tpu'", "cpu"]),
        (lambda: fm.Sequential([fm.Dense(2, 1)], device=3), TypeError, ["expected", "int"]),
        (lambda: fm.Sequential([fm.Dense(2, 1)], dtype="float16"), ValueError,
         ["expected", "float32", "'float16'"]),
        (lambda: fm.Sequential([fm.Dense(2, 1)], dtype=np.int32), ValueError, ["expected", "int32"]),
        (lambda: fm.activation("swish"), ValueError, ["expected", "relu", "'swish'"]),
        (lambda: fm.Dense(3, 4, init="uniformish"), ValueError, ["expected", "glorot", "'uniformish'"]),
        (lambda: fm.Sequential([fm.Dense(2, 1)], loss="hinge"), ValueError, ["expected", "'hinge'"]),
        (lambda: fm.Sequential([fm.Dense(2, 1)], optimizer="adagrad"), ValueError, ["expected", "'adagrad'"]),
        (lambda: fm.Dense(0, 4), ValueError, ["expected", "0"]),
        (lambda: fm.Dense(3, 4, l2=-1), ValueError, ["expected", "-1"]),
        (lambda: fm.LeakyReLU(alpha=-0.5), ValueError, ["expected", "-0.5"]),
        (lambda: fm.SGD(lr=0), ValueError, ["expected", "lr"]),
    ]
    for call, exc, fragments in cases:
        with pytest.raises(exc) as info:
            call()
        msg = str(info.value)
        print(f"{type(info.value).__name__}: {msg}")
        for f in fragments:
            assert f in msg, f"{f!r} not in {msg!r}"


def test_unhashable_dtype_message():
    with pytest.raises((TypeError, ValueError), match="expected dtype"):
        fm.Sequential([fm.Dense(2, 1)], dtype=["float32"])


# --------------------------------------------------------------------------- data into fit / evaluate / predict

def test_wrong_number_of_features(rng):
    model = _model()
    X, y = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    for call in (lambda: model.fit(X, y), lambda: model.evaluate(X, y), lambda: model.predict(X),
                 lambda: model.loss_and_grads(X, y)):
        _raises_unchanged(model, call, ValueError, "expected", "(N, 4)", "(5, 3)")
    _raises_unchanged(model, lambda: model.predict(np.ones(4)), ValueError, "expected", "(4,)")
    Xv = rng.standard_normal((5, 4))
    _raises_unchanged(model, lambda: model.fit(Xv, y, validation_data=(X, y)), ValueError,
                      "expected validation_data", "(5, 3)")


def test_one_dimensional_x_on_unbuilt_model():
    model = fm.Sequential([fm.ReLU(), fm.Dense(3, 2)], loss="mse")
    with pytest.raises(ValueError, match=r"expected X .*\(3,\)"):
        model.predict(np.ones(3))


def test_length_mismatch(rng):
    model = _model()
    X = rng.standard_normal((5, 4))
    for call in (lambda: model.fit(X, [0, 1, 2, 0]), lambda: model.evaluate(X, [0, 1, 2, 0])):
        _raises_unchanged(model, call, ValueError, "expected", "5", "got 4")
    _raises_unchanged(model, lambda: model.fit(X, 1), ValueError, "expected", "scalar")


@pytest.mark.parametrize("labels,fragments", [
    ([0, 1, -1, 2, 0], ["expected labels in [0, 3)", "-1"]),
    ([0, 1, 3, 2, 0], ["expected labels in [0, 3)", "3"]),
    ([0, 1, 1.5, 2, 0], ["expected integer"]),
    ([[0, 1, 0]] * 4 + [[0.5, 0.5, 0]], ["expected one-hot"]),
    ([[0, 1]] * 5, ["expected", "(N, 3)", "(5, 2)"]),
])
def test_softmax_labels_out_of_range(labels, fragments, rng):
    model = _model()
    X = rng.standard_normal((5, 4))
    for call in (lambda: model.fit(X, np.array(labels)), lambda: model.evaluate(X, np.array(labels))):
        _raises_unchanged(model, call, ValueError, *fragments)


@pytest.mark.parametrize("labels,fragment", [([0, 1, 2, 1, 0], "2"), ([0, 1, -1, 1, 0], "-1"),
                                             ([0, 1, 0.5, 1, 0], "0.5")])
def test_bce_labels_not_binary(labels, fragment, rng):
    model = _model("bce", k=1)
    X = rng.standard_normal((5, 4))
    _raises_unchanged(model, lambda: model.fit(X, np.array(labels)), ValueError,
                      "expected labels 0 or 1", fragment)
    model3 = _model("bce", k=3)
    _raises_unchanged(model3, lambda: model3.fit(X, np.zeros((5, 2))), ValueError, "expected", "(5, 2)")


def test_bce_with_several_outputs_asks_for_one_column_per_output(rng):
    # two sigmoid outputs are two yes/no answers: (N,) class labels do not fit, and the
    # message must not offer (N,) as a layout it then refuses
    model = _model("bce", k=2)
    X = rng.standard_normal((100, 4))
    msg = _raises_unchanged(model, lambda: model.fit(X, rng.integers(0, 2, 100)), ValueError,
                            "expected labels of shape (N, 2) for 2 outputs", "got (100,)",
                            "Dense(..., 1)", "SoftmaxCrossEntropy")
    assert "(N,) or" not in msg
    one = _model("bce", k=1)
    _raises_unchanged(one, lambda: one.fit(X, np.zeros((100, 2))), ValueError,
                      "expected labels of shape (N,) or (N, 1) for 1 output", "got (100, 2)")
    model.fit(X, rng.integers(0, 2, (100, 2)), batch_size=50)   # the multi-label layout trains


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_x_and_y(bad, rng):
    model = _model()
    X, y = _data(rng)
    Xb = X.copy()
    Xb[3, 2] = bad
    for call in (lambda: model.fit(Xb, y), lambda: model.evaluate(Xb, y), lambda: model.predict(Xb)):
        _raises_unchanged(model, call, ValueError, "expected finite", "NaN or Inf")
    mse = _model("mse", k=1)
    yb = rng.standard_normal(10)
    yb[0] = bad
    _raises_unchanged(mse, lambda: mse.fit(X, yb), ValueError, "expected finite")


def test_empty_and_object_x(rng):
    model = _model()
    _raises_unchanged(model, lambda: model.fit(np.empty((0, 4)), np.empty(0, int)), ValueError,
                      "expected a non-empty X", "0 samples")
    _raises_unchanged(model, lambda: model.predict(np.empty((0, 4))), ValueError, "non-empty")
    obj = np.array([[1, 2, 3, "a"]] * 3, dtype=object)
    _raises_unchanged(model, lambda: model.fit(obj, [0, 1, 2]), TypeError, "expected X", "object")
    _raises_unchanged(model, lambda: model.predict([[1, 2], [3]]), TypeError, "expected X")
    _raises_unchanged(model, lambda: model.fit(rng.standard_normal((3, 4)),
                                               np.array([0, 1, None], dtype=object)),
                      TypeError, "expected numeric labels", "object")
    _raises_unchanged(model, lambda: model.predict(np.ones((3, 4), dtype=complex)), TypeError,
                      "expected X", "complex")


@pytest.mark.parametrize("bs", [0, -1, 2.5, 8.0, "32", True])
def test_bad_batch_size(bs, rng):
    model = _model()
    X, y = _data(rng)
    for call in (lambda: model.fit(X, y, batch_size=bs), lambda: model.evaluate(X, y, batch_size=bs),
                 lambda: model.predict(X, batch_size=bs)):
        _raises_unchanged(model, call, ValueError, "expected batch_size", repr(bs))


def test_bad_fit_arguments(rng):
    model = _model()
    X, y = _data(rng)
    _raises_unchanged(model, lambda: model.fit(X, y, epochs=-1), ValueError, "expected epochs", "-1")
    _raises_unchanged(model, lambda: model.fit(X, y, validation_split=1.5), ValueError,
                      "expected validation_split", "1.5")
    _raises_unchanged(model, lambda: model.fit(X, y, validation_data=X), ValueError,
                      "expected validation_data")
    _raises_unchanged(model, lambda: model.fit(X, y, callbacks=[print]), TypeError,
                      "expected Callback")


def test_set_weights_wrong_count_shape_or_values(rng):
    model = _model()
    w = model.get_weights()
    _raises_unchanged(model, lambda: model.set_weights(w[:3]), ValueError, "expected a list of 4", "got 3")
    _raises_unchanged(model, lambda: model.set_weights(w[0]), ValueError, "expected a list of 4")
    bad = [a.copy() for a in w]
    bad[2] = np.zeros((6, 2))
    bad[0] = bad[0] + 1.0                       # a valid first array must not be written either
    _raises_unchanged(model, lambda: model.set_weights(bad), ValueError,
                      "expected weight 2 of shape (6, 3)", "(6, 2)")
    bad = [a + 1.0 for a in w]
    bad[3] = np.array([np.nan, 0.0, 0.0])
    _raises_unchanged(model, lambda: model.set_weights(bad), ValueError, "expected finite", "weight 3")
    bad = [a.copy() for a in w]
    bad[1] = np.array(["a"] * 6)
    _raises_unchanged(model, lambda: model.set_weights(bad), TypeError, "expected weight 1", "numeric")


# --------------------------------------------------------------------------- valid but unusual

def _fit_weights(X, y, loss="softmax_crossentropy", k=3, **fit):
    model = _model(loss, k=k)
    model.fit(X, y, epochs=2, **fit)
    return model.get_weights()


def _same(wa, wb):
    for a, b in zip(wa, wb):
        np.testing.assert_array_equal(a, b)


def test_memory_layouts_and_read_only(rng):
    X, y = _data(rng, n=23)
    ref = _fit_weights(X, y, batch_size=5)
    _same(ref, _fit_weights(np.asfortranarray(X), y, batch_size=5))
    wide = np.zeros((23, 8))
    wide[:, ::2] = X
    assert not wide[:, ::2].flags.c_contiguous
    _same(ref, _fit_weights(wide[:, ::2], y, batch_size=5))
    tall = np.zeros((46, 4))
    tall[::2] = X
    _same(ref, _fit_weights(tall[::2], np.repeat(y, 2)[::2], batch_size=5))
    Xr, yr = X.copy(), y.copy()
    Xr.setflags(write=False)
    yr.setflags(write=False)
    _same(ref, _fit_weights(Xr, yr, batch_size=5))
    # a float32 C-contiguous X is used in place for full batch: it must not be written
    X32 = np.ascontiguousarray(X, np.float32)
    X32.setflags(write=False)
    keep = X32.copy()
    _fit_weights(X32, y, batch_size=None)
    np.testing.assert_array_equal(X32, keep)
    model = _model()
    model.evaluate(Xr, yr)
    assert model.predict(Xr).shape == (23, 3)


def test_integer_uint8_and_float64_x(rng):
    Xi = rng.integers(0, 256, size=(20, 4))
    y = rng.integers(0, 3, 20)
    ref = _fit_weights(Xi.astype(np.float32) / 255 * 255, y, batch_size=6)
    _same(ref, _fit_weights(Xi, y, batch_size=6))
    _same(ref, _fit_weights(Xi.astype(np.uint8), y, batch_size=6))
    _same(ref, _fit_weights(Xi.astype(np.float64), y, batch_size=6))   # float64 into a float32 model
    _same(ref, _fit_weights(Xi.astype(np.int32).tolist(), y.tolist(), batch_size=6))  # plain lists
    assert all(w.dtype == np.float32 for w in ref)


def test_label_layouts(rng):
    X, y = _data(rng, n=15)
    ref = _fit_weights(X, y, batch_size=4)
    _same(ref, _fit_weights(X, y.reshape(-1, 1), batch_size=4))                 # a column
    _same(ref, _fit_weights(X, np.eye(3)[y], batch_size=4))                     # one-hot
    _same(ref, _fit_weights(X, y.astype(np.float64), batch_size=4))             # 0., 1., 2.
    _same(ref, _fit_weights(X, y.astype(np.uint8), batch_size=4))
    yb = rng.integers(0, 2, 15)
    ref = _fit_weights(X, yb, "bce", 1, batch_size=4)
    _same(ref, _fit_weights(X, yb.reshape(-1, 1), "bce", 1, batch_size=4))
    _same(ref, _fit_weights(X, yb.astype(bool), "bce", 1, batch_size=4))
    ym = rng.standard_normal(15)
    _same(_fit_weights(X, ym, "mse", 1, batch_size=4), _fit_weights(X, ym[:, None], "mse", 1, batch_size=4))


def test_batch_size_larger_than_n_is_full_batch(rng):
    X, y = _data(rng, n=9)
    ref = _fit_weights(X, y, batch_size=None)
    _same(ref, _fit_weights(X, y, batch_size=9))
    _same(ref, _fit_weights(X, y, batch_size=1000))
    _same(ref, _fit_weights(X, y, batch_size=np.int64(50)))
    one = _model()
    h = one.fit(X[:1], y[:1], epochs=2, batch_size=4)                          # a single sample
    assert len(h["loss"]) == 2


# --------------------------------------------------------------------------- divergence

def _diverging(dtype, bs):
    r = np.random.default_rng(0)
    X = r.standard_normal((64, 5))
    y = r.standard_normal(64) * 1e3
    model = fm.Sequential([fm.Dense(5, 8), fm.ReLU(), fm.Dense(8, 1)], loss="mse",
                          optimizer=fm.SGD(lr=1e6), dtype=dtype, seed=0)
    return model, X, y


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bs", [None, 16])
def test_diverging_fit_raises_and_keeps_finite_weights(dtype, bs):
    model, X, y = _diverging(dtype, bs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(fm.NonFiniteLossError) as info:
            model.fit(X, y, epochs=50, batch_size=bs)
    e = info.value
    print(f"{dtype} batch_size={bs}: {e}")
    assert f"epoch {e.epoch}" in str(e) and f"step {e.step}" in str(e)
    assert isinstance(e, FloatingPointError)
    assert isinstance(e.history, fm.History) and len(e.history.epoch) == e.epoch
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_terminate_on_nan_returns_history(dtype):
    model, X, y = _diverging(dtype, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        h = model.fit(X, y, epochs=50, batch_size=None, callbacks=[fm.TerminateOnNaN()])
    print(f"{dtype}: history up to the divergence {h}")
    assert isinstance(h, fm.History) and 1 <= len(h.epoch) < 50     # full batch: diverges after a few
    assert len(h["loss"]) == len(h.epoch) and all(np.isfinite(h["loss"]))
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


def test_float32_overflow_in_update_keeps_finite_weights():
    X, y = np.full((4, 1), 1e33), np.array([0, 1, 0, 1])
    model = fm.Sequential([fm.Dense(1, 1)], loss="bce", optimizer=fm.SGD(lr=1e6), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(fm.NonFiniteLossError) as info:
            model.fit(X, y, epochs=3, batch_size=None)
    print(f"{info.value}; weights {model.get_weights()}")
    assert info.value.epoch == 0
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


# --------------------------------------------------------------------------- NumPy scalars

# (constructor, the get_config key of each NumPy scalar passed, its Python value)
NUMPY_SCALARS = {
    "Dense": (lambda: fm.Dense(np.int64(3), np.int32(4), l1=np.float32(0.5), l2=np.float16(0.25)),
              {"in_features": 3, "out_features": 4, "l1": 0.5, "l2": 0.25}),
    "LeakyReLU": (lambda: fm.LeakyReLU(np.float32(0.25)), {"alpha": 0.25}),
    "Conv2D": (lambda: fm.Conv2D(np.int64(1), np.uint8(4), np.int32(3), stride=np.int64(1),
                                 padding=np.int16(1), l1=np.float32(0.5), l2=np.float64(0.25)),
               {"in_channels": 1, "out_channels": 4, "stride": 1, "padding": 1, "l1": 0.5, "l2": 0.25}),
    "MaxPool2D": (lambda: fm.MaxPool2D(np.int64(2), stride=np.int32(2)), {"pool_size": 2, "stride": 2}),
    "BatchNorm": (lambda: fm.BatchNorm(np.int64(4), momentum=np.float32(0.5), eps=np.float32(0.125)),
                  {"features": 4, "momentum": 0.5, "eps": 0.125}),
    "Dropout": (lambda: fm.Dropout(np.float32(0.5)), {"rate": 0.5}),
    "SGD": (lambda: fm.SGD(lr=np.float32(0.5), momentum=np.float32(0.25)), {"lr": 0.5, "momentum": 0.25}),
    "Adam": (lambda: fm.Adam(lr=np.float32(0.5), beta1=np.float32(0.5), beta2=np.float16(0.75),
                             eps=np.float32(0.125)),
             {"lr": 0.5, "beta1": 0.5, "beta2": 0.75, "eps": 0.125}),
    "Augment": (lambda: fm.Augment(rotate=np.float32(10), shift=np.float32(0.25),
                                   image_shape=(np.int64(8), np.int32(8))),
                {"rotate": 10.0, "shift": 0.25, "image_shape": (8, 8)}),
}


@pytest.mark.parametrize("name", sorted(NUMPY_SCALARS))
def test_numpy_scalars_are_accepted_as_python_numbers(name):
    """Sizes and rates from NumPy grids (np.int64, np.float32, ...) work wherever Python ints and
    floats do, and come back as Python ints / floats: get_config stays JSON."""
    make, want = NUMPY_SCALARS[name]
    obj = make()
    cfg = obj.get_config()
    json.dumps(cfg)
    for key, value in want.items():
        assert cfg[key] == value and type(cfg[key]) is type(value), (key, cfg[key], value)


def test_numpy_scalars_in_fit_and_callbacks(rng):
    X, y = _data(rng, n=20)
    model = _model()
    stop = fm.EarlyStopping(monitor="val_loss", patience=np.int64(1), min_delta=np.float32(0.0))
    h = model.fit(X, y, epochs=np.int64(3), batch_size=np.int32(8), validation_split=np.float32(0.25),
                  callbacks=[stop], checkpoint_every=np.int64(1))
    assert type(stop.patience) is int and len(h.epoch) >= 1
    model.predict(X, batch_size=np.uint16(4))


@pytest.mark.parametrize("make,fragment", [
    (lambda: fm.Dense(True, 3), "in_features"),
    (lambda: fm.Dense(3, np.float64(4.0)), "out_features"),
    (lambda: fm.Dense(3, 4, l2=np.bool_(True)), "l2"),
    (lambda: fm.LeakyReLU(True), "alpha"),
    (lambda: fm.SGD(lr=True), "lr"),
    (lambda: fm.Adam(beta1=np.float32(1.0)), "beta1"),
    (lambda: fm.Adam(eps=np.float32(np.nan)), "eps"),
    (lambda: fm.EarlyStopping(patience=np.float64(2.0)), "patience"),
    (lambda: fm.EarlyStopping(patience=-1), "patience"),
    (lambda: fm.Dropout(np.float32(1.0)), "rate"),
])
def test_numbers_still_refused_say_what_was_expected(make, fragment):
    with pytest.raises(ValueError) as info:
        make()
    print(info.value)
    assert f"expected {fragment}" in str(info.value)


# --------------------------------------------------------------------------- callbacks' monitors

class _Watcher(fm.Callback):
    """A user callback that opts in to the monitor check through ``monitor``."""
    def __init__(self, monitor):
        self.monitor = monitor


@pytest.mark.parametrize("cb,fit_kw,fragment", [
    (lambda: fm.EarlyStopping(monitor="val_loss"), {}, "val_loss"),
    (lambda: fm.EarlyStopping(monitor="val_accuracy"), {"test_data": True}, "val_accuracy"),
    (lambda: fm.EarlyStopping(monitor="test_loss"), {"validation_split": 0.2}, "test_loss"),
    (lambda: fm.EarlyStopping(monitor="acc"), {}, "acc"),
    (lambda: _Watcher("val_loss"), {}, "val_loss"),
])
def test_a_monitor_fit_will_not_log_is_refused_before_the_first_step(cb, fit_kw, fragment, rng):
    """EarlyStopping(monitor="val_loss") without validation data used to fail after a whole
    epoch had changed the weights; now fit refuses it up front, naming what it will log."""
    X, y = _data(rng, n=20)
    if fit_kw.get("test_data"):
        fit_kw = {"test_data": (X, y)}
    model = _model()
    rng_state = model.rng.bit_generator.state
    msg = _raises_unchanged(model, lambda: model.fit(X, y, epochs=2, batch_size=8, callbacks=[cb()], **fit_kw),
                            ValueError, repr(fragment), "'loss'", "'accuracy'")
    assert model.rng.bit_generator.state == rng_state
    assert "val_" in msg or "validation" in msg


def test_monitors_fit_will_log_are_accepted(rng):
    X, y = _data(rng, n=20)
    model = _model()
    cbs = [fm.EarlyStopping(monitor="loss", patience=5), fm.EarlyStopping(monitor="val_accuracy", patience=5),
           fm.EarlyStopping(monitor="test_loss", patience=5), _Watcher("val_loss")]
    model.fit(X, y, epochs=1, batch_size=8, validation_split=0.2, test_data=(X, y), callbacks=cbs)


# --------------------------------------------------------------------------- flat images

def _cnn(c):
    return fm.Sequential([fm.Conv2D(c, 2, 3, padding=1), fm.ReLU(), fm.Flatten(), fm.Dense(2 * 4 * 5, 3)],
                         loss="softmax_crossentropy", seed=0, input_shape=(c, 4, 5))


def test_flat_colour_images_to_a_conv_model_warn_about_the_layout(rng):
    """Flat rows of C > 1 channel images could be flattened channels-first (N, C*H*W) or
    channels-last (N, H*W*C, the layout of load_h5 / load_image_folder): both have the size the
    model expects, and they were read as channels-first without a word. Now a UserWarning names
    both layouts and how to say which; NCHW input (and single-channel images, the same either
    way) pass silently."""
    model = _cnn(3)
    X_nhwc = rng.standard_normal((6, 4, 5, 3))
    with pytest.warns(UserWarning) as record:
        model.predict(X_nhwc.reshape(6, -1))
    msg = str(record[0].message)
    print(msg)
    for fragment in ("(N, 60)", "channels-first", "channels-last", "(N, 3, 4, 5)", "(N, 4, 5, 3)",
                     "transpose(0, 3, 1, 2)"):
        assert fragment in msg, fragment
    nchw = X_nhwc.transpose(0, 3, 1, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = model.predict(nchw)
        _cnn(1).predict(rng.standard_normal((6, 20)))
    with pytest.warns(UserWarning):
        np.testing.assert_array_equal(model.predict(nchw.reshape(6, -1)), p)   # read as channels-first
    with pytest.raises(ValueError, match=r"\(N, 3, 4, 5\)"):
        model.predict(X_nhwc)            # 4-D channels-last is refused, as before
