"""The CPU backend: NumPy arrays, BLAS GEMMs through NumPy, Numba kernels.

Every backend module (``cpu``, ``cuda``) exports the same names with the same
signatures, so layers never import numpy or cupy for math. Ops write into
caller-provided outputs; none allocates on the hot path.
"""
import numba
import numpy as np

from . import conv_chunks, cpu_blas, cpu_conv, cpu_gemm
from . import cpu_kernels as K

name = "cpu"
xp = np


def empty(shape, dtype):
    return np.empty(shape, dtype=dtype)


def zeros(shape, dtype):
    return np.zeros(shape, dtype=dtype)


def to_device(host, dtype=None):
    """A C-contiguous array of ``dtype`` on this device (no copy when it already is one)."""
    return np.ascontiguousarray(host, dtype=dtype)


def to_host(a):
    return np.asarray(a)


def synchronize():
    pass


def _pick(twins, work):
    # the parallel twin above PARALLEL_MIN_WORK elements, or above PARALLEL_MIN_WORK_SHARED
    # while a model with chunked conv kernels runs (Numba's threads are awake and OpenBLAS's
    # idle then, cpu_gemm.use_numba_threads)
    least = K.PARALLEL_MIN_WORK_SHARED if cpu_gemm.on_numba_threads() else K.PARALLEL_MIN_WORK
    return twins[1] if work >= least else twins[0]


# --- GEMM: out = a @ b (a, b may be transposed views) ---------------------------

def matmul(out, a, b):
    # BLAS, with threads and operand orientation chosen once per shape (cpu_gemm.py)
    cpu_gemm.matmul(out, a, b)


def gemm_on_kernel_threads(flag):
    # big GEMMs on Numba's threads (True: a model with chunked conv kernels) or OpenBLAS's
    cpu_gemm.use_numba_threads(flag)


# --- dense: bias + activation, activation backward + bias gradient ------------

def bias_act_forward(z, b, code, alpha):
    # z (N, M) in place; b (M,)
    _pick(K.bias_act_forward, z.size)(z, b, code, alpha)


_scratch = {}


def _partial_sums(m):
    # the bias-gradient reduction's float64 scratch, one per width M, reused
    buf = _scratch.get(m)
    if buf is None:
        buf = _scratch[m] = np.empty((K.BIAS_GRAD_BLOCKS, m), dtype=np.float64)
    return buf


def act_backward_bias_grad(dz, db, da, a, code, alpha):
    # dz, da, a (N, M); db (M,)
    _pick(K.act_backward_bias_grad, dz.size)(dz, db, _partial_sums(dz.shape[1]), da, a, code, alpha)


def act_forward(y, x, code, alpha):
    _pick(K.act_forward, x.size)(y.reshape(-1), x.reshape(-1), code, alpha)


def act_backward(dx, dy, y, code, alpha):
    _pick(K.act_backward, dx.size)(dx.reshape(-1), dy.reshape(-1), y.reshape(-1), code, alpha)


# --- losses, each fused with its gradient --------------------------------------

def softmax_forward(p, logits):
    _pick(K.softmax_forward, logits.size)(p, logits)


def softmax_xent(dlogits, stats, logits, labels, scale):
    _pick(K.softmax_xent, logits.size)(dlogits, stats, logits, labels, scale)


def bce_logits(dlogits, stats, logits, targets, scale):
    _pick(K.bce_logits, logits.size)(dlogits, stats, logits, targets, scale)


def mse(dout, stats, out, targets, scale):
    _pick(K.mse, out.size)(dout, stats, out, targets, scale)


# --- optimizers over the flat parameter buffer ----------------------------------

def sgd_update(params, prev, buf, bad, grads, seg_start, seg_l1, seg_l2,
               lr, momentum, nesterov):
    # the kernels cast the scalars to the parameter dtype: float32 arithmetic, as in torch
    _pick(K.sgd_update, params.size)(params, prev, buf, bad, grads, seg_start,
                                     seg_l1, seg_l2, lr, momentum, nesterov)


def adam_update(params, prev, m, v, bad, grads, seg_start, seg_l1, seg_l2,
                lr, beta1, beta2, eps, step):
    _pick(K.adam_update, params.size)(params, prev, m, v, bad, grads, seg_start,
                                      seg_l1, seg_l2, lr, beta1, beta2, eps, step)


def add_reg_grad(grads, params, seg_start, seg_l1, seg_l2):
    _pick(K.add_reg_grad, params.size)(grads, params, seg_start, seg_l1, seg_l2)


def reg_penalty(out, params, seg_start, seg_l1, seg_l2):
    # out (1,) float64
    _pick(K.reg_penalty, params.size)(out, params, seg_start, seg_l1, seg_l2)


# --- data ----------------------------------------------------------------------

def gather_rows(out, x, idx):
    # out (B, ...) = x[idx]; rows are flattened for the kernel
    _pick(K.gather_rows, out.size)(out.reshape(out.shape[0], -1),
                                   x.reshape(x.shape[0], -1), idx)


# --- images (NCHW): im2col convolution, max pooling, batch norm, dropout -------

def im2col(cols, x, kh, kw, stride, pad):
    # x (N, C, H, W); cols (C*KH*KW, N*OH*OW)
    _pick(K.im2col, cols.size)(cols, x, kh, kw, stride, pad)


def col2im(dx, cols, kh, kw, stride, pad):
    # cols (C*KH*KW, N*OH*OW); dx (N, C, H, W), overwritten
    _pick(K.col2im, cols.size)(dx, cols, kh, kw, stride, pad)


def _per_image(a):
    # (N, M, OH, OW) -> (N, M, L), a view
    return a.reshape(a.shape[0], a.shape[1], -1)


def conv_bias_forward(y, z, b):
    # z (M, N*L); y (N, M, OH, OW); b (M,)
    _pick(K.conv_bias_forward, y.size)(_per_image(y), z, b)


def conv_bias_backward(dz, db, dy):
    # dy (N, M, OH, OW); dz (M, N*L); db (M,)
    _pick(K.conv_bias_backward, dy.size)(dz, db, _per_image(dy))


def conv_bias_act_pool_forward(y, argmax, zt, b, oh, ow, code, alpha, k, stride):
    # zt (N*OH*OW, M), z transposed; b (M,); y, argmax (N, M, PH, PW), argmax int32 = oh*OW + ow
    _pick(K.conv_bias_act_pool_forward, zt.size)(y, argmax, zt, b, oh, ow, code, alpha, k, stride)


def conv_bias_act_pool_backward(dzt, db, dy, y, argmax, oh, ow, code, alpha, k, stride):
    # dy, y, argmax (N, M, PH, PW); dzt (N*OH*OW, M), dz transposed; db (M,)
    _pick(K.conv_bias_act_pool_backward, dzt.size)(dzt, db, _partial_sums(dzt.shape[1]), dy, y, argmax,
                                                   oh, ow, code, alpha, k, stride)


# --- Conv2D's fused path, a chunk of images per thread (cpu_conv.py) ------------

# Conv2D cuts its batch into chunks of images whose cols and zt take about this many
# bytes (a core's L2 cache holds them from im2col to the pooling; 1 MiB chunks ran 5 %
# slower on P3); the count is a
# multiple of 4, so 2 or 4 threads get equal shares.
conv_chunk_bytes = 1 << 18
# Whether conv_act_pool_forward / _backward run as one Numba kernel (cpu_conv.py);
# if not (NumPy's OpenBLAS not found), as the kernels chunk after chunk (conv_chunks.py).
fused_conv_chunks = cpu_blas.available()


def threads():
    # T: the threads a chunked kernel may run on, one scratch buffer each
    return numba.get_num_threads()


class _OwnOps:
    # this module's ops, looked up when called (so a test can replace one): conv_chunks runs them
    def __getattr__(self, name):
        return globals()[name]


_OWN_OPS = _OwnOps()


def _check_scratch(cols, zt):
    # one row of scratch per thread: a kernel's thread t writes row t (numba.get_thread_id)
    t = numba.get_num_threads()
    if cols.shape[0] < t or zt.shape[0] < t:
        raise ValueError(f"conv scratch: expected a row per thread ({t}), got cols {cols.shape}, zt {zt.shape}")


def conv_act_pool_forward(y, argmax, cols, zt, x, w2, b, edges, kh, kw, stride, pad, oh, ow, code, alpha,
                          k, pstride):
    # y, argmax (N, M, PH, PW); cols, zt (T, ...) scratch; x (N, C, H, W); w2 (M, C*KH*KW);
    # edges (chunks + 1,) int64
    if not fused_conv_chunks:
        return conv_chunks.forward(_OWN_OPS, y, argmax, cols, zt, x, w2, b, edges, kh, kw, stride,
                                   pad, oh, ow, code, alpha, k, pstride)
    _check_scratch(cols, zt)
    cpu_blas.single_threaded(cpu_conv.forward, y, argmax, cols, zt, x, w2, b, edges, kh, kw, stride, pad, oh, ow,
                             code, alpha, k, pstride, cpu_blas.gemm_for(w2.dtype))


def conv_act_pool_backward(dx, dwt, db, cols, dzt, x, w2, dy, y, argmax, edges, kh, kw, stride, pad, oh, ow,
                           code, alpha, k, pstride):
    # dx (N, C, H, W) or None; dwt (chunks, C*KH*KW, M), db (chunks, M); the rest as forward
    if not fused_conv_chunks:
        return conv_chunks.backward(_OWN_OPS, dx, dwt, db, cols, dzt, x, w2, dy, y, argmax, edges,
                                    kh, kw, stride, pad, oh, ow, code, alpha, k, pstride)
    _check_scratch(cols, dzt)
    t, m = cols.shape[0], w2.shape[0]
    partial = _scratch.get(("conv", t, m))
    if partial is None:
        partial = _scratch[("conv", t, m)] = np.empty((t, K.BIAS_GRAD_BLOCKS, m), dtype=np.float64)
    cpu_blas.single_threaded(cpu_conv.backward, x if dx is None else dx, dwt, db, partial, cols, dzt, x, w2, dy,
                             y, argmax, edges, kh, kw, stride, pad, oh, ow, code, alpha, k, pstride,
                             dx is not None, cpu_blas.gemm_for(w2.dtype))


def transpose(out, a):
    # out (B, A) = a.T for a (A, B)
    _pick(K.transpose, a.size)(out, a)


def maxpool_forward(y, argmax, x, k, stride):
    # x (N, C, H, W); y, argmax (N, C, OH, OW), argmax int32
    _pick(K.maxpool_forward, x.size)(y, argmax, x, k, stride)


def maxpool_backward(dx, dy, argmax, k, stride):
    # dx (N, C, H, W) from dy, argmax (N, C, OH, OW) and the window geometry
    _pick(K.maxpool_backward, dx.size)(dx, dy, argmax, k, stride)


def _channels(a):
    # (N, F) -> (N, F, 1); (N, C, H, W) -> (N, C, H*W): batch norm's (N, C, L) view
    return a.reshape(a.shape[0], a.shape[1], -1)


def batchnorm_forward(y, mean, invstd, running_mean, running_var, x, gamma, beta,
                      momentum, eps, training):
    # x, y (N, F) or (N, C, H, W); mean, invstd, running_* (C,) float64; gamma, beta (C,)
    _pick(K.batchnorm_forward, x.size)(
        _channels(y), mean, invstd, running_mean, running_var, _partial_sums(x.shape[1]),
        _channels(x), gamma, beta, float(momentum), float(eps), bool(training))


def batchnorm_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, training):
    _pick(K.batchnorm_backward, x.size)(
        _channels(dx), dgamma, dbeta, _partial_sums(2 * x.shape[1]), _channels(dy), _channels(x),
        mean, invstd, gamma, bool(training))


def dropout_forward(y, mask, x, rate):
    # any shape; mask: uniform draws in, multiplier out
    _pick(K.dropout_forward, x.size)(y.reshape(-1), mask.reshape(-1), x.reshape(-1), float(rate))


def dropout_backward(dx, dy, mask):
    _pick(K.dropout_backward, dx.size)(dx.reshape(-1), dy.reshape(-1), mask.reshape(-1))


def random_uniform(out, rng):
    """Fill out (float32 or float64) with uniform [0, 1) draws of the model's generator, in place."""
    rng.random(dtype=out.dtype, out=out)


# --- data augmentation ------------------------------------------------------------

def copy_from_host(out, host):
    # out (any shape) = host, a NumPy array of the same shape and dtype; no allocation
    if out.shape != host.shape or out.dtype != host.dtype:
        raise ValueError(f"expected a host array of shape {out.shape} dtype {out.dtype}, "
                         f"got {host.shape} {host.dtype}")
    np.copyto(out, host)


def augment_images(out, x, params, c, h, w, channels_last, nearest):
    # out, x (N, C*H*W) flat images; params (N, 6) float64 per-sample affine maps
    _pick(K.augment_images, x.size)(out, x, params, c, h, w, channels_last, nearest)
