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
