"""Sequential against an independent float64 NumPy implementation, plus the model API.

The independent network below is written from the formulas in DESIGN.md
(Keras losses and L1/L2, torch.optim SGD/Adam updates); it does not call
fastmlp's reference module, so a shared mistake cannot hide.
"""
import numpy as np
import pytest

import fastmlp as fm

TOL = 1e-8


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = np.linalg.norm(b.ravel())
    return float(np.linalg.norm((a - b).ravel()) / den) if den > 0 else float(np.abs(a).max())


# --------------------------------------------------------------------------- the independent net

def _act(z, name, alpha):
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "leaky_relu":
        return np.where(z > 0, z, alpha * z)
    if name == "tanh":
        return np.tanh(z)
    return 1.0 / (1.0 + np.exp(-z))


def _act_grad(z, name, alpha):
    # from the pre-activation z (fastmlp reads it from the output; a different route)
    if name == "relu":
        return (z > 0).astype(np.float64)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, alpha)
    if name == "tanh":
        return 1.0 - np.tanh(z) ** 2
    s = 1.0 / (1.0 + np.exp(-z))
    return s * (1.0 - s)


def _loss(kind, logits, y):
    """(mean loss, d loss / d logits) for the batch; y already in (N, K) float form or (N,) ints."""
    n, k = logits.shape
    if kind == "bce":
        x = logits
        per = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
        return per.mean(), (1.0 / (1.0 + np.exp(-x)) - y) / (n * k)
    if kind == "softmax":
        mx = logits.max(axis=1, keepdims=True)
        lse = np.log(np.exp(logits - mx).sum(axis=1, keepdims=True)) + mx
        onehot = np.eye(k)[y]
        loss = np.mean(lse[:, 0] - logits[np.arange(n), y])
        return loss, (np.exp(logits - lse) - onehot) / n
    diff = logits - y
    return np.mean(diff ** 2), 2.0 * diff / (n * k)


def _targets(kind, y, k):
    y = np.asarray(y)
    if kind == "softmax":
        return np.argmax(y, axis=1) if y.ndim == 2 else y.astype(np.int64)
    return y.reshape(-1, k).astype(np.float64)


class NpNet:
    """spec: [("dense", l1, l2), ("act", name, alpha), ...]; weights: [W0, b0, W1, b1, ...]."""

    def __init__(self, spec, kind, k):
        self.spec, self.kind, self.k = spec, kind, k

    def logits(self, w, X):
        return self._forward(w, X)[0]

    def _forward(self, w, X):
        a, cache, wi = np.asarray(X, np.float64), [], 0
        for item in self.spec:
            if item[0] == "dense":
                z = a @ w[wi] + w[wi + 1]
                cache.append(("dense", a, wi))
                a, wi = z, wi + 2
            else:
                cache.append(("act", a, item[1], item[2]))
                a = _act(a, item[1], item[2])
        return a, cache

    def penalty(self, w):
        total, wi = 0.0, 0
        for item in self.spec:
            if item[0] == "dense":
                total += item[1] * np.abs(w[wi]).sum() + item[2] * (w[wi] ** 2).sum()
                wi += 2
        return total

    def loss_and_grads(self, w, X, y):
        out, cache = self._forward(w, X)
        loss, d = _loss(self.kind, out, _targets(self.kind, y, self.k))
        grads = [None] * len(w)
        dense_items = [it for it in self.spec if it[0] == "dense"]
        for entry in reversed(cache):
            if entry[0] == "act":
                d = d * _act_grad(entry[1], entry[2], entry[3])
            else:
                _, a, wi = entry
                l1, l2 = dense_items[wi // 2][1:]
                grads[wi] = a.T @ d + l1 * np.sign(w[wi]) + 2.0 * l2 * w[wi]
                grads[wi + 1] = d.sum(axis=0)
                d = d @ w[wi].T
        return loss + self.penalty(w), grads

    def accuracy(self, w, X, y):
        out = self.logits(w, X)
        t = _targets(self.kind, y, self.k)
        if self.kind == "softmax":
            return np.mean(np.argmax(out, axis=1) == t)
        if self.kind == "bce":
            return np.mean((out > 0) == (t > 0.5))
        if self.k == 1:
            return np.mean(np.abs(out - t) < 0.5)
        return np.mean(np.argmax(out, axis=1) == np.argmax(t, axis=1))


class NpSGD:
    def __init__(self, lr, momentum=0.0, nesterov=False):
        self.lr, self.momentum, self.nesterov, self.buf = lr, momentum, nesterov, None

    def step(self, w, g):
        if self.momentum:
            if self.buf is None:                   # torch: the first step's buffer is g itself
                self.buf = [gi.copy() for gi in g]
            else:
                self.buf = [self.momentum * b + gi for b, gi in zip(self.buf, g)]
            g = ([gi + self.momentum * b for gi, b in zip(g, self.buf)] if self.nesterov
                 else self.buf)
        return [wi - self.lr * gi for wi, gi in zip(w, g)]


class NpAdam:
    def __init__(self, lr, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr, self.b1, self.b2, self.eps, self.t = lr, beta1, beta2, eps, 0
        self.m = self.v = None

    def step(self, w, g):
        self.t += 1
        if self.m is None:
            self.m, self.v = [np.zeros_like(x) for x in w], [np.zeros_like(x) for x in w]
        self.m = [self.b1 * m + (1 - self.b1) * gi for m, gi in zip(self.m, g)]
        self.v = [self.b2 * v + (1 - self.b2) * gi * gi for v, gi in zip(self.v, g)]
        bc1, bc2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        return [wi - (self.lr / bc1) * m / (np.sqrt(v) / np.sqrt(bc2) + self.eps)
                for wi, m, v in zip(w, self.m, self.v)]


# --------------------------------------------------------------------------- random cases

ACT_LAYERS = {"relu": lambda a: fm.ReLU(), "leaky_relu": lambda a: fm.LeakyReLU(a),
              "tanh": lambda a: fm.Tanh(), "sigmoid": lambda a: fm.Sigmoid()}


def random_case(seed, n=None):
    """Random (layers, loss, optimizer, NpNet, independent optimizer, X, y, description)."""
    r = np.random.default_rng(seed)
    depth = int(r.integers(1, 5))
    widths = [int(r.integers(1, 7)) for _ in range(depth)]
    kind = ["bce", "softmax", "mse"][seed % 3]
    k = {"bce": int(r.choice([1, 3])), "softmax": int(r.integers(2, 5)),
         "mse": int(r.choice([1, 2]))}[kind]
    widths[-1] = k
    d_in, n_drawn = int(r.integers(1, 6)), int(r.integers(1, 9))
    n = n_drawn if n is None else n
    layers, spec, prev = [], [], d_in
    for i, m in enumerate(widths):
        l1 = float(r.choice([0.0, 0.01])) if r.random() < 0.5 else 0.0
        l2 = float(r.choice([0.0, 0.02])) if r.random() < 0.5 else 0.0
        layers.append(fm.Dense(prev, m, l1=l1, l2=l2))
        spec.append(("dense", l1, l2))
        if i < depth - 1:
            for _ in range(int(r.choice([0, 1, 1, 1, 2]))):    # none, fused, or fused + standalone
                name = str(r.choice(sorted(ACT_LAYERS)))
                alpha = float(r.uniform(0.01, 0.3))
                layers.append(ACT_LAYERS[name](alpha))
                spec.append(("act", name, alpha))
        prev = m
    X = r.standard_normal((n, d_in))
    if kind == "bce":
        y = r.integers(0, 2, size=(n,) if k == 1 else (n, k))
    elif kind == "softmax":
        y = r.integers(0, k, size=n)
        if r.random() < 0.5:
            y = np.eye(k)[y]          # one-hot
    else:
        y = r.standard_normal((n,) if k == 1 else (n, k))
    opt_kind = ["sgd", "momentum", "nesterov", "adam"][(seed // 3) % 4]
    lr = float(r.uniform(0.01, 0.2))
    if opt_kind == "adam":
        opt, npopt = fm.Adam(lr=lr, beta1=0.8, beta2=0.95, eps=1e-6), NpAdam(lr, 0.8, 0.95, 1e-6)
    else:
        mom = 0.0 if opt_kind == "sgd" else 0.9
        opt = fm.SGD(lr=lr, momentum=mom, nesterov=opt_kind == "nesterov")
        npopt = NpSGD(lr, mom, opt_kind == "nesterov")
    loss = {"bce": fm.BinaryCrossEntropy(), "softmax": fm.SoftmaxCrossEntropy(),
            "mse": fm.MeanSquaredError()}[kind]
    desc = f"seed={seed} {kind} K={k} N={n} D={d_in} widths={widths} {opt_kind} spec={spec}"
    return layers, loss, opt, NpNet(spec, kind, k), npopt, X, y, desc


CASES = range(24)


@pytest.mark.parametrize("seed", CASES)
def test_loss_and_grads_match_independent(seed, device):
    layers, loss, opt, net, _, X, y, desc = random_case(seed)
    model = fm.Sequential(layers, loss=loss, optimizer=opt, device=device, dtype="float64", seed=seed)
    w = model.get_weights()
    got_loss, got_grads = model.loss_and_grads(X, y)
    ref_loss, ref_grads = net.loss_and_grads(w, X, y)
    errs = [rel(got_loss, ref_loss)] + [rel(g, r) for g, r in zip(got_grads, ref_grads)]
    print(f"{desc}: loss {got_loss:.6g} max rel err {max(errs):.2e}")
    assert len(got_grads) == len(w) and all(g.shape == x.shape for g, x in zip(got_grads, w))
    assert max(errs) <= TOL
    np.testing.assert_array_equal(model.get_weights()[0], w[0])   # no update


@pytest.mark.parametrize("seed", CASES)
def test_full_batch_fit_matches_independent(seed, device):
    layers, loss, opt, net, npopt, X, y, desc = random_case(seed)
    model = fm.Sequential(layers, loss=loss, optimizer=opt, device=device, dtype="float64", seed=seed)
    w = model.get_weights()
    hist = model.fit(X, y, epochs=1, batch_size=None)          # exactly one step
    ref_loss, g = net.loss_and_grads(w, X, y)
    w = npopt.step(w, g)
    err1 = max(rel(a, b) for a, b in zip(model.get_weights(), w))
    assert rel(hist["loss"][0], ref_loss) <= TOL
    hist = model.fit(X, y, epochs=3, batch_size=None)          # three more, state carried on
    losses, accs = [], []
    for _ in range(3):
        ref_loss, g = net.loss_and_grads(w, X, y)
        losses.append(ref_loss)
        accs.append(net.accuracy(w, X, y))      # measured on the weights the step starts from
        w = npopt.step(w, g)
    err = max(rel(a, b) for a, b in zip(model.get_weights(), w))
    lerr = rel(hist["loss"], losses)
    print(f"{desc}: weights rel err after 1 step {err1:.2e}, after 4 {err:.2e}; loss {lerr:.2e}")
    assert max(err1, err, lerr) <= TOL
    np.testing.assert_allclose(hist["accuracy"], accs, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 5, 10, 13])
def test_minibatch_fit_without_shuffle_matches_independent(seed):
    layers, loss, opt, net, npopt, X, y, desc = random_case(seed, n=11)   # 4 + 4 + 3: partial last batch
    model = fm.Sequential(layers, loss=loss, optimizer=opt, dtype="float64", seed=seed)
    w = model.get_weights()
    hist = model.fit(X, y, epochs=2, batch_size=4, shuffle=False)
    epoch_losses = []
    for _ in range(2):
        total, pen = 0.0, net.penalty(w)
        for s in range(0, 11, 4):
            bl, g = net.loss_and_grads(w, X[s:s + 4], y[s:s + 4])
            total += (bl - net.penalty(w)) * len(X[s:s + 4])
            w = npopt.step(w, g)
        epoch_losses.append(total / 11 + pen)
    err = max(rel(a, b) for a, b in zip(model.get_weights(), w))
    lerr = rel(hist["loss"], epoch_losses)
    print(f"{desc}: mini-batch weights rel err {err:.2e}, loss {lerr:.2e}")
    assert err <= TOL and lerr <= TOL


def test_float32_model_tracks_float64(rng):
    layers, loss, opt, net, npopt, X, y, desc = random_case(4)
    model = fm.Sequential(layers, loss=loss, optimizer=opt, dtype="float32", seed=1)
    w = [x.astype(np.float64) for x in model.get_weights()]
    model.fit(X, y, epochs=5, batch_size=None)
    for _ in range(5):
        w = npopt.step(w, net.loss_and_grads(w, X, y)[1])
    err = max(rel(a, b) for a, b in zip(model.get_weights(), w))
    print(f"float32 model vs float64 independent after 5 steps: rel err {err:.2e}")
    assert all(a.dtype == np.float32 for a in model.get_weights())
    assert err <= 1e-5


def test_optimizers_match_torch():
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(7)
    X, y = r.standard_normal((9, 4)), r.integers(0, 3, 9)
    for make, tmake in [
        (lambda: fm.SGD(lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
        (lambda: fm.SGD(lr=0.05, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
        (lambda: fm.SGD(lr=0.05, momentum=0.8, nesterov=True),
         lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True)),
        (lambda: fm.Adam(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    ]:
        model = fm.Sequential([fm.Dense(4, 5, l2=0.01), fm.Tanh(), fm.Dense(5, 3)],
                              loss="softmax_crossentropy", optimizer=make(), dtype="float64", seed=3)
        w = model.get_weights()
        tw = [torch.tensor(a, requires_grad=True) for a in w]
        topt = tmake(tw)
        Xt, yt = torch.tensor(X), torch.tensor(y)
        for _ in range(5):
            topt.zero_grad()
            out = torch.tanh(Xt @ tw[0] + tw[1]) @ tw[2] + tw[3]
            loss = torch.nn.functional.cross_entropy(out, yt) + 0.01 * (tw[0] ** 2).sum()
            loss.backward()
            topt.step()
        model.fit(X, y, epochs=5, batch_size=None)
        err = max(rel(a, b.detach().numpy()) for a, b in zip(model.get_weights(), tw))
        print(f"{model.optimizer!r} vs torch.optim after 5 steps: rel err {err:.2e}")
        assert err <= TOL


def _adam_eps0_case(dtype):
    r = np.random.default_rng(7)
    X, y = r.standard_normal((9, 4)), r.integers(0, 3, 9)
    model = fm.Sequential([fm.Dense(4, 5), fm.Tanh(), fm.Dense(5, 3)], loss="softmax_crossentropy",
                          optimizer=fm.Adam(lr=0.01, eps=0), dtype=dtype, seed=3)
    return model, X, y


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adam_eps_zero_leaves_the_padding_alone(dtype):
    """The flat buffer pads every array to 16 elements; Adam(eps=0) used to compute 0/0 there
    and fail at step 0. The padding is outside every segment: it stays 0, and training is finite."""
    model, X, y = _adam_eps0_case(dtype)
    flat = model.flat
    padding = np.ones(flat.size, bool)
    for off, view in zip(flat.offsets, flat.param_views):
        padding[off:off + view.size] = False
    assert padding.sum() > 0
    h = model.fit(X, y, epochs=5, batch_size=None)
    print(f"Adam(eps=0) {dtype}: losses {np.round(h['loss'], 4)}; {padding.sum()} padding elements")
    assert np.all(np.isfinite(h["loss"])) and all(np.isfinite(w).all() for w in model.get_weights())
    for buf in (flat.params, flat.prev, *flat.state):
        assert not np.any(buf[padding]), "the padding must stay 0"


def test_adam_eps_zero_matches_torch():
    torch = pytest.importorskip("torch")
    model, X, y = _adam_eps0_case("float64")
    tw = [torch.tensor(a, requires_grad=True) for a in model.get_weights()]
    topt = torch.optim.Adam(tw, lr=0.01, eps=0)
    Xt, yt = torch.tensor(X), torch.tensor(y)
    for _ in range(5):
        topt.zero_grad()
        out = torch.tanh(Xt @ tw[0] + tw[1]) @ tw[2] + tw[3]
        torch.nn.functional.cross_entropy(out, yt).backward()
        topt.step()
    model.fit(X, y, epochs=5, batch_size=None)
    err = max(rel(a, b.detach().numpy()) for a, b in zip(model.get_weights(), tw))
    print(f"Adam(eps=0) vs torch.optim.Adam(eps=0) after 5 steps: rel err {err:.2e}")
    assert all(torch.isfinite(t).all() for t in tw) and err <= TOL


# --------------------------------------------------------------------------- initialisation, seeds

def test_course_init_reproduces_numpy_seed():
    s = 3
    model = fm.Sequential([fm.Dense(12, 7, init="course"), fm.ReLU(), fm.Dense(7, 5, init="course"),
                           fm.ReLU(), fm.Dense(5, 1, init="course")], loss="bce", dtype="float64", seed=s)
    state = np.random.get_state()
    try:
        np.random.seed(s)
        expect = []
        for d, m in [(12, 7), (7, 5), (5, 1)]:
            expect += [(np.random.randn(m, d) / np.sqrt(d)).T, np.zeros(m)]
    finally:
        np.random.set_state(state)
    got = model.get_weights()
    assert len(got) == len(expect)
    for g, e in zip(got, expect):
        assert g.shape == e.shape
        np.testing.assert_array_equal(g, e)
    m32 = fm.Sequential([fm.Dense(12, 7, init="course"), fm.ReLU(), fm.Dense(7, 5, init="course"),
                         fm.ReLU(), fm.Dense(5, 1, init="course")], loss="bce", seed=s)
    for g, e in zip(m32.get_weights(), expect):
        np.testing.assert_array_equal(g, e.astype(np.float32))


def _trained(seed, X, y, **fit):
    model = fm.Sequential([fm.Dense(6, 8), fm.ReLU(), fm.Dense(8, 3)], loss="softmax_crossentropy",
                          optimizer=fm.SGD(lr=0.1, momentum=0.9), seed=seed)
    model.fit(X, y, **fit)
    return model


def test_same_seed_bitwise_identical_different_seed_differs(rng):
    X, y = rng.standard_normal((50, 6)), rng.integers(0, 3, 50)
    kw = dict(epochs=3, batch_size=8, shuffle=True)
    a, b, c = _trained(11, X, y, **kw), _trained(11, X, y, **kw), _trained(12, X, y, **kw)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert any(not np.array_equal(wa, wc) for wa, wc in zip(a.get_weights(), c.get_weights()))
    # same initial weights, different seed: only the shuffling differs, and it shows
    d = fm.Sequential([fm.Dense(6, 8), fm.ReLU(), fm.Dense(8, 3)], loss="softmax_crossentropy",
                      optimizer=fm.SGD(lr=0.1, momentum=0.9), seed=12)
    e = fm.Sequential([fm.Dense(6, 8), fm.ReLU(), fm.Dense(8, 3)], loss="softmax_crossentropy",
                      optimizer=fm.SGD(lr=0.1, momentum=0.9), seed=11)
    d.set_weights(e.get_weights())
    d.fit(X, y, **kw)
    assert any(not np.array_equal(wa, wd) for wa, wd in zip(a.get_weights(), d.get_weights()))


@pytest.mark.parametrize("opt", [lambda: fm.SGD(lr=0.1), lambda: fm.SGD(lr=0.05, momentum=0.9),
                                 lambda: fm.Adam(lr=0.01)], ids=["sgd", "momentum", "adam"])
def test_two_fits_equal_one_longer_fit(opt, rng):
    # the model's rng and the optimizer state carry on across fit calls
    X, y = rng.standard_normal((40, 5)), rng.integers(0, 2, 40)

    def make():
        return fm.Sequential([fm.Dense(5, 6), fm.Tanh(), fm.Dense(6, 1)], loss="bce",
                             optimizer=opt(), seed=21)
    a, b = make(), make()
    ha1 = a.fit(X, y, epochs=1, batch_size=7)
    ha2 = a.fit(X, y, epochs=1, batch_size=7)
    hb = b.fit(X, y, epochs=2, batch_size=7)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert [ha1["loss"][0], ha2["loss"][0]] == hb["loss"]
    # and one epoch is not the same as two
    c = make()
    c.fit(X, y, epochs=1, batch_size=7)
    assert any(not np.array_equal(wa, wc) for wa, wc in zip(a.get_weights(), c.get_weights()))


# --------------------------------------------------------------------------- weights and summary

def test_get_set_weights_round_trip(rng):
    model = fm.Sequential([fm.Dense(4, 3), fm.ReLU(), fm.Dense(3, 2)], loss="mse", seed=0)
    w = model.get_weights()
    assert [a.shape for a in w] == [(4, 3), (3,), (3, 2), (2,)]
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in w)
    w[0][0, 0] = 99.0                                  # a copy: the model is unchanged
    assert model.get_weights()[0][0, 0] != 99.0
    new = [rng.standard_normal(a.shape) for a in w]
    model.set_weights(new)
    for a, b in zip(model.get_weights(), new):
        np.testing.assert_array_equal(a, b.astype(np.float32))
    model.set_weights(model.get_weights())
    for a, b in zip(model.get_weights(), new):
        np.testing.assert_array_equal(a, b.astype(np.float32))
    # the grads align with the weights
    _, grads = model.loss_and_grads(rng.standard_normal((5, 4)), rng.standard_normal((5, 2)))
    assert [g.shape for g in grads] == [a.shape for a in new]


def test_summary_and_count_params():
    model = fm.Sequential([fm.Dense(784, 128), fm.ReLU(), fm.Dense(128, 10)],
                          loss="softmax_crossentropy", seed=0)
    assert fm.Sequential([fm.Dense(784, 128)], seed=0).count_params() == 100_480
    assert model.count_params() == 100_480 + 1_290
    lines = []
    text = model.summary(print_fn=lines.append)
    assert lines == [text]
    for piece in ["Dense", "ReLU", "(None, 128)", "(None, 10)", "100,480", "1,290", "101,770"]:
        assert piece in text, piece
    assert text.count("Dense") == 2
    print(text)


# --------------------------------------------------------------------------- history, evaluate, predict

def _blobs(rng, n=120, d=4, c=3):
    centres = rng.standard_normal((c, d)) * 3
    y = rng.integers(0, c, n)
    return centres[y] + rng.standard_normal((n, d)), y


def test_history_with_validation_data_and_split(rng):
    X, y = _blobs(rng)
    model = fm.Sequential([fm.Dense(4, 8), fm.ReLU(), fm.Dense(8, 3)], loss="softmax_crossentropy",
                          optimizer=fm.Adam(lr=0.05), seed=0)
    h = model.fit(X[:100], y[:100], epochs=4, batch_size=16, validation_data=(X[100:], y[100:]))
    assert isinstance(h, fm.History) and h.epoch == [0, 1, 2, 3]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert key in h and len(h[key]) == 4 and all(np.isfinite(h[key]))
    assert all(0.0 <= a <= 1.0 for a in h["accuracy"] + h["val_accuracy"])
    assert h["loss"][-1] < h["loss"][0]
    ev = model.evaluate(X[100:], y[100:])
    assert set(ev) == {"loss", "accuracy"}
    assert ev["loss"] == pytest.approx(h["val_loss"][-1], rel=1e-6)
    assert ev["accuracy"] == pytest.approx(h["val_accuracy"][-1])

    model2 = fm.Sequential([fm.Dense(4, 8), fm.ReLU(), fm.Dense(8, 3)], loss="softmax_crossentropy",
                           optimizer=fm.Adam(lr=0.05), seed=0)
    h2 = model2.fit(X, y, epochs=3, batch_size=16, validation_split=0.25)
    assert len(h2["val_loss"]) == 3 and len(h2["val_accuracy"]) == 3
    ev = model2.evaluate(X[-30:], y[-30:])           # Keras: the last 25% are held out
    assert ev["loss"] == pytest.approx(h2["val_loss"][-1], rel=1e-6)
    assert "val_loss" not in model2.fit(X, y, epochs=1)


def test_evaluate_matches_independent(device, rng):
    for seed in (1, 2, 3):
        layers, loss, opt, net, _, X, y, desc = random_case(seed)
        model = fm.Sequential(layers, loss=loss, device=device, dtype="float64", seed=seed)
        w = model.get_weights()
        ev = model.evaluate(X, y)
        ref_loss = net.loss_and_grads(w, X, y)[0]
        print(f"evaluate {desc}: {ev} vs loss {ref_loss:.6g}")
        assert rel(ev["loss"], ref_loss) <= TOL
        assert ev["accuracy"] == pytest.approx(net.accuracy(w, X, y), abs=1e-12)


def test_evaluate_in_several_batches(rng):
    X, y = _blobs(rng, n=37)
    model = fm.Sequential([fm.Dense(4, 3)], loss="softmax_crossentropy", dtype="float64", seed=0)
    a, b = model.evaluate(X, y), model.evaluate(X, y, batch_size=5)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-12) and a["accuracy"] == b["accuracy"]


def test_predict_probabilities(rng):
    X, y = _blobs(rng, n=45)
    soft = fm.Sequential([fm.Dense(4, 6), fm.Tanh(), fm.Dense(6, 3)], loss="softmax_crossentropy",
                         dtype="float64", seed=0)
    p = soft.predict(X)
    assert isinstance(p, np.ndarray) and p.shape == (45, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    net = NpNet([("dense", 0, 0), ("act", "tanh", 0), ("dense", 0, 0)], "softmax", 3)
    logits = net.logits(soft.get_weights(), X)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    assert rel(p, e / e.sum(axis=1, keepdims=True)) <= TOL
    # BLAS may round differently for another batch shape: equal to the last bits only
    np.testing.assert_allclose(soft.predict(X, batch_size=4), p, rtol=1e-13, atol=0)
    np.testing.assert_array_equal(soft.predict_classes(X), np.argmax(p, axis=1))

    bce = fm.Sequential([fm.Dense(4, 5), fm.ReLU(), fm.Dense(5, 1)], loss="bce", seed=0)
    q = bce.predict(X * 10)
    assert q.shape == (45, 1) and q.dtype == np.float32
    assert np.all((q >= 0) & (q <= 1))
    assert set(np.unique(bce.predict_classes(X))) <= {0, 1}


# --------------------------------------------------------------------------- callbacks

class _Recorder(fm.Callback):
    def on_train_begin(self, logs=None):
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


def test_early_stopping_restores_best_weights(rng):
    X, y = _blobs(rng, n=80)
    # validate on shuffled labels: val_loss soon rises while training improves
    yv = rng.permutation(y)
    model = fm.Sequential([fm.Dense(4, 16), fm.ReLU(), fm.Dense(16, 3)], loss="softmax_crossentropy",
                          optimizer=fm.Adam(lr=0.05), seed=0)
    rec = _Recorder()
    stop = fm.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    h = model.fit(X, y, epochs=40, batch_size=16, validation_data=(X, yv), callbacks=[rec, stop])
    best = int(np.argmin(h["val_loss"]))
    print(f"val_loss {np.round(h['val_loss'], 4)}; best epoch {best}, stopped after {len(h.epoch)}")
    assert len(h.epoch) < 40 and best < len(h.epoch) - 2
    assert stop.best_epoch == best
    for a, b in zip(model.get_weights(), rec.weights[best]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(model.get_weights(), rec.weights[-1]))


def test_early_stopping_restores_batchnorm_statistics_of_the_best_epoch(rng):
    # the running statistics are state, not weights: restoring the weights alone would
    # evaluate the best epoch's weights with the last epoch's statistics
    X, y = _blobs(rng, n=80)
    model = fm.Sequential([fm.Dense(4, 16), fm.BatchNorm(16), fm.ReLU(), fm.Dense(16, 3)],
                          loss="softmax_crossentropy", optimizer=fm.Adam(lr=0.05), seed=0)

    class States(fm.Callback):
        def on_train_begin(self, logs=None):
            self.states = []

        def on_epoch_end(self, epoch, logs=None):
            self.states.append(self.model.layers[1].get_state())
    rec = States()
    stop = fm.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    yv = rng.permutation(y)
    h = model.fit(X, y, epochs=40, batch_size=16, validation_data=(X, yv), callbacks=[rec, stop])
    best = int(np.argmin(h["val_loss"]))
    assert best < len(h.epoch) - 1
    got = model.layers[1].get_state()
    for key in ("running_mean", "running_var"):
        np.testing.assert_array_equal(got[key], rec.states[best][key])
        assert not np.array_equal(got[key], rec.states[-1][key])
    # so evaluation reproduces the best epoch's validation loss
    val_loss = model.evaluate(X, yv)["loss"]
    print(f"best epoch {best} of {len(h.epoch)}: val_loss {h['val_loss'][best]:.6f}, restored {val_loss:.6f}")
    assert val_loss == pytest.approx(h["val_loss"][best], rel=1e-5)


def test_early_stopping_patience_counts_like_keras(rng):
    X, y = _blobs(rng, n=80)
    model = fm.Sequential([fm.Dense(4, 16), fm.ReLU(), fm.Dense(16, 3)], loss="softmax_crossentropy",
                          optimizer=fm.Adam(lr=0.05), seed=0)
    stop = fm.EarlyStopping(monitor="val_loss", patience=2)
    h = model.fit(X, y, epochs=40, batch_size=16, validation_data=(X, rng.permutation(y)),
                  callbacks=[stop])
    best = int(np.argmin(h["val_loss"]))
    print(f"val_loss {np.round(h['val_loss'], 4)}: best epoch {best}, ran {len(h.epoch)} epochs")
    assert len(h.epoch) == best + 1 + 2      # the best epoch, then 2 without improvement
