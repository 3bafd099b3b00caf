"""The Dense layer epilogues on the GPU: the launchers of kernels/dense.cu.

Must match reference.bias_act_forward, act_backward_bias_grad, act_forward and
act_backward; the same names and arguments as the CPU twins in cpu/dense.py.
"""
import numpy as np

from .launch import THREADS, blocks, cdiv, ftype, kernel, same_shape, workspace
from .source import expr


def bias_act_forward(z, b, code, alpha):
    # z (N, M) in place; b (M,)
    n, m = z.shape
    same_shape("b", b, (m,))
    t = ftype(z, b)
    if z.size == 0:
        return
    kernel("dense", expr("bias_act_forward", t))(
        (blocks(z.size),), (THREADS,),
        (z, b, np.int64(n), np.int64(m), np.int32(code), np.float64(alpha)))


def act_backward_bias_grad(dz, db, da, a, code, alpha):
    # dz, da, a (N, M); db (M,)
    n, m = dz.shape
    same_shape("da", da, (n, m))
    same_shape("a", a, (n, m))
    same_shape("db", db, (m,))
    t = ftype(dz, db, da, a)
    if m == 0:
        return
    bx = min(32, 1 << (m - 1).bit_length())   # a warp spans whole rows when M < 32
    by = THREADS // bx
    tiles = cdiv(m, bx)
    g = max(1, min(cdiv(n, 4 * by), 2048 // tiles))  # >= 4 rows a thread, ~2048 blocks
    partial = workspace(g * m)
    kernel("dense", expr("act_backward_bias_grad", t))(
        (tiles, g), (bx, by),
        (dz, partial, da, a, np.int64(n), np.int64(m), np.int32(code), np.float64(alpha)))
    kernel("dense", expr("bias_grad_reduce", t))(
        (m,), (THREADS,), (db, partial, np.int64(g), np.int64(m)))


def act_forward(y, x, code, alpha):
    same_shape("y", y, x.shape)
    t = ftype(y, x)
    if x.size == 0:
        return
    kernel("dense", expr("act_forward", t))(
        (blocks(x.size),), (THREADS,),
        (y, x, np.int64(x.size), np.int32(code), np.float64(alpha)))


def act_backward(dx, dy, y, code, alpha):
    same_shape("dy", dy, dx.shape)
    same_shape("y", y, dx.shape)
    t = ftype(dx, dy, y)
    if dx.size == 0:
        return
    kernel("dense", expr("act_backward", t))(
        (blocks(dx.size),), (THREADS,),
        (dx, dy, y, np.int64(dx.size), np.int32(code), np.float64(alpha)))
