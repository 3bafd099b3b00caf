"""scikit-learn estimators on the fastmlp engine: ``MLPClassifier`` and ``MLPRegressor``.

Drop-in replacements for ``sklearn.neural_network``'s: the same parameters,
defaults, fitted attributes and methods, trained by a ``fastmlp.Sequential``
(Dense layers, the hidden activation fused into each, Adam or SGD) with
scikit-learn's rules around it, per epoch, in a callback:

- initial weights drawn as scikit-learn draws them (Glorot uniform, biases
  too, from ``check_random_state(random_state)``, in the same order);
- the loss scikit-learn minimises: log loss (softmax for multi-class; sigmoid
  for binary and multi-label, summed over the labels), half the squared error
  for regression; its gradient is what scikit-learn's backprop computes;
- ``alpha`` as scikit-learn's L2 term ``0.5 * alpha * ||W||^2 / n_batch``,
  i.e. fastmlp's Keras-style ``l2 * sum(W^2)`` with ``l2 = alpha / (2 * batch_size)``.
  The one difference: when ``batch_size`` does not divide the number of
  samples, scikit-learn divides by the size of the last, smaller batch of each
  epoch; here that batch gets ``alpha * W / batch_size`` as its L2 gradient
  (a single fit call trains with one coefficient). ``loss_`` counts the L2
  term as scikit-learn does, but with the weights of the start of the epoch;
- ``tol`` / ``n_iter_no_change`` / ``early_stopping`` / ``validation_fraction``,
  the 'invscaling' and 'adaptive' learning rates of 'sgd', ``warm_start``
  (a new optimizer, as scikit-learn), ``partial_fit`` (one epoch, the
  optimizer kept), ``ConvergenceWarning`` at ``max_iter``: scikit-learn's rules.

The optimizers step as scikit-learn's: fastmlp's follow ``torch.optim``, so
Adam's epsilon is rescaled per step (scikit-learn adds it to ``sqrt(v)``,
torch to ``sqrt(v_hat)``) and SGD's momentum buffer (torch keeps it without
the learning rate) is rescaled whenever 'invscaling' or 'adaptive' changes the
rate. On the GPU the steps therefore run without CUDA-graph replay.

Extra parameters: ``device`` ("cpu", "cuda", "auto") and ``dtype`` (None:
as scikit-learn, float32 input trains in float32 and any other in float64;
or "float32" / "float64"). Not supported: the 'lbfgs' solver (``max_fun`` is
accepted for signature compatibility: scikit-learn reads it only for
'lbfgs'), ``sample_weight``, sparse input, the regressor's 'poisson' loss.

Needs scikit-learn (``pip install "fastmlp[sklearn]"``); imported only when
this module is.
"""
import math
import warnings
from numbers import Integral, Real

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state
    from sklearn.utils._param_validation import Interval, Options, StrOptions
    from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
    from sklearn.utils.validation import check_is_fitted, column_or_1d
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError('fastmlp.sklearn needs scikit-learn: pip install "fastmlp[sklearn]"') from e
try:
    from sklearn.utils.validation import validate_data
except ImportError:  # scikit-learn < 1.6: the estimator's own method
    def validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)

from .callbacks import Callback, NonFiniteLossError
from .layers import Dense, ReLU, Sigmoid, Tanh
from .losses import BinaryCrossEntropy, Loss, MeanSquaredError, SoftmaxCrossEntropy
from .model import Sequential
from .optimizers import SGD, Adam

HIDDEN = {"relu": ReLU, "tanh": Tanh, "logistic": Sigmoid, "identity": None}


class _SklearnLoss(Loss):
    """A fastmlp loss whose gradient is scaled to scikit-learn's (``grad_factor``) and whose
    reported mean, times ``loss_factor``, is scikit-learn's loss.

    fastmlp's BinaryCrossEntropy averages over the K outputs where scikit-learn sums
    (factor K), and MeanSquaredError is mean((out - t)^2) where scikit-learn minimises
    half of it with the gradient (out - t) / N (factor M / 2 on the gradient)."""

    def __init__(self, inner, grad_factor=1.0, loss_factor=1.0):
        self.inner, self.grad_factor, self.loss_factor = inner, float(grad_factor), float(loss_factor)
        self.name = inner.name

    def prepare(self, y, n_outputs, dtype):
        return self.inner.prepare(y, n_outputs, dtype)

    def forward_backward(self, be, dlogits, stats, logits, targets, scale, weights=None):
        self.inner.forward_backward(be, dlogits, stats, logits, targets, scale * self.grad_factor, weights)

    def probabilities(self, be, out, logits):
        self.inner.probabilities(be, out, logits)


class _SklearnAdam(Adam):
    """Adam with scikit-learn's epsilon, added to sqrt(v) where torch's rule (fastmlp's)
    adds it to sqrt(v_hat) = sqrt(v / (1 - beta2^t)): the same step with
    eps_t = epsilon / sqrt(1 - beta2^t) in torch's rule at step t."""

    def __init__(self, lr, beta1, beta2, epsilon):
        super().__init__(lr, beta1, beta2, epsilon)
        self.epsilon = epsilon

    def step(self, be, flat):
        self.eps = self.epsilon / math.sqrt(1.0 - self.beta2 ** (self.t + 1))
        super().step(be, flat)


def _loss_for(kind, n_outputs):
    if kind == "softmax":
        return _SklearnLoss(SoftmaxCrossEntropy())
    if kind == "logistic":
        return _SklearnLoss(BinaryCrossEntropy(), n_outputs, n_outputs)
    return _SklearnLoss(MeanSquaredError(), n_outputs / 2.0, 0.5)


def _set_l2(model, l2):
    """Every Dense weight W of ``model`` takes the Keras-style coefficient ``l2`` (biases none):
    the layers' ``l2`` and the per-segment coefficients the update kernels read
    (``flat.seg[3]``, fastmlp/params.py)."""
    values = []
    for spec in model.flat.specs:
        spec.l2 = l2 if spec.name == "W" else 0.0
        values.append(spec.l2)
    for layer in model.layers:
        if isinstance(layer, Dense):
            layer.l2 = l2
    model.flat.seg[3][...] = model.be.to_device(np.array(values, dtype=np.float64))


def _set_lr(model, lr):
    """A new learning rate for the next steps. fastmlp's SGD (torch's rule) keeps the momentum
    buffer v without the learning rate and steps by lr * v, where scikit-learn keeps lr * v:
    the buffer is rescaled by old / new lr so that the steps continue as scikit-learn's."""
    opt = model.optimizer
    if isinstance(opt, SGD) and opt.momentum > 0:
        buf = model.flat.state[0]   # the momentum buffer (SGD.state_names), fastmlp/params.py
        buf *= opt.lr / lr
    opt.lr = lr


class _EpochRules(Callback):
    """scikit-learn's end-of-epoch bookkeeping, run by ``Sequential.fit`` after each epoch:
    ``loss_`` / ``loss_curve_`` / ``n_iter_`` / ``t_``, the validation score, the
    no-improvement count and its stop, the 'sgd' learning-rate schedules."""

    def __init__(self, est, n, batch_size, val, incremental):
        self.est, self.n, self.b, self.val, self.incremental = est, n, batch_size, val, incremental
        # scikit-learn adds 0.5 alpha ||W||^2 / n_b per batch, weighted by n_b, over n:
        # n_batches / n times 0.5 alpha ||W||^2, i.e. (b * n_batches / n) times fastmlp's penalty
        self.reg_factor = batch_size * (-(-n // batch_size)) / n
        self.stopped = False

    def _penalty(self):
        flat = self.model.flat
        return flat.penalty() if flat.has_reg else 0.0

    def on_train_begin(self, logs=None):
        self.pen = self._penalty()

    def on_epoch_end(self, epoch, logs=None):
        est, model = self.est, self.model
        data = (logs["loss"] - self.pen) * model.loss.loss_factor
        est.loss_ = float(data + self.pen * self.reg_factor)
        est.n_iter_ += 1
        est.t_ += self.n
        est.loss_curve_.append(est.loss_)
        if est.verbose:
            print("Iteration %d, loss = %.8f" % (est.n_iter_, est.loss_))
        self._update_no_improvement_count()
        opt = model.optimizer
        if est.solver == "sgd" and est.learning_rate == "invscaling":
            _set_lr(model, float(est.learning_rate_init) / (est.t_ + 1) ** est.power_t)
        if est._no_improvement_count > est.n_iter_no_change:
            what = "Validation score" if est.early_stopping else "Training loss"
            msg = (f"{what} did not improve more than tol={est.tol:f} for "
                   f"{est.n_iter_no_change} consecutive epochs.")
            if est.solver == "sgd" and est.learning_rate == "adaptive" and opt.lr > 1e-6:
                _set_lr(model, opt.lr / 5.0)
                if est.verbose:
                    print(msg + " Setting learning rate to %f" % opt.lr)
                est._no_improvement_count = 0
            else:
                if est.verbose:
                    print(msg + (" Learning rate too small. Stopping." if est.learning_rate == "adaptive"
                                 and est.solver == "sgd" else " Stopping."))
                self.stopped = model.stop_training = True
        self.pen = self._penalty()

    def _update_no_improvement_count(self):
        est = self.est
        if est.early_stopping:
            X_val, y_val = self.val
            score = est._score_model(self.model, X_val, y_val)
            est.validation_scores_.append(score)
            if est.verbose:
                print("Validation score: %f" % score)
            if score < est.best_validation_score_ + est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                est._best_weights = self.model.get_weights()
        else:
            if est.loss_curve_[-1] > est.best_loss_ - est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if est.loss_curve_[-1] < est.best_loss_:
                est.best_loss_ = est.loss_curve_[-1]


class _BaseMLP(BaseEstimator):
    """What the classifier and the regressor share: parameters, fit, partial_fit, pickling."""

    _parameter_constraints = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions({"identity", "logistic", "tanh", "relu"})],
        "solver": [StrOptions({"sgd", "adam"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), Options(Real, {np.inf})],
        "max_fun": [Interval(Integral, 1, None, closed="left")],
        "device": [StrOptions({"cpu", "cuda", "auto"})],
        "dtype": [None, StrOptions({"float32", "float64"})],
    }

    def _set_params(self, params):
        for name, value in params.items():
            setattr(self, name, value)

    # ------------------------------------------------------------------ the engine
    def _hidden_sizes(self):
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if any(int(s) != s or s <= 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        return [int(s) for s in sizes]

    def _build(self, spec):
        """A new Sequential for ``spec`` (what fit recorded), with fastmlp's initial weights."""
        layers, width = [], spec["n_features"]
        act = HIDDEN[spec["activation"]]
        l2 = spec["alpha"] / 2.0   # a placeholder > 0 where alpha is (fit sets the per-batch value)
        for size in spec["hidden"]:
            layers.append(Dense(width, size, l2=l2))
            if act is not None:
                layers.append(act())
            width = size
        layers.append(Dense(width, spec["n_outputs"], l2=l2))
        if spec["solver"] == "adam":
            opt = _SklearnAdam(spec["lr"], spec["beta_1"], spec["beta_2"], spec["epsilon"])
        else:
            opt = SGD(spec["lr"], spec["momentum"], spec["nesterov"] and spec["momentum"] > 0)
        model = Sequential(layers, loss=_loss_for(spec["kind"], spec["n_outputs"]), optimizer=opt,
                           device=spec["device"], dtype=spec["dtype"], seed=spec["seed"])
        # Adam's epsilon changes every step, and SGD's rate between epochs: each step must
        # read them, so no step is replayed as a CUDA graph
        model.cuda_graphs = False
        return model

    def _solver_spec(self):
        return {"alpha": float(self.alpha), "solver": self.solver, "lr": float(self.learning_rate_init),
                "beta_1": float(self.beta_1), "beta_2": float(self.beta_2), "epsilon": float(self.epsilon),
                "momentum": float(self.momentum), "nesterov": bool(self.nesterovs_momentum),
                "schedule": self.learning_rate}

    def _new_model(self, n_features, n_outputs, kind, dtype, rs):
        """Record the architecture and build it; weights drawn as scikit-learn draws them."""
        hidden = self._hidden_sizes()
        spec = {"n_features": n_features, "n_outputs": n_outputs, "kind": kind, "hidden": hidden,
                "activation": self.activation, "device": self.device, "dtype": dtype, **self._solver_spec()}
        units = [n_features] + hidden + [n_outputs]
        factor = 2.0 if self.activation == "logistic" else 6.0
        weights = [[], []]
        for fan_in, fan_out in zip(units, units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            weights[0].append(rs.uniform(-bound, bound, (fan_in, fan_out)))
            weights[1].append(rs.uniform(-bound, bound, fan_out))
        spec["seed"] = int(rs.randint(np.iinfo(np.int32).max))
        model = self._build(spec)
        model.set_weights([w for pair in zip(*weights) for w in pair])
        model.flat.mark_restored()
        self._spec, self._model = spec, model
        self.n_layers_ = len(units)
        self.n_outputs_ = n_outputs
        self.coefs_, self.intercepts_ = weights[0], weights[1]
        self.n_iter_, self.t_ = 0, 0
        self.loss_curve_ = []
        self._no_improvement_count = 0
        self._best_weights = model.get_weights()
        if self.early_stopping:
            self.validation_scores_, self.best_validation_score_, self.best_loss_ = [], -np.inf, None
        else:
            self.validation_scores_, self.best_validation_score_, self.best_loss_ = None, None, np.inf

    def _get_model(self):
        """The fitted Sequential (rebuilt from the saved state after unpickling)."""
        if getattr(self, "_model", None) is None:
            self._model = self._restore(self._spec, self._model_state)
            self._model_state = None
        return self._model

    def __getstate__(self):
        state = dict(super().__getstate__())   # a copy: the live estimator keeps its model
        model = state.pop("_model", None)
        if model is not None:   # the Sequential holds locks and workspaces: kept as host arrays
            flat = model.flat
            state["_model_state"] = {
                "weights": model.get_weights(),
                "optimizer": [[np.array(model.be.to_host(v)) for v in flat.state_views(k)]
                              for k in range(len(model.optimizer.state_names))],
                "step": int(model.optimizer.t), "lr": float(model.optimizer.lr),
                "rng": model.rng.bit_generator.state}
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._model = None

    def _restore(self, spec, saved):
        model = self._build(spec)
        model.set_weights(saved["weights"])
        for k, arrays in enumerate(saved["optimizer"]):
            for view, a in zip(model.flat.state_views(k), arrays):
                view[...] = model.be.to_device(a, model.dtype)
        model.optimizer.load_state_dict({"step": saved["step"]})
        model.optimizer.lr = saved["lr"]
        model.rng.bit_generator.state = saved["rng"]
        model.flat.mark_restored()
        return model

    # ------------------------------------------------------------------ training
    def _dtype_for(self, X):
        if self.dtype is not None:
            return self.dtype
        return "float32" if X.dtype == np.float32 else "float64"

    def _fit(self, X, y, incremental):
        if isinstance(self.solver, str) and self.solver == "lbfgs":
            raise ValueError(f"{type(self).__name__}: expected solver 'adam' or 'sgd', got 'lbfgs' "
                             "(fastmlp trains by stochastic gradient steps; it has no L-BFGS solver)")
        self._validate_params()
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        self._hidden_sizes()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        targets, kind, n_outputs = self._targets(y)
        rs = check_random_state(self.random_state)
        dtype = self._dtype_for(X)
        if first_pass:
            self._new_model(X.shape[1], n_outputs, kind, dtype, rs)
        elif n_outputs != self.n_outputs_:
            raise ValueError(f"expected targets with {self.n_outputs_} output(s) as in the first fit, "
                             f"got {n_outputs}")
        model = self._get_model()
        if not first_pass and not incremental:
            # warm start: the weights kept, a new optimizer (as scikit-learn makes one per fit)
            self._spec = dict(self._spec, **self._solver_spec())
            model = self._model = self._build(self._spec)
            model.set_weights(self._weights_now())
            model.flat.mark_restored()
        val = None
        if self.early_stopping:
            # stratified for one output (binary), as scikit-learn; multi-class has K outputs there
            stratify = targets if kind == "logistic" and n_outputs == 1 else None
            X, X_val, targets, t_val = train_test_split(X, targets, random_state=rs,
                                                        test_size=self.validation_fraction, stratify=stratify)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                                 "or the size of your dataset.")
            val = (X_val, self._labels_of_targets(t_val))
        n = X.shape[0]
        if self.batch_size == "auto":
            b = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped")
            b = int(np.clip(self.batch_size, 1, n))
        if self._spec["alpha"]:
            _set_l2(model, self._spec["alpha"] / (2.0 * b))
        self.n_iter_ = 0
        rules = _EpochRules(self, n, b, val, incremental)
        try:
            model.fit(X, targets, epochs=1 if incremental else self.max_iter, batch_size=b,
                      shuffle=bool(self.shuffle), callbacks=[rules], verbose=0)
        except NonFiniteLossError as e:
            self._sync_weights()
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain "
                             f"large values and need to be preprocessed. ({e})") from e
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
        if not incremental and not rules.stopped and self.n_iter_ == self.max_iter:
            warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the optimization "
                          "hasn't converged yet." % self.max_iter, ConvergenceWarning)
        if self.early_stopping:
            model.set_weights(self._best_weights)
        self._sync_weights()
        return self

    def _weights_now(self):
        return [w for pair in zip(self.coefs_, self.intercepts_) for w in pair]

    def _sync_weights(self):
        weights = self._get_model().get_weights()
        self.coefs_, self.intercepts_ = weights[0::2], weights[1::2]

    def _outputs(self, X):
        """The last layer's activation (probabilities, or the regression outputs) for X."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        return self._get_model().predict(X)

    def fit(self, X, y):
        """Fit the model to data matrix X and target(s) y (``max_iter`` epochs at most).

        Returns self."""
        return self._fit(X, y, incremental=False)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier: ``sklearn.neural_network.MLPClassifier`` on fastmlp.

    Multi-class (softmax), binary (one sigmoid output) and multi-label (one sigmoid
    per label) targets, any labels ``LabelBinarizer`` takes (strings too), as
    scikit-learn. Parameters, fitted attributes and methods as scikit-learn's
    (see this module's docstring for what differs), plus ``device`` and ``dtype``."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 device="cpu", dtype=None):
        self._set_params({k: v for k, v in locals().items() if k not in ("self", "__class__")})

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, multi_output=True, dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same classes as in the "
                                     f"previous call to fit. Previously got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                                 f"'y' has {classes}.")
        return X, y

    def _targets(self, y):
        """(fastmlp targets, output kind, outputs) of labels y."""
        Y = self._label_binarizer.transform(y)
        if self._label_binarizer.y_type_ == "multiclass":
            self.out_activation_ = "softmax"
            return np.argmax(Y, axis=1).astype(np.int64), "softmax", Y.shape[1]
        self.out_activation_ = "logistic"
        return Y.astype(np.float64), "logistic", Y.shape[1]

    def _labels_of_targets(self, t):
        if self.out_activation_ == "softmax":
            return self.classes_[t]
        return self._label_binarizer.inverse_transform(t if t.shape[1] > 1 else t.ravel())

    def _labels_of_outputs(self, p):
        return self._label_binarizer.inverse_transform(p.ravel() if p.shape[1] == 1 else p)

    def _score_model(self, model, X, y):
        p = model.predict(X)
        if not np.isfinite(p).all():
            return np.nan
        return accuracy_score(y, self._labels_of_outputs(p))

    def partial_fit(self, X, y, classes=None):
        """Update the model with one epoch over the given data; ``classes`` (all the labels)
        is required in the first call, except for multi-label targets. Returns self."""
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, incremental=True)

    def predict(self, X):
        """The predicted classes, (N,) (or (N, n_labels) for multi-label targets)."""
        return self._labels_of_outputs(self._outputs(X))

    def predict_proba(self, X):
        """The probability of each class, (N, n_classes) in ``classes_`` order."""
        p = self._outputs(X)
        if p.shape[1] == 1:
            p = p.ravel()
            return np.vstack([1 - p, p]).T
        return p

    def predict_log_proba(self, X):
        """log(predict_proba(X))."""
        p = self.predict_proba(X)
        return np.log(p, out=p)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _more_tags(self):   # scikit-learn < 1.6
        return {"multilabel": True}


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor: ``sklearn.neural_network.MLPRegressor`` on fastmlp.

    Minimises half the squared error (``loss="squared_error"``, the only loss);
    one or several outputs. Parameters, fitted attributes and methods as
    scikit-learn's (see this module's docstring for what differs), plus
    ``device`` and ``dtype``."""

    _parameter_constraints = {**_BaseMLP._parameter_constraints, "loss": [StrOptions({"squared_error"})]}

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001,
                 power_t=0.5, max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 max_fun=15000, device="cpu", dtype=None):
        self._set_params({k: v for k, v in locals().items() if k not in ("self", "__class__")})

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=(np.float64, np.float32),
                             reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def _targets(self, y):
        self.out_activation_ = "identity"
        Y = np.asarray(y, dtype=np.float64)
        Y = Y.reshape(-1, 1) if Y.ndim == 1 else Y
        return Y, "identity", Y.shape[1]

    def _labels_of_targets(self, t):
        return t

    def _score_model(self, model, X, y):
        p = model.predict(X)
        if not np.isfinite(p).all():
            return np.nan
        return r2_score(y, p.ravel() if p.shape[1] == 1 else p)

    def partial_fit(self, X, y):
        """Update the model with one epoch over the given data. Returns self."""
        return self._fit(X, y, incremental=True)

    def predict(self, X):
        """The predicted values, (N,) for one output, else (N, n_outputs)."""
        p = self._outputs(X)
        return p.ravel() if p.shape[1] == 1 else p
