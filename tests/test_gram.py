"""The full-batch row-space path (fastmlp/gram.py) computes the same iteration as the ordinary one."""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp import gram


def _pair(opt, l2=0.0, dtype="float64", act=fm.ReLU):
    models = []
    for use_gram in (True, False):
        m = fm.Sequential([fm.Dense(400, 8, l2=l2), act(), fm.Dense(8, 4), fm.Tanh(), fm.Dense(4, 1)],
                          loss=fm.BinaryCrossEntropy(), optimizer=opt(), dtype=dtype, seed=3)
        m.full_batch_gram = use_gram
        models.append(m)
    return models


@pytest.fixture
def data(rng):
    X = rng.random((40, 400))
    return X, (rng.random(40) > 0.5).astype(float)


OPTS = {"sgd": lambda: fm.SGD(0.05), "momentum": lambda: fm.SGD(0.05, momentum=0.9),
        "nesterov": lambda: fm.SGD(0.05, momentum=0.9, nesterov=True)}


@pytest.mark.parametrize("l2", [0.0, 0.01])
@pytest.mark.parametrize("opt", list(OPTS))
def test_same_iteration_as_ordinary_path_float64(opt, l2, data, monkeypatch):
    X, y = data
    used = []
    real = gram.GramFirstLayer.__init__

    def spy(self, *a):
        used.append(True)
        real(self, *a)

    monkeypatch.setattr(gram.GramFirstLayer, "__init__", spy)
    a, b = _pair(OPTS[opt], l2)
    for epochs in (30, 20):          # the second fit starts from a non-zero momentum buffer
        ha = a.fit(X, y, epochs=epochs, batch_size=None)
        hb = b.fit(X, y, epochs=epochs, batch_size=None)
    assert len(used) == 2            # the row-space path ran in both of a's fits and none of b's
    err = max(np.abs(p - q).max() / np.abs(q).max() for p, q in zip(a.get_weights(), b.get_weights()))
    lerr = max(abs(p - q) / q for p, q in zip(ha["loss"], hb["loss"]))
    print(f"{opt} l2={l2}: weights rel err {err:.1e}, loss rel err {lerr:.1e}")
    assert err < 1e-12 and lerr < 1e-12
    la, ga = a.loss_and_grads(X, y)
    lb, gb = b.loss_and_grads(X, y)
    assert abs(la - lb) / lb < 1e-12


def test_float32_close_to_ordinary_path(data):
    X, y = data
    a, b = _pair(OPTS["momentum"], 0.01, "float32")
    a.fit(X, y, epochs=50, batch_size=None)
    b.fit(X, y, epochs=50, batch_size=None)
    err = max(np.abs(p - q).max() / np.abs(q).max() for p, q in zip(a.get_weights(), b.get_weights()))
    print(f"float32 weights rel err {err:.1e}")
    assert err < 1e-4


@pytest.mark.parametrize("case", ["adam", "minibatch", "validation", "l1", "narrow"])
def test_not_used_where_it_does_not_apply(case, data, monkeypatch):
    X, y = data
    monkeypatch.setattr(gram.GramFirstLayer, "__init__",
                        lambda *a: pytest.fail("row-space path used where it must not be"))
    first = fm.Dense(400, 8, l1=0.01 if case == "l1" else 0.0)
    opt = fm.Adam(1e-3) if case == "adam" else fm.SGD(0.05)
    m = fm.Sequential([first, fm.ReLU(), fm.Dense(8, 1)], loss=fm.BinaryCrossEntropy(), optimizer=opt,
                      dtype="float64", seed=0)
    kw = {"batch_size": 8 if case == "minibatch" else None}
    if case == "validation":
        kw["validation_data"] = (X, y)
    Xc = np.tile(X[:, :40], (1, 10)) if case != "narrow" else X
    if case == "narrow":     # N > D / 4: the Gram matrix would not pay
        Xc = np.tile(X, (4, 1))
        y = np.tile(y, 4)
    m.fit(Xc, y, epochs=2, **kw)


@pytest.mark.parametrize("use_gram", [True, False])
def test_divergence_keeps_finite_weights(use_gram, data, monkeypatch):
    X, y = data
    used = []
    real = gram.GramFirstLayer.__init__
    def spy(self, *a):
        used.append(1)
        real(self, *a)

    monkeypatch.setattr(gram.GramFirstLayer, "__init__", spy)
    m = fm.Sequential([fm.Dense(400, 4), fm.Dense(4, 1)], loss=fm.MeanSquaredError(),
                      optimizer=fm.SGD(1.0, momentum=0.9), dtype="float64", seed=0)
    m.full_batch_gram = use_gram
    with pytest.raises(fm.NonFiniteLossError) as e:
        m.fit(X * 10, y * 100, epochs=2000, batch_size=None)
    print(e.value)
    assert bool(used) == use_gram
    assert "epoch" in str(e.value)
    assert all(np.all(np.isfinite(w)) for w in m.get_weights())


def _cat_like(dtype, use_gram):
    # the cat / non-cat set-up in small: full-batch SGD with momentum, a wide first layer, N <= D / 4
    m = fm.Sequential([fm.Dense(1024, 20, init="course"), fm.ReLU(), fm.Dense(20, 7, init="course"), fm.ReLU(),
                       fm.Dense(7, 1, init="course")], loss="bce", optimizer=fm.SGD(0.0075, momentum=0.9),
                      dtype=dtype, seed=1)
    m.full_batch_gram = use_gram
    return m


def _save_load_continue(dtype, use_gram, tmp_path, rng):
    """(5 epochs straight, 3 epochs + save + load + 2 epochs) with the row-space path on or off."""
    X, y = rng.random((64, 1024)), (rng.random(64) > 0.5).astype(float)
    straight = _cat_like(dtype, use_gram)
    straight.fit(X, y, epochs=5, batch_size=None)
    first = _cat_like(dtype, use_gram)
    first.fit(X, y, epochs=3, batch_size=None)
    first.save(tmp_path / "m.fmlp")
    back = fm.load_model(tmp_path / "m.fmlp")
    back.full_batch_gram = use_gram          # a setting of the object, not saved in the file
    back.fit(X, y, epochs=2, batch_size=None)
    return straight, back


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_save_load_continue_is_bitwise_with_the_row_space_path_off(dtype, tmp_path, rng):
    """docs/guarantees.md: with model.full_batch_gram = False (before each fit, the loaded model's
    too) save, load and continue ends bitwise where the uninterrupted run ends, here too."""
    straight, back = _save_load_continue(dtype, False, tmp_path, rng)
    for a, b in zip(straight.get_weights(), back.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(straight.flat.state, back.flat.state):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-6), ("float64", 1e-14)])
def test_save_load_continue_on_the_row_space_path_agrees_to_rounding(dtype, tol, tmp_path, rng, monkeypatch):
    """docs/guarantees.md: on the row-space path W is kept as coefficients relative to the W at the
    start of each fit call and written back when fit returns; a run split into several fit calls
    (save and load between them) rounds differently from one call. Not bitwise: within rounding."""
    used = []
    real = gram.GramFirstLayer.__init__
    monkeypatch.setattr(gram.GramFirstLayer, "__init__", lambda self, *a: used.append(1) or real(self, *a))
    straight, back = _save_load_continue(dtype, True, tmp_path, rng)
    assert len(used) == 3
    err = max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(straight.get_weights(), back.get_weights()))
    print(f"{dtype}: 3 + save + load + 2 epochs vs 5 on the row-space path: largest relative difference {err:.1e}")
    assert err <= tol
