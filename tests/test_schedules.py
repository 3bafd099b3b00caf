"""Learning-rate schedules against torch.optim.lr_scheduler and Keras's formulas, a schedule
driving training step by step as a torch scheduler does, and bad rates refused before any
weight changes."""
import math

import numpy as np
import pytest

import fastmlp as fm
from fastmlp.schedules import CosineDecay, ExponentialDecay, OneCycle, StepDecay


def _torch_rates(make, steps, lr=1.0):
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = make(opt)
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(rates)


def _ours(schedule, steps):
    return np.array([schedule(k) for k in range(steps)])


def test_step_decay_is_torchs_steplr():
    torch = pytest.importorskip("torch")
    want = _torch_rates(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.5), 40, lr=0.3)
    np.testing.assert_allclose(_ours(StepDecay(0.3, 7, 0.5), 40), want, rtol=1e-14)


def test_cosine_decay_is_torchs_cosine_annealing():
    torch = pytest.importorskip("torch")
    want = _torch_rates(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=25, eta_min=0.01), 26, lr=0.1)
    got = _ours(CosineDecay(0.1, 25, alpha=0.1), 26)
    print(f"CosineDecay vs CosineAnnealingLR: max relative error {np.max(np.abs(got - want) / want):.1e}")
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert CosineDecay(0.1, 25, alpha=0.1)(1000) == pytest.approx(0.01)   # flat after decay_steps, as Keras


def test_cosine_decay_with_warmup_is_keras():
    s = CosineDecay(0.0, 100, alpha=0.0, warmup_target=0.1, warmup_steps=10)
    # Keras: linear warmup from initial_learning_rate to warmup_target, then the cosine from the target
    assert s(0) == 0.0 and s(5) == pytest.approx(0.05) and s(10) == pytest.approx(0.1)
    assert s(60) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 50 / 100)))
    assert s(110) == pytest.approx(0.0, abs=1e-18) and s(500) == pytest.approx(0.0, abs=1e-18)
    with pytest.raises(ValueError, match="expected warmup_target"):
        CosineDecay(0.1, 100, warmup_steps=10)


def test_exponential_decay_is_keras():
    s = ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    assert s(0) == 0.1 and s(10) == pytest.approx(0.05) and s(5) == pytest.approx(0.1 * 0.5 ** 0.5)
    st = ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5, staircase=True)
    assert st(9) == 0.1 and st(10) == pytest.approx(0.05)


@pytest.mark.parametrize("strategy", ["cos", "linear"])
@pytest.mark.parametrize("total, pct", [(100, 0.3), (37, 0.25), (10, 0.5)])
def test_one_cycle_is_torchs_onecyclelr(total, pct, strategy):
    torch = pytest.importorskip("torch")
    want = _torch_rates(lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.2, total_steps=total, pct_start=pct, anneal_strategy=strategy, cycle_momentum=False), total)
    got = _ours(OneCycle(0.2, total, pct_start=pct, anneal_strategy=strategy), total)
    err = np.max(np.abs(got - want) / want)
    print(f"OneCycle total={total} pct={pct} {strategy}: max relative error {err:.1e}")
    assert err < 1e-12
    with pytest.raises(ValueError, match="at most total_steps"):
        OneCycle(0.2, total)(total)


def test_a_schedule_drives_training_as_a_torch_scheduler_does():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((24, 3)), rng.integers(0, 2, 24)
    model = fm.Sequential([fm.Dense(3, 1)], loss="bce", dtype="float64", seed=1,
                          optimizer=fm.SGD(fm.schedules.OneCycle(0.5, 12), momentum=0.9))
    w0 = model.get_weights()
    h = model.fit(X, y, epochs=3, batch_size=6, shuffle=False)
    ps = [torch.tensor(w, requires_grad=True) for w in w0]
    opt = torch.optim.SGD(ps, lr=0.5, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=12, cycle_momentum=False)
    rates = []
    for _ in range(3):
        for s in range(0, 24, 6):
            z = torch.tensor(X[s:s + 6]) @ ps[0] + ps[1]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], torch.tensor(y[s:s + 6] * 1.0))
            opt.zero_grad()
            loss.backward()
            opt.step()
            rates.append(opt.param_groups[0]["lr"])
            sched.step()
    for g, w in zip(model.get_weights(), ps):
        np.testing.assert_allclose(g, w.detach().numpy(), rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(h["lr"], [rates[3], rates[7], rates[11]], rtol=1e-14)  # the epoch's last step
    assert model.optimizer.t == 12


def test_any_callable_of_the_step_is_a_schedule():
    X, y = np.random.default_rng(0).standard_normal((8, 3)), np.arange(8) % 2
    seen = []
    opt = fm.Adam(learning_rate=lambda step: seen.append(step) or 0.01 / (1 + step))
    h = fm.Sequential([fm.Dense(3, 1)], loss="bce", optimizer=opt, seed=0).fit(X, y, epochs=2, batch_size=4)
    assert seen == [0, 0, 1, 2, 3] and h["lr"] == [0.01 / 2, 0.01 / 4]   # step 0 also at construction
    with pytest.raises(TypeError, match="follows the schedule"):
        opt.lr = 0.1


@pytest.mark.parametrize("bad", [math.nan, -0.1, math.inf, "fast"])
def test_a_bad_rate_is_refused_before_the_weights_change(bad):
    X, y = np.random.default_rng(0).standard_normal((8, 3)), np.arange(8) % 2
    model = fm.Sequential([fm.Dense(3, 1)], loss="bce", seed=0, optimizer=fm.SGD(lambda step: 0.1 if step < 2 else bad))
    ref = fm.Sequential([fm.Dense(3, 1)], loss="bce", seed=0, optimizer=fm.SGD(0.1))
    ref.fit(X, y, epochs=1, batch_size=4, shuffle=False)      # the two good steps
    with pytest.raises((ValueError, TypeError), match="at step 2"):
        model.fit(X, y, epochs=2, batch_size=4, shuffle=False)
    assert model.optimizer.t == 2
    for a, b in zip(model.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="finite rate >= 0"):
        fm.SGD(lambda step: math.nan)


def test_schedule_arguments_are_checked():
    with pytest.raises(ValueError, match="step_size"):
        StepDecay(0.1, 0)
    with pytest.raises(ValueError, match="pct_start"):
        OneCycle(0.1, 10, pct_start=1.5)
    with pytest.raises(ValueError, match="anneal_strategy"):
        OneCycle(0.1, 10, anneal_strategy="exp")
    with pytest.raises(ValueError, match="plain function cannot be written"):
        fm.SGD(lambda s: 0.1).get_config()


def test_a_plain_function_rate_with_checkpoints_fails_before_training(tmp_path):
    X, y = np.random.default_rng(0).standard_normal((8, 3)), np.arange(8) % 2
    for kwargs in (dict(checkpoint=tmp_path / "c.fmlp"), dict(callbacks=[fm.ModelCheckpoint(tmp_path / "m.fmlp")])):
        model = fm.Sequential([fm.Dense(3, 1)], loss="bce", seed=0, optimizer=fm.SGD(lambda step: 0.1))
        with pytest.raises(ValueError, match="plain function cannot be written"):
            model.fit(X, y, epochs=1, **kwargs)
        assert model.optimizer.t == 0 and not list(tmp_path.iterdir())
