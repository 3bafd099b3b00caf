"""Transforming arrays once loaded: scaling, one-hot labels, standardising, splitting.

Nothing here reads files (that is :mod:`fastmlp.data`) and nothing keeps
hidden global state: statistics live in a :class:`Standardizer` fitted on the
training split only, so validation and test data never leak into them.

Shape vocabulary: N samples, D features (or any trailing sample shape), C classes.
"""
import numpy as np


def _as_array(X, name="X"):
    X = np.asarray(X)
    if X.dtype == object:
        raise TypeError(f"expected a numeric array for {name}, got dtype object")
    return X


def _check_finite(X, name="X"):
    if np.issubdtype(X.dtype, np.floating) and not np.isfinite(X).all():
        bad = int(np.size(X) - np.count_nonzero(np.isfinite(X)))
        raise ValueError(f"expected finite values in {name}, got {bad} NaN or inf")


def _check_same_length(X, y):
    if X.ndim == 0 or y.ndim == 0:
        raise ValueError(f"expected X and y with a leading N axis, got shapes {X.shape} and {y.shape}")
    if len(X) != len(y):
        raise ValueError(f"expected y with {len(X)} entries (one per row of X {X.shape}), got {len(y)}")


def scale_to_unit(X):
    """uint8 pixels to float32 in [0, 1]; float arrays pass through once checked finite.

    float32, not float64: it is the model's default dtype, and converting once
    here avoids a second copy of the data set at fit time."""
    X = _as_array(X)
    if X.dtype == np.uint8:
        return X.astype(np.float32) * np.float32(1.0 / 255.0)
    if np.issubdtype(X.dtype, np.floating):
        _check_finite(X)
        return X
    raise TypeError(f"expected uint8 or floating-point X, got dtype {X.dtype}")


RAW_PIXEL_ROWS = 64    # rows of X that looks_like_raw_pixels reads (one max over them for scaled data)


def looks_like_raw_pixels(X):
    """Whether X looks like unscaled 8-bit pixels: uint8 with a value above 1, or any other
    real dtype whose values (in the first RAW_PIXEL_ROWS rows) are all whole numbers in
    0..255 with a maximum above 1.5. 0/1 masks and data already in [0, 1] do not count.
    Reads a NumPy array or an on-disk array (h5py.Dataset: its first rows); anything else
    (a device array, a list) is not inspected and gives False."""
    if isinstance(X, np.ndarray):
        if X.ndim == 0:   # not data: fit's own checks say so
            return False
        rows = X[:RAW_PIXEL_ROWS]
    elif all(hasattr(X, a) for a in ("shape", "dtype", "__getitem__")) and len(X.shape) >= 1 \
            and not hasattr(X, "__cuda_array_interface__") and not hasattr(X, "__array_interface__"):
        try:
            rows = np.asarray(X[:min(RAW_PIXEL_ROWS, int(X.shape[0]))])
        except (TypeError, ValueError, IndexError):
            return False
    else:
        return False
    if rows.size == 0 or rows.dtype.kind not in "uif":
        return False
    top = rows.max()
    if not top > 1.5 or top > 255 or rows.min() < 0:
        return False
    return rows.dtype == np.uint8 or rows.dtype.kind in "ui" or bool(np.all(rows == np.floor(rows)))


def raw_pixel_warning(what="X"):
    """The message of fit's warning for inputs that ``looks_like_raw_pixels``."""
    return (f"{what} looks like raw 0..255 pixels (whole numbers up to 255); networks train badly on "
            "them: scale to [0, 1] first with X = fastmlp.scale_to_unit(X) (uint8) or X / 255.0, and "
            "predict on data scaled the same way")


def _integer_labels(y, name="y"):
    # Labels read from CSV or MATLAB files are often float; accept them when exact.
    y = _as_array(y, name)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"expected {name} of shape (N,) or (N, 1), got {y.shape}")
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or np.any(y != np.round(y)):
            raise ValueError(f"expected integer class labels in {name}, got non-integer values")
        return y.astype(np.int64)
    raise TypeError(f"expected integer class labels in {name}, got dtype {y.dtype}")


def one_hot(y, num_classes=None):
    """Integer labels ``(N,)`` to float32 one-hot rows ``(N, C)``.

    ``num_classes`` defaults to ``max(y) + 1``; pass it when a split might
    miss the last class, or the columns would not line up with the model's."""
    y = _integer_labels(y)
    if num_classes is None:
        if len(y) == 0:
            raise ValueError("expected num_classes for empty labels, got None")
        num_classes = int(y.max()) + 1
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"expected num_classes to be a positive int, got {num_classes!r}")
    if len(y) and y.min() < 0:
        raise ValueError(f"expected labels >= 0, got {y.min()}")
    if len(y) and y.max() >= num_classes:
        raise ValueError(f"expected labels < num_classes={num_classes}, got {y.max()}")
    out = np.zeros((len(y), int(num_classes)), dtype=np.float32)
    out[np.arange(len(y)), y] = 1.0
    return out


class Standardizer:
    """Zero mean, unit variance, with statistics from the data given to ``fit``.

    ``mode="global"``: one mean and std over every value (keeps the relative
    contrast of pixels, the usual choice for images). ``mode="feature"``: one
    per feature, over the N axis. Features whose std is below ``eps`` (the
    always-black border of MNIST) get ``std_ = 1``: they are centred, not
    divided by ~0, which would blow up any test image that differs there.
    """

    def __init__(self, mode="global", eps=1e-8):
        if mode not in ("global", "feature"):
            raise ValueError(f"expected mode 'global' or 'feature', got {mode!r}")
        if not (isinstance(eps, (int, float, np.floating)) and np.isfinite(eps) and eps >= 0):
            raise ValueError(f"expected eps >= 0, got {eps!r}")
        self.mode, self.eps = mode, float(eps)
        self.mean_ = self.std_ = None

    def fit(self, X):
        X = _as_array(X)
        if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
            raise TypeError(f"expected a numeric X, got dtype {X.dtype}")
        if X.ndim < 1 or len(X) == 0:
            raise ValueError(f"expected X with at least one sample, got shape {X.shape}")
        _check_finite(X)
        # float64 accumulation: a float32 sum over millions of pixels loses digits.
        if self.mode == "global":
            mean, std = float(X.mean(dtype=np.float64)), float(X.std(dtype=np.float64))
            self.mean_, self.std_ = mean, (std if std >= self.eps else 1.0)
        else:
            mean, std = X.mean(axis=0, dtype=np.float64), X.std(axis=0, dtype=np.float64)
            self.mean_, self.std_ = mean, np.where(std >= self.eps, std, 1.0)
        return self

    def transform(self, X):
        if self.mean_ is None:
            raise ValueError("expected a fitted Standardizer, got one never fitted: "
                             "call fit(X_train) first")
        X = _as_array(X)
        if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
            raise TypeError(f"expected a numeric X, got dtype {X.dtype}")
        if self.mode == "feature" and X.shape[1:] != np.shape(self.mean_):
            raise ValueError(f"expected samples of shape {np.shape(self.mean_)} (as fitted), "
                             f"got X of shape {X.shape}")
        _check_finite(X)
        dtype = X.dtype if np.issubdtype(X.dtype, np.floating) else np.float32
        mean, std = np.asarray(self.mean_, dtype=dtype), np.asarray(self.std_, dtype=dtype)
        return (X - mean) / std

    def fit_transform(self, X):
        return self.fit(X).transform(X)

    def to_dict(self):
        """Plain floats and arrays, so a model file can store the preprocessing it needs."""
        if self.mean_ is None:
            raise ValueError("expected a fitted Standardizer, got one never fitted")
        copy = (lambda v: v) if self.mode == "global" else np.array
        return {"mode": self.mode, "eps": self.eps, "mean": copy(self.mean_), "std": copy(self.std_)}

    @classmethod
    def from_dict(cls, d):
        missing = {"mode", "eps", "mean", "std"} - set(d)
        if missing:
            raise ValueError(f"expected keys mode, eps, mean, std, got {sorted(d)}")
        s = cls(mode=str(d["mode"]), eps=float(d["eps"]))
        if s.mode == "global":
            s.mean_, s.std_ = float(d["mean"]), float(d["std"])
        else:
            s.mean_, s.std_ = np.asarray(d["mean"], np.float64), np.asarray(d["std"], np.float64)
            if s.mean_.shape != s.std_.shape:
                raise ValueError(f"expected mean and std of one shape, "
                                 f"got {s.mean_.shape} and {s.std_.shape}")
        return s

    def __repr__(self):
        return f"Standardizer(mode={self.mode!r}, eps={self.eps!r})"


def standardize_samples(X, eps=1e-3):
    """Each sample to zero mean and unit variance over its own values (Keras's
    ``samplewise_center`` with ``samplewise_std_normalization``): a photo's brightness
    and contrast are taken out, and no statistic crosses from one sample to another,
    so nothing is fitted. float32 ``(N, ...)``; ``eps`` keeps a flat sample finite."""
    X = _as_array(X)
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)) or X.ndim < 2:
        raise ValueError(f"expected numeric samples of shape (N, ...), got shape {X.shape} dtype {X.dtype}")
    _check_finite(X)
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"expected eps > 0, got {eps!r}")
    flat = X.reshape(len(X), -1).astype(np.float32)
    mean = flat.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    std = flat.std(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    return ((flat - mean) / (std + np.float32(eps))).reshape(X.shape)


def shuffle(X, y, seed=0):
    """``(X, y)`` permuted together by ``np.random.default_rng(seed)``; new arrays."""
    X, y = _as_array(X), _as_array(y, "y")
    _check_same_length(X, y)
    order = np.random.default_rng(seed).permutation(len(X))
    return X[order], y[order]


def _check_fraction(value, name):
    if not isinstance(value, (int, float, np.floating)) or not 0 <= value < 1:
        raise ValueError(f"expected {name} to be a fraction in [0, 1), got {value!r}")
    return float(value)


def train_val_test_split(X, y, val=0.1, test=0.1, stratify=True, seed=0):
    """``(X_tr, y_tr, X_val, y_val, X_te, y_te)``, stratified per class by default.

    With stratification each class is split in the given proportions, so a
    small test set (50 cat images) keeps the class balance of the whole.
    Sizes are rounded cumulatively per class, so ``val + test < 1`` always
    leaves the training split its share. Each split comes back shuffled."""
    X, y = _as_array(X), _as_array(y, "y")
    _check_same_length(X, y)
    val, test = _check_fraction(val, "val"), _check_fraction(test, "test")
    if val + test >= 1:
        raise ValueError(f"expected val + test < 1 to leave training data, got {val} + {test}")
    rng = np.random.default_rng(seed)
    if stratify:
        if y.ndim != 1:
            raise ValueError(f"expected labels of shape (N,) to stratify, got {y.shape}; "
                             "pass stratify=False")
        groups = [np.flatnonzero(y == c) for c in np.unique(y)]
    else:
        groups = [np.arange(len(y))]
    parts = {"train": [], "val": [], "test": []}
    for idx in groups:
        idx = rng.permutation(idx)
        n_test = int(np.floor(test * len(idx) + 0.5))
        n_held = int(np.floor((test + val) * len(idx) + 0.5))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_held])
        parts["train"].append(idx[n_held:])
    out = []
    for name in ("train", "val", "test"):
        idx = rng.permutation(np.concatenate(parts[name]).astype(np.intp))
        out += [X[idx], y[idx]]
    return tuple(out)
