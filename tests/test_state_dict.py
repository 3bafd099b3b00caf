"""state_dict / load_state_dict, and model files written before the one-job-per-file layout
(tests/fixtures/*_v1.*, written by tests/fixtures/make_v1_fixtures.py with that code)."""
from pathlib import Path

import numpy as np
import pytest

import fastmlp as fm

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.mark.parametrize("name", ["mlp_adam_bn_v1", "cnn_sgd_v1"])
def test_model_files_of_the_earlier_layout_still_load(name):
    model = fm.load_model(FIXTURES / f"{name}.fmlp")
    X = np.load(FIXTURES / f"{name}_x.npy")
    probs = np.load(FIXTURES / f"{name}_probs.npy")
    got = model.predict(X)
    print(f"{name}: largest difference from the saved predictions {np.abs(got - probs).max():.3g}")
    # same weights, same kernels: bitwise, layer by layer (the saved file's path); predict may
    # run a CNN's head on other kernels since (inference.DenseChain.plan_tail): to the rounding
    assert np.array_equal(model._predict(X, None), probs)
    np.testing.assert_allclose(got, probs, rtol=1e-6, atol=1e-7)


def test_a_mid_epoch_checkpoint_of_the_earlier_layout_resumes(tmp_path):
    path = FIXTURES / "mlp_adam_bn_v1.fmlp"
    model = fm.load_model(path)
    assert model.position["epoch"] == 2 and model.position["step"] == 2
    assert model.optimizer.t == 10 and model.layers[2].get_state()["running_var"].shape == (8,)
    X = np.load(FIXTURES / "mlp_adam_bn_v1_x.npy")
    y = np.argmax(np.load(FIXTURES / "mlp_adam_bn_v1_probs.npy"), axis=1)
    fresh = fm.load_model(path)
    history = fresh.fit(X, y, epochs=3, batch_size=8, resume=path)
    assert history.epoch == [2] and fresh.optimizer.t == 10 + 3    # the 3 steps left of epoch 2


def test_weights_file_of_the_earlier_layout_loads():
    model = fm.load_model(FIXTURES / "mlp_adam_bn_v1.fmlp")
    other = fm.Sequential([fm.Dense(6, 8, l2=0.01), fm.ReLU(), fm.BatchNorm(8), fm.Dropout(0.25), fm.Dense(8, 3)],
                          loss="softmax_crossentropy", optimizer=fm.Adam(lr=0.01), seed=99, dtype="float64")
    other.load_weights(FIXTURES / "mlp_adam_bn_v1_weights.h5")
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), other.get_weights()))


def _model(seed=0, opt="adam"):
    return fm.Sequential([fm.Dense(5, 7), fm.ReLU(), fm.BatchNorm(7), fm.Dense(7, 3)],
                         loss="softmax_crossentropy", optimizer=opt, seed=seed)


def test_state_dict_round_trip_continues_identically(rng):
    X, y = rng.standard_normal((64, 5)).astype(np.float32), rng.integers(0, 3, 64)
    a = _model()
    a.fit(X, y, epochs=2, batch_size=16)
    state = a.state_dict()
    assert set(state) == {"architecture", "weights", "optimizer", "layer_state", "rng", "training"}
    assert sorted(state["optimizer"]["state"]) == ["exp_avg", "exp_avg_sq"] and state["optimizer"]["step"] == 8
    b = _model(seed=1)
    b.load_state_dict(state)
    a.fit(X, y, epochs=1, batch_size=16)
    b.fit(X, y, epochs=1, batch_size=16)
    assert all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights()))


def test_load_state_dict_checks_everything_before_writing(rng):
    a, b = _model(), _model(seed=1)
    before = b.get_weights()
    state = a.state_dict()
    state["optimizer"]["state"]["exp_avg"][-1] = np.zeros(4)          # a wrong shape, last of all
    with pytest.raises(ValueError, match=r"expected optimizer state exp_avg of weight 5 of shape \(3,\), got \(4,\)"):
        b.load_state_dict(state)
    assert all(np.array_equal(u, v) for u, v in zip(before, b.get_weights()))
    with pytest.raises(ValueError, match="optimizer state of Adam, got SGD"):
        b.load_state_dict(_model(opt="sgd").state_dict())
    with pytest.raises(ValueError, match="expected a file of a model with 4 layers, got 2"):
        b.load_state_dict(fm.Sequential([fm.Dense(5, 3), fm.ReLU()], optimizer="adam").state_dict())
