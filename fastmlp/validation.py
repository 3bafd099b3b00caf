"""Input checks shared by the public entry points: "expected ..., got ..."."""
import math
import numbers
import warnings

import numpy as np
from numba import njit

from .backend.cpu import jit as _jit
from .backend.cpu.jit import any_nonfinite, cast_like, nonfinite_bits

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
    # the largest jit.nonfinite_bits of each chunk of 4,096 values (an integer max LLVM
    # vectorises: a 32 x 784 float32 batch in 1.9 against 3.9-4.5 us OR-ing the NaN tests of
    # x - x, 21 us testing and returning value by value); no temporary array the size of X,
    # and it stops after the chunk of the first NaN or Inf
    n = flat.size
    for lo in range(0, n, 4096):
        chunk = flat[lo:min(n, lo + 4096)]
        seen = nonfinite_bits(cast_like(0.0, chunk))
        for i in range(chunk.size):
            seen = max(seen, nonfinite_bits(chunk[i]))
        if any_nonfinite(seen, chunk):
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


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def all_finite(X):
    if X.dtype in _FLOATS and X.flags.c_contiguous:     # the usual case, checked first
        return _all_finite(X.reshape(-1))
    if not np.issubdtype(X.dtype, np.floating):
        return True
    if X.dtype not in _FLOATS:
        return bool(np.all(np.isfinite(X)))
    return _all_finite(np.ravel(X, order="K"))


def warn_flat_images(shape, input_shape, what="X"):
    """A UserWarning when flat rows ``shape`` (N, F) go to a model that takes (N, C, H, W)
    images with C > 1: they are read as channels-first, but channels-last rows (N, H*W*C, the
    layout of load_h5 and load_image_folder) have the same size. One channel reads the same
    either way: no warning."""
    if len(shape) != 2 or input_shape is None or len(input_shape) != 3 or input_shape[0] == 1:
        return
    c, h, w = input_shape
    warnings.warn(f"{what} of shape (N, {shape[1]}) is read as channels-first images (N, {c}, {h}, {w}), "
                  f"the layout of the model's input; rows flattened from channels-last images "
                  f"(N, {h}, {w}, {c}) would be scrambled: pass {what}.reshape(N, {h}, {w}, {c})"
                  f".transpose(0, 3, 1, 2) for those, or {what}.reshape(N, {c}, {h}, {w}) to state the "
                  f"channels-first layout (no warning)", UserWarning, stacklevel=4)


def check_features(X, input_shape, what="X", values=True):
    """A host array of per-sample shape ``input_shape``, numeric, non-empty, finite.

    Flat input to a layer that wants images (or the reverse) is reshaped
    when the sizes agree, as Keras users expect from a Flatten-first model;
    flat rows of images with several channels are read channels-first, with a
    warning (``warn_flat_images``)."""
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
            if X.ndim == 2:
                warn_flat_images(X.shape, input_shape, what)
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


# Python and NumPy scalars alike (np.int64 sizes and np.float32 rates from NumPy grids);
# bool and np.bool_ are not numbers here
def is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_batch_size(batch_size):
    if batch_size is None:
        return None
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"expected batch_size to be an int >= 1 or None (full batch), got {batch_size!r}")
    return int(batch_size)


def check_count(name, value, minimum=0, owner=None):
    """int(value) for a Python or NumPy integer >= minimum, else a ValueError ("owner: expected ...")."""
    if not is_int(value) or value < minimum:
        where = f"{owner}: " if owner else ""
        raise ValueError(f"{where}expected {name} to be an int >= {minimum}, got {value!r}")
    return int(value)


def check_real(name, value, lo=-math.inf, hi=math.inf, lo_open=False, hi_open=False, owner=None):
    """float(value) for a finite Python or NumPy real number in the interval from lo to hi
    (open at an end when asked), else a ValueError ("owner: expected ...")."""
    ok = is_real(value) and math.isfinite(value) and (value > lo if lo_open else value >= lo) \
        and (value < hi if hi_open else value <= hi)
    if not ok:
        where = f"{owner}: " if owner else ""
        if hi == math.inf and lo == -math.inf:
            want = "to be a finite number"
        elif hi == math.inf:
            want = f"to be a finite number {'>' if lo_open else '>='} {lo:g}"
        else:
            want = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{where}expected {name} {want}, got {value!r}")
    return float(value)


_jit.cover_dependencies(__name__, _jit)
