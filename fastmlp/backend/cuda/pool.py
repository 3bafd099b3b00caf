"""Pooling on the GPU: the launchers of kernels/pool.cu.

Must match reference.maxpool_forward, maxpool_backward, avgpool_forward, avgpool_backward,
global_avgpool_forward, global_avgpool_backward, global_maxpool_forward and
global_maxpool_backward; the same names and arguments as the CPU twins in cpu/pool.py.
"""
import numpy as np

from ..codes import window_output_size
from .launch import THREADS, blocks, check_argmax, ftype, kernel, same_shape
from .source import expr


def maxpool_forward(y, argmax, x, k, stride):
    # x (N, C, H, W); y, argmax (N, C, OH, OW), argmax int32
    n, c, h, w = x.shape
    oh, ow = window_output_size(h, k, stride), window_output_size(w, k, stride)
    same_shape("y", y, (n, c, oh, ow))
    check_argmax(argmax, y.shape)
    t = ftype(y, x)
    if y.size == 0:
        return
    kernel("pool", expr("maxpool_forward", t))(
        (blocks(y.size),), (THREADS,),
        (y, argmax, x, np.int64(n * c), np.int32(h), np.int32(w), np.int32(k), np.int32(stride),
         np.int32(oh), np.int32(ow)))


def maxpool_backward(dx, dy, argmax, k, stride):
    # dx (N, C, H, W) from dy, argmax (N, C, OH, OW): each pixel gathers its windows' dy
    n, c, h, w = dx.shape
    oh, ow = window_output_size(h, k, stride), window_output_size(w, k, stride)
    same_shape("dy", dy, (n, c, oh, ow))
    check_argmax(argmax, dy.shape)
    t = ftype(dx, dy)
    if dx.size == 0:
        return
    kernel("pool", expr("maxpool_backward", t))(
        (blocks(dx.size),), (THREADS,),
        (dx, dy, argmax, np.int64(n * c), np.int32(h), np.int32(w), np.int32(k), np.int32(stride),
         np.int32(oh), np.int32(ow)))


def avgpool_forward(y, x, k, stride):
    # x (N, C, H, W); y (N, C, OH, OW)
    n, c, h, w = x.shape
    oh, ow = window_output_size(h, k, stride), window_output_size(w, k, stride)
    same_shape("y", y, (n, c, oh, ow))
    t = ftype(y, x)
    if y.size == 0:
        return
    kernel("pool", expr("avgpool_forward", t))(
        (blocks(y.size),), (THREADS,),
        (y, x, np.int64(n * c), np.int32(h), np.int32(w), np.int32(k), np.int32(stride), np.int32(oh),
         np.int32(ow)))


def avgpool_backward(dx, dy, k, stride):
    # dx (N, C, H, W) from dy (N, C, OH, OW): each pixel gathers its windows' dy / K^2
    n, c, h, w = dx.shape
    oh, ow = window_output_size(h, k, stride), window_output_size(w, k, stride)
    same_shape("dy", dy, (n, c, oh, ow))
    t = ftype(dx, dy)
    if dx.size == 0:
        return
    kernel("pool", expr("avgpool_backward", t))(
        (blocks(dx.size),), (THREADS,),
        (dx, dy, np.int64(n * c), np.int32(h), np.int32(w), np.int32(k), np.int32(stride), np.int32(oh),
         np.int32(ow)))


def _planes(x_shape, y, what):
    # (N*C, H*W) of x (N, C, H, W), with y checked to be (N, C)
    n, c, h, w = x_shape
    same_shape(what, y, (n, c))
    return n * c, h * w


def global_avgpool_forward(y, x):
    # x (N, C, H, W); y (N, C)
    planes, hw = _planes(x.shape, y, "y")
    t = ftype(y, x)
    if y.size == 0 or hw == 0:
        return
    kernel("pool", expr("global_avgpool_forward", t))(
        (blocks(planes),), (THREADS,), (y, x, np.int64(planes), np.int64(hw)))


def global_avgpool_backward(dx, dy):
    # dx (N, C, H, W) from dy (N, C)
    planes, hw = _planes(dx.shape, dy, "dy")
    t = ftype(dx, dy)
    if dx.size == 0:
        return
    kernel("pool", expr("global_avgpool_backward", t))(
        (blocks(dx.size),), (THREADS,), (dx, dy, np.int64(planes), np.int64(hw)))


def global_maxpool_forward(y, argmax, x):
    # x (N, C, H, W); y, argmax (N, C), argmax int32 = ih*W + iw
    planes, hw = _planes(x.shape, y, "y")
    check_argmax(argmax, y.shape)
    t = ftype(y, x)
    if y.size == 0 or hw == 0:
        return
    kernel("pool", expr("global_maxpool_forward", t))(
        (blocks(planes),), (THREADS,), (y, argmax, x, np.int64(planes), np.int64(hw)))


def global_maxpool_backward(dx, dy, argmax):
    # dx (N, C, H, W) from dy, argmax (N, C)
    planes, hw = _planes(dx.shape, dy, "dy")
    check_argmax(argmax, dy.shape)
    t = ftype(dx, dy)
    if dx.size == 0:
        return
    kernel("pool", expr("global_maxpool_backward", t))(
        (blocks(dx.size),), (THREADS,), (dx, dy, argmax, np.int64(planes), np.int64(hw)))
