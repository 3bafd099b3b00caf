"""The losses on the GPU, each fused with its gradient, and softmax: the launchers of
kernels/loss.cu.

Must match reference.softmax_forward, softmax_xent, bce_logits, mse and their weighted
twins (softmax_xent_weighted, bce_logits_weighted, mse_weighted); the same names
and arguments as the CPU twins in cpu/loss.py. stats (2,) float64 stays on the device.
"""
import numpy as np

from .launch import MAX_BLOCKS, MAX_REDUCE_BLOCKS, THREADS, cdiv, ftype, itype, kernel, same_shape, workspace
from .source import expr


def _check_stats(stats):
    if stats.dtype != np.float64 or stats.size != 2:
        raise TypeError(f"expected stats as a float64 device array of 2, "
                        f"got {stats.dtype} {stats.shape}")


_ROWS_PER_BLOCK = THREADS // 32   # softmax: one warp a row


def _finish_stats(stats, g, loss_div, correct_div, partial):
    kernel("loss", "loss_stats_finish")(
        (1,), (THREADS,),
        (stats, partial, np.int64(g), np.float64(loss_div), np.float64(correct_div)))


def softmax_forward(p, logits):
    n, c = logits.shape
    same_shape("p", p, (n, c))
    t = ftype(p, logits)
    if logits.size == 0:
        return
    g = min(cdiv(n, _ROWS_PER_BLOCK), MAX_BLOCKS)
    kernel("loss", expr("softmax_forward", t))(
        (g,), (THREADS,), (p, logits, np.int64(n), np.int64(c)))


def softmax_xent(dlogits, stats, logits, labels, scale):
    n, c = logits.shape
    same_shape("dlogits", dlogits, (n, c))
    same_shape("labels", labels, (n,))
    _check_stats(stats)
    t = ftype(dlogits, logits)
    lt = itype(labels, "labels")
    if logits.size == 0:
        return
    g = min(cdiv(n, _ROWS_PER_BLOCK), MAX_REDUCE_BLOCKS)
    partial = workspace(2 * g)
    kernel("loss", expr("softmax_xent", t, lt))(
        (g,), (THREADS,),
        (dlogits, partial, logits, labels, np.int64(n), np.int64(c), np.float64(scale)))
    _finish_stats(stats, g, 1.0, 1.0, partial)


def bce_logits(dlogits, stats, logits, targets, scale):
    n, k = logits.shape
    same_shape("dlogits", dlogits, (n, k))
    same_shape("targets", targets, (n, k))
    _check_stats(stats)
    t = ftype(dlogits, logits, targets)
    if logits.size == 0:
        return
    g = min(cdiv(logits.size, 4 * THREADS), MAX_REDUCE_BLOCKS)
    partial = workspace(2 * g)
    kernel("loss", expr("bce_logits", t))(
        (g,), (THREADS,),
        (dlogits, partial, logits, targets, np.int64(logits.size), np.int64(k), np.float64(scale)))
    _finish_stats(stats, g, k, k, partial)


def mse(dout, stats, out, targets, scale):
    n, m = out.shape
    same_shape("dout", dout, (n, m))
    same_shape("targets", targets, (n, m))
    _check_stats(stats)
    t = ftype(dout, out, targets)
    if out.size == 0:
        return
    g = min(cdiv(n, THREADS), MAX_REDUCE_BLOCKS)
    partial = workspace(2 * g)
    kernel("loss", expr("mse", t))(
        (g,), (THREADS,),
        (dout, partial, out, targets, np.int64(n), np.int64(m), np.float64(scale)))
    _finish_stats(stats, g, m, 1.0, partial)


def _check_weights(weights, n):
    if weights.dtype != np.float64 or weights.shape != (n,) or not weights.flags.c_contiguous:
        raise TypeError(f"expected weights as a C-contiguous float64 device array of shape ({n},), "
                        f"got {weights.dtype} {weights.shape}")


def softmax_xent_weighted(dlogits, stats, logits, labels, weights, scale):
    n, c = logits.shape
    same_shape("dlogits", dlogits, (n, c))
    same_shape("labels", labels, (n,))
    _check_stats(stats)
    _check_weights(weights, n)
    t = ftype(dlogits, logits)
    lt = itype(labels, "labels")
    if logits.size == 0:
        return
    g = min(cdiv(n, _ROWS_PER_BLOCK), MAX_REDUCE_BLOCKS)
    partial = workspace(2 * g)
    kernel("loss", expr("softmax_xent_weighted", t, lt))(
        (g,), (THREADS,),
        (dlogits, partial, logits, labels, weights, np.int64(n), np.int64(c), np.float64(scale)))
    _finish_stats(stats, g, 1.0, 1.0, partial)


def bce_logits_weighted(dlogits, stats, logits, targets, weights, scale):
    n, k = logits.shape
    same_shape("dlogits", dlogits, (n, k))
    same_shape("targets", targets, (n, k))
    _check_stats(stats)
    _check_weights(weights, n)
    t = ftype(dlogits, logits, targets)
    if logits.size == 0:
        return
    g = min(cdiv(logits.size, 4 * THREADS), MAX_REDUCE_BLOCKS)
    partial = workspace(2 * g)
    kernel("loss", expr("bce_logits_weighted", t))(
        (g,), (THREADS,),
        (dlogits, partial, logits, targets, weights, np.int64(logits.size), np.int64(k), np.float64(scale)))
    _finish_stats(stats, g, k, k, partial)


def mse_weighted(dout, stats, out, targets, weights, scale):
    n, m = out.shape
    same_shape("dout", dout, (n, m))
    same_shape("targets", targets, (n, m))
    _check_stats(stats)
    _check_weights(weights, n)
    t = ftype(dout, out, targets)
    if out.size == 0:
        return
    g = min(cdiv(n, THREADS), MAX_REDUCE_BLOCKS)
    partial = workspace(2 * g)
    kernel("loss", expr("mse_weighted", t))(
        (g,), (THREADS,),
        (dout, partial, out, targets, weights, np.int64(n), np.int64(m), np.float64(scale)))
    _finish_stats(stats, g, m, 1.0, partial)
