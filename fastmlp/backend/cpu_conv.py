"""Conv2D's fused path on the CPU: a chunk of images at a time, each chunk on one Numba thread.

Conv2D followed by its activation and MaxPool2D runs the same steps on every
backend: im2col, zt = cols.T @ W2.T, the fused act + pool kernel; backward
the fused unpooling, dW.T = cols @ dzt, dcols = W2.T @ dz and col2im (see
conv.py). Conv2D cuts the batch into chunks of images (``edges``) whose cols
and zt fit a core's L2 cache. On the GPU (and on a CPU without cpu_blas) it
runs the kernels chunk after chunk. Here one parallel Numba kernel gives each
chunk to one thread, which runs all the chunk's steps in its own buffers:
the serial twins of the kernels in cpu_kernels.py, and the GEMMs as calls to
NumPy's OpenBLAS, held to one thread meanwhile (cpu_blas). Nothing leaves the core's
cache between im2col and the pooling, and no thread waits for another until
the layer is done. Measured on P3's second convolution (16 -> 32 channels on
14x14, batch 64, 2 cores), forward: 2.62 ms as three whole-batch kernels,
1.43 ms here.

Backward forms each chunk's cols again from x rather than keeping the whole
batch's (7.2 MB for P3). Each chunk writes its own rows of dW.T and db, which
the layer sums in chunk order: results depend on the chunks (the batch and the
image size), not on which thread ran what.
"""
import os

from numba import get_thread_id, njit, prange

from . import cpu_blas
from . import cpu_kernels as K
from .cpu_blas import NO_TRANS, ROW_MAJOR, TRANS

_im2col = K.im2col[0]
_col2im = K.col2im[0]
_pool_forward = K.conv_bias_act_pool_forward[0]
_pool_backward = K.conv_bias_act_pool_backward[0]


@njit(inline="always", nogil=True)
def _chunk(cols, scratch, x, edges, c, ckk, m, kh, kw, stride, pad, npix):
    # chunk c on the calling thread t: (i0, i1, cc, o), views of row t of the scratch buffers:
    # cc (C*KH*KW, rows) holding the chunk's im2col, o (rows, M) to be written
    t = get_thread_id()
    i0, i1 = edges[c], edges[c + 1]
    rows = (i1 - i0) * npix
    cc = cols[t, :ckk * rows].reshape((ckk, rows))
    _im2col(cc, x[i0:i1], kh, kw, stride, pad)
    return i0, i1, cc, scratch[t, :rows * m].reshape((rows, m))


@njit(parallel=True, nogil=True, cache=True)
def forward(y, argmax, cols, zt, x, w2, b, edges, kh, kw, stride, pad, oh, ow, code, alpha, k, pstride,
            gemm):
    # y, argmax (N, M, PH, PW): the pooled act(conv(x) + b); cols (T, >= C*KH*KW*B*L) and
    # zt (T, >= B*L*M) the scratch of each thread t, B the largest chunk's images; x (N, C, H,
    # W); w2 (M, C*KH*KW); chunk c is images edges[c] .. edges[c + 1] - 1
    m, ckk = w2.shape
    for c in prange(edges.size - 1):
        i0, i1, cc, z = _chunk(cols, zt, x, edges, c, ckk, m, kh, kw, stride, pad, oh * ow)
        rows = z.shape[0]
        # z (rows, M) = cc.T @ w2.T
        gemm(ROW_MAJOR, TRANS, TRANS, rows, m, ckk, 1.0, cc.ctypes.data, rows, w2.ctypes.data, ckk, 0.0,
             z.ctypes.data, m)
        _pool_forward(y[i0:i1], argmax[i0:i1], z, b, oh, ow, code, alpha, k, pstride)


@njit(parallel=True, nogil=True, cache=True)
def backward(dx, dwt, db, partial, cols, dzt, x, w2, dy, y, argmax, edges, kh, kw, stride, pad, oh, ow,
             code, alpha, k, pstride, need_dx, gemm):
    # dwt (chunks, C*KH*KW, M), db (chunks, M): each chunk's dW.T and bias gradient; dx (N, C,
    # H, W), written when need_dx; partial (T, BLOCKS, M) float64, cols, dzt as in forward:
    # each thread's scratch; dy, y, argmax (N, M, PH, PW)
    m, ckk = w2.shape
    for c in prange(edges.size - 1):
        i0, i1, cc, d = _chunk(cols, dzt, x, edges, c, ckk, m, kh, kw, stride, pad, oh * ow)
        rows = d.shape[0]
        _pool_backward(d, db[c], partial[get_thread_id()], dy[i0:i1], y[i0:i1], argmax[i0:i1], oh, ow, code,
                       alpha, k, pstride)
        # dwt[c] (C*KH*KW, M) = cc @ d
        gemm(ROW_MAJOR, NO_TRANS, NO_TRANS, ckk, m, rows, 1.0, cc.ctypes.data, rows, d.ctypes.data, m, 0.0,
             dwt[c].ctypes.data, m)
        if need_dx:         # dcols (C*KH*KW, rows) = w2.T @ d.T, into cc, then summed into dx
            gemm(ROW_MAJOR, TRANS, TRANS, ckk, rows, m, 1.0, w2.ctypes.data, ckk, d.ctypes.data, m, 0.0,
                 cc.ctypes.data, rows)
            _col2im(dx[i0:i1], cc, kh, kw, stride, pad)


def _stamp_with_dependencies(*kernels):
    """Numba keys a cached kernel on the stamp (mtime, size) of its own file only. These two
    compile cpu_kernels' code into themselves, so an edit there alone would leave them
    loading stale machine code from the cache (it happened while measuring this module).
    Their stamp is made to cover cpu_kernels.py and cpu_blas.py too. Where Numba's cache
    internals differ from this version's, nothing is changed."""
    files = [__file__, K.__file__, cpu_blas.__file__]
    try:
        stats = [os.stat(f) for f in files]
    except OSError:
        return
    stamp = (max(st.st_mtime for st in stats), sum(st.st_size for st in stats))
    for kernel in kernels:
        cache_file = getattr(getattr(kernel, "_cache", None), "_cache_file", None)
        if cache_file is not None and hasattr(cache_file, "_source_stamp"):
            cache_file._source_stamp = stamp


_stamp_with_dependencies(forward, backward)
