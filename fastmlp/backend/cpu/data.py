"""Arrays on the CPU and the data ops: creation, transfers, copies, gathering a mini-batch,
uniform draws. The Numba twin of kernels/data.cu (gather_rows, to match
reference.gather_rows) and its op.

Device arrays are host NumPy arrays here: transfers are (at most) a conversion, and
synchronize has nothing to wait for.
"""
import numpy as np
from numba import prange

from .jit import cover_dependencies, pick, twins


# Arrays made here start on a multiple of ALIGN_BYTES (a cache line, one AVX-512 vector):
# NumPy starts a large array 16 bytes past a page, so that every 64-byte vector of a row of
# W straddled two cache lines (P2's first layer in a prediction, two threads on 32 rows:
# 63 against 60 us, on the project's Intel Xeon).
ALIGN_BYTES = 64


def empty(shape, dtype):
    """An uninitialised C-contiguous array whose data starts on a multiple of ALIGN_BYTES."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes == 0:
        return np.empty(shape, dtype=dtype)
    raw = np.empty(nbytes + ALIGN_BYTES, dtype=np.uint8)
    skip = -raw.ctypes.data % ALIGN_BYTES
    return raw[skip:skip + nbytes].view(dtype).reshape(shape)


def zeros(shape, dtype):
    """empty, filled with 0."""
    out = empty(shape, dtype)
    out.fill(0)
    return out


def to_device(host, dtype=None):
    """A C-contiguous array of ``dtype`` on this device (no copy when it already is one)."""
    return np.ascontiguousarray(host, dtype=dtype)


def to_host(a):
    return np.asarray(a)


def synchronize():
    pass


def _check_same(out, a, what):
    if out.shape != a.shape or out.dtype != a.dtype:
        raise ValueError(f"expected {what} of shape {out.shape} dtype {out.dtype}, got {a.shape} {a.dtype}")


def copy(out, a):
    # out = a, device arrays of one shape and dtype
    _check_same(out, a, "an array")
    np.copyto(out, a)


def copy_from_host(out, host):
    # out (any shape) = host, a NumPy array of the same shape and dtype; no allocation
    _check_same(out, host, "a host array")
    np.copyto(out, host)


def _gather_rows(out, x, idx):
    # out (N, F) = x[idx]; x (rows, F), rows flattened to F values
    b, f = out.shape
    for r in prange(b):
        src = idx[r]
        for j in range(f):
            out[r, j] = x[src, j]


gather_rows_twins = twins(_gather_rows)


def gather_rows(out, x, idx):
    # out (N, ...) = x[idx], x (rows, ...) the same trailing shape, idx (N,) integers
    pick(gather_rows_twins, out.size)(out.reshape(out.shape[0], -1), x.reshape(x.shape[0], -1), idx)


def random_uniform(out, rng):
    """Fill out (float32 or float64) with uniform [0, 1) draws of the model's generator, in place."""
    rng.random(dtype=out.dtype, out=out)


cover_dependencies(__name__)
