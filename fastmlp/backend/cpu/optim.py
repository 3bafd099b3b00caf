"""One-call optimizer steps over the flat parameter buffer on the CPU: the Numba twins of
kernels/optim.cu and their ops.

Must match reference.sgd_update, adam_update, add_reg_grad and reg_penalty
(torch.optim.SGD and torch.optim.Adam, with the Keras L1/L2 gradient
l1 * sign(w) + 2 * l2 * w added to the gradient), and the full steps
reference.grad_clip_factors, sgd_step, adam_step (Adam and AdamW) and rmsprop_step:
the rate read from an array, the gradient clipped, torch's weight decay.

Precision: an update computes in the parameter dtype, as torch.optim does, since
the updates are meant to match torch's step by step; float32 parameters get float32
arithmetic (and vectorised loops). The scalars (lr, betas, eps, the L1/L2
coefficients, Adam's bias corrections) are formed in float64 and cast once
(``cast_like``); kernels/optim.cu does the same, operation for operation.
reg_penalty is part of the loss, and sums in float64 like the losses.

The kernels loop over the segments of the flat buffer and hand each segment to an
inlined helper as 1-D slices: indexing the whole buffer within [lo, hi) bounds keeps
LLVM from vectorising the loop, slices with their own base pointers vectorise.
Segment s is [seg_start[s], seg_stop[s]); elements outside every segment (the
alignment padding of params.py) are never read or written.
"""
import math

import numpy as np
from numba import njit, prange

from .jit import any_nonfinite, cast_like, cover_dependencies, nonfinite_bits, pick, twins


@njit(cache=True, nogil=True)
def _span(seg_start, seg_stop):
    # the elements in the segments: the work that picks the twin (not params.size: the
    # full-batch row-space path empties layer 0's segment, 245,760 of P1's parameters, and
    # its update of the other 200 took 105 against 6 us as parallel loops)
    n = 0
    for s in range(seg_start.size):
        n += seg_stop[s] - seg_start[s]
    return n


@njit(inline="always", error_model="numpy")
def _reg(w, l1, l2x2):
    # d/dw of l1 |w| + l2 w^2 (0 at w = 0), in w's dtype (l1, l2x2 already cast);
    # adds exactly 0 to the gradient of an unregularised (finite) parameter
    return l1 * np.sign(w) + l2x2 * w


@njit(inline="always", error_model="numpy")
def _count_nonfinite(w):
    # how many of w are NaN or Inf (x - x is NaN for exactly those): run only when an update
    # loop's nonfinite_bits saw one. Counted in every update loop this way, the count held
    # LLVM to 4-wide vectors (Adam on P2's 269,322 float32 parameters, alone: 500-570 against
    # 350-370 us in a loop of its own); the flag costs the update nothing of its width (SGD
    # there, alone: 113 against 193 us with the counting loop after it)
    bad = 0
    for i in prange(w.size):
        d = w[i] - w[i]
        bad += np.int32(d != d)
    return bad


@njit(inline="always", error_model="numpy")
def _nonfinite_count(seen, w):
    # how many of the new parameters w are NaN or Inf (float32 may overflow), given ``seen``:
    # the largest nonfinite_bits of them, taken in the update loop
    return _count_nonfinite(w) if any_nonfinite(seen, w) else 0


@njit(inline="always", error_model="numpy")
def _sgd_loop(w, prev, buf, g, lr, momentum, nesterov, l1, l2x2):
    seen = nonfinite_bits(cast_like(0.0, w))
    for i in prange(w.size):
        wi = w[i]
        gi = g[i] + _reg(wi, l1, l2x2)
        if momentum == 0:
            step = gi
        else:
            b = momentum * buf[i] + gi
            buf[i] = b
            step = gi + momentum * b if nesterov else b
        prev[i] = wi
        wn = wi - lr * step
        w[i] = wn
        seen = max(seen, nonfinite_bits(wn))
    return seen


@njit(inline="always", error_model="numpy")
def _sgd_segment(w, prev, buf, g, lr, momentum, nesterov, l1, l2x2):
    lr, momentum = cast_like(lr, w), cast_like(momentum, w)
    l1, l2x2 = cast_like(l1, w), cast_like(l2x2, w)
    if momentum == 0:   # a constant 0 in the loop: LLVM drops its momentum branch and vectorises
        seen = _sgd_loop(w, prev, buf, g, lr, cast_like(0.0, w), False, l1, l2x2)
    else:
        seen = _sgd_loop(w, prev, buf, g, lr, momentum, nesterov, l1, l2x2)
    return _nonfinite_count(seen, w)   # the stored values: float32 may overflow


def _sgd_update(params, prev, buf, bad, grads, seg_start, seg_stop, seg_l1, seg_l2,
                lr, momentum, nesterov):
    # params, prev, buf, grads (NP,); segment s is [seg_start[s], seg_stop[s]) with its
    # L1/L2 coefficients seg_l1[s], seg_l2[s]; bad (1,) += the non-finite new parameters
    nbad = 0
    for s in range(seg_l1.size):
        lo, hi = seg_start[s], seg_stop[s]
        mbuf = buf[lo:hi] if momentum != 0 else prev[lo:hi]   # unused without momentum
        nbad += _sgd_segment(params[lo:hi], prev[lo:hi], mbuf, grads[lo:hi], lr, momentum,
                             nesterov, seg_l1[s], 2.0 * seg_l2[s])
    bad[0] += nbad


sgd_update_twins = twins(_sgd_update)


def sgd_update(params, prev, buf, bad, grads, seg_start, seg_stop, seg_l1, seg_l2,
               lr, momentum, nesterov):
    # flat (NP,) buffers, NS segments; buf is None or unused when momentum == 0
    pick(sgd_update_twins, _span(seg_start, seg_stop))(params, prev, buf, bad, grads, seg_start, seg_stop,
                                        seg_l1, seg_l2, lr, momentum, nesterov)


@njit(inline="always", error_model="numpy")
def _adam_segment(w, prev, m, v, g, beta1, beta2, eps, step_size, sqrt_bc2, l1, l2x2):
    # 1 - beta is formed in float64 before the cast (as torch does with Python floats):
    # 1 - 0.999 in float32 would be off by 5e-5
    one_m_b1, one_m_b2 = cast_like(1.0 - beta1, w), cast_like(1.0 - beta2, w)
    beta1, beta2, eps = cast_like(beta1, w), cast_like(beta2, w), cast_like(eps, w)
    step_size, sqrt_bc2 = cast_like(step_size, w), cast_like(sqrt_bc2, w)
    l1, l2x2 = cast_like(l1, w), cast_like(l2x2, w)
    seen = nonfinite_bits(cast_like(0.0, w))
    for i in prange(w.size):
        wi = w[i]
        gi = g[i] + _reg(wi, l1, l2x2)
        mi = beta1 * m[i] + one_m_b1 * gi
        vi = beta2 * v[i] + one_m_b2 * gi * gi
        m[i] = mi
        v[i] = vi
        prev[i] = wi
        wn = wi - step_size * mi / (math.sqrt(vi) / sqrt_bc2 + eps)
        w[i] = wn
        seen = max(seen, nonfinite_bits(wn))
    return _nonfinite_count(seen, w)   # the stored values: float32 may overflow


def _adam_update(params, prev, m, v, bad, grads, seg_start, seg_stop, seg_l1, seg_l2,
                 lr, beta1, beta2, eps, step):
    # torch.optim.Adam; step (1,) int64 holds the step's count, from 1; the bias
    # corrections in float64, once a call
    step = float(step[0])
    step_size = lr / (1.0 - beta1 ** step)
    sqrt_bc2 = math.sqrt(1.0 - beta2 ** step)
    nbad = 0
    for s in range(seg_l1.size):
        lo, hi = seg_start[s], seg_stop[s]
        nbad += _adam_segment(params[lo:hi], prev[lo:hi], m[lo:hi], v[lo:hi], grads[lo:hi],
                              beta1, beta2, eps, step_size, sqrt_bc2, seg_l1[s], 2.0 * seg_l2[s])
    bad[0] += nbad


adam_update_twins = twins(_adam_update)


def adam_update(params, prev, m, v, bad, grads, seg_start, seg_stop, seg_l1, seg_l2,
                lr, beta1, beta2, eps, step):
    # flat (NP,) buffers, NS segments; step (1,) int64
    pick(adam_update_twins, _span(seg_start, seg_stop))(params, prev, m, v, bad, grads, seg_start, seg_stop,
                                         seg_l1, seg_l2, lr, beta1, beta2, eps, step)


# -- full steps: the rate from lr (1,) float64, clipping, weight decay ------------------

@njit(inline="always", error_model="numpy")
def _clamp(g, c):
    # g within [-c, c] (c = inf: unchanged); NaN stays NaN
    return c if g > c else (-c if g < -c else g)


@njit(inline="always", error_model="numpy")
def _sq_norm_segment(g, w, l1, l2x2):
    l1, l2x2 = cast_like(l1, w), cast_like(l2x2, w)
    acc = 0.0
    for i in prange(w.size):
        gi = np.float64(g[i] + _reg(w[i], l1, l2x2))
        acc += gi * gi
    return acc


def _grad_clip_factors(factor, grads, params, seg_start, seg_stop, seg_l1, seg_l2, max_norm, per_segment):
    # factor (NS,) float64 = min(1, max_norm / (norm + 1e-6)) with the segment's own norm of
    # grads + L1/L2 (per_segment) or that of all segments together; sums in float64
    ns = seg_l1.size
    total = 0.0
    for s in range(ns):
        lo, hi = seg_start[s], seg_stop[s]
        factor[s] = _sq_norm_segment(grads[lo:hi], params[lo:hi], seg_l1[s], 2.0 * seg_l2[s])
        total += factor[s]
    for s in range(ns):
        norm = math.sqrt(factor[s]) if per_segment else math.sqrt(total)
        factor[s] = min(1.0, max_norm / (norm + 1e-6))


grad_clip_factors_twins = twins(_grad_clip_factors)


def grad_clip_factors(factor, grads, params, seg_start, seg_stop, seg_l1, seg_l2, max_norm, per_segment):
    # factor (NS,) float64, assigned; grads, params (NP,)
    pick(grad_clip_factors_twins, _span(seg_start, seg_stop))(factor, grads, params, seg_start, seg_stop, seg_l1, seg_l2,
                                               max_norm, per_segment)


@njit(inline="always", error_model="numpy")
def _step_grad(gi, wi, l1, l2x2, factor, clipvalue, weight_decay):
    # the gradient a full step applies (all in w's dtype): clipped, then coupled weight decay
    return _clamp((gi + _reg(wi, l1, l2x2)) * factor, clipvalue) + weight_decay * wi


@njit(inline="always", error_model="numpy")
def _sgd_step_loop(w, prev, buf, g, l1, l2x2, factor, lr, clipvalue, weight_decay, momentum, nesterov):
    seen = nonfinite_bits(cast_like(0.0, w))
    for i in prange(w.size):
        wi = w[i]
        gi = _step_grad(g[i], wi, l1, l2x2, factor, clipvalue, weight_decay)
        if momentum == 0:
            step = gi
        else:
            b = momentum * buf[i] + gi
            buf[i] = b
            step = gi + momentum * b if nesterov else b
        prev[i] = wi
        wn = wi - lr * step
        w[i] = wn
        seen = max(seen, nonfinite_bits(wn))
    return seen


@njit(inline="always", error_model="numpy")
def _sgd_step_segment(w, prev, buf, g, l1, l2x2, factor, lr, clipvalue, weight_decay, momentum, nesterov):
    lr, momentum, factor = cast_like(lr, w), cast_like(momentum, w), cast_like(factor, w)
    l1, l2x2 = cast_like(l1, w), cast_like(l2x2, w)
    clipvalue, weight_decay = cast_like(clipvalue, w), cast_like(weight_decay, w)
    if momentum == 0:   # as _sgd_segment
        seen = _sgd_step_loop(w, prev, buf, g, l1, l2x2, factor, lr, clipvalue, weight_decay, cast_like(0.0, w), False)
    else:
        seen = _sgd_step_loop(w, prev, buf, g, l1, l2x2, factor, lr, clipvalue, weight_decay, momentum, nesterov)
    return _nonfinite_count(seen, w)   # the stored values: float32 may overflow


def _sgd_step(params, prev, buf, bad, grads, seg_start, seg_stop, seg_l1, seg_l2, factor, lr,
              clipvalue, weight_decay, momentum, nesterov):
    # as _sgd_update, with the rate lr[0], factor (NS,) and weight decay
    nbad = 0
    for s in range(seg_l1.size):
        lo, hi = seg_start[s], seg_stop[s]
        mbuf = buf[lo:hi] if momentum != 0 else prev[lo:hi]
        nbad += _sgd_step_segment(params[lo:hi], prev[lo:hi], mbuf, grads[lo:hi], seg_l1[s], 2.0 * seg_l2[s],
                                  factor[s], lr[0], clipvalue, weight_decay, momentum, nesterov)
    bad[0] += nbad


sgd_step_twins = twins(_sgd_step)


def sgd_step(params, prev, buf, bad, grads, seg_start, seg_stop, seg_l1, seg_l2, factor, lr,
             clipvalue, weight_decay, momentum, nesterov):
    # flat (NP,) buffers, NS segments, factor (NS,) and lr (1,) float64
    pick(sgd_step_twins, _span(seg_start, seg_stop))(params, prev, buf, bad, grads, seg_start, seg_stop, seg_l1, seg_l2,
                                      factor, lr, clipvalue, weight_decay, momentum, nesterov)


@njit(inline="always", error_model="numpy")
def _adam_step_segment(w, prev, m, v, g, l1, l2x2, factor, clipvalue, weight_decay, decay,
                       beta1, beta2, eps, step_size, sqrt_bc2):
    one_m_b1, one_m_b2 = cast_like(1.0 - beta1, w), cast_like(1.0 - beta2, w)
    beta1, beta2, eps = cast_like(beta1, w), cast_like(beta2, w), cast_like(eps, w)
    step_size, sqrt_bc2, decay = cast_like(step_size, w), cast_like(sqrt_bc2, w), cast_like(decay, w)
    l1, l2x2, factor = cast_like(l1, w), cast_like(l2x2, w), cast_like(factor, w)
    clipvalue, weight_decay = cast_like(clipvalue, w), cast_like(weight_decay, w)
    seen = nonfinite_bits(cast_like(0.0, w))
    for i in prange(w.size):
        wi = w[i]
        gi = _step_grad(g[i], wi, l1, l2x2, factor, clipvalue, weight_decay)
        mi = beta1 * m[i] + one_m_b1 * gi
        vi = beta2 * v[i] + one_m_b2 * gi * gi
        m[i] = mi
        v[i] = vi
        prev[i] = wi
        wn = wi * decay - step_size * mi / (math.sqrt(vi) / sqrt_bc2 + eps)
        w[i] = wn
        seen = max(seen, nonfinite_bits(wn))
    return _nonfinite_count(seen, w)   # the stored values: float32 may overflow


def _adam_step(params, prev, m, v, bad, grads, seg_start, seg_stop, seg_l1, seg_l2, factor, lr,
               clipvalue, weight_decay, decoupled, beta1, beta2, eps, step):
    # as _adam_update, with the rate lr[0], factor (NS,) and weight decay: coupled (added to
    # the gradient) or decoupled (w * (1 - lr * weight_decay) before the step, AdamW)
    t = float(step[0])
    rate = lr[0]
    step_size = rate / (1.0 - beta1 ** t)
    sqrt_bc2 = math.sqrt(1.0 - beta2 ** t)
    decay = 1.0 - rate * weight_decay if decoupled else 1.0
    coupled = 0.0 if decoupled else weight_decay
    nbad = 0
    for s in range(seg_l1.size):
        lo, hi = seg_start[s], seg_stop[s]
        nbad += _adam_step_segment(params[lo:hi], prev[lo:hi], m[lo:hi], v[lo:hi], grads[lo:hi],
                                   seg_l1[s], 2.0 * seg_l2[s], factor[s], clipvalue, coupled, decay,
                                   beta1, beta2, eps, step_size, sqrt_bc2)
    bad[0] += nbad


adam_step_twins = twins(_adam_step)


def adam_step(params, prev, m, v, bad, grads, seg_start, seg_stop, seg_l1, seg_l2, factor, lr,
              clipvalue, weight_decay, decoupled, beta1, beta2, eps, step):
    # flat (NP,) buffers, NS segments, factor (NS,) and lr (1,) float64, step (1,) int64
    pick(adam_step_twins, _span(seg_start, seg_stop))(params, prev, m, v, bad, grads, seg_start, seg_stop, seg_l1, seg_l2,
                                       factor, lr, clipvalue, weight_decay, decoupled, beta1, beta2, eps, step)


@njit(inline="always", error_model="numpy")
def _rmsprop_step_segment(w, prev, sq, buf, ga, g, l1, l2x2, factor, lr, clipvalue, weight_decay,
                          alpha, eps, momentum, centered):
    one_m_a = cast_like(1.0 - alpha, w)
    alpha, eps, momentum, lr = cast_like(alpha, w), cast_like(eps, w), cast_like(momentum, w), cast_like(lr, w)
    l1, l2x2, factor = cast_like(l1, w), cast_like(l2x2, w), cast_like(factor, w)
    clipvalue, weight_decay = cast_like(clipvalue, w), cast_like(weight_decay, w)
    seen = nonfinite_bits(cast_like(0.0, w))
    for i in prange(w.size):
        wi = w[i]
        gi = _step_grad(g[i], wi, l1, l2x2, factor, clipvalue, weight_decay)
        si = alpha * sq[i] + one_m_a * gi * gi
        sq[i] = si
        if centered:
            gai = ga[i] + one_m_a * (gi - ga[i])
            ga[i] = gai
            avg = math.sqrt(si - gai * gai) + eps
        else:
            avg = math.sqrt(si) + eps
        if momentum > 0:
            b = momentum * buf[i] + gi / avg
            buf[i] = b
            delta = b
        else:
            delta = gi / avg
        prev[i] = wi
        wn = wi - lr * delta
        w[i] = wn
        seen = max(seen, nonfinite_bits(wn))
    return _nonfinite_count(seen, w)   # the stored values: float32 may overflow


def _rmsprop_step(params, prev, square_avg, buf, grad_avg, bad, grads, seg_start, seg_stop, seg_l1, seg_l2,
                  factor, lr, clipvalue, weight_decay, alpha, eps, momentum, centered):
    # torch.optim.RMSprop over the segments; buf / grad_avg only touched with momentum / centered
    nbad = 0
    for s in range(seg_l1.size):
        lo, hi = seg_start[s], seg_stop[s]
        nbad += _rmsprop_step_segment(params[lo:hi], prev[lo:hi], square_avg[lo:hi], buf[lo:hi], grad_avg[lo:hi],
                                      grads[lo:hi], seg_l1[s], 2.0 * seg_l2[s], factor[s], lr[0], clipvalue,
                                      weight_decay, alpha, eps, momentum, centered)
    bad[0] += nbad


rmsprop_step_twins = twins(_rmsprop_step)


def rmsprop_step(params, prev, square_avg, buf, grad_avg, bad, grads, seg_start, seg_stop, seg_l1, seg_l2,
                 factor, lr, clipvalue, weight_decay, alpha, eps, momentum, centered):
    # flat (NP,) buffers; buf, grad_avg may be square_avg itself when unused (never written then)
    pick(rmsprop_step_twins, _span(seg_start, seg_stop))(params, prev, square_avg, buf, grad_avg, bad, grads, seg_start,
                                          seg_stop, seg_l1, seg_l2, factor, lr, clipvalue, weight_decay,
                                          alpha, eps, momentum, centered)


@njit(inline="always", error_model="numpy")
def _add_reg_segment(g, w, l1, l2x2):
    l1, l2x2 = cast_like(l1, w), cast_like(l2x2, w)
    for i in prange(w.size):
        g[i] += _reg(w[i], l1, l2x2)


def _add_reg_grad(grads, params, seg_start, seg_stop, seg_l1, seg_l2):
    # grads (NP,) += the L1/L2 gradient inside the regularised segments
    for s in range(seg_l1.size):
        if seg_l1[s] != 0.0 or seg_l2[s] != 0.0:
            lo, hi = seg_start[s], seg_stop[s]
            _add_reg_segment(grads[lo:hi], params[lo:hi], seg_l1[s], 2.0 * seg_l2[s])


add_reg_grad_twins = twins(_add_reg_grad)


def add_reg_grad(grads, params, seg_start, seg_stop, seg_l1, seg_l2):
    pick(add_reg_grad_twins, _span(seg_start, seg_stop))(grads, params, seg_start, seg_stop, seg_l1, seg_l2)


@njit(inline="always", error_model="numpy")
def _penalty_segment(w, l1, l2):
    acc = 0.0
    for i in prange(w.size):
        wi = np.float64(w[i])
        acc += l1 * abs(wi) + l2 * wi * wi
    return acc


def _reg_penalty(out, params, seg_start, seg_stop, seg_l1, seg_l2):
    # out (1,) float64 = sum over segments of l1 * sum|w| + l2 * sum w^2
    total = 0.0
    for s in range(seg_l1.size):
        if seg_l1[s] != 0.0 or seg_l2[s] != 0.0:
            lo, hi = seg_start[s], seg_stop[s]
            total += _penalty_segment(params[lo:hi], seg_l1[s], seg_l2[s])
    out[0] = total


reg_penalty_twins = twins(_reg_penalty)


def reg_penalty(out, params, seg_start, seg_stop, seg_l1, seg_l2):
    # out (1,) float64, assigned
    pick(reg_penalty_twins, _span(seg_start, seg_stop))(out, params, seg_start, seg_stop, seg_l1, seg_l2)


cover_dependencies(__name__)
