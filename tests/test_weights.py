"""Per-sample and per-class weights: the weighted loss kernels against the NumPy float64
reference, the reference against PyTorch's per-sample losses (reduction="none") weighted and
reduced as Keras does (sum over the batch / N), gradients by finite differences, and
fit / evaluate with sample_weight and class_weight, bad input refused before anything changes."""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp.backend import cpu
from fastmlp.backend import reference as R
from fastmlp.backend.cpu import loss as cpu_loss

TOL = {np.float64: 1e-12, np.float32: 1e-5}


def rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def _case(name, n, m, rng, dtype=np.float64):
    logits = (rng.standard_normal((n, m)) * 3).astype(dtype)
    if name == "softmax_xent":
        targets = rng.integers(0, m, n)
    elif name == "bce_logits":
        targets = (rng.random((n, m)) > 0.5).astype(dtype)
    else:
        targets = rng.standard_normal((n, m)).astype(dtype)
    return logits, targets, rng.random(n) * 3


NAMES = ["softmax_xent", "bce_logits", "mse"]


@pytest.mark.parametrize("which", ["cpu", "serial", "parallel"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n, m", [(1, 2), (7, 3), (130, 1), (64, 33)])
@pytest.mark.parametrize("name", NAMES)
def test_weighted_kernels_match_the_reference(name, n, m, dtype, which):
    if name == "softmax_xent" and m < 2:
        m = 2
    rng = np.random.default_rng(n * m)
    logits, targets, w = _case(name, n, m, rng, dtype)
    fn = {"cpu": getattr(cpu, name + "_weighted"), "serial": getattr(cpu_loss, name + "_weighted_twins").serial,
          "parallel": getattr(cpu_loss, name + "_weighted_twins").parallel}[which]
    d, stats = np.empty_like(logits), np.array([0.5, 1.0])
    fn(d, stats, logits, targets, w, 1.0 / n)
    rd, rstats = np.empty((n, m)), np.array([0.5, 1.0])
    getattr(R, name + "_weighted")(rd, rstats, logits.astype(np.float64),
                                  targets if name == "softmax_xent" else targets.astype(np.float64), w, 1.0 / n)
    print(f"{name}_weighted {np.dtype(dtype).name} {which}: dlogits {rel(d, rd):.1e} stats {rel(stats, rstats):.1e}")
    assert rel(d, rd) <= TOL[dtype] and rel(stats, rstats) <= 1e-12


@pytest.mark.parametrize("name", NAMES)
def test_unit_weights_give_the_unweighted_loss(name):
    rng = np.random.default_rng(0)
    logits, targets, _ = _case(name, 9, 4, rng)
    a, sa, b, sb = np.empty((9, 4)), np.zeros(2), np.empty((9, 4)), np.zeros(2)
    getattr(cpu, name)(a, sa, logits, targets, 1 / 9)
    getattr(cpu, name + "_weighted")(b, sb, logits, targets, np.ones(9), 1 / 9)
    assert rel(b, a) <= 1e-15 and rel(sb, sa) <= 1e-15


def _torch_loss(name, logits, targets, w):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = torch.tensor(logits, requires_grad=True)
    if name == "softmax_xent":
        per = F.cross_entropy(x, torch.tensor(targets), reduction="none")
    elif name == "bce_logits":
        per = F.binary_cross_entropy_with_logits(x, torch.tensor(targets), reduction="none").mean(dim=1)
    else:
        per = F.mse_loss(x, torch.tensor(targets), reduction="none").mean(dim=1)
    loss = (per * torch.tensor(w)).sum() / logits.shape[0]   # Keras: sum of loss * weight over N
    loss.backward()
    return float(loss.detach()), x.grad.numpy()


@pytest.mark.parametrize("name", NAMES)
def test_reference_matches_torch_per_sample_losses_weighted(name):
    rng = np.random.default_rng(5)
    n, m = 11, 4
    logits, targets, w = _case(name, n, m, rng)
    want_loss, want_grad = _torch_loss(name, logits, targets, w)
    for impl in (R, cpu):
        d, stats = np.empty((n, m)), np.zeros(2)
        getattr(impl, name + "_weighted")(d, stats, logits, targets, w, 1.0 / n)
        print(f"{name} {impl.__name__}: loss {stats[0] / n:.12g} torch {want_loss:.12g}, "
              f"grad err {rel(d, want_grad):.1e}")
        assert abs(stats[0] / n - want_loss) <= 1e-12 * abs(want_loss) and rel(d, want_grad) <= 1e-12


@pytest.mark.parametrize("name", NAMES)
def test_weighted_gradient_by_finite_differences(name):
    rng = np.random.default_rng(9)
    n, m = 6, 3
    logits, targets, w = _case(name, n, m, rng)
    op = getattr(R, name + "_weighted")

    def f(z):
        stats = np.zeros(2)
        op(np.empty((n, m)), stats, z, targets, w, 1.0 / n)
        return stats[0] / n

    d = np.empty((n, m))
    op(d, np.zeros(2), logits, targets, w, 1.0 / n)
    num = np.zeros_like(logits)
    h = 1e-6
    for idx in np.ndindex(*logits.shape):
        zp, zm = logits.copy(), logits.copy()
        zp[idx] += h
        zm[idx] -= h
        num[idx] = (f(zp) - f(zm)) / (2 * h)
    err = rel(d, num)
    print(f"{name}_weighted gradient vs finite differences: {err:.1e}")
    assert err < 1e-7
    d[0, 0] += 1e-3 * np.abs(d).max()     # a planted error is caught
    assert rel(d, num) > 1e-7


# --- fit and evaluate ------------------------------------------------------------------

def _data(n=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    y = (X[:, 0] + 0.3 * rng.standard_normal(n) > 0.6).astype(int)   # unbalanced: about 30% ones
    return X, y


def _model(loss="bce", out=1, opt=None):
    return fm.Sequential([fm.Dense(4, 5), fm.Tanh(), fm.Dense(5, out)], loss=loss,
                         optimizer=opt or fm.SGD(0.1), dtype="float64", seed=4)


def test_a_weighted_fit_matches_torch_step_by_step():
    torch = pytest.importorskip("torch")
    X, y = _data()
    sw = np.random.default_rng(1).random(30) * 2
    model = _model()
    w0 = model.get_weights()
    model.fit(X, y, epochs=2, batch_size=8, shuffle=False, sample_weight=sw, class_weight={1: 3.0})
    ps = [torch.tensor(w, requires_grad=True) for w in w0]
    opt = torch.optim.SGD(ps, lr=0.1)
    weight = sw * np.where(y == 1, 3.0, 1.0)
    for _ in range(2):
        for s in range(0, 30, 8):
            xb, yb, wb = (torch.tensor(a[s:s + 8]) for a in (X, y.astype(np.float64), weight))
            z = torch.tanh(xb @ ps[0] + ps[1]) @ ps[2] + ps[3]
            per = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], yb, reduction="none")
            loss = (per * wb).sum() / xb.shape[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
    for g, w in zip(model.get_weights(), ps):
        assert rel(g, w.detach().numpy()) < 1e-12


def test_balanced_is_scikit_learns():
    X, y = _data(40)
    model = _model()
    n1 = int(y.sum())
    want = np.where(y == 1, 40 / (2 * n1), 40 / (2 * (40 - n1)))
    from fastmlp.sample_weights import sample_weights
    got = sample_weights(model.loss, y.reshape(-1, 1).astype(float), 1, class_weight="balanced")
    np.testing.assert_allclose(got, want, rtol=1e-15)
    sk = pytest.importorskip("sklearn.utils.class_weight")
    table = sk.compute_class_weight("balanced", classes=np.array([0, 1]), y=y)
    np.testing.assert_allclose(got, table[y], rtol=1e-15)


def test_class_weight_for_softmax_and_mse_one_hot():
    from fastmlp.sample_weights import sample_weights
    labels = np.array([0, 2, 2, 1, 2])
    got = sample_weights(fm.SoftmaxCrossEntropy(), labels, 3, sample_weight=np.arange(5.0), class_weight={2: 0.5})
    np.testing.assert_array_equal(got, np.arange(5.0) * np.array([1, 0.5, 0.5, 1, 0.5]))
    onehot = np.eye(3)[labels]
    got = sample_weights(fm.MeanSquaredError(), onehot, 3, class_weight="balanced")
    np.testing.assert_allclose(got, 5 / (3 * np.array([1, 3, 3, 1, 3])))
    with pytest.raises(ValueError, match="multi-label"):
        sample_weights(fm.BinaryCrossEntropy(), np.zeros((5, 2)), 2, class_weight="balanced")


def test_evaluate_with_sample_weight():
    X, y = _data()
    model = _model()
    model.fit(X, y, epochs=2, batch_size=10)
    w = np.random.default_rng(2).random(30)
    p = np.clip(model.predict(X)[:, 0], 1e-300, 1)
    per = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    got = model.evaluate(X, y, sample_weight=w, batch_size=7)
    assert abs(got["loss"] - np.sum(per * w) / 30) < 1e-10
    assert got["accuracy"] == model.evaluate(X, y)["accuracy"]      # metrics are not weighted


def test_validation_weights_follow_the_split_and_a_triple():
    X, y = _data()
    w = np.linspace(0.5, 2, 30)
    a = _model().fit(X, y, epochs=1, batch_size=10, validation_split=0.2, sample_weight=w)
    b = _model()
    hb = b.fit(X[:24], y[:24], epochs=1, batch_size=10, sample_weight=w[:24],
               validation_data=(X[24:], y[24:], w[24:]))
    assert a["val_loss"] == hb["val_loss"] and a["loss"] == hb["loss"]
    assert abs(a["val_loss"][0] - b.evaluate(X[24:], y[24:], sample_weight=w[24:])["loss"]) < 1e-12


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(class_weight={2: 1.0}), ValueError, r"classes among 0..1, got 2"),
    (dict(class_weight={0: -1.0}), ValueError, "weight >= 0 for class 0"),
    (dict(class_weight={1: float("nan")}), ValueError, "finite weight"),
    (dict(class_weight="balance"), ValueError, "'balanced'"),
    (dict(class_weight=[1, 2]), TypeError, "dict"),
    (dict(sample_weight=np.ones(29)), ValueError, r"shape \(30,\), one weight per sample, got \(29,\)"),
    (dict(sample_weight=np.r_[np.ones(29), np.nan]), ValueError, "NaN or Inf at sample"),
    (dict(sample_weight=-np.ones(30)), ValueError, "sample_weight >= 0"),
    (dict(sample_weight=np.array(["a"] * 30)), TypeError, "real numbers"),
])
def test_bad_weights_are_refused_before_anything_changes(kwargs, err, match):
    X, y = _data()
    model = _model()
    w0 = model.get_weights()
    with pytest.raises(err, match=match):
        model.fit(X, y, epochs=1, **kwargs)
    for a, b in zip(model.get_weights(), w0):
        np.testing.assert_array_equal(a, b)
    assert model.optimizer.t == 0


def test_class_weight_changes_training_toward_the_rare_class():
    X, y = _data(60)
    plain = _model(opt=fm.Adam(0.05))
    plain.fit(X, y, epochs=30, batch_size=None)
    weighted = _model(opt=fm.Adam(0.05))
    weighted.fit(X, y, epochs=30, batch_size=None, class_weight="balanced")
    # weighting the rare class up moves its predicted probability up
    assert weighted.predict(X)[y == 1].mean() > plain.predict(X)[y == 1].mean()


def test_weighted_steps_allocate_nothing_per_step():
    # the batch's weights are gathered into one buffer per batch size, reused
    X, y = _data(40)
    model = _model()
    model.fit(X, y, epochs=1, batch_size=16, sample_weight=np.ones(40))
    before = {k: id(v) for k, v in model.batch_buffers._bufs.items()}
    model.fit(X, y, epochs=3, batch_size=16, sample_weight=np.ones(40))
    after = {k: id(v) for k, v in model.batch_buffers._bufs.items()}
    assert before == after and ("weights", 16) in after and ("weights", 8) in after


def test_weighted_full_batch_sgd_in_the_row_space_matches_the_ordinary_path():
    # the row-space path (fastmlp/gram.py) takes d loss / d logits from the weighted kernel as is
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((12, 40)), rng.integers(0, 2, 12)
    got = []
    for gram in (True, False):
        model = fm.Sequential([fm.Dense(40, 3), fm.ReLU(), fm.Dense(3, 1)], loss="bce", optimizer=fm.SGD(0.1),
                              dtype="float64", seed=0)
        model.full_batch_gram = gram
        model.fit(X, y, epochs=5, batch_size=None, class_weight="balanced")
        got.append(model.get_weights())
    for a, b in zip(*got):
        assert rel(a, b) < 1e-12
