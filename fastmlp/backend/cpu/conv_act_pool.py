"""Conv2D's fused path on the CPU: a chunk of images at a time, each chunk on one Numba thread.

Conv2D followed by its activation and MaxPool2D runs the same steps on every
backend: im2col, zt = cols.T @ W2.T, the fused act + pool kernel; backward
the fused unpooling, dW.T = cols @ dzt, dcols = W2.T @ dz and col2im (see
fastmlp/conv.py). Conv2D cuts the batch into chunks of images (``edges``) whose
cols and zt fit a core's L2 cache. On the GPU (and here when NumPy's OpenBLAS
was not found, see ``fused_conv_chunks``) the ops run chunk after chunk
(backend/conv_chunks.py). Here one parallel Numba kernel gives each chunk to
one thread, which runs all the chunk's steps in its own buffers: the serial
twins of conv.py's kernels, and the GEMMs as calls to NumPy's OpenBLAS, held
to one thread meanwhile (openblas.py). Nothing leaves the core's cache between
im2col and the pooling, and no thread waits for another until the layer is done.

Backward forms each chunk's cols again from x rather than keeping the whole
batch's. Each chunk writes its own rows of dW.T and db, which the layer sums in
chunk order: results depend on the chunks (the batch and the image size), not on
which thread ran what.
"""
import sys
from types import SimpleNamespace

import numba
import numpy as np
from numba import get_thread_id, njit, prange

from .. import conv_chunks
from ..codes import pads4
from . import conv, openblas
from .conv import col2im_twins, conv_bias_act_pool_backward_twins, conv_bias_act_pool_forward_twins, im2col_twins
from .jit import cover_dependencies
from .openblas import NO_TRANS, ROW_MAJOR, TRANS
from .reduce import REDUCTION_BLOCKS
from ..workspaces import WorkspacePool

# The CPU backend package: its ops and its ``fused_conv_chunks`` are looked up there when
# called, so that a test or a profiler that replaces one there is obeyed.
_backend = sys.modules[__package__]

_im2col = im2col_twins.serial
_col2im = col2im_twins.serial
_pool_forward = conv_bias_act_pool_forward_twins.serial
_pool_backward = conv_bias_act_pool_backward_twins.serial


@njit(inline="always", nogil=True)
def _chunk(cols, scratch, x, edges, c, ckk, m, kh, kw, stride, pad, npix):
    # chunk c on the calling thread t: (i0, i1, cc, o), views of row t of the scratch buffers:
    # cc (C*KH*KW, rows) holding the chunk's im2col, o (rows, M) to be written; pad is
    # (PT, PB, PL, PR)
    t = get_thread_id()
    i0, i1 = edges[c], edges[c + 1]
    rows = (i1 - i0) * npix
    cc = cols[t, :ckk * rows].reshape((ckk, rows))
    _im2col(cc, x[i0:i1], kh, kw, stride, pad[0], pad[1], pad[2], pad[3])
    return i0, i1, cc, scratch[t, :rows * m].reshape((rows, m))


@njit(parallel=True, nogil=True, cache=True)
def _forward(y, argmax, cols, zt, x, w2t, b, edges, kh, kw, stride, pad, oh, ow, code, alpha, k, pstride,
             gemm):
    # y, argmax (N, M, PH, PW): the pooled act(conv(x) + b); cols (T, >= C*KH*KW*B*L) and
    # zt (T, >= B*L*M) the scratch of each thread t, B the largest chunk's images; x (N, C, H,
    # W); w2t (C*KH*KW, M) = W2.T; chunk c is images edges[c] .. edges[c + 1] - 1
    ckk, m = w2t.shape
    for c in prange(edges.size - 1):
        i0, i1, cc, z = _chunk(cols, zt, x, edges, c, ckk, m, kh, kw, stride, pad, oh * ow)
        rows = z.shape[0]
        # z (rows, M) = cc.T @ w2t
        gemm(ROW_MAJOR, TRANS, NO_TRANS, rows, m, ckk, 1.0, cc.ctypes.data, rows, w2t.ctypes.data, m, 0.0,
             z.ctypes.data, m)
        _pool_forward(y[i0:i1], argmax[i0:i1], z, b, oh, ow, code, alpha, k, pstride)


@njit(parallel=True, nogil=True, cache=True)
def _backward(dx, dwt, db, partial, cols, dzt, x, w2t, dy, y, argmax, edges, kh, kw, stride, pad, oh, ow,
              code, alpha, k, pstride, need_dx, gemm):
    # dwt (chunks, C*KH*KW, M), db (chunks, M): each chunk's dW.T and bias gradient; dx (N, C,
    # H, W), written when need_dx; partial (T, BLOCKS, M) float64, cols, dzt as in forward:
    # each thread's scratch; w2t (C*KH*KW, M) = W2.T; dy, y, argmax (N, M, PH, PW)
    ckk, m = w2t.shape
    for c in prange(edges.size - 1):
        i0, i1, cc, d = _chunk(cols, dzt, x, edges, c, ckk, m, kh, kw, stride, pad, oh * ow)
        rows = d.shape[0]
        _pool_backward(d, db[c], partial[get_thread_id()], dy[i0:i1], y[i0:i1], argmax[i0:i1], oh, ow, code,
                       alpha, k, pstride)
        # dwt[c] (C*KH*KW, M) = cc @ d
        gemm(ROW_MAJOR, NO_TRANS, NO_TRANS, ckk, m, rows, 1.0, cc.ctypes.data, rows, d.ctypes.data, m, 0.0,
             dwt[c].ctypes.data, m)
        if need_dx:         # dcols (C*KH*KW, rows) = w2t @ d.T, into cc, then summed into dx
            gemm(ROW_MAJOR, NO_TRANS, TRANS, ckk, rows, m, 1.0, w2t.ctypes.data, m, d.ctypes.data, m, 0.0,
                 cc.ctypes.data, rows)
            _col2im(dx[i0:i1], cc, kh, kw, stride, pad[0], pad[1], pad[2], pad[3])


def _check_scratch(cols, zt):
    # one row of scratch per thread: a kernel's thread t writes row t (numba.get_thread_id)
    t = numba.get_num_threads()
    if cols.shape[0] < t or zt.shape[0] < t:
        raise ValueError(f"conv scratch: expected a row per thread ({t}), got cols {cols.shape}, zt {zt.shape}")


_partials = WorkspacePool()
_HOST = SimpleNamespace(empty=np.empty)


def _thread_partials(t, m):
    # the (T, BLOCKS, M) float64 bias-gradient scratch of backward: the calling thread's
    return _partials.get(_HOST, "partials", (t, REDUCTION_BLOCKS, m), np.float64)


def _transposed(w2):
    # W2.T (C*KH*KW, M) C-contiguous, in the calling thread's scratch. The kernels never ask
    # OpenBLAS for a product of two transposed operands: its sgemm with both transposed,
    # called at once from two threads on small products of different sizes (a batch's last,
    # smaller chunk), sometimes returns wrong values (OpenBLAS 0.3.31 as NumPy 2.4 ships it;
    # tests/test_cpu_threads.py::test_openblas_is_never_asked_for_two_transposed_operands)
    w2t = _partials.get(_HOST, "w2t", w2.shape[::-1], w2.dtype)
    np.copyto(w2t, w2.T)
    return w2t


def conv_act_pool_forward(y, argmax, cols, zt, x, w2, b, edges, kh, kw, stride, pad, oh, ow, code, alpha,
                          k, pstride):
    # y, argmax (N, M, PH, PW); cols, zt (T, ...) scratch; x (N, C, H, W); w2 (M, C*KH*KW);
    # edges (chunks + 1,) int64; pad P or (PT, PB, PL, PR)
    if not _backend.fused_conv_chunks:
        return conv_chunks.forward(_backend, y, argmax, cols, zt, x, w2, b, edges, kh, kw, stride,
                                   pad, oh, ow, code, alpha, k, pstride)
    _check_scratch(cols, zt)
    pad = pads4(pad)
    openblas.single_threaded(_forward, y, argmax, cols, zt, x, _transposed(w2), b, edges, kh, kw, stride, pad,
                             oh, ow, code, alpha, k, pstride, openblas.gemm_for(w2.dtype))


def conv_act_pool_backward(dx, dwt, db, cols, dzt, x, w2, dy, y, argmax, edges, kh, kw, stride, pad, oh, ow,
                           code, alpha, k, pstride):
    # dx (N, C, H, W) or None; dwt (chunks, C*KH*KW, M), db (chunks, M); the rest as forward
    if not _backend.fused_conv_chunks:
        return conv_chunks.backward(_backend, dx, dwt, db, cols, dzt, x, w2, dy, y, argmax, edges,
                                    kh, kw, stride, pad, oh, ow, code, alpha, k, pstride)
    _check_scratch(cols, dzt)
    pad = pads4(pad)
    partial = _thread_partials(cols.shape[0], w2.shape[0])
    openblas.single_threaded(_backward, x if dx is None else dx, dwt, db, partial, cols, dzt, x, _transposed(w2),
                             dy, y, argmax, edges, kh, kw, stride, pad, oh, ow, code, alpha, k, pstride,
                             dx is not None, openblas.gemm_for(w2.dtype))


cover_dependencies(__name__, conv, openblas)
