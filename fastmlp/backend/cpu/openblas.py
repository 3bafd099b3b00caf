"""GEMMs on Numba's threads: NumPy's own OpenBLAS called from parallel Numba kernels.

NumPy's OpenBLAS threads a big GEMM itself, and its worker threads then spin
for a while (about 0.1 s) waiting for the next one. Numba's parallel kernels
run on a second pool of threads (OpenMP's), and a Numba kernel that needs a
core OpenBLAS is spinning on waits for the OS to preempt the spinner. So a
model with chunked conv kernels runs its big GEMMs here (blas.matmul): a
Numba ``prange`` calls OpenBLAS's ``cblas_?gemm`` once per block, OpenBLAS
held to one thread meanwhile. A product is cut into T blocks (T = Numba's
thread count) of output rows, of output columns, or of the inner dimension
(partial products, summed in block order), whichever has each thread move the
fewest elements. conv_act_pool.py's kernels call the same ``cblas_?gemm``
directly.

The blocks depend on the shape and T only, so a run is bitwise repeatable.
The symbols are looked up in the OpenBLAS that NumPy itself loaded (its wheels
ship ``scipy_openblas64_``, 64-bit integers); where they are not found
(another BLAS, another build) or ``FASTMLP_NUMBA_BLAS=0``, ``available()`` is
False: GEMMs stay on np.matmul and Conv2D runs its kernels chunk after chunk.
"""
import ctypes
import os
import types
from types import SimpleNamespace

import numpy as np
from numba import njit, prange

from . import blas_threads
from ..workspaces import WorkspacePool

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
ALIGN = 8           # block edges on multiples of 8 rows / columns (whole SIMD vectors)

_I64, _INT = ctypes.c_int64, ctypes.c_int


def _prototype(real):
    # cblas_?gemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc), ILP64
    return ctypes.CFUNCTYPE(None, _INT, _INT, _INT, _I64, _I64, _I64, real, ctypes.c_void_p, _I64,
                            ctypes.c_void_p, _I64, real, ctypes.c_void_p, _I64)


_library = []  # [the ctypes library, its symbol prefix] once found
reason = ""   # why the fast path is off (``fastmlp info`` prints it), "" when it is on


def _numpy_openblas():
    """(sgemm, dgemm, set_num_threads, get_num_threads) ctypes functions of NumPy's OpenBLAS,
    or None, with ``reason`` saying why."""
    global reason
    if os.environ.get("FASTMLP_NUMBA_BLAS", "1") == "0":
        reason = "switched off by FASTMLP_NUMBA_BLAS=0"
        return None
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        reason = "threadpoolctl is not installed (it finds the BLAS library NumPy loaded)"
        return None
    # real paths on both sides: a virtual environment reached through a symlink has an
    # unresolved NumPy folder, while the loaded libraries' paths are resolved
    numpy_dir = os.path.join(os.path.realpath(os.path.dirname(os.path.dirname(np.__file__))), "")
    seen = []
    try:
        for info in threadpool_info():
            path = os.path.realpath(info.get("filepath") or "")
            seen.append(f"{info.get('internal_api')} at {path}")
            if info.get("internal_api") != "openblas" or not path.startswith(numpy_dir) or "numpy" not in path:
                continue
            lib = ctypes.CDLL(path)
            for prefix in ("scipy_", ""):
                try:
                    found = (_prototype(ctypes.c_float)((f"{prefix}cblas_sgemm64_", lib)),
                             _prototype(ctypes.c_double)((f"{prefix}cblas_dgemm64_", lib)),
                             ctypes.CFUNCTYPE(None, _INT)((f"{prefix}openblas_set_num_threads64_", lib)),
                             ctypes.CFUNCTYPE(_INT)((f"{prefix}openblas_get_num_threads64_", lib)))
                except AttributeError:
                    continue
                reason = ""
                _library[:] = [lib, prefix]
                return found
            reason = f"the 64-bit cblas_?gemm symbols were not found in NumPy's OpenBLAS {path}"
            return None
    except Exception as e:  # a library that can't be opened, ...
        reason = f"NumPy's OpenBLAS could not be opened: {type(e).__name__}: {e}"
        return None
    reason = (f"no OpenBLAS of NumPy's (under {numpy_dir}) among the loaded BLAS libraries: "
              f"{', '.join(seen) or 'none'}")
    return None


_found = _numpy_openblas()
_sgemm, _dgemm, _set_threads, _get_threads = _found if _found is not None else (None,) * 4
if _found is not None:
    blas_threads.use(_set_threads, _get_threads)


def available():
    """Whether big GEMMs run here (NumPy's OpenBLAS was found)."""
    return _found is not None


def library():
    """(NumPy's OpenBLAS as a ctypes library, its symbol prefix), or None where not found."""
    return tuple(_library) if _found is not None else None


def gemm_for(dtype):
    """The cblas_?gemm of ``dtype`` (float32 or float64) for a Numba kernel, or None."""
    return {np.dtype(np.float32): _sgemm, np.dtype(np.float64): _dgemm}.get(np.dtype(dtype))


def single_threaded(fn, *args):
    """fn(*args) with NumPy's OpenBLAS held to one thread (blas_threads.py): Numba's threads
    then each call it without OpenBLAS starting threads of its own."""
    blas_threads.hold()
    try:
        fn(*args)
    finally:
        blas_threads.release()




def blocks(m, k, n, threads):
    """(axis, edges): the product cut at ``edges`` into T blocks of output rows (axis 0), of
    output columns (1) or of the inner dimension k (2: each block a partial (m, n) product,
    summed afterwards), whichever has each thread read and write the fewest elements."""
    cost = {0: m * k // threads + k * n, 1: m * k + k * n // threads,
            2: (m * k + k * n) // threads + 2 * threads * m * n}
    fits = {0: m >= ALIGN * threads, 1: n >= ALIGN * threads, 2: k >= ALIGN * threads}
    axis = min((a for a in cost if fits[a]), key=cost.get, default=0)
    size = (m, n, k)[axis]
    edges = [0] + [min(size, -(-size * t // threads // ALIGN) * ALIGN) for t in range(1, threads)] + [size]
    return axis, np.array(edges, dtype=np.int64)


def _gemm_blocks(gemm, c, a, b, m, n, k, ta, lda, tb, ldb, ldc, axis, edges, item):
    # c (m, n) = op(a) @ op(b), one cblas call per block of rows (axis 0) or columns of c; with
    # axis 2, block t writes op(a)[:, lo:hi] @ op(b)[lo:hi] to the t-th (m, n) matrix at c
    # (ldc = n). c, a, b are addresses, item the bytes of one element.
    for t in prange(edges.size - 1):
        lo, hi = edges[t], edges[t + 1]
        if hi <= lo:
            continue
        if axis == 0:       # rows lo .. hi of c and of op(a)
            a_at = a + (lo * lda if ta == NO_TRANS else lo) * item
            gemm(ROW_MAJOR, ta, tb, hi - lo, n, k, 1.0, a_at, lda, b, ldb, 0.0, c + lo * ldc * item, ldc)
        elif axis == 1:     # columns lo .. hi of c and of op(b)
            b_at = b + (lo if tb == NO_TRANS else lo * ldb) * item
            gemm(ROW_MAJOR, ta, tb, m, hi - lo, k, 1.0, a, lda, b_at, ldb, 0.0, c + lo * item, ldc)
        else:               # columns lo .. hi of op(a), rows lo .. hi of op(b)
            a_at = a + (lo if ta == NO_TRANS else lo * lda) * item
            b_at = b + (lo * ldb if tb == NO_TRANS else lo) * item
            gemm(ROW_MAJOR, ta, tb, m, n, hi - lo, 1.0, a_at, lda, b_at, ldb, 0.0, c + t * m * n * item, n)




# the same blocks on Numba's threads, or one after the other on the calling thread: the same sums
_parallel_fn = types.FunctionType(_gemm_blocks.__code__, globals(), "_gemm_blocks_parallel")
_parallel_fn.__qualname__ = "_gemm_blocks_parallel"
_gemm_blocks_parallel = njit(parallel=True, nogil=True, cache=True)(_parallel_fn)
_gemm_blocks_serial = njit(nogil=True, cache=True)(_gemm_blocks)


@njit(inline="always")
def _cblas_layout(x):
    # (transpose flag, leading dimension) of a 2-D operand in elements; ld 0: BLAS can't take it
    s0, s1 = x.strides[0] // x.itemsize, x.strides[1] // x.itemsize
    if s1 == 1 and s0 >= max(1, x.shape[1]):
        return NO_TRANS, s0
    if s0 == 1 and s1 >= max(1, x.shape[0]):
        return TRANS, s1
    return NO_TRANS, 0


def _layout(x):
    """(transpose flag, leading dimension) of a 2-D operand, or None if BLAS can't take it."""
    flag, ld = _cblas_layout.py_func(x)
    return (flag, ld) if ld else None


@njit(parallel=True, nogil=True, cache=True)
def _gemm_pair(gemm, c1, a1, b1, c2, a2, b2):
    # c1 = a1 @ b1 on one thread and c2 = a2 @ b2 on another; False (nothing done) where BLAS
    # can't take an operand, or two transposed ones (see conv_act_pool._transposed). The
    # layouts are read here: from Python, six addresses and strides cost more than a small GEMM.
    ta1, lda1 = _cblas_layout(a1)
    tb1, ldb1 = _cblas_layout(b1)
    tc1, ldc1 = _cblas_layout(c1)
    ta2, lda2 = _cblas_layout(a2)
    tb2, ldb2 = _cblas_layout(b2)
    tc2, ldc2 = _cblas_layout(c2)
    if (min(lda1, ldb1, ldc1, lda2, ldb2, ldc2) == 0 or tc1 != NO_TRANS or tc2 != NO_TRANS
            or (ta1 == TRANS and tb1 == TRANS) or (ta2 == TRANS and tb2 == TRANS)):
        return False
    for t in prange(2):
        if t == 0:
            gemm(ROW_MAJOR, ta1, tb1, a1.shape[0], b1.shape[1], a1.shape[1], 1.0, a1.ctypes.data, lda1,
                 b1.ctypes.data, ldb1, 0.0, c1.ctypes.data, ldc1)
        else:
            gemm(ROW_MAJOR, ta2, tb2, a2.shape[0], b2.shape[1], a2.shape[1], 1.0, a2.ctypes.data, lda2,
                 b2.ctypes.data, ldb2, 0.0, c2.ctypes.data, ldc2)
    return True


def pair(out1, a1, b1, out2, a2, b2):
    """out1 = a1 @ b1 and out2 = a2 @ b2 side by side: one single-threaded OpenBLAS call
    each, on two of Numba's threads (the caller's Numba team has two or more). False
    (nothing done) where BLAS can't take an operand (as ``matmul``): all six of one dtype,
    float32 or float64."""
    gemm = gemm_for(out1.dtype) if _found is not None else None
    if gemm is None or not (a1.dtype == b1.dtype == out2.dtype == a2.dtype == b2.dtype == out1.dtype):
        return False
    blas_threads.hold()
    try:
        return _gemm_pair(gemm, out1, a1, b1, out2, a2, b2)
    finally:
        blas_threads.release()


def matmul(out, a, b, threads, parallel=True):
    """out = a @ b in blocks planned for ``threads`` threads, on Numba's threads (``parallel``)
    or one after the other on this one (the same sums either way); False (nothing done) if
    BLAS can't take these operands (a dtype other than float32/float64, a layout without a
    unit stride, two transposed operands)."""
    gemm = gemm_for(out.dtype) if available() else None
    if gemm is None or a.dtype != out.dtype or b.dtype != out.dtype:
        return False
    la, lb, lc = _layout(a), _layout(b), _layout(out)
    if la is None or lb is None or lc is None or lc[0] != NO_TRANS:
        return False
    if la[0] == TRANS and lb[0] == TRANS:
        return False        # two transposed operands from several threads: see conv_act_pool._transposed
    m, k = a.shape
    n = b.shape[1]
    axis, edges = blocks(m, k, n, threads)
    c = out if axis < 2 else _partials((edges.size - 1, m, n), out.dtype)
    blocks_kernel = _gemm_blocks_parallel if parallel else _gemm_blocks_serial
    single_threaded(blocks_kernel, gemm, c.ctypes.data, a.ctypes.data, b.ctypes.data, m, n, k,
                    la[0], la[1], lb[0], lb[1], lc[1] if axis < 2 else n, axis, edges, out.itemsize)
    if axis == 2:           # the partial products summed in block order
        out[...] = c[0]
        for t in range(1, c.shape[0]):
            np.add(out, c[t], out=out)
    return True


_scratch = WorkspacePool()
_HOST = SimpleNamespace(empty=np.empty)


def _partials(shape, dtype):
    # the (T, m, n) partial products of a k-split GEMM: this thread's, one buffer for every
    # shape, grown to the largest (backend/workspaces.py)
    return _scratch.get(_HOST, "partials", shape, dtype)
