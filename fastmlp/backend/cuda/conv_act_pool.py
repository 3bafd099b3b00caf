"""Conv2D's fused path on the GPU: im2col, the GEMM, the fused act + pool kernel (and back),
one launch each, chunk after chunk (backend/conv_chunks.py).

The same names and arguments as cpu/conv_act_pool.py, which runs the same steps as one
Numba kernel, a chunk per thread. Conv2D gives the GPU the whole batch as one chunk
(``conv_chunk_bytes`` is None): large launches, and backward finds forward's cols still
in the scratch.
"""
import sys

from .. import conv_chunks

# The CUDA backend package: its ops are looked up there when called, so that a test or a
# profiler that replaces one there is obeyed.
_backend = sys.modules[__package__]


def conv_act_pool_forward(y, argmax, cols, zt, x, w2, b, edges, kh, kw, stride, pad, oh, ow, code, alpha,
                          k, pstride):
    # y, argmax (N, M, PH, PW); cols, zt (1, ...) scratch; x (N, C, H, W); w2 (M, C*KH*KW)
    conv_chunks.forward(_backend, y, argmax, cols, zt, x, w2, b, edges, kh, kw, stride, pad, oh, ow,
                        code, alpha, k, pstride)


def conv_act_pool_backward(dx, dwt, db, cols, dzt, x, w2, dy, y, argmax, edges, kh, kw, stride, pad, oh, ow,
                           code, alpha, k, pstride):
    # dx (N, C, H, W) or None; dwt (chunks, C*KH*KW, M), db (chunks, M); the rest as forward
    conv_chunks.backward(_backend, dx, dwt, db, cols, dzt, x, w2, dy, y, argmax, edges, kh, kw,
                         stride, pad, oh, ow, code, alpha, k, pstride)
