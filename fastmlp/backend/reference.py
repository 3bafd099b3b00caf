"""NumPy float64 reference of every backend op: the ground truth of the tests.

Short and readable on purpose; never the fast path. Each function has the
same name and argument order as the ops of both backends (``backend/cpu/<family>.py``,
``backend/cuda/<family>.py``) and its kernels in ``kernels/<family>.cu``: outputs
first, then inputs, then scalars. Shapes use the letters of ``codes.py``.
"""
import numpy as np

from .codes import IDENTITY, LEAKY_RELU, RELU, SIGMOID, TANH, padded_output_size, pads4


def act(x, code, alpha=0.0):
    if code == IDENTITY:
        return x.copy()
    if code == RELU:
        return np.maximum(x, 0.0)
    if code == LEAKY_RELU:
        return np.where(x > 0, x, alpha * x)
    if code == TANH:
        return np.tanh(x)
    if code == SIGMOID:
        return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1/(1+exp(-x)), no overflow
    raise ValueError(f"unknown activation code {code}")


def act_grad_from_output(a, code, alpha=0.0):
    """d act / d x written in terms of the output a = act(x).

    Works because every activation here is monotone with act(0) = 0 (or 1/2):
    the sign of a tells the side of the kink. Subgradient at 0: ReLU 0,
    LeakyReLU alpha (the left derivative)."""
    if code == IDENTITY:
        return np.ones_like(a)
    if code == RELU:
        return (a > 0).astype(a.dtype)
    if code == LEAKY_RELU:
        return np.where(a > 0, 1.0, alpha)
    if code == TANH:
        return 1.0 - a * a
    if code == SIGMOID:
        return a * (1.0 - a)
    raise ValueError(f"unknown activation code {code}")


def bias_act_forward(z, b, code, alpha):
    # z is (N, M), overwritten with act(z + b); b is (M,)
    z[...] = act(z + b, code, alpha)


def act_backward_bias_grad(dz, db, da, a, code, alpha):
    # dz (N, M) = da * act'(a); db (M,) = column sums of dz; a is the forward output
    dz[...] = da * act_grad_from_output(a, code, alpha)
    db[...] = dz.sum(axis=0)


def act_forward(y, x, code, alpha):
    # y, x are any shape (same); a standalone activation not fused into a Dense
    y[...] = act(x, code, alpha)


def act_backward(dx, dy, y, code, alpha):
    # dx = dy * act'(y), any shape
    dx[...] = dy * act_grad_from_output(y, code, alpha)


def softmax_forward(p, logits):
    # p, logits are (N, M)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p[...] = e / e.sum(axis=1, keepdims=True)


def softmax_xent(dlogits, stats, logits, labels, scale):
    """Softmax cross-entropy fused with its gradient.

    logits (N, M), labels (N,) integers in [0, M); dlogits (N, M) =
    (softmax - onehot) * scale; stats (2,) float64 accumulates
    [sum of per-sample losses, number of correct argmax predictions]."""
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1))
    losses = lse - shifted[np.arange(n), labels]
    p = np.exp(shifted - lse[:, None])
    p[np.arange(n), labels] -= 1.0
    dlogits[...] = p * scale
    stats[0] += losses.sum()
    stats[1] += np.sum(np.argmax(logits, axis=1) == labels)


def bce_logits(dlogits, stats, logits, targets, scale):
    """Binary cross-entropy from logits fused with its gradient.

    logits, targets (N, M); per-sample loss is the mean over M of
    max(x, 0) - x*y + log(1 + exp(-|x|)); dlogits = (sigmoid(x) - y) * scale / M;
    stats += [sum of per-sample losses, correct decisions (x > 0) == (y > 0.5) / M]."""
    m = logits.shape[1]
    x, y = logits, targets
    losses = np.maximum(x, 0.0) - x * y + np.log1p(np.exp(-np.abs(x)))
    dlogits[...] = (act(x, SIGMOID) - y) * (scale / m)
    stats[0] += losses.sum() / m
    stats[1] += np.sum((x > 0) == (y > 0.5)) / m


def mse(dout, stats, out, targets, scale):
    """Mean squared error fused with its gradient.

    out, targets (N, M); per-sample loss mean over M of (out - t)^2;
    dout = 2 (out - t) * scale / M; stats[1] counts correct predictions:
    |out - t| < 0.5 when M == 1, equal argmax when M > 1."""
    m = out.shape[1]
    diff = out - targets
    dout[...] = 2.0 * diff * (scale / m)
    stats[0] += np.sum(diff * diff) / m
    if m == 1:
        stats[1] += np.sum(np.abs(diff) < 0.5)
    else:
        stats[1] += np.sum(np.argmax(out, axis=1) == np.argmax(targets, axis=1))


# The weighted losses: each sample's loss and gradient times its weight, weights (N,)
# float64 >= 0 (Keras's sample_weight / class_weight; the sum is still divided by the
# caller's N through scale and the epoch's count). The correct count is not weighted
# (Keras's metrics are not, unless asked for as weighted_metrics).

def softmax_xent_weighted(dlogits, stats, logits, labels, weights, scale):
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1))
    losses = lse - shifted[np.arange(n), labels]
    p = np.exp(shifted - lse[:, None])
    p[np.arange(n), labels] -= 1.0
    dlogits[...] = p * (scale * weights[:, None])
    stats[0] += np.sum(weights * losses)
    stats[1] += np.sum(np.argmax(logits, axis=1) == labels)


def bce_logits_weighted(dlogits, stats, logits, targets, weights, scale):
    m = logits.shape[1]
    x, y = logits, targets
    losses = np.maximum(x, 0.0) - x * y + np.log1p(np.exp(-np.abs(x)))
    dlogits[...] = (act(x, SIGMOID) - y) * (scale / m) * weights[:, None]
    stats[0] += np.sum(weights * losses.sum(axis=1)) / m
    stats[1] += np.sum((x > 0) == (y > 0.5)) / m


def mse_weighted(dout, stats, out, targets, weights, scale):
    m = out.shape[1]
    diff = out - targets
    dout[...] = 2.0 * diff * (scale / m) * weights[:, None]
    stats[0] += np.sum(weights * (diff * diff).sum(axis=1)) / m
    if m == 1:
        stats[1] += np.sum(np.abs(diff) < 0.5)
    else:
        stats[1] += np.sum(np.argmax(out, axis=1) == np.argmax(targets, axis=1))


def _inside(n, seg_start, seg_stop):
    # (n,) bool: the elements inside some segment [seg_start[s], seg_stop[s]); the rest
    # (the alignment padding of the flat buffer) is never read or written by the updates
    mask = np.zeros(n, dtype=bool)
    for lo, hi in zip(seg_start, seg_stop):
        mask[lo:hi] = True
    return mask


def _reg_grad(params, seg_start, seg_stop, seg_l1, seg_l2):
    # L1/L2 gradient per element: l1 * sign(w) + 2 * l2 * w for its segment, 0 outside
    g = np.zeros_like(params)
    for s in range(len(seg_l1)):
        w = params[seg_start[s]:seg_stop[s]]
        g[seg_start[s]:seg_stop[s]] = seg_l1[s] * np.sign(w) + 2.0 * seg_l2[s] * w
    return g


def reg_penalty(out, params, seg_start, seg_stop, seg_l1, seg_l2):
    # out (1,) float64 = sum over segments of l1 * sum|w| + l2 * sum w^2 (Keras convention)
    total = 0.0
    for s in range(len(seg_l1)):
        w = params[seg_start[s]:seg_stop[s]]
        total += seg_l1[s] * np.abs(w).sum() + seg_l2[s] * (w * w).sum()
    out[0] = total


def add_reg_grad(grads, params, seg_start, seg_stop, seg_l1, seg_l2):
    # grads (NP,) += L1/L2 gradient inside the NS segments; the rest untouched
    grads += _reg_grad(params, seg_start, seg_stop, seg_l1, seg_l2)


def _finish_update(params, prev, bad, new, inside):
    prev[inside] = params[inside]
    params[inside] = new[inside]
    bad[0] += np.count_nonzero(~np.isfinite(new[inside]))


def exponent_bound(a):
    # the bound in_place_sgd.py reads (exponent_bits, then log2_bound): the least e, at least
    # the dtype's smallest normal exponent, with every |a| < 2^e; None when a has a NaN or Inf
    if not np.isfinite(a).all():
        return None
    top, least = np.abs(a).max(initial=0), int(np.finfo(a.dtype).minexp)
    return max(int(np.frexp(top)[1]), least) if top > 0 else least


def sgd_update(params, prev, buf, bad, grads, seg_start, seg_stop, seg_l1, seg_l2,
               lr, momentum, nesterov):
    """torch.optim.SGD step over the segments of the flat buffer, L1/L2 added to the gradient.

    params, prev, buf, grads are (NP,); prev receives the parameters before the
    step (so a step that went non-finite can be undone); bad (1,) counts
    non-finite new parameters. buf is the momentum buffer, zero at the start
    (torch's first-step buf = g is the same as buf = momentum * 0 + g). Elements
    outside every segment are left alone."""
    inside = _inside(params.size, seg_start, seg_stop)
    g = grads + _reg_grad(params, seg_start, seg_stop, seg_l1, seg_l2)
    if momentum != 0.0:
        buf[inside] = momentum * buf[inside] + g[inside]
        g = g + momentum * buf if nesterov else buf.copy()
    _finish_update(params, prev, bad, params - lr * g, inside)


def adam_update(params, prev, m, v, bad, grads, seg_start, seg_stop, seg_l1, seg_l2,
                lr, beta1, beta2, eps, step):
    """torch.optim.Adam step, L1/L2 added to the gradient, over the segments only (the
    padding, all zeros, would give 0/0 with eps=0). step (1,) int64 holds the step's count
    (from 1): a device array on the GPU, so that a CUDA graph replays it."""
    inside = _inside(params.size, seg_start, seg_stop)
    step = float(step[0])
    g = (grads + _reg_grad(params, seg_start, seg_stop, seg_l1, seg_l2))[inside]
    m[inside] = beta1 * m[inside] + (1.0 - beta1) * g
    v[inside] = beta2 * v[inside] + (1.0 - beta2) * g * g
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    new = params.copy()
    new[inside] = params[inside] - (lr / bc1) * m[inside] / (np.sqrt(v[inside]) / np.sqrt(bc2) + eps)
    _finish_update(params, prev, bad, new, inside)


# The full steps below add to the plain ones: the rate lr (1,) float64 is read from an
# array (a device scalar on the GPU, so a replayed CUDA graph sees each step's rate),
# the gradient (grads + L1/L2) is multiplied by its segment's clipping factor (NS,)
# (grad_clip_factors; ones when no norm is clipped), clamped to [-clipvalue, clipvalue]
# (inf: not clamped), and torch's coupled weight decay adds weight_decay * w to it, on
# every segment (biases included, as torch.optim does).

def grad_clip_factors(factor, grads, params, seg_start, seg_stop, seg_l1, seg_l2, max_norm, per_segment):
    """factor (NS,) float64 = min(1, max_norm / (norm + 1e-6)), torch.nn.utils.clip_grad_norm_'s
    factor, where norm is that of the segment's gradient grads + L1/L2 (per_segment: Keras's
    clipnorm) or of all segments together (global_clipnorm)."""
    g = grads + _reg_grad(params, seg_start, seg_stop, seg_l1, seg_l2)
    sq = np.array([np.sum(g[lo:hi] ** 2) for lo, hi in zip(seg_start, seg_stop)])
    norms = np.sqrt(sq) if per_segment else np.full(len(sq), np.sqrt(sq.sum()))
    factor[...] = np.minimum(1.0, max_norm / (norms + 1e-6))


def _step_grad(params, grads, seg_start, seg_stop, seg_l1, seg_l2, factor, clipvalue, weight_decay):
    # the gradient a full step applies, (NP,): clipped, then torch's coupled weight decay
    g = grads + _reg_grad(params, seg_start, seg_stop, seg_l1, seg_l2)
    for s in range(len(seg_l1)):
        g[seg_start[s]:seg_stop[s]] *= factor[s]
    return np.clip(g, -clipvalue, clipvalue) + weight_decay * params


def sgd_step(params, prev, buf, bad, grads, seg_start, seg_stop, seg_l1, seg_l2, factor, lr,
             clipvalue, weight_decay, momentum, nesterov):
    """sgd_update with the rate lr[0], clipping and torch.optim.SGD's weight_decay."""
    inside = _inside(params.size, seg_start, seg_stop)
    g = _step_grad(params, grads, seg_start, seg_stop, seg_l1, seg_l2, factor, clipvalue, weight_decay)
    if momentum != 0.0:
        buf[inside] = momentum * buf[inside] + g[inside]
        g = g + momentum * buf if nesterov else buf.copy()
    _finish_update(params, prev, bad, params - lr[0] * g, inside)


def adam_step(params, prev, m, v, bad, grads, seg_start, seg_stop, seg_l1, seg_l2, factor, lr,
              clipvalue, weight_decay, decoupled, beta1, beta2, eps, step):
    """adam_update with the rate lr[0] and clipping; weight_decay coupled as torch.optim.Adam's
    (added to the gradient) or, with ``decoupled``, as torch.optim.AdamW's (w *= 1 - lr * wd
    before the Adam step)."""
    inside = _inside(params.size, seg_start, seg_stop)
    g = _step_grad(params, grads, seg_start, seg_stop, seg_l1, seg_l2, factor, clipvalue,
                   0.0 if decoupled else weight_decay)[inside]
    t, rate = float(step[0]), lr[0]
    m[inside] = beta1 * m[inside] + (1.0 - beta1) * g
    v[inside] = beta2 * v[inside] + (1.0 - beta2) * g * g
    decayed = params * (1.0 - rate * weight_decay) if decoupled else params
    new = params.copy()
    new[inside] = decayed[inside] - (rate / (1.0 - beta1 ** t)) * m[inside] / (
        np.sqrt(v[inside]) / np.sqrt(1.0 - beta2 ** t) + eps)
    _finish_update(params, prev, bad, new, inside)


def rmsprop_step(params, prev, square_avg, buf, grad_avg, bad, grads, seg_start, seg_stop, seg_l1, seg_l2,
                 factor, lr, clipvalue, weight_decay, alpha, eps, momentum, centered):
    """torch.optim.RMSprop: square_avg = alpha sa + (1 - alpha) g^2; centered: grad_avg moves
    toward g by (1 - alpha) and avg = sqrt(sa - ga^2) + eps, else sqrt(sa) + eps; with momentum
    buf = momentum buf + g / avg and w -= lr buf, else w -= lr g / avg. buf and grad_avg are
    untouched unless momentum > 0 / centered."""
    inside = _inside(params.size, seg_start, seg_stop)
    g = _step_grad(params, grads, seg_start, seg_stop, seg_l1, seg_l2, factor, clipvalue, weight_decay)[inside]
    square_avg[inside] = alpha * square_avg[inside] + (1.0 - alpha) * g * g
    if centered:
        grad_avg[inside] = grad_avg[inside] + (1.0 - alpha) * (g - grad_avg[inside])
        avg = np.sqrt(square_avg[inside] - grad_avg[inside] ** 2) + eps
    else:
        avg = np.sqrt(square_avg[inside]) + eps
    if momentum > 0.0:
        buf[inside] = momentum * buf[inside] + g / avg
        delta = buf[inside]
    else:
        delta = g / avg
    new = params.copy()
    new[inside] = params[inside] - lr[0] * delta
    _finish_update(params, prev, bad, new, inside)


def gather_rows(out, x, idx):
    # out (N, ...) = x[idx]; x (rows, ...) the data set, idx (N,) integers
    out[...] = x[idx]


def zero_skip_forward(z, x, w):
    # the first Dense layer's forward product in training (zero_tiles.ZeroSkip.forward):
    # z (N, M) = x (N, D) @ w (D, M); the kernel leaves out terms whose x is 0. Also the spec
    # of ZeroSkip.dense_forward, any layer's forward on a small batch, which leaves out none
    z[...] = x @ w


def zero_skip_weight_grad(dw, x, dz):
    # its weight gradient (ZeroSkip.weight_grad): dw (D, M) = x (N, D).T @ dz (N, M)
    dw[...] = x.T @ dz


# --- images (NCHW): convolution by im2col, max pooling, batch norm, dropout ---------
# OH = window_output_size(H, KH, S, P), OW likewise, L = OH * OW.

def _windows(xp, kh, kw, stride, oh, ow):
    # (N, C, OH, OW, KH*KW): the KHxKW window of each output pixel, row-major in the window
    n, c = xp.shape[:2]
    win = np.empty((n, c, oh, ow, kh * kw), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            win[..., i * kw + j] = xp[:, :, i:i + stride * (oh - 1) + 1:stride,
                                      j:j + stride * (ow - 1) + 1:stride]
    return win


def im2col(cols, x, kh, kw, stride, pad):
    """Unfold the KHxKW windows of x (N, C, H, W) into the columns of cols (C*KH*KW, N*L).

    Column n*L + oh*OW + ow is the window of output pixel (oh, ow) of image n;
    row (c*KH + i)*KW + j holds x[n, c, oh*S + i - PT, ow*S + j - PL], 0 in the
    padding. Then W (M, C*KH*KW) @ cols is the convolution as one GEMM. pad is P (each
    side) or (PT, PB, PL, PR)."""
    n, c, h, w = x.shape
    pt, pb, pl, pr = pads4(pad)
    oh, ow = padded_output_size(h, kh, stride, pt, pb), padded_output_size(w, kw, stride, pl, pr)
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    win = _windows(xp, kh, kw, stride, oh, ow)                # (N, C, OH, OW, KH*KW)
    cols[...] = win.transpose(1, 4, 0, 2, 3).reshape(c * kh * kw, n * oh * ow)


def col2im(dx, cols, kh, kw, stride, pad):
    """The adjoint of im2col: dx (N, C, H, W) = sum of every column's window
    written back where it came from (overlapping windows accumulate)."""
    n, c, h, w = dx.shape
    pt, pb, pl, pr = pads4(pad)
    oh, ow = padded_output_size(h, kh, stride, pt, pb), padded_output_size(w, kw, stride, pl, pr)
    win = np.asarray(cols, np.float64).reshape(c, kh, kw, n, oh, ow)
    dxp = np.zeros((n, c, h + pt + pb, w + pl + pr))
    for i in range(kh):
        for j in range(kw):   # within one (i, j) the targets are distinct: += is exact
            dxp[:, :, i:i + stride * (oh - 1) + 1:stride,
                j:j + stride * (ow - 1) + 1:stride] += win[:, i, j].transpose(1, 0, 2, 3)
    dx[...] = dxp[:, :, pt:pt + h, pl:pl + w]


def conv_bias_forward(y, z, b):
    # z (M, N*L) = W @ cols; y (N, M, L) = z laid out per image, plus b (M,) per channel
    n, m, l = y.shape
    y[...] = np.asarray(z, np.float64).reshape(m, n, l).transpose(1, 0, 2) + b[None, :, None]


def conv_bias_backward(dz, db, dy):
    # dy (N, M, L); dz (M, N*L) = dy laid out as z; db (M,) = sum of dy over N and L
    n, m, l = dy.shape
    dz[...] = np.asarray(dy, np.float64).transpose(1, 0, 2).reshape(m, n * l)
    db[...] = np.asarray(dy, np.float64).sum(axis=(0, 2))


def maxpool_forward(y, argmax, x, k, stride):
    """y, argmax (N, C, OH, OW): the max of each KxK window of x (N, C, H, W), no padding,
    and where it is, as ih*W + iw within the image plane. Ties go to the first
    maximum in row-major window order (np.argmax)."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2:]
    win = _windows(np.asarray(x, np.float64), k, k, stride, oh, ow)
    a = np.argmax(win, axis=-1)
    y[...] = np.take_along_axis(win, a[..., None], axis=-1)[..., 0]
    i, j = np.divmod(a, k)
    ih = np.arange(oh)[:, None] * stride + i
    iw = np.arange(ow)[None, :] * stride + j
    argmax[...] = ih * w + iw


def maxpool_backward(dx, dy, argmax, k, stride):
    # dx (N, C, H, W) = 0 except the argmax of each window, which receives its dy (N, C, OH, OW).
    # k, stride: the window geometry, unused here; the CUDA twin gathers with it (no atomics)
    n, c, h, w = dx.shape
    flat = np.zeros((n, c, h * w))
    np.add.at(flat, (np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], argmax),
              np.asarray(dy, np.float64))
    dx[...] = flat.reshape(n, c, h, w)


def avgpool_forward(y, x, k, stride):
    # y (N, C, OH, OW): the mean of each KxK window of x (N, C, H, W), no padding
    oh, ow = y.shape[2:]
    y[...] = _windows(np.asarray(x, np.float64), k, k, stride, oh, ow).mean(axis=-1)


def avgpool_backward(dx, dy, k, stride):
    # dx (N, C, H, W): each pixel gets dy / K^2 of every window (N, C, OH, OW) that covers it
    oh, ow = dy.shape[2:]
    g = np.asarray(dy, np.float64) / (k * k)
    out = np.zeros(dx.shape)
    for i in range(k):
        for j in range(k):
            out[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride] += g
    dx[...] = out


def global_avgpool_forward(y, x):
    # y (N, C): the mean of each (image, channel) plane of x (N, C, H, W)
    y[...] = np.asarray(x, np.float64).mean(axis=(2, 3))


def global_avgpool_backward(dx, dy):
    # dx (N, C, H, W) = dy (N, C) / (H*W) on every pixel of its plane
    h, w = dx.shape[2:]
    dx[...] = np.broadcast_to(np.asarray(dy, np.float64)[:, :, None, None] / (h * w), dx.shape)


def global_maxpool_forward(y, argmax, x):
    """y, argmax (N, C): the max of each (image, channel) plane of x (N, C, H, W) and where it
    is, ih*W + iw; ties to the first in row-major order, a NaN the maximum (np.argmax)."""
    n, c = x.shape[:2]
    planes = np.asarray(x, np.float64).reshape(n, c, -1)
    a = np.argmax(planes, axis=-1)
    y[...] = np.take_along_axis(planes, a[..., None], axis=-1)[..., 0]
    argmax[...] = a


def global_maxpool_backward(dx, dy, argmax):
    # dx (N, C, H, W) = 0 except each plane's argmax (N, C), which gets its dy (N, C)
    n, c, h, w = dx.shape
    flat = np.zeros((n, c, h * w))
    np.put_along_axis(flat, np.asarray(argmax)[..., None], np.asarray(dy, np.float64)[..., None], axis=-1)
    dx[...] = flat.reshape(n, c, h, w)


def conv_bias_act_pool_forward(y, argmax, zt, b, oh, ow, code, alpha, k, stride):
    """Conv2D's epilogue fused with the activation and max pooling that follow it.

    zt (N*L, M) = cols.T @ W2.T, z transposed (a row per conv output pixel, L = OH*OW);
    b (M,); y, argmax (N, M, PH, PW) as maxpool_forward of act(z + b) laid out as
    (N, M, OH, OW): argmax = oh*OW + ow in the conv output plane, ties to the first
    maximum in row-major window order."""
    n, m = y.shape[:2]
    a = np.empty((n, m, oh * ow))
    conv_bias_forward(a, np.asarray(zt).T, b)
    maxpool_forward(y, argmax, act(a, code, alpha).reshape(n, m, oh, ow), k, stride)


def conv_bias_act_pool_backward(dzt, db, dy, y, argmax, oh, ow, code, alpha, k, stride):
    # dzt (N*L, M), dz transposed: 0 except at each window's argmax (N, M, PH, PW), which
    # receives dy * act'(y) (dy, y (N, M, PH, PW): y the pooled output); db (M,) = sums of dz
    n, m = dy.shape[:2]
    da = np.empty((n, m, oh, ow))
    maxpool_backward(da, dy * act_grad_from_output(y, code, alpha), argmax, k, stride)
    dz = np.empty((m, n * oh * ow))
    conv_bias_backward(dz, db, da.reshape(n, m, oh * ow))
    dzt[...] = dz.T


def conv_act_pool_forward(y, argmax, cols, zt, x, w2, b, edges, kh, kw, stride, pad, oh, ow, code, alpha,
                          k, pstride):
    """Conv2D -> activation -> MaxPool2D forward: y, argmax (N, M, PH, PW) as
    conv_bias_act_pool_forward of zt = im2col(x).T @ w2.T, w2 (M, C*KH*KW). cols, zt: the
    backends' scratch, unused here; edges: the chunks, which only backward's sums depend on."""
    c = np.empty((w2.shape[1], x.shape[0] * oh * ow))
    im2col(c, x, kh, kw, stride, pad)
    conv_bias_act_pool_forward(y, argmax, c.T @ np.asarray(w2, np.float64).T, b, oh, ow, code, alpha, k, pstride)


def conv_act_pool_backward(dx, dwt, db, cols, dzt, x, w2, dy, y, argmax, edges, kh, kw, stride, pad, oh, ow,
                           code, alpha, k, pstride):
    """Its backward, chunk c = images edges[c] .. edges[c + 1] - 1 at a time: dwt[c] (C*KH*KW, M)
    = im2col(x_c) @ dzt_c and db[c] (M,) its bias gradient, dzt_c from conv_bias_act_pool_backward
    of dy_c; dx (N, C, H, W), unless None, = col2im(w2.T @ dzt_c.T) chunk by chunk."""
    w = np.asarray(w2, np.float64)
    for c, (i0, i1) in enumerate(zip(edges[:-1], edges[1:])):
        rows = (i1 - i0) * oh * ow
        cc, d = np.empty((w.shape[1], rows)), np.empty((rows, w.shape[0]))
        im2col(cc, x[i0:i1], kh, kw, stride, pad)
        conv_bias_act_pool_backward(d, db[c], dy[i0:i1], y[i0:i1], argmax[i0:i1], oh, ow, code, alpha, k, pstride)
        dwt[c] = cc @ d
        if dx is not None:
            col2im(dx[i0:i1], w.T @ d.T, kh, kw, stride, pad)


def matmul_pair(out1, a1, b1, out2, a2, b2):
    # two products that don't depend on each other (a Dense layer's dW and dx)
    out1[...] = np.asarray(a1, np.float64) @ np.asarray(b1, np.float64)
    out2[...] = np.asarray(a2, np.float64) @ np.asarray(b2, np.float64)


def transpose(out, a):
    # out = a.T, a 2-D: a weight gradient computed transposed, put in its layout
    out[...] = np.asarray(a, np.float64).T


def batchnorm_forward(y, mean, invstd, running_mean, running_var, x, gamma, beta,
                      momentum, eps, training):
    """Batch normalisation of x (N, C, H*W) per channel c over its N*H*W values
    ((N, F) input is (N, F, 1); images (N, C, H, W) are (N, C, H*W)).

    training: mean, var are the batch's (biased var); running_mean and running_var
    (C,) become momentum * running + (1 - momentum) * batch (Keras convention),
    with the unbiased batch variance var * N*H*W / (N*H*W - 1) (as PyTorch).
    evaluation: mean, var are the running statistics, left unchanged.
    mean, invstd (C,) receive the mean and 1/sqrt(var + eps) used (backward needs them);
    y = gamma * (x - mean) * invstd + beta with gamma, beta (C,)."""
    x64 = np.asarray(x, np.float64)
    if training:
        cnt = x.shape[0] * x.shape[2]
        m, v = x64.mean(axis=(0, 2)), x64.var(axis=(0, 2))
        unbiased = v * cnt / (cnt - 1) if cnt > 1 else v
        running_mean[...] = momentum * running_mean + (1.0 - momentum) * m
        running_var[...] = momentum * running_var + (1.0 - momentum) * unbiased
    else:
        m, v = np.array(running_mean, np.float64), np.array(running_var, np.float64)
    mean[...] = m
    invstd[...] = 1.0 / np.sqrt(v + eps)
    y[...] = gamma[None, :, None] * (x64 - m[None, :, None]) * (1.0 / np.sqrt(v + eps))[None, :, None] \
        + beta[None, :, None]


def batchnorm_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, training):
    """dx (N, C, H*W), dgamma, dbeta (C,) from dy (N, C, H*W) and what batchnorm_forward kept.

    xhat = (x - mean) * invstd; dbeta = sum dy, dgamma = sum dy * xhat (over N, H*W);
    training: dx = gamma * invstd * (dy - dbeta / (N*H*W) - xhat * dgamma / (N*H*W))
    (the batch statistics depend on x); evaluation: dx = gamma * invstd * dy."""
    dy64 = np.asarray(dy, np.float64)
    xhat = (np.asarray(x, np.float64) - mean[None, :, None]) * invstd[None, :, None]
    sdy, sdyx = dy64.sum(axis=(0, 2)), (dy64 * xhat).sum(axis=(0, 2))
    dbeta[...] = sdy
    dgamma[...] = sdyx
    g = (gamma * invstd)[None, :, None]
    if training:
        cnt = x.shape[0] * x.shape[2]
        dx[...] = g * (dy64 - sdy[None, :, None] / cnt - xhat * sdyx[None, :, None] / cnt)
    else:
        dx[...] = g * dy64


def dropout_forward(y, mask, x, rate):
    """Inverted dropout. mask holds uniform [0, 1) draws on entry and the multiplier
    on exit: 1 / (1 - rate) where the draw is >= rate (kept), else 0; y = x * mask."""
    keep = np.asarray(mask, np.float64) >= rate
    mask[...] = np.where(keep, 1.0 / (1.0 - rate), 0.0)
    y[...] = x * np.where(keep, 1.0 / (1.0 - rate), 0.0)


def dropout_backward(dx, dy, mask):
    # dx = dy * mask, any shape (mask as dropout_forward left it)
    dx[...] = dy * mask


def augment_images(out, x, params, c, h, w, channels_last, nearest):
    """A per-sample affine warp of a batch of images, zero outside (data augmentation).

    out, x (N, C*H*W): each row one image, C planes of H x W
    (channels_last=0) or H x W pixels of C values (channels_last=1).
    params (N, 6) float64 maps an output pixel (row i, column j) to the
    source point sx = p0*j + p1*i + p2, sy = p3*j + p4*i + p5 (columns,
    rows). nearest=1 takes the pixel at (round(sy), round(sx)), halves
    rounding up; nearest=0 interpolates bilinearly between the four pixels
    around (sy, sx). Source pixels outside the image read as 0."""
    n = x.shape[0]
    img = x.reshape(n, h, w, c).transpose(0, 3, 1, 2) if channels_last else x.reshape(n, c, h, w)
    jj, ii = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))  # (H, W)
    p = params[:, :, None, None]
    sx = p[:, 0] * jj + p[:, 1] * ii + p[:, 2]                                            # (N, H, W)
    sy = p[:, 3] * jj + p[:, 4] * ii + p[:, 5]
    rows = np.arange(n)[:, None, None]

    def tap(yy, xx):
        # (N, H, W) integer source pixels -> (N, C, H, W) values, 0 outside the image
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        v = img[rows, :, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]                   # (N, H, W, C)
        return np.moveaxis(v * inside[..., None], -1, 1)

    if nearest:
        res = tap(np.floor(sy + 0.5).astype(np.int64), np.floor(sx + 0.5).astype(np.int64))
    else:
        x0, y0 = np.floor(sx), np.floor(sy)
        tx, ty = (sx - x0)[:, None], (sy - y0)[:, None]
        x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
        res = ((1 - ty) * ((1 - tx) * tap(y0, x0) + tx * tap(y0, x0 + 1))
               + ty * ((1 - tx) * tap(y0 + 1, x0) + tx * tap(y0 + 1, x0 + 1)))
    out[...] = (res.transpose(0, 2, 3, 1) if channels_last else res).reshape(n, -1)
