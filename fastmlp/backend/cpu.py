"""The CPU backend: NumPy arrays, BLAS GEMMs through NumPy, Numba kernels.

Every backend module (``cpu``, ``cuda``) exports the same names with the same
signatures, so layers never import numpy or cupy for math. Ops write into
caller-provided outputs; none allocates on the hot path.
"""
import numpy as np

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
    return twins[1] if work >= K.PARALLEL_MIN_WORK else twins[0]


# --- GEMM: out = a @ b (a, b may be transposed views) ---------------------------

def matmul(out, a, b):
    np.matmul(a, b, out=out)


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
