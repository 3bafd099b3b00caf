"""NumPy float64 reference of every backend op: the ground truth of the tests.

Short and readable on purpose; never the fast path. Each function has the
same name and argument order as its kernel twins in ``cpu_kernels.py`` and
``kernels/*.cu``: outputs first, then inputs, then scalars.

Shape vocabulary (used across fastmlp): N batch, D inputs, M outputs of a
layer, C classes, P parameters in the flat buffer, S parameter segments.
"""
import numpy as np

# Activation codes shared by every backend (and the CUDA kernels).
IDENTITY, RELU, LEAKY_RELU, TANH, SIGMOID = 0, 1, 2, 3, 4


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
    # p, logits are (N, C)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p[...] = e / e.sum(axis=1, keepdims=True)


def softmax_xent(dlogits, stats, logits, labels, scale):
    """Softmax cross-entropy fused with its gradient.

    logits (N, C), labels (N,) integers in [0, C); dlogits (N, C) =
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

    logits, targets (N, K); per-sample loss is the mean over K of
    max(x, 0) - x*y + log(1 + exp(-|x|)); dlogits = (sigmoid(x) - y) * scale / K;
    stats += [sum of per-sample losses, correct decisions (x > 0) == (y > 0.5) / K]."""
    k = logits.shape[1]
    x, y = logits, targets
    losses = np.maximum(x, 0.0) - x * y + np.log1p(np.exp(-np.abs(x)))
    dlogits[...] = (act(x, SIGMOID) - y) * (scale / k)
    stats[0] += losses.sum() / k
    stats[1] += np.sum((x > 0) == (y > 0.5)) / k


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


def _reg_grad(params, seg_start, seg_l1, seg_l2):
    # L1/L2 gradient per element: l1 * sign(w) + 2 * l2 * w for its segment
    g = np.zeros_like(params)
    for s in range(len(seg_l1)):
        w = params[seg_start[s]:seg_start[s + 1]]
        g[seg_start[s]:seg_start[s + 1]] = seg_l1[s] * np.sign(w) + 2.0 * seg_l2[s] * w
    return g


def reg_penalty(out, params, seg_start, seg_l1, seg_l2):
    # out (1,) float64 = sum over segments of l1 * sum|w| + l2 * sum w^2 (Keras convention)
    total = 0.0
    for s in range(len(seg_l1)):
        w = params[seg_start[s]:seg_start[s + 1]]
        total += seg_l1[s] * np.abs(w).sum() + seg_l2[s] * (w * w).sum()
    out[0] = total


def add_reg_grad(grads, params, seg_start, seg_l1, seg_l2):
    # grads (P,) += L1/L2 gradient; segments cover [seg_start[0], seg_start[S])
    grads += _reg_grad(params, seg_start, seg_l1, seg_l2)


def _finish_update(params, prev, bad, new):
    prev[...] = params
    params[...] = new
    bad[0] += np.count_nonzero(~np.isfinite(new))


def sgd_update(params, prev, buf, bad, grads, seg_start, seg_l1, seg_l2,
               lr, momentum, nesterov):
    """torch.optim.SGD step over the flat buffer, L1/L2 added to the gradient.

    params, prev, buf, grads are (P,); prev receives the parameters before the
    step (so a step that went non-finite can be undone); bad (1,) counts
    non-finite new parameters. buf is the momentum buffer, zero at the start
    (torch's first-step buf = g is the same as buf = momentum * 0 + g)."""
    g = grads + _reg_grad(params, seg_start, seg_l1, seg_l2)
    if momentum != 0.0:
        buf[...] = momentum * buf + g
        g = g + momentum * buf if nesterov else buf.copy()
    _finish_update(params, prev, bad, params - lr * g)


def adam_update(params, prev, m, v, bad, grads, seg_start, seg_l1, seg_l2,
                lr, beta1, beta2, eps, step):
    """torch.optim.Adam step (step counts from 1), L1/L2 added to the gradient."""
    g = grads + _reg_grad(params, seg_start, seg_l1, seg_l2)
    m[...] = beta1 * m + (1.0 - beta1) * g
    v[...] = beta2 * v + (1.0 - beta2) * g * g
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    denom = np.sqrt(v) / np.sqrt(bc2) + eps
    _finish_update(params, prev, bad, params - (lr / bc1) * m / denom)


def gather_rows(out, x, idx):
    # out (B, ...) = x[idx]; x (N, ...), idx (B,) integers
    out[...] = x[idx]
