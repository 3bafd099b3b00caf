"""What fit does when the user leaves things out: no loss, raw pixels, verbose.

A model without a loss refuses to train (listing the losses) but still predicts and
gradient-checks; inputs that look like raw 0..255 pixels get one warning; fit's default
verbose is Keras's "auto": a bar redrawn per batch on a terminal (at most ten times a
second), one line per epoch elsewhere."""
import io
import re
import time
import warnings

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import progress
from fastmlp.losses import LOSSES


def _mlp(loss=None, k=3, **kw):
    return fm.Sequential([fm.Dense(4, 8), fm.Tanh(), fm.Dense(8, k)], loss=loss, seed=0, **kw)


def test_fit_without_a_loss_is_an_error_that_lists_the_losses(rng):
    model = _mlp()
    X, y = rng.standard_normal((20, 4)), rng.integers(0, 3, 20)
    before = model.get_weights()
    for call in (lambda: model.fit(X, y, verbose=0), lambda: model.evaluate(X, y)):
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        print(msg)
        assert "needs a loss" in msg and "loss=" in msg
        for name in LOSSES:
            assert repr(name) in msg
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert model.optimizer.t == 0
    assert "Loss: none" in model.summary(print_fn=None)


def test_a_model_without_a_loss_predicts_raw_outputs_and_gradient_checks(rng):
    model = _mlp(dtype="float64")
    X = rng.standard_normal((6, 4))
    W1, b1, W2, b2 = model.get_weights()
    np.testing.assert_allclose(model.predict(X), np.tanh(X @ W1 + b1) @ W2 + b2, rtol=1e-12)
    err = fm.gradcheck(model, X, rng.standard_normal((6, 3)), verbose=False)
    print(f"gradcheck of a loss-less model: {err:.2e}")
    assert err < 1e-7
    # saved and loaded, it still has no loss
    again = fm.Sequential.from_config(model.get_config())
    assert again.loss is None and model.get_config()["loss"] is None


def test_a_given_loss_trains_as_before(rng):
    model = _mlp("softmax_crossentropy")
    X, y = rng.standard_normal((30, 4)), rng.integers(0, 3, 30)
    h = model.fit(X, y, epochs=2, batch_size=10, verbose=0)
    assert len(h.epoch) == 2 and np.isfinite(h["loss"]).all()


@pytest.mark.parametrize("make", [
    lambda r: r.integers(0, 256, (40, 4)).astype(np.uint8),
    lambda r: r.integers(0, 256, (40, 4)).astype(np.float32),
    lambda r: r.integers(0, 256, (40, 4)),
])
def test_raw_pixels_get_one_warning_pointing_at_scale_to_unit(make, rng):
    X, y = make(rng), rng.integers(0, 3, 40)
    model = _mlp("softmax_crossentropy")
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        model.fit(X, y, epochs=3, batch_size=8, verbose=0)
    raw = [w for w in got if "raw 0..255 pixels" in str(w.message)]
    assert len(raw) == 1, [str(w.message) for w in got]
    assert "fastmlp.scale_to_unit" in str(raw[0].message)
    assert raw[0].filename == __file__                  # points at the caller's fit line
    assert fm.scale_to_unit is fm.preprocessing.scale_to_unit


@pytest.mark.parametrize("make", [
    lambda r: r.random((40, 4)).astype(np.float32),              # already in [0, 1]
    lambda r: r.integers(0, 2, (40, 4)).astype(np.uint8),        # a 0/1 mask
    lambda r: r.standard_normal((40, 4)) * 50,                   # standardised-ish, not whole numbers
    lambda r: r.integers(0, 1000, (40, 4)).astype(np.float64),   # counts beyond 255
    lambda r: r.integers(-255, 0, (40, 4)).astype(np.float64),   # negative
])
def test_scaled_or_other_data_gets_no_pixel_warning(make, rng):
    X, y = make(rng), rng.integers(0, 3, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _mlp("softmax_crossentropy").fit(X, y, epochs=1, batch_size=8, verbose=0)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _fit_printing(monkeypatch, stream, verbose, n=4000, epochs=2, batch_size=4, slow=0.0):
    monkeypatch.setattr("sys.stdout", stream)
    model = _mlp("softmax_crossentropy")
    rng = np.random.default_rng(0)
    cbs = []
    if slow:   # each step takes at least `slow` seconds: the bar must redraw at a bounded rate
        cbs = [fm.LambdaCallback(on_train_batch_end=lambda b, logs: time.sleep(slow))]
    t0 = time.perf_counter()
    model.fit(rng.standard_normal((n, 4)), rng.integers(0, 3, n), epochs=epochs, batch_size=batch_size,
              verbose=verbose, callbacks=cbs)
    return stream.getvalue(), time.perf_counter() - t0


def test_auto_verbose_off_a_terminal_prints_a_line_per_epoch(monkeypatch):
    out, _ = _fit_printing(monkeypatch, io.StringIO(), "auto", n=400, epochs=3)
    lines = out.splitlines()
    print(out)
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1", "epoch 2", "epoch 3"]
    assert all("loss=" in ln and "accuracy=" in ln and "samples/s=" in ln for ln in lines)
    assert "\r" not in out
    assert _fit_printing(monkeypatch, io.StringIO(), 1, n=400, epochs=2)[0].count("\n") == 2
    assert _fit_printing(monkeypatch, io.StringIO(), 0, n=400)[0] == ""
    assert _fit_printing(monkeypatch, _Terminal(), 0, n=400)[0] == ""


def test_auto_verbose_on_a_terminal_draws_a_bar_at_most_ten_times_a_second(monkeypatch):
    out, seconds = _fit_printing(monkeypatch, _Terminal(), "auto", n=1600, epochs=2, batch_size=4,
                                 slow=0.002)
    redraws = [s for s in out.split("\r") if "[" in s and "ETA" in s]
    print(f"{len(redraws)} redraws in {seconds:.2f} s; last: {redraws[-1]!r}")
    assert seconds > 0.5 and len(redraws) >= 3
    assert len(redraws) <= 10 * seconds + 2
    bar = redraws[-1]
    assert re.search(r"epoch 2/2 \[=*>?\.*\] \d+/1600 [\d,]+ samples/s ETA \d+s loss=\d\.\d{4} accuracy=", bar)
    # each epoch ends with its line, written over the bar
    ends = [s.strip() for s in out.split("\r") if s.strip().startswith("epoch ") and s.endswith("\n")]
    assert [e.split(":")[0] for e in ends] == ["epoch 1", "epoch 2"]


def test_bad_verbose_is_refused():
    with pytest.raises(ValueError, match="expected verbose 'auto', 0, 1 or 2, got 3"):
        progress.resolve_verbose(3)
    with pytest.raises(ValueError, match="got 'loud'"):
        _mlp("mse").fit(np.zeros((4, 4)), np.zeros((4, 3)), verbose="loud")
