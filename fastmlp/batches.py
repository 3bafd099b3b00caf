"""Data intake: inputs validated and converted once, batches gathered into fixed buffers.

``fit`` converts X to the model dtype on the device once (``prepare_inputs``);
each step then gathers its batch's rows into a buffer reused from step to
step (``BatchBuffers``): no per-step allocation, no slicing copy of the data
set, and a full batch is used in place. An on-disk X (``h5py.Dataset``, zarr,
...) is checked by a scan in chunks and stays on disk as ``LazyRows``: each
batch is read from it into the batch buffer (through a host staging buffer
when the device is not the host).
"""
import numpy as np

from .validation import (REAL_KINDS, all_finite, check_features, check_fits_dtype, check_same_length,
                         warn_flat_images)


def check_lazy_features(X, input_shape, dtype, what="X"):
    """An on-disk array (h5py.Dataset, ...) checked like ``check_features`` without loading it:
    dtype and shape at once, values by a scan in chunks of rows. Returns ``LazyRows``."""
    dt = np.dtype(X.dtype)
    shape = tuple(int(s) for s in X.shape)
    if dt.kind not in REAL_KINDS:
        raise TypeError(f"expected {what} with a real numeric dtype, got dtype {dt}")
    expected = "..." if input_shape is None else ", ".join(map(str, input_shape))
    if len(shape) < 2:
        raise ValueError(f"expected {what} of shape (N, {expected}), got {shape}")
    if shape[0] == 0:
        raise ValueError(f"expected a non-empty {what}, got 0 samples")
    sample = shape[1:]
    if input_shape is not None and sample != tuple(input_shape):
        if int(np.prod(sample)) == int(np.prod(input_shape)) and (len(shape) == 2 or len(input_shape) == 1):
            warn_flat_images(shape, input_shape, what)
            sample = tuple(input_shape)
        else:
            raise ValueError(f"expected {what} of shape (N, {', '.join(map(str, input_shape))}), got {shape}")
    rows = LazyRows(X, sample)
    if np.issubdtype(dt, np.floating):
        step = chunk_rows(shape, dt.itemsize)
        for start in range(0, shape[0], step):
            chunk = rows.read(start, start + step)
            if not all_finite(chunk):
                raise ValueError(f"expected finite values in {what}, got NaN or Inf in rows "
                                 f"{start}..{min(start + step, shape[0]) - 1}")
            check_fits_dtype(chunk, dtype, what)
            del chunk  # before the next read: one chunk in memory at a time
    return rows


def prepare_inputs(be, X, input_shape, dtype, what="X", values=True):
    """X validated (numeric, finite, of per-sample shape ``input_shape``) and converted to
    ``dtype`` on the device of ``be``; an on-disk X comes back as ``LazyRows``, scanned.
    ``values=False``: X's values were checked already (only its shape is checked here)."""
    if type(X) is np.ndarray and X.dtype == dtype and X.shape[1:] == input_shape and X.shape[0] \
            and X.flags.c_contiguous:
        # already what the kernels take (a server's usual request): only the values to check
        if values and not all_finite(X):
            raise ValueError(f"expected finite values in {what}, got NaN or Inf")
        return be.to_device(X)
    if is_lazy_array(X):
        return check_lazy_features(X, input_shape, dtype, what)
    X = check_features(X, input_shape, what, values=values)
    check_fits_dtype(X, dtype, what)
    return be.to_device(X, dtype)


def prepare_targets(be, loss, X, y, n_outputs, dtype, what="X"):
    """y validated against X and the loss, converted once by the loss, on the device."""
    label = "y" if what == "X" else f"labels of {what}"
    check_same_length(X, y, label)
    if getattr(getattr(y, "dtype", None), "kind", "") in ("c", "m", "M"):
        raise TypeError(f"expected real numbers in {label}, got dtype {y.dtype}")
    t = loss.prepare(y, n_outputs, dtype)
    if not all_finite(t):  # finite as given, but overflowed in the model dtype
        raise ValueError(f"expected values of {label} within the {np.dtype(dtype).name} range, "
                         "got values that overflow to Inf")
    return be.to_device(t)


def rows(be, X, start, stop, dtype):
    """Rows [start, stop) of a prepared X on the device (read from disk for LazyRows)."""
    if isinstance(X, LazyRows):
        return be.to_device(X.read(start, stop), dtype)
    return X[start:stop]


class BatchBuffers:
    """The buffers a batch is gathered into, one set per batch shape, reused across steps."""

    def __init__(self, be, dtype):
        self.be, self.dtype = be, dtype
        self._bufs = {}

    def get(self, b, X, T):
        """(xb (b, ...) in the model dtype, tb (b, ...) in the targets' dtype)."""
        key = (b, X.shape[1:], T.shape[1:], T.dtype)
        bufs = self._bufs.get(key)
        if bufs is None:
            bufs = self._bufs[key] = (self.be.empty((b,) + X.shape[1:], self.dtype),
                                      self.be.empty((b,) + T.shape[1:], T.dtype))
        return bufs

    def weights(self, b):
        """The (b,) float64 buffer a batch's sample weights are gathered into."""
        key = ("weights", b)
        wb = self._bufs.get(key)
        if wb is None:
            wb = self._bufs[key] = self.be.empty((b,), np.float64)
        return wb

    def indices(self, idx):
        """A fixed device buffer holding a copy of ``idx`` (a replayed CUDA graph reads it)."""
        key = ("idx", idx.shape[0])
        ib = self._bufs.get(key)
        if ib is None:
            ib = self._bufs[key] = self.be.empty(idx.shape, idx.dtype)
        self.be.copy(ib, idx)
        return ib

    def gather(self, xb, tb, X, T, idx, host_idx):
        """xb = X[idx], tb = T[idx]; ``host_idx`` is idx on the host (for an on-disk X)."""
        if isinstance(X, LazyRows):
            self._read_rows(xb, X, host_idx)
        else:
            self.be.gather_rows(xb, X, idx)
        self.be.gather_rows(tb, T, idx)

    def _read_rows(self, xb, X, idx):
        # xb = X[idx] for an on-disk X, converted into the preallocated batch buffer
        if self.be.host_arrays:
            X.take(xb, idx)
            return
        key = ("host", xb.shape)
        stage = self._bufs.get(key)
        if stage is None:
            stage = self._bufs[key] = np.empty(xb.shape, dtype=self.dtype)
        X.take(stage, idx)
        xb[...] = self.be.to_device(stage)

    def nbytes(self):
        return sum(int(a.nbytes) for bufs in self._bufs.values()
                   for a in (bufs if isinstance(bufs, tuple) else (bufs,)))


def is_lazy_array(X):
    """An on-disk array (h5py.Dataset, zarr, ...): shape, dtype and __getitem__,
    but none of the protocols of in-memory arrays (those go through np.asarray)."""
    if isinstance(X, (np.ndarray, np.generic, list, tuple, str, bytes, memoryview)):
        return False
    if not all(hasattr(X, a) for a in ("shape", "dtype", "__getitem__")):
        return False
    if any(hasattr(X, a) for a in ("__array_interface__", "__cuda_array_interface__", "__dlpack__")):
        return False
    try:
        np.dtype(X.dtype)
        tuple(int(s) for s in X.shape)
    except (TypeError, ValueError):
        return False
    return True


class LazyRows:
    """Rows [start, stop) of an on-disk array, read a batch at a time.

    ``take(out, idx)`` reads the rows ``idx`` (any order) with one sorted read
    (h5py wants increasing indices) or one slice when they are contiguous, and
    writes them, converted to ``out``'s dtype, into the preallocated ``out``."""

    def __init__(self, src, sample_shape, start=0, stop=None):
        self.src, self.sample_shape = src, tuple(sample_shape)
        self.start = start
        self.stop = int(src.shape[0]) if stop is None else stop
        self.shape = (self.stop - self.start,) + self.sample_shape
        self.dtype = np.dtype(src.dtype)
        self.ndim = len(self.shape)

    def rows(self, start, stop):
        n = self.shape[0]
        start, stop = max(0, min(n, start)), max(0, min(n, stop))
        return LazyRows(self.src, self.sample_shape, self.start + start, self.start + stop)

    def read(self, start, stop):
        """Rows [start, stop) as a host array of the source dtype."""
        a = np.asarray(self.src[self.start + start:self.start + stop])
        return a.reshape((a.shape[0],) + self.sample_shape)

    def take(self, out, idx):
        # out (B, ...) host array; idx (B,) host ints, distinct
        if idx.size and idx[-1] - idx[0] == idx.size - 1 and np.all(np.diff(idx) == 1):
            out[...] = self.read(int(idx[0]), int(idx[-1]) + 1)
            return
        order = np.argsort(idx, kind="stable")
        rows = np.asarray(self.src[idx[order] + self.start])
        out[order] = rows.reshape((rows.shape[0],) + self.sample_shape)

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        return f"LazyRows({type(self.src).__name__}, rows {self.start}:{self.stop})"


def chunk_rows(shape, itemsize, target=4 << 20):
    """Rows per read of about ``target`` bytes."""
    per_row = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
    return max(1, target // per_row)
