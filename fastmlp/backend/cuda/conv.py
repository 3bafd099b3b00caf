"""Convolution on the GPU: the launchers of kernels/conv.cu.

Must match reference.im2col, col2im, conv_bias_forward, conv_bias_backward,
conv_bias_act_pool_forward, conv_bias_act_pool_backward and transpose; the same names
and arguments as the CPU twins in cpu/conv.py. A reference op that reduces launches
its passes in order (kernels/conv.cu says which).
"""
import numpy as np

from ..codes import padded_output_size, pads4, window_output_size
from .launch import THREADS, blocks, cdiv, channel_grid, check_argmax, ftype, kernel, same_shape, workspace
from .source import expr


def _conv_dims(x_shape, kh, kw, stride, pad):
    # (N, C, H, W, OH, OW, PT, PL) for pad P or (PT, PB, PL, PR)
    n, c, h, w = x_shape
    pt, pb, pl, pr = pads4(pad)
    return (n, c, h, w, padded_output_size(h, kh, stride, pt, pb), padded_output_size(w, kw, stride, pl, pr),
            pt, pl)


def im2col(cols, x, kh, kw, stride, pad):
    # x (N, C, H, W); cols (C*KH*KW, N*OH*OW); pad P or (PT, PB, PL, PR)
    n, c, h, w, oh, ow, pt, pl = _conv_dims(x.shape, kh, kw, stride, pad)
    same_shape("cols", cols, (c * kh * kw, n * oh * ow))
    t = ftype(cols, x)
    if cols.size == 0:
        return
    kernel("conv", expr("im2col", t))(
        (blocks(cols.size),), (THREADS,),
        (cols, x, np.int64(n), np.int32(c), np.int32(h), np.int32(w), np.int32(kh), np.int32(kw),
         np.int32(stride), np.int32(pt), np.int32(pl), np.int32(oh), np.int32(ow)))


def col2im(dx, cols, kh, kw, stride, pad):
    # cols (C*KH*KW, N*OH*OW); dx (N, C, H, W), overwritten (a gather: no atomics)
    n, c, h, w, oh, ow, pt, pl = _conv_dims(dx.shape, kh, kw, stride, pad)
    same_shape("cols", cols, (c * kh * kw, n * oh * ow))
    t = ftype(dx, cols)
    if dx.size == 0:
        return
    kernel("conv", expr("col2im", t))(
        (blocks(dx.size),), (THREADS,),
        (dx, cols, np.int64(n), np.int32(c), np.int32(h), np.int32(w), np.int32(kh), np.int32(kw),
         np.int32(stride), np.int32(pt), np.int32(pl), np.int32(oh), np.int32(ow)))


def conv_bias_forward(y, z, b):
    # z (M, N*L); y (N, M, OH, OW); b (M,)
    n, m = y.shape[:2]
    npix = y.size // max(1, n * m)
    same_shape("z", z, (m, n * npix))
    same_shape("b", b, (m,))
    t = ftype(y, z, b)
    if y.size == 0:
        return
    kernel("conv", expr("conv_bias_forward", t))(
        (blocks(y.size),), (THREADS,), (y, z, b, np.int64(n), np.int64(m), np.int64(npix)))


def conv_bias_backward(dz, db, dy):
    # dy (N, M, OH, OW); dz (M, N*L); db (M,) through float64 partial sums
    n, m = dy.shape[:2]
    npix = dy.size // max(1, n * m)
    same_shape("dz", dz, (m, n * npix))
    same_shape("db", db, (m,))
    t = ftype(dz, db, dy)
    if dy.size == 0:
        return
    g = channel_grid(n * npix, m)
    partial = workspace(g * m)
    kernel("conv", expr("conv_bias_backward", t))(
        (g, m), (THREADS,), (dz, partial, dy, np.int64(n), np.int64(m), np.int64(npix)))
    kernel("conv", expr("column_sums", t))(
        (cdiv(m, THREADS),), (THREADS,), (db, partial, np.int64(g), np.int64(m)))


def _pool_dims(y_shape, oh, ow, k, stride):
    # (N, M, PH, PW) of a KxK, stride-S max pooling of an OH x OW conv output, checked
    n, m, ph, pw = y_shape
    want = (window_output_size(oh, k, stride), window_output_size(ow, k, stride))
    if (ph, pw) != want:
        raise ValueError(f"expected a pooled shape (N, M, {want[0]}, {want[1]}) for OH={oh}, OW={ow}, "
                         f"K={k}, S={stride}, got {y_shape}")
    return n, m, ph, pw


def conv_bias_act_pool_forward(y, argmax, zt, b, oh, ow, code, alpha, k, stride):
    # zt (N*OH*OW, M), z transposed; b (M,); y, argmax (N, M, PH, PW), argmax int32 = oh*OW + ow
    n, m, ph, pw = _pool_dims(y.shape, oh, ow, k, stride)
    same_shape("zt", zt, (n * oh * ow, m))
    same_shape("b", b, (m,))
    check_argmax(argmax, y.shape)
    t = ftype(y, zt, b)
    if y.size == 0:
        return
    kernel("conv", expr("conv_bias_act_pool_forward", t))(
        (blocks(y.size),), (THREADS,),
        (y, argmax, zt, b, np.int64(n), np.int64(m), np.int32(ph), np.int32(pw), np.int32(oh),
         np.int32(ow), np.int32(code), np.float64(alpha), np.int32(k), np.int32(stride)))


def conv_bias_act_pool_backward(dzt, db, dy, y, argmax, oh, ow, code, alpha, k, stride):
    # dy, y, argmax (N, M, PH, PW); dzt (N*OH*OW, M), a gather; db (M,) = column sums of dzt
    # through float64 partial sums (channel_sums over dzt seen as (N*L, M, 1))
    n, m, ph, pw = _pool_dims(dy.shape, oh, ow, k, stride)
    same_shape("y", y, dy.shape)
    same_shape("dzt", dzt, (n * oh * ow, m))
    same_shape("db", db, (m,))
    check_argmax(argmax, dy.shape)
    t = ftype(dzt, db, dy, y)
    if dzt.size == 0:
        return
    kernel("conv", expr("conv_bias_act_pool_backward", t))(
        (blocks(dzt.size),), (THREADS,),
        (dzt, dy, y, argmax, np.int64(n), np.int64(m), np.int32(ph), np.int32(pw), np.int32(oh),
         np.int32(ow), np.int32(code), np.float64(alpha), np.int32(k), np.int32(stride)))
    count = n * oh * ow
    g = channel_grid(count, m)
    scratch = workspace(g * m + 1)
    partial, center = scratch[:g * m], scratch[g * m:]   # center: unread when not squared
    kernel("conv", expr("channel_sums", t))(
        (g, m), (THREADS,), (partial, dzt, center, np.int64(count), np.int64(m), np.int64(1), np.int32(0)))
    kernel("conv", expr("column_sums", t))(
        (cdiv(m, THREADS),), (THREADS,), (db, partial, np.int64(g), np.int64(m)))


def transpose(out, a):
    # out = a.T, both 2-D
    na, nb = a.shape
    same_shape("out", out, (nb, na))
    t = ftype(out, a)
    if a.size == 0:
        return
    kernel("conv", expr("transpose", t))(
        (blocks(a.size),), (THREADS,), (out, a, np.int64(na), np.int64(nb)))
