"""The losses on the CPU, each fused with its gradient, and softmax: the Numba twins of
kernels/loss.cu and their ops.

Must match reference.softmax_forward, softmax_xent, bce_logits and mse, and the
weighted losses softmax_xent_weighted, bce_logits_weighted and mse_weighted (each
sample's loss and gradient times its weight, weights (N,) float64; kernels of their
own, so that the unweighted ones stay as they are). The loss
arithmetic runs in float64 whatever the dtype; only the gradient is rounded to it.
stats (2,) float64 is added into: [sum of per-sample losses, correct predictions].
"""
import math

import numpy as np
from numba import njit, prange

from .jit import cover_dependencies, pick, twins


@njit(inline="always", nogil=True, error_model="numpy")
def softmax_row(p, logits, i):
    """Row i of p = softmax(logits) (p may be logits: each element is read before it is
    written); also the last step of backend/cpu/dense_chain.py."""
    m = logits.shape[1]
    mx = logits[i, 0]
    for j in range(1, m):
        mx = max(mx, logits[i, j])
    s = 0.0
    for j in range(m):
        e = math.exp(logits[i, j] - mx)
        p[i, j] = e
        s += e
    for j in range(m):
        p[i, j] = p[i, j] / s


def _softmax_forward(p, logits):
    # p, logits (N, M)
    for i in prange(logits.shape[0]):
        softmax_row(p, logits, i)


softmax_forward_twins = twins(_softmax_forward)


def softmax_forward(p, logits):
    # p, logits (N, M)
    pick(softmax_forward_twins, logits.size)(p, logits)


def _softmax_xent(dlogits, stats, logits, labels, scale):
    # logits (N, M), labels (N,) ints; dlogits (N, M); stats (2,) += [loss sum, correct]
    n, m = logits.shape
    loss_sum = 0.0
    correct_sum = 0.0
    for i in prange(n):
        mx = np.float64(logits[i, 0])
        arg = 0
        for j in range(1, m):
            if logits[i, j] > mx:
                mx = np.float64(logits[i, j])
                arg = j
        s = 0.0
        for j in range(m):                      # one exp per element, kept in dlogits
            e = math.exp(np.float64(logits[i, j]) - mx)
            dlogits[i, j] = e
            s += e
        y = labels[i]
        loss_sum += math.log(s) - (np.float64(logits[i, y]) - mx)
        correct_sum += 1.0 if arg == y else 0.0
        k = scale / s
        for j in range(m):
            dlogits[i, j] = dlogits[i, j] * k
        dlogits[i, y] -= scale
    stats[0] += loss_sum
    stats[1] += correct_sum


softmax_xent_twins = twins(_softmax_xent)


def softmax_xent(dlogits, stats, logits, labels, scale):
    # dlogits, logits (N, M); labels (N,) integers
    pick(softmax_xent_twins, logits.size)(dlogits, stats, logits, labels, scale)


def _bce_logits(dlogits, stats, logits, targets, scale):
    # logits, targets (N, M); per-sample loss is the mean over M
    n, m = logits.shape
    loss_sum = 0.0
    correct_sum = 0.0
    sm = scale / m
    for i in prange(n):
        ls = 0.0
        cs = 0.0
        for j in range(m):
            x = np.float64(logits[i, j])
            y = np.float64(targets[i, j])
            ls += max(x, 0.0) - x * y + math.log1p(math.exp(-abs(x)))
            dlogits[i, j] = (0.5 * (1.0 + math.tanh(0.5 * x)) - y) * sm
            if (x > 0) == (y > 0.5):
                cs += 1.0
        loss_sum += ls / m
        correct_sum += cs / m
    stats[0] += loss_sum
    stats[1] += correct_sum


bce_logits_twins = twins(_bce_logits)


def bce_logits(dlogits, stats, logits, targets, scale):
    # dlogits, logits, targets (N, M)
    pick(bce_logits_twins, logits.size)(dlogits, stats, logits, targets, scale)


def _mse(dout, stats, out, targets, scale):
    # out, targets (N, M); per-sample loss is the mean over M
    n, m = out.shape
    loss_sum = 0.0
    correct_sum = 0.0
    sm = 2.0 * scale / m
    for i in prange(n):
        ls = 0.0
        ao = 0
        at = 0
        for j in range(m):
            d = np.float64(out[i, j]) - np.float64(targets[i, j])
            ls += d * d
            dout[i, j] = d * sm
            if out[i, j] > out[i, ao]:
                ao = j
            if targets[i, j] > targets[i, at]:
                at = j
        loss_sum += ls / m
        if m == 1:
            correct_sum += 1.0 if abs(np.float64(out[i, 0]) - np.float64(targets[i, 0])) < 0.5 else 0.0
        else:
            correct_sum += 1.0 if ao == at else 0.0
    stats[0] += loss_sum
    stats[1] += correct_sum


mse_twins = twins(_mse)


def mse(dout, stats, out, targets, scale):
    # dout, out, targets (N, M)
    pick(mse_twins, out.size)(dout, stats, out, targets, scale)


def _softmax_xent_weighted(dlogits, stats, logits, labels, weights, scale):
    # as _softmax_xent, sample i's loss and gradient times weights[i]
    n, m = logits.shape
    loss_sum = 0.0
    correct_sum = 0.0
    for i in prange(n):
        mx = np.float64(logits[i, 0])
        arg = 0
        for j in range(1, m):
            if logits[i, j] > mx:
                mx = np.float64(logits[i, j])
                arg = j
        s = 0.0
        for j in range(m):
            e = math.exp(np.float64(logits[i, j]) - mx)
            dlogits[i, j] = e
            s += e
        y = labels[i]
        wi = weights[i]
        loss_sum += wi * (math.log(s) - (np.float64(logits[i, y]) - mx))
        correct_sum += 1.0 if arg == y else 0.0
        sw = scale * wi
        k = sw / s
        for j in range(m):
            dlogits[i, j] = dlogits[i, j] * k
        dlogits[i, y] -= sw
    stats[0] += loss_sum
    stats[1] += correct_sum


softmax_xent_weighted_twins = twins(_softmax_xent_weighted)


def softmax_xent_weighted(dlogits, stats, logits, labels, weights, scale):
    # dlogits, logits (N, M); labels (N,) integers; weights (N,) float64
    pick(softmax_xent_weighted_twins, logits.size)(dlogits, stats, logits, labels, weights, scale)


def _bce_logits_weighted(dlogits, stats, logits, targets, weights, scale):
    n, m = logits.shape
    loss_sum = 0.0
    correct_sum = 0.0
    for i in prange(n):
        ls = 0.0
        cs = 0.0
        sm = scale / m * weights[i]
        for j in range(m):
            x = np.float64(logits[i, j])
            y = np.float64(targets[i, j])
            ls += max(x, 0.0) - x * y + math.log1p(math.exp(-abs(x)))
            dlogits[i, j] = (0.5 * (1.0 + math.tanh(0.5 * x)) - y) * sm
            if (x > 0) == (y > 0.5):
                cs += 1.0
        loss_sum += weights[i] * ls / m
        correct_sum += cs / m
    stats[0] += loss_sum
    stats[1] += correct_sum


bce_logits_weighted_twins = twins(_bce_logits_weighted)


def bce_logits_weighted(dlogits, stats, logits, targets, weights, scale):
    # dlogits, logits, targets (N, M); weights (N,) float64
    pick(bce_logits_weighted_twins, logits.size)(dlogits, stats, logits, targets, weights, scale)


def _mse_weighted(dout, stats, out, targets, weights, scale):
    n, m = out.shape
    loss_sum = 0.0
    correct_sum = 0.0
    for i in prange(n):
        ls = 0.0
        ao = 0
        at = 0
        sm = 2.0 * scale / m * weights[i]
        for j in range(m):
            d = np.float64(out[i, j]) - np.float64(targets[i, j])
            ls += d * d
            dout[i, j] = d * sm
            if out[i, j] > out[i, ao]:
                ao = j
            if targets[i, j] > targets[i, at]:
                at = j
        loss_sum += weights[i] * ls / m
        if m == 1:
            correct_sum += 1.0 if abs(np.float64(out[i, 0]) - np.float64(targets[i, 0])) < 0.5 else 0.0
        else:
            correct_sum += 1.0 if ao == at else 0.0
    stats[0] += loss_sum
    stats[1] += correct_sum


mse_weighted_twins = twins(_mse_weighted)


def mse_weighted(dout, stats, out, targets, weights, scale):
    # dout, out, targets (N, M); weights (N,) float64
    pick(mse_weighted_twins, out.size)(dout, stats, out, targets, weights, scale)


cover_dependencies(__name__)
