"""fastmlp.sklearn against scikit-learn: its estimator checks, its tools, and its own MLP.

The parity tests train fastmlp's and scikit-learn's estimators from the same
random_state (the same initial weights), without shuffling, in float64, and
compare the weights and loss curves: the same loss, gradient, L2 term and
update rule give the same numbers up to rounding.
"""
import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn", reason='the estimator tests need scikit-learn: pip install "fastmlp[sklearn]"')

import joblib  # noqa: E402  (scikit-learn's dependency)
from sklearn import neural_network  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastmlp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402


def expected_failed_checks(estimator):
    """Checks that cannot pass, with the reason (docs/sklearn_onnx.md lists them): none."""
    return {}


@parametrize_with_checks([MLPClassifier(), MLPRegressor()], expected_failed_checks=expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


# ---------------------------------------------------------------------- data

@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=3.0, size=(3, 5))
    y = np.repeat(np.arange(3), 40)
    X = centers[y] + rng.normal(size=(120, 5))
    return X, y


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, stratify=y, random_state=0)


def _targets(kind, X):
    if kind == "multiclass":
        return np.digitize(X[:, 0] + X[:, 1], [-1.0, 1.0])
    if kind == "binary":
        return np.where(X[:, 0] - X[:, 2] > 0, "yes", "no")
    if kind == "multilabel":
        return np.stack([X[:, 0] > 0, X[:, 1] + X[:, 3] > 0, X[:, 2] < 0.5], axis=1).astype(int)
    return np.stack([X[:, 0] * 2 + X[:, 1], np.sin(X[:, 2])], axis=1)   # regression, 2 outputs


# ---------------------------------------------------------------------- parity with scikit-learn

PARITY = [
    ("multiclass", dict(solver="sgd", momentum=0.0, learning_rate_init=0.1)),
    ("binary", dict(solver="sgd", momentum=0.9, nesterovs_momentum=True, learning_rate_init=0.05)),
    ("multilabel", dict(solver="sgd", momentum=0.9, nesterovs_momentum=False, learning_rate_init=0.05,
                        activation="tanh")),
    ("regression", dict(solver="sgd", momentum=0.5, learning_rate="invscaling", power_t=0.3,
                        learning_rate_init=0.05, activation="logistic")),
    ("multiclass", dict(solver="adam", learning_rate_init=0.01, activation="identity")),
]


@pytest.mark.parametrize("kind,params", PARITY, ids=[f"{k}-{p['solver']}-{i}" for i, (k, p) in enumerate(PARITY)])
def test_same_weights_and_loss_as_sklearn(kind, params):
    # batch 20 divides 80: scikit-learn's per-batch L2 term is fastmlp's l2 = alpha / (2 * 20)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 4))
    y = _targets(kind, X)
    common = dict(hidden_layer_sizes=(7, 5), alpha=0.01, batch_size=20, max_iter=4, shuffle=False,
                  random_state=3, tol=0.0, **params)
    Ours, Theirs = (MLPRegressor, neural_network.MLPRegressor) if kind == "regression" else \
        (MLPClassifier, neural_network.MLPClassifier)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = Ours(**common).fit(X, y)
        theirs = Theirs(**common).fit(X, y)
    err = max(np.max(np.abs(a - b)) for a, b in zip(ours.coefs_ + ours.intercepts_,
                                                     theirs.coefs_ + theirs.intercepts_))
    tol = 1e-12
    print(f"{kind}: max |weights - sklearn's| = {err:.2e}; loss curves {ours.loss_curve_} vs {theirs.loss_curve_}")
    assert err <= tol
    assert ours.out_activation_ == theirs.out_activation_ and ours.n_outputs_ == theirs.n_outputs_
    # loss_ counts the L2 term with the epoch's first weights (scikit-learn: each batch's)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=2e-3)
    if kind == "regression":
        np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-10)
    else:
        np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))


def test_full_batch_loss_equals_sklearn_exactly(blobs):
    # one batch per epoch: the L2 term uses the same weights in both, so loss_ is the same
    X, y = blobs
    common = dict(hidden_layer_sizes=(6,), alpha=0.5, batch_size=120, max_iter=3, shuffle=False,
                  random_state=0, solver="sgd", momentum=0.0, learning_rate_init=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours, theirs = MLPClassifier(**common).fit(X, y), neural_network.MLPClassifier(**common).fit(X, y)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)


def test_load_digits_accuracy_comparable_to_sklearn(digits):
    Xtr, Xte, ytr, yte = digits
    params = dict(hidden_layer_sizes=(64,), max_iter=30, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPClassifier(**params).fit(Xtr, ytr).score(Xte, yte)
        theirs = neural_network.MLPClassifier(**params).fit(Xtr, ytr).score(Xte, yte)
    print(f"load_digits test accuracy: fastmlp {ours:.4f}, scikit-learn {theirs:.4f}")
    assert ours > 0.92 and abs(ours - theirs) <= 0.015


# ---------------------------------------------------------------------- targets and attributes

@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel"])
def test_label_kinds(kind):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(90, 4))
    y = _targets(kind, X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=150, random_state=0, learning_rate_init=0.01).fit(X, y)
    proba = clf.predict_proba(X)
    pred = clf.predict(X)
    assert pred.shape == y.shape and pred.dtype == y.dtype
    assert clf.score(X, y) > 0.85
    if kind == "multilabel":
        assert proba.shape == y.shape and clf.out_activation_ == "logistic"
        np.testing.assert_array_equal(pred, (proba > 0.5).astype(int))
    else:
        assert proba.shape == (90, len(clf.classes_))
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
        np.testing.assert_array_equal(pred, clf.classes_[np.argmax(proba, axis=1)])
        np.testing.assert_allclose(clf.predict_log_proba(X), np.log(proba))
    if kind == "binary":
        assert list(clf.classes_) == ["no", "yes"] and clf.n_outputs_ == 1 and clf.out_activation_ == "logistic"
    if kind == "multiclass":
        assert clf.n_outputs_ == 3 and clf.out_activation_ == "softmax"


def test_fitted_attributes(blobs):
    X, y = blobs
    clf = MLPClassifier(hidden_layer_sizes=(8, 4), max_iter=500, random_state=0, tol=1e-3).fit(X, y)
    assert [c.shape for c in clf.coefs_] == [(5, 8), (8, 4), (4, 3)]
    assert [b.shape for b in clf.intercepts_] == [(8,), (4,), (3,)]
    assert clf.n_layers_ == 4 and clf.n_outputs_ == 3 and clf.n_features_in_ == 5
    assert clf.n_iter_ < 500 and len(clf.loss_curve_) == clf.n_iter_ and clf.t_ == 120 * clf.n_iter_
    assert clf.loss_ == clf.loss_curve_[-1] and clf.best_loss_ == min(clf.loss_curve_)
    assert clf.validation_scores_ is None and clf.best_validation_score_ is None
    assert not hasattr(clf, "feature_names_in_")
    np.testing.assert_array_equal(clf.classes_, [0, 1, 2])


def test_early_stopping_keeps_the_best_weights(blobs):
    X, y = blobs
    clf = MLPClassifier(hidden_layer_sizes=(8,), early_stopping=True, validation_fraction=0.25, max_iter=300,
                        n_iter_no_change=5, random_state=0).fit(X, y)
    assert clf.best_loss_ is None and len(clf.validation_scores_) == clf.n_iter_ < 300
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping=True"):
        clf.partial_fit(X, y)


def test_feature_names_from_a_dataframe(blobs):
    pd = pytest.importorskip("pandas", reason="feature_names_in_ needs a pandas DataFrame")
    X, y = blobs
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(5)])
    reg = MLPRegressor(hidden_layer_sizes=(4,), max_iter=20, random_state=0)
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(20\) reached"):
        reg.fit(df, X[:, 0])
    np.testing.assert_array_equal(reg.feature_names_in_, df.columns)
    assert reg.predict(df).shape == (120,)


def test_dtypes(blobs):
    X, y = blobs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        f32 = MLPClassifier(hidden_layer_sizes=(4,), max_iter=5, random_state=0).fit(X.astype(np.float32), y)
        f64 = MLPClassifier(hidden_layer_sizes=(4,), max_iter=5, random_state=0, dtype="float64").fit(
            X.astype(np.float32), y)
    assert f32.coefs_[0].dtype == np.float32 and f32.predict_proba(X).dtype == np.float32
    assert f64.coefs_[0].dtype == np.float64


def test_bad_parameters_are_refused_before_fitting(blobs):
    X, y = blobs
    for params, match in ((dict(solver="lbfgs"), "expected solver 'adam' or 'sgd', got 'lbfgs'"),
                          (dict(solver="newton"), "'solver' parameter of MLPClassifier must be"),
                          (dict(dtype="float16"), "'dtype' parameter of MLPClassifier must be None or"),
                          (dict(hidden_layer_sizes=(3, 0)), "hidden_layer_sizes must be > 0")):
        clf = MLPClassifier(**params)
        with pytest.raises(ValueError, match=match):
            clf.fit(X, y)
        assert not hasattr(clf, "coefs_")
    with pytest.raises(ValueError, match="`y` has classes not in `self.classes_`"):
        MLPClassifier(max_iter=1).partial_fit(X, y, classes=[0, 1, 2]).partial_fit(X, y + 5)


# ---------------------------------------------------------------------- training rules

def test_convergence_warning_and_tol_stop(blobs):
    X, y = blobs
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(3\) reached"):
        MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0).fit(X, y)
    params = dict(hidden_layer_sizes=(4,), max_iter=1000, tol=0.05, n_iter_no_change=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf = MLPClassifier(**params).fit(X, y)
        theirs = neural_network.MLPClassifier(**params).fit(X, y)
    # stops once the loss improved by less than tol in more than n_iter_no_change epochs in a row
    print("epochs:", clf.n_iter_, "scikit-learn's:", theirs.n_iter_)
    assert clf.n_iter_ == theirs.n_iter_ < 1000


def test_partial_fit_over_batches_equals_one_epoch_of_fit(blobs):
    X, y = blobs
    params = dict(hidden_layer_sizes=(10,), batch_size=30, shuffle=False, random_state=4, alpha=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        full = MLPClassifier(max_iter=1, **params).fit(X, y)
    part = MLPClassifier(**params)
    for start in range(0, 120, 30):
        part.partial_fit(X[start:start + 30], y[start:start + 30], classes=[0, 1, 2])
    err = max(np.max(np.abs(a - b)) for a, b in zip(full.coefs_ + full.intercepts_, part.coefs_ + part.intercepts_))
    print(f"max |fit - partial_fit| = {err:.2e}")
    assert err <= 1e-12
    assert part.n_iter_ == 1 and part.t_ == 120 and len(part.loss_curve_) == 4


def test_warm_start_continues(blobs):
    X, y = blobs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(6,), max_iter=5, warm_start=True, random_state=0).fit(X, y)
        first = [c.copy() for c in clf.coefs_]
        clf.fit(X, y)
        cold = MLPClassifier(hidden_layer_sizes=(6,), max_iter=5, random_state=0).fit(X, y)
    assert len(clf.loss_curve_) == 10 and clf.n_iter_ == 5 and clf.t_ == 1200
    assert clf.loss_curve_[-1] < cold.loss_curve_[-1]
    assert not np.allclose(first[0], clf.coefs_[0])


# ---------------------------------------------------------------------- scikit-learn's tools

@pytest.mark.slow   # n_jobs=2: two fresh worker processes import fastmlp (seconds each)
def test_grid_search_in_a_pipeline(blobs):
    X, y = blobs
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=40, random_state=0))
    grid = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(4,), (16,)],
                               "mlpclassifier__alpha": [1e-4, 1.0]}, cv=3, n_jobs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        grid.fit(X, y)
    assert len(grid.cv_results_["params"]) == 4 and np.all(np.isfinite(grid.cv_results_["mean_test_score"]))
    print("mean test scores:", grid.cv_results_["mean_test_score"])
    assert grid.best_score_ > 0.85 and grid.score(X, y) > 0.85


def test_cross_val_score_regressor():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(150, 3))
    y = X @ [1.0, -2.0, 0.5] + 0.1 * rng.normal(size=150)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(MLPRegressor(hidden_layer_sizes=(16,), max_iter=100, learning_rate_init=0.01,
                                              random_state=0), X, y, cv=3, n_jobs=2)
    print("R^2 per fold:", scores)
    assert scores.shape == (3,) and scores.min() > 0.9


def test_clone_pickle_and_joblib_round_trips(blobs, tmp_path):
    X, y = blobs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=10, random_state=0, solver="sgd").fit(X, y)
        twin = clone(clf).fit(X, y)
    assert clone(clf).get_params() == clf.get_params() and not hasattr(clone(clf), "coefs_")
    np.testing.assert_array_equal(twin.predict_proba(X), clf.predict_proba(X))
    back = pickle.loads(pickle.dumps(clf))
    joblib.dump(clf, tmp_path / "clf.joblib")
    loaded = joblib.load(tmp_path / "clf.joblib")
    for other in (back, loaded):
        np.testing.assert_array_equal(other.predict_proba(X), clf.predict_proba(X))
    # the optimizer state travels too: one more epoch gives the same weights
    clf.partial_fit(X, y)
    back.partial_fit(X, y)
    for a, b in zip(clf.coefs_, back.coefs_):
        np.testing.assert_array_equal(a, b)
