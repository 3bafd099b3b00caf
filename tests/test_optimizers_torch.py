"""The full optimizer steps (AdamW, RMSprop, weight decay, clipping, a rate on the device):
the Numba twins against the NumPy float64 reference, the reference against torch.optim step
by step in float64, and whole models trained by fastmlp and by torch side by side."""
import math

import numpy as np
import pytest

import fastmlp as fm
from fastmlp.backend import cpu
from fastmlp.backend import reference as R
from fastmlp.backend.cpu import optim
from fastmlp.optimizers import AdamW, RMSprop

SIZES = [37, 5, 16, 1, 130]          # segments laid out with gaps (padding) between them
L1 = [0.0, 0.0, 1e-3, 0.0, 0.0]
L2 = [0.05, 0.0, 0.0, 0.0, 0.02]
TOL = {np.float64: 1e-12, np.float32: 1e-5}


def layout(align=16):
    padded = [-(-n // align) * align for n in SIZES]
    start = np.concatenate([[0], np.cumsum(padded)[:-1]]).astype(np.int64)
    seg = (start, start + np.asarray(SIZES, np.int64), np.asarray(L1), np.asarray(L2))
    return seg, int(sum(padded))


def rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def impls(name):
    serial, parallel = getattr(optim, name + "_twins")
    return {"cpu": getattr(cpu, name), "serial": serial, "parallel": parallel}


# name -> (state buffer count, extra arguments after clipvalue, kernel call)
def _call(fn, name, params, prev, state, bad, grads, seg, factor, lr, clipvalue, hyper, t):
    if name == "sgd_step":
        fn(params, prev, state[0], bad, grads, *seg, factor, lr, clipvalue, *hyper)
    elif name == "adam_step":
        fn(params, prev, state[0], state[1], bad, grads, *seg, factor, lr, clipvalue, *hyper, np.array([t]))
    else:
        fn(params, prev, state[0], state[1], state[2], bad, grads, *seg, factor, lr, clipvalue, *hyper)


CASES = [
    ("sgd_step", (0.01, 0.9, True)), ("sgd_step", (0.0, 0.0, False)), ("sgd_step", (0.1, 0.5, False)),
    ("adam_step", (0.01, False, 0.9, 0.999, 1e-8)), ("adam_step", (0.1, True, 0.8, 0.99, 1e-6)),
    ("rmsprop_step", (0.01, 0.99, 1e-8, 0.0, False)), ("rmsprop_step", (0.0, 0.9, 1e-6, 0.9, True)),
]


@pytest.mark.parametrize("which", ["cpu", "serial", "parallel"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("clip", ["none", "norm", "global", "value"])
@pytest.mark.parametrize("name, hyper", CASES)
def test_full_step_twins_match_the_reference(name, hyper, clip, dtype, which):
    rng = np.random.default_rng(3)
    seg, size = layout()
    fn = impls(name)[which]
    nstate = {"sgd_step": 1, "adam_step": 2, "rmsprop_step": 3}[name]
    params = np.zeros(size, dtype)
    inside = R._inside(size, seg[0], seg[1])
    params[inside] = rng.standard_normal(inside.sum())
    state = [np.zeros(size, dtype) for _ in range(nstate)]
    rp, rs = params.astype(np.float64), [s.astype(np.float64) for s in state]
    bad, rbad = np.zeros(1, np.int64), np.zeros(1, np.int64)
    lr = np.array([0.05])
    for t in range(1, 5):
        grads = np.zeros(size, dtype)
        grads[inside] = rng.standard_normal(inside.sum()) * 3
        clipvalue = 0.5 if clip == "value" else math.inf
        factor, rfactor = np.ones(len(SIZES)), np.ones(len(SIZES))
        if clip in ("norm", "global"):
            impls("grad_clip_factors")[which](factor, grads, params, *seg, 1.5, clip == "norm")
            R.grad_clip_factors(rfactor, grads.astype(np.float64), rp, *seg, 1.5, clip == "norm")
            assert rel(factor, rfactor) <= TOL[dtype] and np.any(rfactor < 1)
        _call(fn, name, params, np.empty_like(params), state, bad, grads, seg, factor, lr, clipvalue, hyper, t)
        _call(getattr(R, name), name, rp, np.empty_like(rp), rs, rbad, grads.astype(np.float64), seg, rfactor,
              lr, clipvalue, hyper, t)
        err = rel(params, rp)
        print(f"{name} {hyper} clip={clip} {np.dtype(dtype).name} {which} step {t}: rel err {err:.1e}")
        assert err <= TOL[dtype] * 10
        for s, r in zip(state, rs):
            assert rel(s, r) <= TOL[dtype] * 10
    assert np.all(params[~inside] == 0) and all(np.all(s[~inside] == 0) for s in state)  # padding untouched
    assert bad[0] == 0 and rbad[0] == 0


@pytest.mark.parametrize("name, hyper", CASES)
def test_full_steps_count_nonfinite_parameters_and_keep_prev(name, hyper):
    seg, size = layout()
    nstate = {"sgd_step": 1, "adam_step": 2, "rmsprop_step": 3}[name]
    params = np.ones(size)
    grads = np.zeros(size)
    grads[seg[0][1]] = np.nan                  # one NaN gradient in segment 1
    prev, bad = np.zeros(size), np.zeros(1, np.int64)
    _call(cpu.__dict__[name], name, params, prev, [np.zeros(size) for _ in range(nstate)], bad, grads, seg,
          np.ones(len(SIZES)), np.array([0.1]), math.inf, hyper, 1)
    assert bad[0] == 1 and np.isnan(params[seg[0][1]])
    inside = R._inside(size, seg[0], seg[1])
    assert np.all(prev[inside] == 1.0)


# --- the reference against torch.optim, step by step ---------------------------------------

def _torch_run(kind, kwargs, clip, seg, steps, rng_grads, p0):
    torch = pytest.importorskip("torch")
    tensors = [torch.tensor(p0[lo:hi].copy(), dtype=torch.float64, requires_grad=True)
               for lo, hi in zip(seg[0], seg[1])]
    opt = getattr(torch.optim, kind)(tensors, **kwargs)
    out = []
    for g in rng_grads:
        with torch.no_grad():
            for k, (tns, lo, hi) in enumerate(zip(tensors, seg[0], seg[1])):
                # the loss's gradient plus the Keras L1/L2 gradient of the segment
                tns.grad = torch.tensor(g[lo:hi]) + seg[2][k] * torch.sign(tns) + 2 * seg[3][k] * tns
        if clip[0] == "norm":
            for tns in tensors:
                torch.nn.utils.clip_grad_norm_([tns], clip[1])
        elif clip[0] == "global":
            torch.nn.utils.clip_grad_norm_(tensors, clip[1])
        elif clip[0] == "value":
            torch.nn.utils.clip_grad_value_(tensors, clip[1])
        opt.step()
        out.append(np.concatenate([tns.detach().numpy() for tns in tensors]))
    return out


TORCH_CASES = [
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, betas=(0.9, 0.99), eps=1e-7, weight_decay=0.05)),
    ("AdamW", dict(lr=0.01, betas=(0.85, 0.999), eps=1e-8, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, alpha=0.95, eps=1e-8)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-6, momentum=0.8, centered=True, weight_decay=0.02)),
]


def _ours(kind, kwargs, backend, params, state, bad, grads, seg, factor, lr, clipvalue, t):
    wd = kwargs.get("weight_decay", 0.0)
    if kind == "SGD":
        backend.sgd_step(params, np.empty_like(params), state[0], bad, grads, *seg, factor, lr, clipvalue, wd,
                         kwargs.get("momentum", 0.0), kwargs.get("nesterov", False))
    elif kind in ("Adam", "AdamW"):
        backend.adam_step(params, np.empty_like(params), state[0], state[1], bad, grads, *seg, factor, lr,
                          clipvalue, wd, kind == "AdamW", *kwargs["betas"], kwargs["eps"], np.array([t]))
    else:
        backend.rmsprop_step(params, np.empty_like(params), state[0], state[1], state[2], bad, grads, *seg,
                             factor, lr, clipvalue, wd, kwargs["alpha"], kwargs["eps"],
                             kwargs.get("momentum", 0.0), kwargs.get("centered", False))


@pytest.mark.parametrize("backend", [R, cpu], ids=["reference", "cpu"])
@pytest.mark.parametrize("clip", [("none", None), ("norm", 0.7), ("global", 1.2), ("value", 0.3)])
@pytest.mark.parametrize("kind, kwargs", TORCH_CASES)
def test_full_steps_match_torch_optim(kind, kwargs, clip, backend):
    seg, size = layout()
    rng = np.random.default_rng(7)
    inside = R._inside(size, seg[0], seg[1])
    p0 = np.zeros(size)
    p0[inside] = rng.standard_normal(inside.sum())
    grads = []
    for _ in range(6):
        g = np.zeros(size)
        g[inside] = rng.standard_normal(inside.sum())
        grads.append(g)
    want = _torch_run(kind, kwargs, clip, seg, 6, grads, p0)
    params, state, bad = p0.copy(), [np.zeros(size) for _ in range(3)], np.zeros(1, np.int64)
    lr = np.array([kwargs["lr"]])
    for t, (g, w) in enumerate(zip(grads, want), 1):
        factor = np.ones(len(SIZES))
        if clip[0] in ("norm", "global"):
            backend.grad_clip_factors(factor, g, params, *seg, clip[1], clip[0] == "norm")
        _ours(kind, kwargs, backend, params, state, bad, g, seg, factor, lr,
              clip[1] if clip[0] == "value" else math.inf, t)
        err = rel(params[inside], w)
        print(f"{kind} {kwargs} {clip} step {t}: relative error to torch {err:.1e}")
        assert err < 1e-12


# --- whole models ---------------------------------------------------------------------------

def _torch_mlp(weights, X, y, kind, kwargs, clip, batches, l2):
    torch = pytest.importorskip("torch")
    ps = [torch.tensor(w, dtype=torch.float64, requires_grad=True) for w in weights]
    opt = getattr(torch.optim, kind)(ps, **kwargs)
    for idx in batches:
        xb, yb = torch.tensor(X[idx]), torch.tensor(y[idx])
        h = torch.relu(xb @ ps[0] + ps[1])
        loss = torch.nn.functional.cross_entropy(h @ ps[2] + ps[3], yb) + l2 * (ps[0] ** 2).sum()
        opt.zero_grad()
        loss.backward()
        if clip[0] == "clipnorm":
            for p in ps:
                torch.nn.utils.clip_grad_norm_([p], clip[1])
        elif clip[0] == "global_clipnorm":
            torch.nn.utils.clip_grad_norm_(ps, clip[1])
        elif clip[0] == "clipvalue":
            torch.nn.utils.clip_grad_value_(ps, clip[1])
        opt.step()
    return [p.detach().numpy() for p in ps]


MODEL_CASES = [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), ("global_clipnorm", 0.5)),
    ("Adam", dict(lr=0.01, weight_decay=0.05), ("clipnorm", 0.3)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1), ("none", None)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True), ("clipvalue", 0.05)),
]


@pytest.mark.parametrize("kind, kwargs, clip", MODEL_CASES)
def test_a_model_trains_as_torch_does(kind, kwargs, clip):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 6)), rng.integers(0, 3, 40)
    ours = dict(kwargs)
    if clip[0] != "none":
        ours[clip[0]] = clip[1]
    opt = {"SGD": fm.SGD, "Adam": fm.Adam, "AdamW": AdamW, "RMSprop": RMSprop}[kind](**ours)
    model = fm.Sequential([fm.Dense(6, 8, l2=0.01), fm.ReLU(), fm.Dense(8, 3)], loss="softmax_crossentropy",
                          optimizer=opt, dtype="float64", seed=2)
    w0 = model.get_weights()
    model.fit(X, y, epochs=2, batch_size=16, shuffle=False)
    batches = [np.arange(s, min(s + 16, 40)) for s in (0, 16, 32)] * 2
    tkw = {k: v for k, v in kwargs.items()}
    want = _torch_mlp(w0, X, y, kind, tkw, clip, batches, 0.01)
    for k, (g, w) in enumerate(zip(model.get_weights(), want)):
        err = rel(g, w)
        print(f"{kind} weight {k}: relative error to torch {err:.1e}")
        assert err < 1e-10


def test_lr_and_learning_rate_spellings():
    for cls in (fm.SGD, fm.Adam, AdamW, RMSprop):
        assert cls(learning_rate=0.2).lr == 0.2 == cls(lr=0.2).learning_rate
        with pytest.raises(TypeError, match="lr or as learning_rate, got both"):
            cls(lr=0.1, learning_rate=0.1)
    assert fm.Adam().lr == 0.001 and fm.SGD().lr == 0.01 and AdamW().weight_decay == 0.01


@pytest.mark.parametrize("kwargs, match", [
    (dict(clipnorm=0.0), "clipnorm to be a finite number > 0"),
    (dict(clipnorm=-1), "clipnorm"),
    (dict(global_clipnorm=math.nan), "global_clipnorm"),
    (dict(clipvalue=1.0, clipnorm=1.0), "at most one of clipnorm"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_bad_clipping_and_decay_are_refused(kwargs, match):
    for cls in (fm.SGD, fm.Adam, AdamW, RMSprop):
        with pytest.raises(ValueError, match=match):
            cls(**kwargs)


def test_plain_optimizers_keep_the_plain_kernels(monkeypatch):
    # no new feature: the fixed-rate kernels run, nothing else (plain SGD's steps in place
    # where a bound allows, backend/cpu/in_place_sgd.py, are tested in test_in_place_sgd.py)
    monkeypatch.setattr(cpu, "undo_free", lambda flat, stats: None)
    calls = []
    for name in ("sgd_update", "adam_update", "sgd_step", "adam_step", "grad_clip_factors"):
        real = getattr(cpu, name)
        monkeypatch.setattr(cpu, name, lambda *a, _n=name, _r=real: (calls.append(_n), _r(*a)))
    X, y = np.random.default_rng(0).standard_normal((8, 3)), np.arange(8) % 2
    for opt, want in ((fm.SGD(0.1), "sgd_update"), (fm.Adam(), "adam_update"),
                      (fm.SGD(0.1, weight_decay=0.1), "sgd_step"), (fm.Adam(clipnorm=1.0), "adam_step")):
        calls.clear()
        fm.Sequential([fm.Dense(3, 1)], loss="bce", optimizer=opt, seed=0).fit(X, y, epochs=1, batch_size=4)
        assert calls[-1] == want and calls.count(want) == 2
        assert ("grad_clip_factors" in calls) == (opt.clipnorm is not None)


def test_rmsprop_state_names_follow_its_options():
    assert RMSprop().state_names == ("square_avg",)
    assert RMSprop(momentum=0.9, centered=True).state_names == ("square_avg", "momentum_buffer", "grad_avg")


def test_new_optimizers_survive_save_and_load(tmp_path):
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((20, 4)), rng.integers(0, 2, 20)
    for opt in (AdamW(0.01, weight_decay=0.2, clipnorm=1.0), RMSprop(0.01, momentum=0.9, centered=True),
                fm.SGD(fm.schedules.CosineDecay(0.1, 50), momentum=0.9, clipvalue=0.5)):
        model = fm.Sequential([fm.Dense(4, 5), fm.ReLU(), fm.Dense(5, 1)], loss="bce", optimizer=opt, seed=3)
        model.fit(X, y, epochs=2, batch_size=5)
        model.save(tmp_path / "m.fmlp")
        back = fm.load_model(tmp_path / "m.fmlp")
        assert back.optimizer.get_config() == model.optimizer.get_config()
        assert back.optimizer.t == model.optimizer.t == 8
        model.fit(X, y, epochs=1, batch_size=5, shuffle=False)
        back.fit(X, y, epochs=1, batch_size=5, shuffle=False)
        for a, b in zip(model.get_weights(), back.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_a_diverging_full_step_is_undone():
    X, y = np.random.default_rng(0).standard_normal((8, 3)), np.arange(8) % 2
    model = fm.Sequential([fm.Dense(3, 1)], loss="bce", optimizer=RMSprop(1e308), dtype="float64", seed=0)
    w0 = model.get_weights()
    with pytest.raises(fm.NonFiniteLossError):
        model.fit(X, y, epochs=1, batch_size=None)
    for a, b in zip(model.get_weights(), w0):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make", [
    lambda: AdamW(1e-3, clipnorm=1.0),
    lambda: RMSprop(1e-3, momentum=0.9, centered=True, global_clipnorm=1.0),
    lambda: fm.SGD(fm.schedules.CosineDecay(0.1, 100), momentum=0.9, clipvalue=0.1),
    lambda: fm.Adam(lambda step: 1e-3 / (1 + step), weight_decay=0.01),
], ids=["adamw", "rmsprop", "sgd-schedule", "adam-callable"])
@pytest.mark.parametrize("weighted", [False, True])
def test_full_steps_and_weighted_steps_allocate_nothing(make, weighted):
    import tracemalloc
    rng = np.random.default_rng(0)
    X, y = rng.random((256, 300), dtype=np.float32), rng.integers(0, 10, 256)
    model = fm.Sequential([fm.Dense(300, 64, l2=1e-4), fm.ReLU(), fm.Dense(64, 10)], loss="softmax_crossentropy",
                          optimizer=make(), seed=0)
    sw = np.ones(256) if weighted else None
    model.fit(X, y, epochs=1, batch_size=64, sample_weight=sw)     # warm-up
    xb, tb = model.batch_buffers.get(64, *model.prepare(X, y))
    wb = model.batch_buffers.weights(64) if weighted else None
    if weighted:
        wb[...] = 1.0
    model.train_step(xb, tb, model.stats, weights=wb)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(50):
            model.train_step(xb, tb, model.stats, weights=wb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"peak traced growth over 50 steps: {peak - base} bytes")
    assert peak - base < 2048 < xb.nbytes


def test_graph_keys_leave_out_a_rate_read_from_the_device():
    # a CUDA graph of a full step reads the rate from the device: a new rate needs no new graph
    assert any(k == "lr" for k, _ in fm.SGD(0.1).graph_key())
    for opt in (fm.SGD(0.1, clipnorm=1.0), AdamW(0.1), RMSprop(0.1), fm.Adam(fm.schedules.StepDecay(0.1, 3))):
        key = opt.graph_key()
        assert all(k != "lr" for k, _ in key) and hash(key) is not None
