"""fastmlp.preprocessing: scaling, one-hot, standardising, shuffling, splitting.

Statistics are checked on the real MNIST t10k and cat files where present
(skipped with a reason otherwise), and on small arrays whose answers are
known by construction everywhere. ``data_dir`` comes from ``conftest.py``.
"""
import numpy as np
import pytest

from fastmlp import data as fd
from fastmlp import preprocessing as pp


@pytest.fixture(scope="module")
def mnist(data_dir):
    if not (data_dir / "mnist-t10k").is_dir():
        pytest.skip(f"mnist-t10k/ not found in {data_dir}")
    return fd.load_mnist_t10k(data_dir / "mnist-t10k")


# ----------------------------------------------------------- scale_to_unit


def test_scale_to_unit_uint8():
    X = np.array([[0, 1, 128, 255]], np.uint8)
    out = pp.scale_to_unit(X)
    assert out.dtype == np.float32
    assert out[0, 0] == 0.0 and out[0, 3] == 1.0
    np.testing.assert_allclose(out, X / 255.0, rtol=1e-6)


def test_scale_to_unit_real_mnist(mnist):
    out = pp.scale_to_unit(mnist[0])
    assert out.shape == (8000, 28, 28) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0


def test_scale_to_unit_floats_checked_not_copied():
    X = np.random.default_rng(0).random((3, 4))
    assert pp.scale_to_unit(X) is X
    X[1, 2] = np.nan
    with pytest.raises(ValueError, match="expected finite values in X, got 1 NaN or inf"):
        pp.scale_to_unit(X)
    with pytest.raises(TypeError, match="expected uint8 or floating-point X, got dtype int64"):
        pp.scale_to_unit(np.zeros(3, np.int64))


# ----------------------------------------------------------------- one_hot


def test_one_hot_values():
    out = pp.one_hot([2, 0, 1, 2])
    assert out.shape == (4, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out.argmax(axis=1), [2, 0, 1, 2])
    np.testing.assert_array_equal(out.sum(axis=1), 1.0)
    assert pp.one_hot(np.array([[0], [1]]), num_classes=5).shape == (2, 5)
    np.testing.assert_array_equal(pp.one_hot(np.array([1.0, 0.0])), [[0, 1], [1, 0]])


@pytest.mark.parametrize("y, k, exc, msg", [
    ([0, -1], None, ValueError, "expected labels >= 0, got -1"),
    ([0, 3], 3, ValueError, "expected labels < num_classes=3, got 3"),
    ([0.5, 1.0], None, ValueError, "non-integer"),
    (["a", "b"], None, TypeError, "expected integer class labels"),
    (np.zeros((2, 2), int), None, ValueError, r"expected y of shape \(N,\) or \(N, 1\), got \(2, 2\)"),
    ([0, 1], 0, ValueError, "expected num_classes to be a positive int"),
])
def test_one_hot_errors(y, k, exc, msg):
    with pytest.raises(exc, match=msg):
        pp.one_hot(y, num_classes=k)


# ------------------------------------------------------------ Standardizer


def test_standardizer_fit_on_training_split_only(mnist):
    X_tr, y_tr, X_te, _ = mnist
    X_tr, X_te = pp.scale_to_unit(X_tr), pp.scale_to_unit(X_te)
    s = pp.Standardizer().fit(X_tr)
    assert s.mean_ == pytest.approx(X_tr.mean(dtype=np.float64), rel=1e-12)
    assert s.std_ == pytest.approx(X_tr.std(dtype=np.float64), rel=1e-12)
    Z_tr, Z_te = s.transform(X_tr), s.transform(X_te)
    assert Z_tr.dtype == np.float32
    assert abs(Z_tr.mean(dtype=np.float64)) < 1e-5 and abs(Z_tr.std(dtype=np.float64) - 1) < 1e-5
    # The test split is transformed with the training statistics, not its own.
    expected = (X_te.astype(np.float64) - X_tr.mean(dtype=np.float64)) / X_tr.std(dtype=np.float64)
    np.testing.assert_allclose(Z_te, expected, atol=1e-5)
    assert abs(Z_te.mean(dtype=np.float64)) > 1e-4  # its own mean would have given ~0


def test_standardizer_feature_mode_constant_pixels(mnist):
    X_tr, _, X_te, _ = mnist
    s = pp.Standardizer(mode="feature").fit(X_tr.reshape(len(X_tr), -1))
    assert s.mean_.shape == (784,) and s.std_.shape == (784,)
    constant = X_tr.reshape(len(X_tr), -1).std(axis=0) == 0
    assert constant.sum() > 0 and np.all(s.std_[constant] == 1.0)
    Z = s.transform(X_te.reshape(len(X_te), -1))
    assert Z.dtype == np.float32 and np.isfinite(Z).all()
    assert np.abs(Z[:, constant]).max() <= 255.0  # centred only, never divided by ~0
    Z_tr = s.transform(X_tr.reshape(len(X_tr), -1))
    varying = ~constant
    np.testing.assert_allclose(Z_tr[:, varying].mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(Z_tr[:, varying].std(axis=0), 1.0, atol=1e-3)


def test_standardizer_dict_round_trip():
    X = np.random.default_rng(1).normal(3.0, 2.0, (50, 4, 5))
    for mode in ("global", "feature"):
        s = pp.Standardizer(mode=mode, eps=1e-6).fit(X)
        d = s.to_dict()
        assert d["mode"] == mode and d["eps"] == 1e-6
        if mode == "global":
            assert type(d["mean"]) is float and type(d["std"]) is float
        else:
            assert isinstance(d["mean"], np.ndarray) and d["mean"].shape == (4, 5)
        s2 = pp.Standardizer.from_dict(d)
        np.testing.assert_array_equal(s2.transform(X), s.transform(X))
        assert s2.fit_transform(X).shape == X.shape


def test_standardizer_errors():
    with pytest.raises(ValueError, match="expected mode 'global' or 'feature', got 'pixel'"):
        pp.Standardizer(mode="pixel")
    with pytest.raises(ValueError, match="expected a fitted Standardizer"):
        pp.Standardizer().transform(np.zeros((2, 3)))
    s = pp.Standardizer(mode="feature").fit(np.random.default_rng(2).random((10, 3)))
    with pytest.raises(ValueError, match=r"expected samples of shape \(3,\).*got X of shape \(2, 4\)"):
        s.transform(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="NaN or inf"):
        pp.Standardizer().fit(np.array([[1.0, np.inf]]))
    with pytest.raises(ValueError, match="at least one sample"):
        pp.Standardizer().fit(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="expected keys"):
        pp.Standardizer.from_dict({"mode": "global"})


# ------------------------------------------------------- shuffle and split


def test_shuffle_keeps_pairs_and_is_seeded():
    X = np.arange(20).reshape(10, 2)
    y = np.arange(10)
    Xs, ys = pp.shuffle(X, y, seed=3)
    np.testing.assert_array_equal(Xs[:, 0] // 2, ys)  # rows still carry their own label
    assert not np.array_equal(ys, y) and sorted(ys) == list(y)
    np.testing.assert_array_equal(pp.shuffle(X, y, seed=3)[1], ys)
    assert not np.array_equal(pp.shuffle(X, y, seed=4)[1], ys)
    with pytest.raises(ValueError, match="expected y with 10 entries .* got 9"):
        pp.shuffle(X, y[:9], seed=0)


def _check_partition(parts, n):
    ids = np.concatenate([parts[0][:, 0], parts[2][:, 0], parts[4][:, 0]])
    assert sorted(ids) == list(range(n))  # disjoint and complete
    for X_part, y_part in zip(parts[0::2], parts[1::2]):
        np.testing.assert_array_equal(X_part[:, 1], y_part)  # rows keep their labels


def test_split_stratified_real_cats(data_dir):
    path = data_dir / "catvnoncat" / "train_catvnoncat.h5"
    if not path.exists():
        pytest.skip(f"{path} not found")
    _, y, _ = fd.load_h5(path)
    X = np.stack([np.arange(len(y)), y], axis=1)  # row id and label, to trace every sample
    parts = pp.train_val_test_split(X, y, val=0.2, test=0.2, seed=0)
    _check_partition(parts, len(y))
    # Per class: 72 cats -> 14 test, 15 val (29 - 14); 137 non-cats -> 27 test, 28 val (55 - 27).
    for (_, y_part), (cats, others) in zip([parts[0:2], parts[2:4], parts[4:6]],
                                           [(43, 82), (15, 28), (14, 27)]):
        assert (int(y_part.sum()), int((y_part == 0).sum())) == (cats, others)
    for y_part in parts[1::2]:
        assert abs(y_part.mean() - 72 / 209) < 0.02


def test_split_stratified_proportions_many_classes(mnist):
    _, _, X_te, y_te = mnist
    X = np.stack([np.arange(len(y_te)), y_te], axis=1)
    parts = pp.train_val_test_split(X, y_te, val=0.1, test=0.15, seed=1)
    _check_partition(parts, len(y_te))
    n_c = np.bincount(y_te, minlength=10)
    for y_part, frac in ((parts[3], 0.1), (parts[5], 0.15)):
        got = np.bincount(y_part, minlength=10) / n_c
        assert np.abs(got - frac).max() <= 1.0 / n_c.min()  # within one sample per class


def test_split_seeded_unstratified_and_shapes():
    rng = np.random.default_rng(0)
    X, y = rng.random((100, 3, 4)), rng.integers(0, 3, 100)
    a = pp.train_val_test_split(X, y, seed=7)
    b = pp.train_val_test_split(X, y, seed=7)
    c = pp.train_val_test_split(X, y, seed=8)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[1], c[1])
    flat = pp.train_val_test_split(X, y, val=0.0, test=0.3, stratify=False)
    assert [len(p) for p in flat] == [70, 70, 0, 0, 30, 30]
    assert flat[2].shape == (0, 3, 4)


@pytest.mark.parametrize("kwargs, msg", [
    ({"val": -0.1}, r"expected val to be a fraction in \[0, 1\), got -0.1"),
    ({"test": 1.0}, r"expected test to be a fraction in \[0, 1\), got 1.0"),
    ({"val": 0.5, "test": 0.5}, "expected val \\+ test < 1"),
])
def test_split_validates_fractions(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        pp.train_val_test_split(np.zeros((10, 2)), np.zeros(10, int), **kwargs)


def test_split_stratify_needs_label_vector():
    with pytest.raises(ValueError, match="stratify=False"):
        pp.train_val_test_split(np.zeros((10, 2)), np.zeros((10, 3)))
    with pytest.raises(ValueError, match="expected y with 10 entries"):
        pp.train_val_test_split(np.zeros((10, 2)), np.zeros(8))
