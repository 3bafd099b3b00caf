"""One-launch optimizer steps over the flat parameter buffer on the GPU: the launchers of
kernels/optim.cu.

Must match reference.sgd_update, adam_update, add_reg_grad, reg_penalty and the full
steps grad_clip_factors, sgd_step, adam_step, rmsprop_step; the same
names and arguments as the CPU twins in cpu/optim.py, and the same arithmetic: the
updates compute in the parameter dtype, as torch.optim does (kernels/optim.cu says how).
"""
import numpy as np

from .launch import MAX_REDUCE_BLOCKS, THREADS, blocks, cdiv, ftype, itype, kernel, same_shape, workspace
from .source import expr


def _segments(seg_start, seg_stop, seg_l1, seg_l2):
    # NS segments [seg_start[s], seg_stop[s]), the starts increasing (the kernels search them)
    s = seg_l1.size
    for what, a in (("seg_start", seg_start), ("seg_stop", seg_stop)):
        if a.dtype != np.int64 or a.size != s:
            raise TypeError(f"expected {what} int64 of shape ({s},), got {a.dtype} {a.shape}")
    for what, a in (("seg_l1", seg_l1), ("seg_l2", seg_l2)):
        if a.dtype != np.float64 or a.size != s:
            raise TypeError(f"expected {what} float64 of shape ({s},), got {a.dtype} {a.shape}")
    return np.int64(s)


def sgd_update(params, prev, buf, bad, grads, seg_start, seg_stop, seg_l1, seg_l2,
               lr, momentum, nesterov):
    if momentum != 0.0 and buf is None:
        raise ValueError("expected a momentum buffer buf of shape (NP,) when momentum != 0, got None")
    t = ftype(*((params, prev, grads) if buf is None else (params, prev, buf, grads)))
    for what, a in zip(("prev", "buf", "grads"), (prev, buf, grads)):
        if a is not None:
            same_shape(what, a, params.shape)
    s = _segments(seg_start, seg_stop, seg_l1, seg_l2)
    bt = itype(bad, "bad")
    if params.size == 0:
        return
    kernel("optim", expr("sgd_update", t, bt))(
        (blocks(params.size),), (THREADS,),
        (params, prev, buf, bad, grads, seg_start, seg_stop, seg_l1, seg_l2, np.int64(params.size), s,
         np.float64(lr), np.float64(momentum), np.int32(bool(nesterov))))


def adam_update(params, prev, m, v, bad, grads, seg_start, seg_stop, seg_l1, seg_l2,
                lr, beta1, beta2, eps, step):
    t = ftype(params, prev, m, v, grads)
    for what, a in zip(("prev", "m", "v", "grads"), (prev, m, v, grads)):
        same_shape(what, a, params.shape)
    s = _segments(seg_start, seg_stop, seg_l1, seg_l2)
    bt = itype(bad, "bad")
    if step.dtype != np.int64 or step.shape != (1,):
        raise TypeError(f"expected step as an int64 device array of shape (1,), got {step.dtype} {step.shape}")
    if params.size == 0:
        return
    kernel("optim", expr("adam_update", t, bt))(
        (blocks(params.size),), (THREADS,),
        (params, prev, m, v, bad, grads, seg_start, seg_stop, seg_l1, seg_l2, np.int64(params.size), s,
         np.float64(lr), np.float64(beta1), np.float64(beta2), np.float64(eps), step))


def add_reg_grad(grads, params, seg_start, seg_stop, seg_l1, seg_l2):
    t = ftype(grads, params)
    same_shape("params", params, grads.shape)
    s = _segments(seg_start, seg_stop, seg_l1, seg_l2)
    if params.size == 0:
        return
    kernel("optim", expr("add_reg_grad", t))(
        (blocks(params.size),), (THREADS,),
        (grads, params, seg_start, seg_stop, seg_l1, seg_l2, np.int64(params.size), s))


def reg_penalty(out, params, seg_start, seg_stop, seg_l1, seg_l2):
    # out (1,) float64 = l1 * sum|w| + l2 * sum w^2 over the segments (assigned)
    if out.dtype != np.float64 or out.size != 1:
        raise TypeError(f"expected out as a float64 device array of 1, got {out.dtype} {out.shape}")
    t = ftype(params)
    s = _segments(seg_start, seg_stop, seg_l1, seg_l2)
    g = min(cdiv(max(params.size, 1), 4 * THREADS), MAX_REDUCE_BLOCKS)
    partial = workspace(g)
    kernel("optim", expr("reg_penalty", t))(
        (g,), (THREADS,),
        (partial, params, seg_start, seg_stop, seg_l1, seg_l2, np.int64(params.size), s))
    kernel("optim", "reg_penalty_finish")((1,), (THREADS,), (out, partial, np.int64(g)))


def _step_scalars(factor, lr, s):
    # factor (NS,) and lr (1,): float64 device arrays the full steps read
    for what, a, n in (("factor", factor, int(s)), ("lr", lr, 1)):
        if a.dtype != np.float64 or a.shape != (n,):
            raise TypeError(f"expected {what} as a float64 device array of shape ({n},), got {a.dtype} {a.shape}")


def grad_clip_factors(factor, grads, params, seg_start, seg_stop, seg_l1, seg_l2, max_norm, per_segment):
    # factor (NS,) float64, assigned: two launches (per-segment sums, then the factors)
    t = ftype(grads, params)
    same_shape("params", params, grads.shape)
    s = _segments(seg_start, seg_stop, seg_l1, seg_l2)
    if factor.dtype != np.float64 or factor.shape != (int(s),):
        raise TypeError(f"expected factor as a float64 device array of shape ({s},), got {factor.dtype} {factor.shape}")
    if s == 0:
        return
    kernel("optim", expr("grad_sq_norms", t))(
        (int(s),), (THREADS,), (factor, grads, params, seg_start, seg_stop, seg_l1, seg_l2))
    kernel("optim", "grad_clip_finish")(
        (1,), (THREADS,), (factor, s, np.float64(max_norm), np.int32(bool(per_segment))))


def sgd_step(params, prev, buf, bad, grads, seg_start, seg_stop, seg_l1, seg_l2, factor, lr,
             clipvalue, weight_decay, momentum, nesterov):
    if momentum != 0.0 and buf is None:
        raise ValueError("expected a momentum buffer buf of shape (NP,) when momentum != 0, got None")
    t = ftype(*((params, prev, grads) if buf is None else (params, prev, buf, grads)))
    for what, a in zip(("prev", "buf", "grads"), (prev, buf, grads)):
        if a is not None:
            same_shape(what, a, params.shape)
    s = _segments(seg_start, seg_stop, seg_l1, seg_l2)
    _step_scalars(factor, lr, s)
    bt = itype(bad, "bad")
    if params.size == 0:
        return
    kernel("optim", expr("sgd_step", t, bt))(
        (blocks(params.size),), (THREADS,),
        (params, prev, buf, bad, grads, seg_start, seg_stop, seg_l1, seg_l2, factor, lr,
         np.int64(params.size), s, np.float64(clipvalue), np.float64(weight_decay), np.float64(momentum),
         np.int32(bool(nesterov))))


def adam_step(params, prev, m, v, bad, grads, seg_start, seg_stop, seg_l1, seg_l2, factor, lr,
              clipvalue, weight_decay, decoupled, beta1, beta2, eps, step):
    t = ftype(params, prev, m, v, grads)
    for what, a in zip(("prev", "m", "v", "grads"), (prev, m, v, grads)):
        same_shape(what, a, params.shape)
    s = _segments(seg_start, seg_stop, seg_l1, seg_l2)
    _step_scalars(factor, lr, s)
    bt = itype(bad, "bad")
    if step.dtype != np.int64 or step.shape != (1,):
        raise TypeError(f"expected step as an int64 device array of shape (1,), got {step.dtype} {step.shape}")
    if params.size == 0:
        return
    kernel("optim", expr("adam_step", t, bt))(
        (blocks(params.size),), (THREADS,),
        (params, prev, m, v, bad, grads, seg_start, seg_stop, seg_l1, seg_l2, factor, lr, np.int64(params.size), s,
         np.float64(clipvalue), np.float64(weight_decay), np.int32(bool(decoupled)),
         np.float64(beta1), np.float64(beta2), np.float64(eps), step))


def rmsprop_step(params, prev, square_avg, buf, grad_avg, bad, grads, seg_start, seg_stop, seg_l1, seg_l2,
                 factor, lr, clipvalue, weight_decay, alpha, eps, momentum, centered):
    t = ftype(params, prev, square_avg, buf, grad_avg, grads)
    for what, a in zip(("prev", "square_avg", "buf", "grad_avg", "grads"), (prev, square_avg, buf, grad_avg, grads)):
        same_shape(what, a, params.shape)
    s = _segments(seg_start, seg_stop, seg_l1, seg_l2)
    _step_scalars(factor, lr, s)
    bt = itype(bad, "bad")
    if params.size == 0:
        return
    kernel("optim", expr("rmsprop_step", t, bt))(
        (blocks(params.size),), (THREADS,),
        (params, prev, square_avg, buf, grad_avg, bad, grads, seg_start, seg_stop, seg_l1, seg_l2, factor, lr,
         np.int64(params.size), s, np.float64(clipvalue), np.float64(weight_decay), np.float64(alpha),
         np.float64(eps), np.float64(momentum), np.int32(bool(centered))))
