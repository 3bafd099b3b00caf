"""Batch normalisation on the CPU: the Numba twins of kernels/norm.cu and their ops.

Must match reference.batchnorm_forward and batchnorm_backward. x (N, F) or (N, C, H, W)
is seen as (N, C, H*W) (F = C for (N, F) input, with H*W = 1); the per-channel statistics
and sums are float64. A thread sums a block of images into its own row of a float64
scratch, then the rows are added in order: the sums depend on the shape only, not on the
thread count.
"""
import math

from numba import njit, prange

from . import reduce
from .jit import cover_dependencies, pick, twins
from .reduce import partial_sums, sum4


# Sums in float64 with four interleaved partial sums, as reduce.sum4.

@njit(inline="always", error_model="numpy")
def _sumsq_dev4(v, mu):
    # sum of (v - mu)^2
    s0 = s1 = s2 = s3 = 0.0
    n4 = v.size - v.size % 4
    for t in range(0, n4, 4):
        d0 = v[t] - mu
        d1 = v[t + 1] - mu
        d2 = v[t + 2] - mu
        d3 = v[t + 3] - mu
        s0 += d0 * d0
        s1 += d1 * d1
        s2 += d2 * d2
        s3 += d3 * d3
    for t in range(n4, v.size):
        d0 = v[t] - mu
        s0 += d0 * d0
    return (s0 + s1) + (s2 + s3)


@njit(inline="always", error_model="numpy")
def _sum_and_dot_dev4(g, v, mu):
    # (sum of g, sum of g * (v - mu))
    a0 = a1 = a2 = a3 = 0.0
    b0 = b1 = b2 = b3 = 0.0
    n4 = v.size - v.size % 4
    for t in range(0, n4, 4):
        a0 += g[t]
        a1 += g[t + 1]
        a2 += g[t + 2]
        a3 += g[t + 3]
        b0 += g[t] * (v[t] - mu)
        b1 += g[t + 1] * (v[t + 1] - mu)
        b2 += g[t + 2] * (v[t + 2] - mu)
        b3 += g[t + 3] * (v[t + 3] - mu)
    for t in range(n4, v.size):
        a0 += g[t]
        b0 += g[t] * (v[t] - mu)
    return (a0 + a1) + (a2 + a3), (b0 + b1) + (b2 + b3)


def _batchnorm_forward(y, mean, invstd, running_mean, running_var, partial, x, gamma, beta,
                       momentum, eps, training):
    # x, y (N, C, H*W); mean, invstd, running_mean, running_var (C,) float64;
    # partial (BLOCKS, C) float64 scratch: per-block channel sums in a fixed order
    n, c, npix = x.shape
    if training:
        cnt = n * npix
        nblocks = min(n, partial.shape[0])
        for blk in prange(nblocks):             # mean: two-pass, then the squared deviations
            for ch in range(c):
                partial[blk, ch] = 0.0
            for i in range(blk * n // nblocks, (blk + 1) * n // nblocks):
                for ch in range(c):
                    partial[blk, ch] += sum4(x[i, ch])
        for ch in range(c):
            s = 0.0
            for blk in range(nblocks):
                s += partial[blk, ch]
            mean[ch] = s / cnt
        for blk in prange(nblocks):
            for ch in range(c):
                partial[blk, ch] = 0.0
            for i in range(blk * n // nblocks, (blk + 1) * n // nblocks):
                for ch in range(c):
                    partial[blk, ch] += _sumsq_dev4(x[i, ch], mean[ch])
        for ch in range(c):
            s = 0.0
            for blk in range(nblocks):
                s += partial[blk, ch]
            var = s / cnt
            unbiased = var * cnt / (cnt - 1) if cnt > 1 else var
            invstd[ch] = 1.0 / math.sqrt(var + eps)
            running_mean[ch] = momentum * running_mean[ch] + (1.0 - momentum) * mean[ch]
            running_var[ch] = momentum * running_var[ch] + (1.0 - momentum) * unbiased
    else:
        for ch in range(c):
            mean[ch] = running_mean[ch]
            invstd[ch] = 1.0 / math.sqrt(running_var[ch] + eps)
    for i in prange(n):
        for ch in range(c):
            mu = mean[ch]
            scale = gamma[ch] * invstd[ch]
            shift = beta[ch]
            for t in range(npix):
                y[i, ch, t] = (x[i, ch, t] - mu) * scale + shift


batchnorm_forward_twins = twins(_batchnorm_forward)


def _channels(a):
    # (N, F) -> (N, F, 1); (N, C, H, W) -> (N, C, H*W): a view
    return a.reshape(a.shape[0], a.shape[1], -1)


def batchnorm_forward(y, mean, invstd, running_mean, running_var, x, gamma, beta,
                      momentum, eps, training):
    # x, y (N, F) or (N, C, H, W); mean, invstd, running_* (C,) float64; gamma, beta (C,)
    pick(batchnorm_forward_twins, x.size)(
        _channels(y), mean, invstd, running_mean, running_var, partial_sums(x.shape[1]),
        _channels(x), gamma, beta, float(momentum), float(eps), bool(training))


def _batchnorm_backward(dx, dgamma, dbeta, partial, dy, x, mean, invstd, gamma, training):
    # dy, x, dx (N, C, H*W); dgamma, dbeta (C,); partial (BLOCKS, 2C) float64 scratch:
    # columns [0, C) sum dy, [C, 2C) sum dy * (x - mean), per block of images
    n, c, npix = x.shape
    cnt = n * npix
    nblocks = min(n, partial.shape[0])
    for blk in prange(nblocks):
        for ch in range(2 * c):
            partial[blk, ch] = 0.0
        for i in range(blk * n // nblocks, (blk + 1) * n // nblocks):
            for ch in range(c):
                s1, s2 = _sum_and_dot_dev4(dy[i, ch], x[i, ch], mean[ch])
                partial[blk, ch] += s1
                partial[blk, c + ch] += s2
    for ch in range(c):                        # totals kept (float64) in partial's row 0
        s1 = 0.0
        s2 = 0.0
        for blk in range(nblocks):
            s1 += partial[blk, ch]
            s2 += partial[blk, c + ch]
        s2 *= invstd[ch]
        partial[0, ch] = s1
        partial[0, c + ch] = s2
        dbeta[ch] = s1
        dgamma[ch] = s2
    for i in prange(n):
        for ch in range(c):
            mu = mean[ch]
            inv = invstd[ch]
            g = gamma[ch] * inv
            a = partial[0, ch] / cnt if training else 0.0
            b = partial[0, c + ch] / cnt if training else 0.0
            for t in range(npix):
                dx[i, ch, t] = g * (dy[i, ch, t] - a - (x[i, ch, t] - mu) * inv * b)


batchnorm_backward_twins = twins(_batchnorm_backward)


def batchnorm_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, training):
    # dx, dy, x as x in forward; dgamma, dbeta, gamma (C,); mean, invstd (C,) float64
    pick(batchnorm_backward_twins, x.size)(
        _channels(dx), dgamma, dbeta, partial_sums(2 * x.shape[1]), _channels(dy), _channels(x),
        mean, invstd, gamma, bool(training))


cover_dependencies(__name__, reduce)
