"""Input checks shared by the public entry points: "expected ..., got ..."."""
import numbers

import numpy as np
from numba import njit

DTYPES = {"float32": np.float32, "float64": np.float64}
REAL_KINDS = "biuf"  # bool, ints, floats: not complex, not timedelta (a NumPy "number"), not object


def check_dtype(dtype):
    try:
        key = np.dtype(dtype).name if not isinstance(dtype, str) and dtype in (np.float32, np.float64) else dtype
        known = key in DTYPES
    except TypeError:  # unhashable or not a dtype at all
        known = False
    if not known:
        raise ValueError(f"expected dtype 'float32' or 'float64', got {dtype!r}")
    return DTYPES[key]


@njit(cache=True, nogil=True)
def _all_finite(flat):
    # no temporary boolean array the size of X, and it stops at the first NaN
    for i in range(flat.size):
        if not np.isfinite(flat[i]):
            return False
    return True


@njit(cache=True, nogil=True)
def _all_within(flat, limit):
    # finite and |x| <= limit: converts to a narrower float without overflowing to Inf
    for i in range(flat.size):
        if not abs(flat[i]) <= limit:
            return False
    return True


def check_fits_dtype(X, dtype, what="X"):
    """ValueError when float values of ``X`` would overflow to Inf in ``dtype`` (float64 -> float32)."""
    if not np.issubdtype(X.dtype, np.floating) or np.finfo(X.dtype).max <= np.finfo(dtype).max:
        return X
    limit = float(np.finfo(dtype).max)
    flat = X.reshape(-1) if X.flags.c_contiguous else np.ravel(X, order="K")
    ok = _all_within(flat, limit) if X.dtype == np.float64 else bool(np.all(np.abs(flat) <= limit))
    if not ok:
        big = float(np.max(np.abs(flat)))
        raise ValueError(f"expected values of {what} within the {np.dtype(dtype).name} range "
                         f"(|x| <= {limit:.4g}), got values up to {big:.4g}")
    return X


def all_finite(X):
    if not np.issubdtype(X.dtype, np.floating):
        return True
    if X.dtype not in (np.float32, np.float64):
        return bool(np.all(np.isfinite(X)))
    return _all_finite(X.reshape(-1) if X.flags.c_contiguous else np.ravel(X, order="K"))


def check_features(X, input_shape, what="X", values=True):
    """A host array of per-sample shape ``input_shape``, numeric, non-empty, finite.

    Flat input to a layer that wants images (or the reverse) is reshaped
    when the sizes agree, as Keras users expect from a Flatten-first model."""
    if hasattr(X, "get") and not isinstance(X, np.ndarray) and hasattr(X, "__cuda_array_interface__"):
        X = X.get()
    try:
        X = np.asarray(X)
    except Exception as e:
        raise TypeError(f"expected {what} as an array-like of numbers, got {type(X).__name__}: {e}") from e
    if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool) or X.dtype.kind == "m":
        raise TypeError(f"expected {what} with a numeric dtype, got dtype {X.dtype}")
    if np.iscomplexobj(X):
        raise TypeError(f"expected {what} with a real dtype, got {X.dtype}")
    expected = "..." if input_shape is None else ", ".join(map(str, input_shape))
    if X.ndim < 2:
        raise ValueError(f"expected {what} of shape (N, {expected}), got {X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"expected a non-empty {what}, got {X.shape[0]} samples")
    if input_shape is not None and X.shape[1:] != tuple(input_shape):
        if int(np.prod(X.shape[1:])) == int(np.prod(input_shape)) and (X.ndim == 2 or len(input_shape) == 1):
            X = X.reshape((X.shape[0],) + tuple(input_shape))
        else:
            raise ValueError(f"expected {what} of shape (N, {', '.join(map(str, input_shape))}), "
                             f"got {X.shape}")
    if values and not all_finite(X):
        raise ValueError(f"expected finite values in {what}, got NaN or Inf")
    return X


def check_same_length(X, y, what="y"):
    ny = np.shape(y)[0] if np.ndim(y) else None
    if ny != X.shape[0]:
        raise ValueError(f"expected {what} with {X.shape[0]} samples (len(X)), got "
                         f"{'a scalar' if ny is None else ny}")


def check_batch_size(batch_size):
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"expected batch_size to be an int >= 1 or None (full batch), got {batch_size!r}")
    return int(batch_size)


def check_count(name, value, minimum=0):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"expected {name} to be an int >= {minimum}, got {value!r}")
    return int(value)
