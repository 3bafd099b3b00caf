"""Inverted dropout on the CPU: the Numba twins of kernels/dropout.cu and their ops.

Must match reference.dropout_forward and dropout_backward.
"""
from numba import prange

from .jit import cover_dependencies, pick, twins


def _dropout_forward(y, mask, x, rate):
    # flat views; mask: uniform [0, 1) draws in, the multiplier 0 or 1/(1 - rate) out
    scale = 1.0 / (1.0 - rate)
    for i in prange(x.size):
        mask[i] = scale if mask[i] >= rate else 0.0
        y[i] = x[i] * mask[i]


dropout_forward_twins = twins(_dropout_forward)


def dropout_forward(y, mask, x, rate):
    # any shape; mask: uniform [0, 1) draws in, the multiplier 0 or 1/(1 - rate) out
    pick(dropout_forward_twins, x.size)(y.reshape(-1), mask.reshape(-1), x.reshape(-1), float(rate))


def _dropout_backward(dx, dy, mask):
    # flat views: dx = dy * mask
    for i in prange(dx.size):
        dx[i] = dy[i] * mask[i]


dropout_backward_twins = twins(_dropout_backward)


def dropout_backward(dx, dy, mask):
    # dx = dy * mask, any shape
    pick(dropout_backward_twins, dx.size)(dx.reshape(-1), dy.reshape(-1), mask.reshape(-1))


cover_dependencies(__name__)
