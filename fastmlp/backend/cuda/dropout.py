"""Inverted dropout on the GPU: the launchers of kernels/dropout.cu.

Must match reference.dropout_forward and dropout_backward; the same names and arguments
as the CPU twins in cpu/dropout.py.
"""
import numpy as np

from .launch import THREADS, blocks, ftype, kernel, same_shape
from .source import expr


def dropout_forward(y, mask, x, rate):
    # any shape; mask: uniform draws in, multiplier 0 or 1/(1 - rate) out
    same_shape("y", y, x.shape)
    same_shape("mask", mask, x.shape)
    t = ftype(y, mask, x)
    if x.size == 0:
        return
    kernel("dropout", expr("dropout_forward", t))(
        (blocks(x.size),), (THREADS,),
        (y, mask, x, np.int64(x.size), np.float64(rate), np.float64(1.0 / (1.0 - rate))))


def dropout_backward(dx, dy, mask):
    same_shape("dy", dy, dx.shape)
    same_shape("mask", mask, dx.shape)
    t = ftype(dx, dy, mask)
    if dx.size == 0:
        return
    kernel("dropout", expr("dropout_backward", t))(
        (blocks(dx.size),), (THREADS,), (dx, dy, mask, np.int64(dx.size)))
