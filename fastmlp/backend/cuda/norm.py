"""Batch normalisation on the GPU: the launchers of kernels/norm.cu.

Must match reference.batchnorm_forward and batchnorm_backward; the same names and
arguments as the CPU twins in cpu/norm.py. Each op launches its passes in order
(kernels/norm.cu says which).
"""
import numpy as np

from .launch import THREADS, blocks, cdiv, channel_grid, check_f64, ftype, kernel, same_shape, workspace
from .source import expr


def batchnorm_forward(y, mean, invstd, running_mean, running_var, x, gamma, beta,
                      momentum, eps, training):
    # x, y (N, F) or (N, C, H, W) seen as (N, C, H*W); mean, invstd, running_* (C,) float64
    n, c = x.shape[:2]
    npix = x.size // max(1, n * c)
    same_shape("y", y, x.shape)
    for what, a in (("gamma", gamma), ("beta", beta)):
        same_shape(what, a, (c,))
    for what, a in (("mean", mean), ("invstd", invstd), ("running_mean", running_mean),
                    ("running_var", running_var)):
        check_f64(what, a, c)
    t = ftype(y, x, gamma, beta)
    if x.size == 0:
        return
    per_channel = (cdiv(c, THREADS),), (THREADS,)
    if training:
        count = n * npix
        g = channel_grid(count, c)
        partial = workspace(g * c)
        sums = kernel("norm", expr("channel_sums", t))
        sums((g, c), (THREADS,), (partial, x, mean, np.int64(n), np.int64(c), np.int64(npix), np.int32(0)))
        kernel("norm", "batchnorm_mean")(*per_channel, (mean, partial, np.int64(g), np.int64(c), np.int64(count)))
        sums((g, c), (THREADS,), (partial, x, mean, np.int64(n), np.int64(c), np.int64(npix), np.int32(1)))
        kernel("norm", "batchnorm_var")(
            *per_channel, (invstd, running_mean, running_var, mean, partial, np.int64(g), np.int64(c),
                           np.int64(count), np.float64(momentum), np.float64(eps)))
    else:
        kernel("norm", "batchnorm_eval_stats")(
            *per_channel, (mean, invstd, running_mean, running_var, np.int64(c), np.float64(eps)))
    kernel("norm", expr("batchnorm_apply", t))(
        (blocks(x.size),), (THREADS,),
        (y, x, mean, invstd, gamma, beta, np.int64(n), np.int64(c), np.int64(npix)))


def batchnorm_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, training):
    # dx, dy, x as x in forward; dgamma, dbeta, gamma (C,); mean, invstd (C,) float64
    n, c = x.shape[:2]
    npix = x.size // max(1, n * c)
    same_shape("dx", dx, x.shape)
    same_shape("dy", dy, x.shape)
    for what, a in (("dgamma", dgamma), ("dbeta", dbeta), ("gamma", gamma)):
        same_shape(what, a, (c,))
    check_f64("mean", mean, c)
    check_f64("invstd", invstd, c)
    t = ftype(dx, dy, x, dgamma, dbeta, gamma)
    if x.size == 0:
        return
    count = n * npix
    g = channel_grid(count, c)
    scratch = workspace(g * 2 * c + 2 * c)
    partial, coef = scratch[:g * 2 * c], scratch[g * 2 * c:]
    kernel("norm", expr("batchnorm_backward_sums", t))(
        (g, c), (THREADS,), (partial, dy, x, mean, np.int64(n), np.int64(c), np.int64(npix)))
    kernel("norm", expr("batchnorm_backward_finish", t))(
        (cdiv(c, THREADS),), (THREADS,),
        (dgamma, dbeta, coef, partial, invstd, np.int64(g), np.int64(c), np.int64(count),
         np.int32(bool(training))))
    kernel("norm", expr("batchnorm_backward_apply", t))(
        (blocks(x.size),), (THREADS,),
        (dx, dy, x, mean, invstd, gamma, coef, np.int64(n), np.int64(c), np.int64(npix)))
