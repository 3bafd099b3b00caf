"""Finite-difference checks of every layer, activation, loss and regulariser.

Smooth ops (Dense, tanh, sigmoid, the losses, L2) must match centred
differences to a relative error of 1e-6. ReLU, LeakyReLU and L1 are checked
with inputs whose pre-activations (or weights) are bounded away from the
kink, and their documented subgradient at exactly 0 is checked on the ops.
A planted wrong backward must fail the check by a wide margin.
"""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp.backend import cpu
from fastmlp.backend.codes import IDENTITY, LEAKY_RELU, RELU, SIGMOID, TANH
from fastmlp.backend.cpu import dense as cpu_dense
from fastmlp.backend.cpu import optim as cpu_optim
from fastmlp.gradcheck import gradcheck, gradcheck_layer, rel_error

TOL = 1e-6
MARGIN = 0.02          # |pre-activation| or |w| at least this far from a kink
SMOOTH = {"tanh": fm.Tanh, "sigmoid": fm.Sigmoid}
KINKED = {"relu": fm.ReLU, "leaky_relu": lambda: fm.LeakyReLU(0.1)}
ACTS = {**SMOOTH, **KINKED}
SHAPES = [(1, 1, 1), (1, 5, 3), (4, 1, 6), (7, 13, 1), (5, 4, 3)]   # (N, D, M)


def _bind(layer, d, rng):
    """Build a standalone float64 CPU layer on (N, d) inputs with random parameters."""
    layer.build((d,), cpu, np.float64)
    params = [rng.standard_normal(s.shape) for s in layer.param_specs()]
    layer.bind(params, [np.zeros_like(p) for p in params])
    layer.needs_dx = True
    return layer


def _away_from_zero(x, rng):
    """Push every entry at least 10 * MARGIN away from 0, keeping its sign."""
    return np.where(x >= 0, 1.0, -1.0) * (np.abs(x) + 10 * MARGIN)


def _centre_bias(z0, rng):
    """A bias per column that puts the column's values in the middle of their widest gap
    around zero, so both signs occur (N > 1) and nothing sits near the kink."""
    b = np.empty(z0.shape[1])
    for j in range(z0.shape[1]):
        v = np.sort(z0[:, j])
        if v.size == 1:
            b[j] = -v[0] + (0.5 if rng.random() < 0.5 else -0.5)
            continue
        gaps = np.diff(v)
        k = int(np.argmax(gaps))
        b[j] = -(v[k] + v[k + 1]) / 2
    return b


def _np_act(z, name):
    if name == "relu":
        return np.maximum(z, 0)
    if name == "leaky_relu":
        return np.where(z > 0, z, 0.1 * z)
    return np.tanh(z) if name == "tanh" else 1 / (1 + np.exp(-z))


def _set_margins(model, X):
    """Re-choose the biases of every Dense followed by a kinked activation so that all its
    pre-activations are >= MARGIN from 0; returns the smallest margin achieved."""
    weights = model.get_weights()
    a, wi, worst = np.asarray(X, np.float64), 0, np.inf
    layers = model.layers
    for i, layer in enumerate(layers):
        if isinstance(layer, fm.Dense):
            W, b = weights[wi], weights[wi + 1]
            z = a @ W
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(nxt, (fm.ReLU, fm.LeakyReLU)):
                b[...] = _centre_bias(z, np.random.default_rng(i))
                worst = min(worst, float(np.abs(z + b).min()))
            a = z + b
            wi += 2
        else:
            name = {fm.ReLU: "relu", fm.LeakyReLU: "leaky_relu", fm.Tanh: "tanh",
                    fm.Sigmoid: "sigmoid"}[type(layer)]
            a = _np_act(a, name)
    model.set_weights(weights)
    return worst


# --------------------------------------------------------------------------- layers

@pytest.mark.parametrize("n,d,m", SHAPES)
def test_dense_layer(n, d, m, rng):
    layer = _bind(fm.Dense(d, m), d, rng)
    err = gradcheck_layer(layer, rng.standard_normal((n, d)), rng.standard_normal((n, m)))
    print(f"Dense({d},{m}) N={n}: rel err {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("name", sorted(ACTS))
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (16, 5)])
def test_standalone_activation(name, shape, rng):
    layer = _bind(ACTS[name](), shape[1], rng)
    x = rng.standard_normal(shape) * 2
    if name in KINKED:
        x = _away_from_zero(x, rng)
    err = gradcheck_layer(layer, x, rng.standard_normal(shape))
    print(f"{name} standalone {shape}: rel err {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("name", sorted(ACTS))
@pytest.mark.parametrize("n,d,m", SHAPES)
def test_dense_fused_activation(name, n, d, m, rng):
    model = fm.Sequential([fm.Dense(d, m), ACTS[name]()], dtype="float64", seed=3)
    dense = model.layers[0]
    assert model.layers[1].fused and dense.act_code != IDENTITY
    dense.needs_dx = True     # a first layer skips dx; check it here too
    x = rng.standard_normal((n, d))
    if name in KINKED:
        margin = _set_margins(model, x)
        assert margin >= MARGIN
    err = gradcheck_layer(dense, x, rng.standard_normal((n, m)))
    print(f"Dense({d},{m})+{name} fused N={n}: rel err {err:.2e}")
    assert err <= TOL


# --------------------------------------------------------------------------- losses + model

def _labels(loss, n, k, rng):
    if loss == "bce":
        y = rng.integers(0, 2, size=(n,) if k == 1 else (n, k))
        return fm.BinaryCrossEntropy(), y
    if loss == "softmax_int":
        return fm.SoftmaxCrossEntropy(), rng.integers(0, k, size=n)
    if loss == "softmax_onehot":
        return fm.SoftmaxCrossEntropy(), np.eye(k)[rng.integers(0, k, size=n)]
    return fm.MeanSquaredError(), rng.standard_normal((n,) if k == 1 else (n, k))


LOSS_CASES = [("bce", 1), ("bce", 3), ("softmax_int", 2), ("softmax_int", 4),
              ("softmax_onehot", 3), ("mse", 1), ("mse", 3)]


@pytest.mark.parametrize("loss,k", LOSS_CASES)
@pytest.mark.parametrize("n", [1, 6])
def test_loss_gradients(loss, k, n, device, rng):
    lossobj, y = _labels(loss, n, k, rng)
    model = fm.Sequential([fm.Dense(4, k)], loss=lossobj, device=device, dtype="float64", seed=1)
    X = rng.standard_normal((n, 4)) * 2
    err = gradcheck(model, X, y)
    print(f"{loss} K={k} N={n} {device}: rel err {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("act", sorted(ACTS))
@pytest.mark.parametrize("loss,k", [("bce", 1), ("softmax_int", 3), ("mse", 2)])
@pytest.mark.parametrize("width", [1, 5])
def test_two_layer_model(act, loss, k, width, device, rng):
    n = 5
    lossobj, y = _labels(loss, n, k, rng)
    model = fm.Sequential([fm.Dense(3, width), ACTS[act](), fm.Dense(width, k)],
                          loss=lossobj, device=device, dtype="float64", seed=2)
    X = rng.standard_normal((n, 3))
    if act in KINKED:
        assert _set_margins(model, X) >= MARGIN
    err = gradcheck(model, X, y)
    print(f"Dense-{act}-Dense width={width} {loss}: rel err {err:.2e}")
    assert err <= TOL


def test_deep_model_standalone_activation(device, rng):
    # Dense, Tanh (fused), Sigmoid (standalone: follows an activation), Dense, Tanh, Dense
    model = fm.Sequential([fm.Dense(4, 6), fm.Tanh(), fm.Sigmoid(), fm.Dense(6, 3), fm.Tanh(),
                           fm.Dense(3, 3)], loss="softmax_crossentropy", device=device,
                          dtype="float64", seed=4)
    assert model.layers[1].fused and not model.layers[2].fused
    X, y = rng.standard_normal((7, 4)), rng.integers(0, 3, 7)
    err = gradcheck(model, X, y)
    print(f"deep model with a standalone activation: rel err {err:.2e}")
    assert err <= TOL


def test_l2_gradient(device, rng):
    model = fm.Sequential([fm.Dense(4, 5, l2=0.3), fm.Tanh(), fm.Dense(5, 2, l2=0.05)],
                          loss="mse", device=device, dtype="float64", seed=5)
    X, y = rng.standard_normal((6, 4)), rng.standard_normal((6, 2))
    err = gradcheck(model, X, y)
    print(f"L2: rel err {err:.2e}")
    assert err <= TOL
    # the penalty is there: l2 * sum(W^2), Keras convention, not divided by N
    w = model.get_weights()
    plain = fm.Sequential([fm.Dense(4, 5), fm.Tanh(), fm.Dense(5, 2)], loss="mse", device=device,
                          dtype="float64", seed=5)
    plain.set_weights(w)
    diff = model.loss_and_grads(X, y)[0] - plain.loss_and_grads(X, y)[0]
    expect = 0.3 * np.sum(w[0] ** 2) + 0.05 * np.sum(w[2] ** 2)
    print(f"L2 penalty {diff:.12g} expected {expect:.12g}")
    assert diff == pytest.approx(expect, rel=1e-12)


def test_l1_gradient_away_from_zero(device, rng):
    model = fm.Sequential([fm.Dense(4, 5, l1=0.2), fm.Sigmoid(), fm.Dense(5, 1, l1=0.05, l2=0.1)],
                          loss="bce", device=device, dtype="float64", seed=6)
    w = model.get_weights()
    w[0], w[2] = _away_from_zero(w[0], rng), _away_from_zero(w[2], rng)
    model.set_weights(w)
    assert min(np.abs(w[0]).min(), np.abs(w[2]).min()) >= MARGIN
    X, y = rng.standard_normal((6, 4)), rng.integers(0, 2, 6)
    err = gradcheck(model, X, y)
    print(f"L1 (+L2) away from 0: rel err {err:.2e}")
    assert err <= TOL


# --------------------------------------------------------------------------- subgradients at 0

def _ops_at_zero(code, alpha):
    """(act_backward, act_backward_bias_grad) results where the activation output is exactly 0."""
    y = np.zeros((3, 4))
    dy = np.arange(1.0, 13.0).reshape(3, 4)
    dx = np.empty_like(dy)
    cpu.act_backward(dx, dy, y, code, alpha)
    dz, db = np.empty_like(dy), np.empty(4)
    cpu.act_backward_bias_grad(dz, db, dy, y, code, alpha)
    return dy, dx, dz, db


def test_relu_subgradient_at_zero():
    dy, dx, dz, db = _ops_at_zero(RELU, 0.0)
    assert np.all(dx == 0) and np.all(dz == 0) and np.all(db == 0)
    for kernel in cpu_dense.act_backward_twins:
        out = np.empty(12)
        kernel(out, dy.ravel(), np.zeros(12), RELU, 0.0)
        assert np.all(out == 0)
    # and through the layer: ReLU(0) = 0, ReLU'(0) = 0
    layer = _bind(fm.ReLU(), 4, np.random.default_rng(0))
    assert np.all(layer.forward(np.zeros((3, 4)), True) == 0)
    assert np.all(layer.backward(dy) == 0)


def test_leaky_relu_subgradient_at_zero():
    alpha = 0.1
    dy, dx, dz, db = _ops_at_zero(LEAKY_RELU, alpha)
    np.testing.assert_array_equal(dx, alpha * dy)
    np.testing.assert_array_equal(dz, alpha * dy)
    np.testing.assert_allclose(db, alpha * dy.sum(axis=0), rtol=1e-15)
    layer = _bind(fm.LeakyReLU(alpha), 4, np.random.default_rng(0))
    layer.forward(np.zeros((3, 4)), True)
    np.testing.assert_array_equal(layer.backward(dy), alpha * dy)


@pytest.mark.parametrize("act,slope", [(fm.ReLU, 0.0), (lambda: fm.LeakyReLU(0.25), 0.25)])
def test_fused_subgradient_at_zero(act, slope):
    # x = 0 and b = 0 put every pre-activation at exactly 0
    model = fm.Sequential([fm.Dense(3, 2), act()], loss="mse", dtype="float64", seed=0)
    w = model.get_weights()
    w[1][...] = 0
    model.set_weights(w)
    X, y = np.zeros((4, 3)), np.ones((4, 2))
    _, grads = model.loss_and_grads(X, y)
    # d loss / d out = 2 (0 - 1) / (N M) per entry; db = slope * sum over rows
    expect_db = slope * np.full(2, 4 * 2 * (0 - 1) / 8)
    np.testing.assert_allclose(grads[1], expect_db, rtol=1e-15, atol=0)
    assert np.all(grads[0] == 0)    # X is zero


def test_l1_subgradient_at_zero():
    # d|w|/dw at w = 0 is 0 (np.sign), on the op, on the reference and in the model
    params = np.array([0.0, 0.5, -0.5, 0.0, 2.0])
    seg = (np.array([0]), np.array([5]), np.array([0.3]), np.array([0.0]))
    grads = np.zeros(5)
    cpu.add_reg_grad(grads, params, *seg)
    np.testing.assert_array_equal(grads, [0.0, 0.3, -0.3, 0.0, 0.3])
    for kernel in cpu_optim.add_reg_grad_twins:
        g = np.zeros(5)
        kernel(g, params, *seg)
        np.testing.assert_array_equal(g, [0.0, 0.3, -0.3, 0.0, 0.3])

    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((5, 3)), rng.standard_normal(5)
    reg = fm.Sequential([fm.Dense(3, 1, l1=0.7)], loss="mse", dtype="float64", seed=0)
    plain = fm.Sequential([fm.Dense(3, 1)], loss="mse", dtype="float64", seed=0)
    w = reg.get_weights()
    w[0][1, 0] = 0.0
    reg.set_weights(w)
    plain.set_weights(w)
    g_reg, g_plain = reg.loss_and_grads(X, y)[1][0], plain.loss_and_grads(X, y)[1][0]
    assert g_reg[1, 0] == g_plain[1, 0]
    np.testing.assert_allclose(g_reg[[0, 2], 0] - g_plain[[0, 2], 0],
                               0.7 * np.sign(w[0][[0, 2], 0]), rtol=1e-12)


# --------------------------------------------------------------------------- planted bugs fail

def test_planted_wrong_dense_dx_fails(monkeypatch, rng):
    original = fm.Dense.backward

    def scaled(self, da):
        dx = original(self, da)
        if dx is not None:
            dx *= 1.01
        return dx

    layer = _bind(fm.Dense(4, 3), 4, rng)
    x, dy = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    assert gradcheck_layer(layer, x, dy) <= TOL
    monkeypatch.setattr(fm.Dense, "backward", scaled)
    err = gradcheck_layer(layer, x, dy)
    print(f"Dense dx scaled by 1.01: rel err {err:.2e}")
    assert err > 1e-3

    # the whole-model check sees it in the first layer's gradients
    model = fm.Sequential([fm.Dense(4, 3), fm.Tanh(), fm.Dense(3, 2)], loss="mse",
                          dtype="float64", seed=0)
    err = gradcheck(model, x, rng.standard_normal((5, 2)))
    print(f"model with scaled dx: rel err {err:.2e}")
    assert err > 1e-3


def _wrong_tanh_backward(dx, dy, y, code, alpha):
    # tanh' written as 1 - y instead of 1 - y^2
    dx[...] = dy * (1.0 - y) if code == TANH else dy


def test_planted_wrong_activation_derivative_fails(monkeypatch, rng):
    layer = _bind(fm.Tanh(), 4, rng)
    x, dy = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    assert gradcheck_layer(layer, x, dy) <= TOL
    monkeypatch.setattr(cpu, "act_backward", _wrong_tanh_backward)
    err = gradcheck_layer(layer, x, dy)
    print(f"tanh' = 1 - y: rel err {err:.2e}")
    assert err > 1e-2


def test_planted_wrong_fused_derivative_fails(monkeypatch, rng):
    def wrong(dz, db, da, a, code, alpha):
        dz[...] = da * (a * (1.0 + a) if code == SIGMOID else 1.0)   # should be a (1 - a)
        db[...] = dz.sum(axis=0)

    model = fm.Sequential([fm.Dense(3, 4), fm.Sigmoid(), fm.Dense(4, 1)], loss="bce",
                          dtype="float64", seed=0)
    X, y = rng.standard_normal((6, 3)), rng.integers(0, 2, 6)
    assert gradcheck(model, X, y) <= TOL
    monkeypatch.setattr(cpu, "act_backward_bias_grad", wrong)
    err = gradcheck(model, X, y)
    print(f"sigmoid' = a (1 + a): rel err {err:.2e}")
    assert err > 1e-2


@pytest.mark.parametrize("op,loss,k", [("softmax_xent", "softmax_crossentropy", 3),
                                       ("bce_logits", "bce", 1), ("mse", "mse", 2)])
def test_planted_wrong_loss_gradient_fails(monkeypatch, op, loss, k, rng):
    original = getattr(cpu, op)

    def scaled(dlogits, stats, logits, targets, scale):
        original(dlogits, stats, logits, targets, scale * 1.01)

    lossobj, y = _labels({"softmax_crossentropy": "softmax_int"}.get(loss, loss), 6, k, rng)
    model = fm.Sequential([fm.Dense(3, k)], loss=lossobj, dtype="float64", seed=0)
    X = rng.standard_normal((6, 3))
    monkeypatch.setattr(cpu, op, scaled)
    err = gradcheck(model, X, y)
    print(f"{op} gradient scaled by 1.01: rel err {err:.2e}")
    assert err > 1e-3


def test_planted_wrong_regulariser_fails(monkeypatch, rng):
    original = cpu.add_reg_grad

    def twice(grads, params, *seg):
        original(grads, params, *seg)
        original(grads, params, *seg)

    model = fm.Sequential([fm.Dense(3, 2, l2=0.5)], loss="mse", dtype="float64", seed=0)
    X, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    monkeypatch.setattr(cpu, "add_reg_grad", twice)
    err = gradcheck(model, X, y)
    print(f"L2 gradient added twice: rel err {err:.2e}")
    assert err > 1e-2


def test_rel_error_definition():
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert rel_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert rel_error([1.0], [-1.0]) == pytest.approx(1.0)


def test_gradcheck_rejects_float32_model(rng):
    model = fm.Sequential([fm.Dense(2, 1)], loss="mse", dtype="float32", seed=0)
    with pytest.raises(ValueError, match="float64"):
        gradcheck(model, rng.standard_normal((3, 2)), rng.standard_normal(3))


def _bn_dropout_model():
    # BatchNorm first: after a Dense its bias would have a zero gradient (the mean is removed),
    # which relative errors cannot judge
    model = fm.Sequential([fm.BatchNorm(4), fm.Dense(4, 6), fm.Tanh(), fm.Dropout(0.3), fm.Dense(6, 3)],
                          loss="softmax_crossentropy", optimizer=fm.Adam(lr=0.01), dtype="float64", seed=4)
    return model


def _everything(model):
    """Weights, layer state, generator state, optimizer state and step count, as host copies."""
    return (model.get_weights(), [layer.get_state() for layer in model.layers], model.rng.bit_generator.state,
            [np.array(s) for s in model.flat.state], model.optimizer.t)


def _assert_same(a, b):
    for wa, wb in zip(a[0], b[0]):
        np.testing.assert_array_equal(wa, wb)
    for sa, sb in zip(a[1], b[1]):
        assert sorted(sa) == sorted(sb)
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k])
    assert a[2] == b[2]
    for sa, sb in zip(a[3], b[3]):
        np.testing.assert_array_equal(sa, sb)
    assert a[4] == b[4]


def test_gradcheck_leaves_the_model_as_it_found_it(rng):
    """Its training-mode evaluations used to move BatchNorm's running statistics and advance
    the generator through Dropout: predict differed afterwards. Now every piece comes back."""
    X, y = rng.standard_normal((8, 4)), rng.integers(0, 3, 8)
    model = _bn_dropout_model()
    model.fit(X, y, epochs=2, batch_size=4)
    before, pred = _everything(model), model.predict(X)
    err = gradcheck(model, X, y, verbose=False)
    print(f"gradcheck with BatchNorm and Dropout: rel err {err:.2e} (the same dropout masks each evaluation)")
    _assert_same(_everything(model), before)
    np.testing.assert_array_equal(model.predict(X), pred)
    assert err < 1e-6


def test_gradcheck_restores_the_model_after_an_exception(monkeypatch, rng):
    X, y = rng.standard_normal((8, 4)), rng.integers(0, 3, 8)
    model = _bn_dropout_model()
    model.fit(X, y, epochs=1, batch_size=4)
    before = _everything(model)
    real, calls = model.loss_and_grads, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 7:
            raise RuntimeError("planted")
        return real(*args)

    monkeypatch.setattr(model, "loss_and_grads", failing)
    with pytest.raises(RuntimeError, match="planted"):
        gradcheck(model, X, y, verbose=False)
    _assert_same(_everything(model), before)


def test_gradcheck_layer_leaves_the_layer_as_it_found_it(rng):
    model = _bn_dropout_model()
    model.fit(rng.standard_normal((8, 4)), rng.integers(0, 3, 8), epochs=1, batch_size=4)
    bn = model.layers[0]
    state = bn.get_state()
    x, dy = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    err = gradcheck_layer(bn, x, dy, verbose=False)
    for k, v in bn.get_state().items():
        np.testing.assert_array_equal(v, state[k])
    assert err < 1e-6
