"""BatchNorm and Dropout: kernels against the float64 reference, finite-difference
gradient checks, training vs evaluation behaviour, state, and seeded masks.

BatchNorm conventions checked here: batch statistics in training (biased
variance for normalising), running statistics in evaluation, updated as
``momentum * running + (1 - momentum) * batch`` with the unbiased batch variance.
"""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp.backend import cpu, cuda_available, get_backend
from fastmlp.backend import reference as R
from fastmlp.backend.cpu import dropout as cpu_dropout
from fastmlp.backend.cpu import norm as cpu_norm
from fastmlp.backend.cpu.reduce import partial_sums
from fastmlp.gradcheck import gradcheck, gradcheck_layer

TOL = 1e-6
KERNEL_TOL = {np.float64: 1e-12, np.float32: 1e-5}
TWINS = [0, 1]


def _rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-300))


def _bind(layer, input_shape, rng, random_params=True):
    layer.build(input_shape, cpu, np.float64)
    specs = layer.param_specs()
    params = [rng.standard_normal(s.shape) if random_params else v
              for s, v in zip(specs, layer.init_params(rng, None))]
    layer.bind(params, [np.zeros_like(p) for p in params])
    layer.needs_dx = True
    return layer


class FixedDraws:
    """Stands in for the model's generator: every draw is the same uniforms, so the mask is fixed."""

    def __init__(self, u):
        self.u = u

    def random(self, dtype=np.float64, out=None):
        out[...] = self.u
        return out


# --------------------------------------------------------------------------- BatchNorm kernels

BN_SHAPES = [(6, 4), (5, 3, 4, 4), (2, 2, 3, 5), (70, 3), (3, 1, 1, 7)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_kernels(shape, training, twin, dtype, rng):
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 5).astype(dtype)   # a mean far from 0: two-pass variance
    dy = rng.standard_normal(shape).astype(dtype)
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    results = []
    for impl in ("reference", "kernel"):
        out_dt = np.float64 if impl == "reference" else dtype
        y, dx = np.full(shape, np.nan, out_dt), np.full(shape, np.nan, out_dt)
        dgamma, dbeta = np.full(c, np.nan, out_dt), np.full(c, np.nan, out_dt)
        mean, invstd = np.full(c, np.nan), np.full(c, np.nan)
        rmean, rvar = np.linspace(-1, 1, c), np.linspace(0.5, 2, c)
        v = lambda a: a.reshape(shape[0], c, -1)  # noqa: E731
        if impl == "reference":
            R.batchnorm_forward(v(y), mean, invstd, rmean, rvar, v(x), gamma, beta, 0.9, 1e-5, training)
            R.batchnorm_backward(v(dx), dgamma, dbeta, v(dy), v(x), mean, invstd, gamma, training)
        else:
            cpu_norm.batchnorm_forward_twins[twin](v(y), mean, invstd, rmean, rvar, partial_sums(c), v(x), gamma,
                                                   beta, 0.9, 1e-5, training)
            cpu_norm.batchnorm_backward_twins[twin](v(dx), dgamma, dbeta, partial_sums(2 * c), v(dy), v(x), mean,
                                                    invstd, gamma, training)
        results.append((y, mean, invstd, rmean, rvar, dx, dgamma, dbeta))
    errs = [_rel(a, b) for a, b in zip(results[1], results[0])]
    print(f"batchnorm {shape} training={training} twin={twin} {dtype.__name__}: "
          + " ".join(f"{e:.1e}" for e in errs))
    assert max(errs) <= KERNEL_TOL[dtype]


def test_batchnorm_reference_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((4, 3, 5, 2)) * 2 + 1, rng.standard_normal((4, 3, 5, 2))
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    bn = torch.nn.BatchNorm2d(3, momentum=0.1, eps=1e-5).double()   # torch momentum 0.1 == ours 0.9
    with torch.no_grad():
        bn.weight[:], bn.bias[:] = torch.tensor(gamma), torch.tensor(beta)
    xt = torch.tensor(x, requires_grad=True)
    yt = bn(xt)
    (yt * torch.tensor(dy)).sum().backward()
    layer = _bind(fm.BatchNorm(3), (3, 5, 2), rng)
    layer.params[0][...], layer.params[1][...] = gamma, beta
    y = layer.forward(x, True)
    dx = layer.backward(dy)
    errs = [_rel(y, yt.detach().numpy()), _rel(dx, xt.grad.numpy()), _rel(layer.grads[0], bn.weight.grad.numpy()),
            _rel(layer.grads[1], bn.bias.grad.numpy()),
            _rel(layer.get_state()["running_mean"], bn.running_mean.numpy()),
            _rel(layer.get_state()["running_var"], bn.running_var.numpy())]
    print(f"BatchNorm vs torch (y, dx, dgamma, dbeta, running mean, running var): {errs}")
    assert max(errs) <= 1e-12
    bn.eval()
    x2 = rng.standard_normal((3, 3, 5, 2))
    assert _rel(layer.forward(x2, False), bn(torch.tensor(x2)).detach().numpy()) <= 1e-12


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", BN_SHAPES[:3])
def test_cuda_batchnorm_dropout_ops_match_reference(shape, training, dtype, rng):
    ok, why = cuda_available()
    if not ok:
        pytest.skip(f"no CUDA device: {why}")
    be = get_backend("cuda")
    c = shape[1]
    v = lambda a: a.reshape(shape[0], c, -1)  # noqa: E731
    x = (rng.standard_normal(shape) * 3 + 5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    y, dx, dgamma, dbeta = np.empty(shape), np.empty(shape), np.empty(c), np.empty(c)
    mean, invstd, rmean, rvar = np.empty(c), np.empty(c), np.linspace(-1, 1, c), np.linspace(0.5, 2, c)
    dev = {k: be.to_device(a) for k, a in (("rmean", rmean), ("rvar", rvar))}
    R.batchnorm_forward(v(y), mean, invstd, rmean, rvar, v(x), gamma, beta, 0.9, 1e-5, training)
    R.batchnorm_backward(v(dx), dgamma, dbeta, v(dy), v(x), mean, invstd, gamma, training)
    gy, gdx = be.empty(shape, dtype), be.empty(shape, dtype)
    gmean, ginv, gdg, gdb = be.empty(c, np.float64), be.empty(c, np.float64), be.empty(c, dtype), be.empty(c, dtype)
    gx, gg = be.to_device(x), be.to_device(gamma)
    be.batchnorm_forward(gy, gmean, ginv, dev["rmean"], dev["rvar"], gx, gg, be.to_device(beta), 0.9, 1e-5,
                         training)
    be.batchnorm_backward(gdx, gdg, gdb, be.to_device(dy), gx, gmean, ginv, gg, training)
    errs = [_rel(be.to_host(a), b) for a, b in ((gy, y), (gmean, mean), (ginv, invstd), (dev["rmean"], rmean),
                                                (dev["rvar"], rvar), (gdx, dx), (gdg, dgamma), (gdb, dbeta))]
    u = rng.random(shape).astype(dtype)
    want_y, want_mask = np.empty(shape), u.astype(np.float64)
    R.dropout_forward(want_y, want_mask, x, 0.3)
    gm = be.to_device(u)
    be.dropout_forward(gy, gm, gx, 0.3)
    errs += [_rel(be.to_host(gy), want_y), _rel(be.to_host(gm), want_mask)]
    print(f"cuda batchnorm/dropout {shape} training={training} {dtype.__name__}: {errs}")
    assert max(errs) <= KERNEL_TOL[dtype]


# --------------------------------------------------------------------------- BatchNorm gradients

@pytest.mark.parametrize("in_shape,n", [((4,), 5), ((1,), 3), ((3, 4, 5), 2), ((2, 1, 1), 4)])
def test_batchnorm_layer_gradients(in_shape, n, rng):
    layer = _bind(fm.BatchNorm(in_shape[0]), in_shape, rng)
    x = rng.standard_normal((n,) + in_shape) * 2 + 1
    err = gradcheck_layer(layer, x, rng.standard_normal((n,) + in_shape))
    print(f"BatchNorm {in_shape} N={n} training: rel err {err:.2e}")
    assert err <= TOL


def test_batchnorm_eval_gradients(rng):
    # evaluation: running statistics are constants, dx = gamma * dy / sqrt(running_var + eps)
    layer = _bind(fm.BatchNorm(3), (3, 2, 2), rng)
    layer.set_state({"running_mean": rng.standard_normal(3), "running_var": rng.random(3) + 0.5})
    x, dy = rng.standard_normal((2, 3, 2, 2)), rng.standard_normal((2, 3, 2, 2))
    layer.forward(x, False)
    dx = layer.backward(dy)
    st = layer.get_state()
    g = layer.params[0] / np.sqrt(st["running_var"] + layer.eps)
    np.testing.assert_allclose(dx, g[None, :, None, None] * dy, rtol=1e-13)
    xhat = (x - st["running_mean"][None, :, None, None]) / np.sqrt(st["running_var"] + layer.eps)[None, :, None, None]
    np.testing.assert_allclose(layer.grads[0], (dy * xhat).sum(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(layer.grads[1], dy.sum(axis=(0, 2, 3)), rtol=1e-12)


@pytest.mark.parametrize("loss", ["softmax_crossentropy", "mse"])
def test_batchnorm_model_gradients_dense(loss, device, rng):
    # a bias right before a BatchNorm has a zero gradient (the mean is subtracted): checked
    # separately below, since a relative error of two zeros is all rounding noise
    model = fm.Sequential([fm.Dense(4, 5), fm.Tanh(), fm.BatchNorm(5), fm.Dense(5, 3), fm.Sigmoid(),
                           fm.BatchNorm(3)], loss=loss, dtype="float64", seed=2, device=device)
    X = rng.standard_normal((6, 4))
    y = rng.integers(0, 3, 6) if loss != "mse" else rng.standard_normal((6, 3))
    err = gradcheck(model, X, y)
    print(f"Dense-Tanh-BN-Dense-Sigmoid-BN {loss}: rel err {err:.2e}")
    assert err <= TOL


def test_bias_before_batchnorm_gets_no_gradient(rng):
    model = fm.Sequential([fm.Dense(4, 5), fm.BatchNorm(5), fm.Tanh(), fm.Dense(5, 2)],
                          loss="mse", dtype="float64", seed=2)
    _, grads = model.loss_and_grads(rng.standard_normal((6, 4)), rng.standard_normal((6, 2)))
    print(f"|d bias| before BatchNorm: {np.abs(grads[1]).max():.1e}, |dW| {np.abs(grads[0]).max():.1e}")
    assert np.abs(grads[1]).max() <= 1e-12 * np.abs(grads[0]).max()


def test_batchnorm_model_gradients_conv(device, rng):
    model = fm.Sequential([fm.Conv2D(2, 3, 3, padding=1), fm.Tanh(), fm.BatchNorm(3), fm.MaxPool2D(2),
                           fm.Flatten(), fm.Dense(12, 3)],
                          loss="softmax_crossentropy", dtype="float64", seed=3, input_shape=(2, 4, 4),
                          device=device)
    X, y = rng.standard_normal((3, 2, 4, 4)), rng.integers(0, 3, 3)
    err = gradcheck(model, X, y)
    print(f"Conv-Tanh-BN-Pool-Flatten-Dense: rel err {err:.2e}")
    assert err <= TOL


def test_planted_wrong_batchnorm_backward_fails(monkeypatch, rng):
    def as_eval(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, training):
        v = lambda a: a.reshape(a.shape[0], a.shape[1], -1)  # noqa: E731
        R.batchnorm_backward(v(dx), dgamma, dbeta, v(dy), v(x), mean, invstd, gamma, False)

    layer = _bind(fm.BatchNorm(3), (3,), rng)
    x, dy = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    assert gradcheck_layer(layer, x, dy) <= TOL
    monkeypatch.setattr(cpu, "batchnorm_backward", as_eval)   # forgets that the statistics depend on x
    err = gradcheck_layer(layer, x, dy)
    print(f"BatchNorm backward without the batch-statistics term: rel err {err:.2e}")
    assert err > 1e-2


# --------------------------------------------------------------------------- BatchNorm behaviour

def test_batchnorm_running_statistics(rng):
    layer = _bind(fm.BatchNorm(3, momentum=0.8), (3, 2, 2), rng, random_params=False)
    st = layer.get_state()
    np.testing.assert_array_equal(st["running_mean"], 0)
    np.testing.assert_array_equal(st["running_var"], 1)
    x = rng.standard_normal((4, 3, 2, 2)) * 3 + 2
    y = layer.forward(x, True)
    m, v = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    # training normalises with the biased batch variance: y has mean 0, variance v / (v + eps)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), v / (v + 1e-5), rtol=1e-12)
    st = layer.get_state()
    np.testing.assert_allclose(st["running_mean"], 0.2 * m, rtol=1e-12)
    np.testing.assert_allclose(st["running_var"], 0.8 + 0.2 * v * 16 / 15, rtol=1e-12)   # unbiased
    # evaluation uses the running statistics and leaves them alone
    x2 = rng.standard_normal((2, 3, 2, 2))
    y2 = layer.forward(x2, False)
    want = (x2 - st["running_mean"][None, :, None, None]) / np.sqrt(st["running_var"] + 1e-5)[None, :, None, None]
    np.testing.assert_allclose(y2, want, rtol=1e-12)
    np.testing.assert_array_equal(layer.get_state()["running_mean"], st["running_mean"])


def test_batchnorm_in_model_eval_uses_running_stats(rng):
    model = fm.Sequential([fm.BatchNorm(4), fm.Dense(4, 2)], loss="mse", dtype="float64", seed=0,
                          input_shape=(4,))
    X = rng.standard_normal((64, 4)) * 5 + 3
    model.fit(X, rng.standard_normal((64, 2)), epochs=30, batch_size=16)
    bn = model.layers[0]
    st = bn.get_state()
    np.testing.assert_allclose(st["running_mean"], X.mean(axis=0), rtol=0.1)
    np.testing.assert_allclose(st["running_var"], X.var(axis=0), rtol=0.25)
    W, b = model.get_weights()[2:]
    gamma, beta = model.get_weights()[:2]
    Xe = rng.standard_normal((5, 4))
    want = (gamma * (Xe - st["running_mean"]) / np.sqrt(st["running_var"] + bn.eps) + beta) @ W + b
    np.testing.assert_allclose(model.predict(Xe), want, rtol=1e-10)
    # one evaluation sample works (training needs two)
    assert model.predict(Xe[:1]).shape == (1, 2)


def test_batchnorm_state_not_in_weights(rng):
    model = fm.Sequential([fm.Conv2D(1, 3, 3), fm.BatchNorm(3), fm.Flatten(), fm.Dense(12, 2)],
                          input_shape=(1, 4, 4), seed=0)
    shapes = [w.shape for w in model.get_weights()]
    assert shapes == [(3, 1, 3, 3), (3,), (3,), (3,), (12, 2), (2,)]
    assert model.count_params() == 30 + 6 + 26
    bn = model.layers[1]
    np.testing.assert_array_equal(model.get_weights()[2], 1)   # gamma
    np.testing.assert_array_equal(model.get_weights()[3], 0)   # beta
    state = {"running_mean": np.arange(3.0), "running_var": np.array([1.0, 2.0, 3.0])}
    bn.set_state(state)
    got = bn.get_state()
    np.testing.assert_array_equal(got["running_mean"], state["running_mean"])
    got["running_mean"][0] = 99      # a copy
    assert bn.get_state()["running_mean"][0] == 0


@pytest.mark.parametrize("state,match", [
    ({"running_mean": np.zeros(3)}, "keys"),
    ({"running_mean": np.zeros(2), "running_var": np.ones(3)}, "running_mean"),
    ({"running_mean": np.zeros(3), "running_var": -np.ones(3)}, ">= 0"),
    ({"running_mean": np.array([0, np.nan, 0]), "running_var": np.ones(3)}, "finite"),
])
def test_batchnorm_bad_state(state, match):
    bn = fm.Sequential([fm.BatchNorm(3)], input_shape=(3,)).layers[0]
    before = bn.get_state()
    with pytest.raises(ValueError, match=match):
        bn.set_state(state)
    np.testing.assert_array_equal(bn.get_state()["running_var"], before["running_var"])


def test_batchnorm_state_before_build_is_applied_at_build():
    bn = fm.BatchNorm(2)
    bn.set_state({"running_mean": [1.0, 2.0], "running_var": [3.0, 4.0]})
    fm.Sequential([bn], input_shape=(2,))
    np.testing.assert_array_equal(bn.get_state()["running_var"], [3.0, 4.0])


def test_batchnorm_errors(rng):
    with pytest.raises(ValueError, match="features"):
        fm.BatchNorm(0)
    with pytest.raises(ValueError, match="momentum"):
        fm.BatchNorm(3, momentum=1.5)
    with pytest.raises(ValueError, match="eps"):
        fm.BatchNorm(3, eps=0)
    with pytest.raises(ValueError, match=r"\(N, 4\) or \(N, 4, H, W\)"):
        fm.Sequential([fm.BatchNorm(4)], input_shape=(3,))
    layer = _bind(fm.BatchNorm(2), (2,), rng)
    with pytest.raises(ValueError, match="more than one value"):
        layer.forward(np.ones((1, 2)), True)
    layer.forward(np.ones((1, 2)), False)   # evaluation of one sample is fine


def test_batchnorm_float32_matches_float64(rng):
    X = rng.standard_normal((32, 1, 6, 6)) * 4 + 10
    outs = []
    for dt in ("float32", "float64"):
        m = fm.Sequential([fm.Conv2D(1, 2, 3), fm.BatchNorm(2), fm.Flatten()], dtype=dt, seed=0,
                          input_shape=(1, 6, 6))
        outs.append(np.array(m.forward(m.be.to_device(X, m.dtype), True), np.float64))
    err = _rel(outs[0], outs[1])
    print(f"BatchNorm float32 vs float64 on data with mean 10: {err:.1e}")
    assert err <= 1e-5


# --------------------------------------------------------------------------- Dropout kernels

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("rate", [0.0, 0.3, 0.9])
def test_dropout_kernels(rate, twin, dtype, rng):
    x, dy = rng.standard_normal((7, 11)).astype(dtype), rng.standard_normal((7, 11)).astype(dtype)
    u = rng.random((7, 11)).astype(dtype)
    want_y, want_mask, want_dx = np.empty((7, 11)), u.astype(np.float64), np.empty((7, 11))
    R.dropout_forward(want_y, want_mask, x, rate)
    R.dropout_backward(want_dx, dy, want_mask)
    y, mask, dx = np.empty_like(x), u.copy(), np.empty_like(x)
    cpu_dropout.dropout_forward_twins[twin](y.reshape(-1), mask.reshape(-1), x.reshape(-1), rate)
    cpu_dropout.dropout_backward_twins[twin](dx.reshape(-1), dy.reshape(-1), mask.reshape(-1))
    errs = [_rel(y, want_y), _rel(mask, want_mask), _rel(dx, want_dx)]
    print(f"dropout rate={rate} twin={twin} {dtype.__name__}: {errs}")
    assert max(errs) <= KERNEL_TOL[dtype]


# --------------------------------------------------------------------------- Dropout behaviour

def test_dropout_identity_in_evaluation(rng):
    layer = _bind(fm.Dropout(0.5), (3, 4, 4), rng)
    layer.rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 4))
    assert layer.forward(x, False) is x
    dy = rng.standard_normal(x.shape)
    assert layer.backward(dy) is dy
    model = fm.Sequential([fm.Dense(5, 4), fm.Dropout(0.7), fm.Dense(4, 2)], dtype="float64", seed=0)
    X = rng.standard_normal((6, 5))
    np.testing.assert_array_equal(model.predict(X), model.predict(X))
    plain = fm.Sequential([fm.Dense(5, 4), fm.Dense(4, 2)], dtype="float64", seed=0)
    plain.set_weights(model.get_weights())
    np.testing.assert_array_equal(model.predict(X), plain.predict(X))


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_dropout_inverted_scaling_in_training(rate, rng):
    layer = _bind(fm.Dropout(rate), (1000,), rng)
    layer.rng = np.random.default_rng(1)
    x = rng.random((50, 1000)) + 0.5
    y = np.array(layer.forward(x, True))
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - rate), rtol=1e-15)
    frac = 1 - kept.mean()
    print(f"rate {rate}: dropped {frac:.4f}, mean ratio {y.mean() / x.mean():.4f}")
    assert abs(frac - rate) < 0.01
    assert abs(y.mean() / x.mean() - 1) < 0.02       # inverted dropout keeps the expectation
    dy = rng.standard_normal(x.shape)
    dx = layer.backward(dy)
    np.testing.assert_array_equal(dx[~kept], 0)
    np.testing.assert_allclose(dx[kept], dy[kept] / (1 - rate), rtol=1e-15)


def test_dropout_same_seed_same_masks(rng):
    X, y = rng.standard_normal((40, 6)), rng.integers(0, 3, 40)

    def run(seed):
        m = fm.Sequential([fm.Dense(6, 16), fm.ReLU(), fm.Dropout(0.5), fm.Dense(16, 3)],
                          loss="softmax_crossentropy", dtype="float64", seed=seed)
        masks = []
        for _ in range(3):
            m.loss_and_grads(X, y)
            masks.append(np.array(m.layers[2].mask))
        m.fit(X, y, epochs=2, batch_size=8)
        return masks, m.get_weights()

    (m1, w1), (m2, w2), (m3, _) = run(5), run(5), run(6)
    for a, b in zip(m1, m2):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(m1[0], m3[0])
    assert not np.array_equal(m1[0], m1[1])     # a fresh mask every step


def test_dropout_mask_buffer_is_reused(rng):
    layer = _bind(fm.Dropout(0.3), (8,), rng)
    layer.rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8))
    layer.forward(x, True)
    first = layer.mask
    layer.forward(x, True)
    assert layer.mask is first


@pytest.mark.parametrize("in_shape", [(6,), (2, 3, 3)])
def test_dropout_layer_gradients_fixed_mask(in_shape, rng):
    layer = _bind(fm.Dropout(0.4), in_shape, rng)
    layer.rng = FixedDraws(rng.random((3,) + in_shape))
    x = rng.standard_normal((3,) + in_shape)
    err = gradcheck_layer(layer, x, rng.standard_normal((3,) + in_shape))
    print(f"Dropout {in_shape} fixed mask: rel err {err:.2e}")
    assert err <= TOL
    assert 0 < np.count_nonzero(layer.mask) < layer.mask.size


def test_dropout_model_gradients_fixed_mask(rng):
    model = fm.Sequential([fm.Dense(4, 6), fm.Tanh(), fm.Dropout(0.5), fm.Dense(6, 2)],
                          loss="mse", dtype="float64", seed=4)
    model.layers[2].rng = FixedDraws(rng.random((5, 6)))
    X, y = rng.standard_normal((5, 4)), rng.standard_normal((5, 2))
    err = gradcheck(model, X, y)
    print(f"Dense-Tanh-Dropout-Dense fixed mask: rel err {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, "0.5", None, float("nan")])
def test_dropout_bad_rate(rate):
    with pytest.raises(ValueError, match="rate"):
        fm.Dropout(rate)


def test_dropout_needs_a_generator(rng):
    layer = _bind(fm.Dropout(0.5), (3,), rng)
    with pytest.raises(ValueError, match="generator"):
        layer.forward(np.ones((2, 3)), True)


def test_layers_are_registered():
    from fastmlp.layers import LAYERS
    for name in ("Conv2D", "MaxPool2D", "Flatten", "BatchNorm", "Dropout"):
        assert LAYERS[name] is getattr(fm, name)
        assert name in fm.__all__
    for layer in (fm.Conv2D(3, 4, (3, 2), stride=2, padding=1), fm.MaxPool2D(3, stride=2), fm.Flatten(),
                  fm.BatchNorm(5, momentum=0.8, eps=1e-3), fm.Dropout(0.25)):
        again = type(layer).from_config(layer.get_config())
        assert again.get_config() == layer.get_config()
