"""Numba kernels of the CPU backend: the CPU twins of ``kernels/*.cu``.

Every kernel has the name and argument order of its NumPy float64 reference
in ``reference.py`` (outputs first, then inputs, then scalars) and of its
CUDA twin. Each is compiled twice: a serial version and a ``parallel=True``
one; ``cpu.py`` picks by work size, since waking the thread pool costs more
than a small kernel (see ``PARALLEL_MIN_WORK``).
"""
import math
import os
import types

import numba
import numpy as np
from numba import njit, prange

from .reference import IDENTITY, LEAKY_RELU, RELU, SIGMOID, TANH

# Below this many elements a kernel runs serially (measured in bench/).
PARALLEL_MIN_WORK = 1 << 20
# Row blocks of the bias-gradient reduction (the shape of its scratch).
BIAS_GRAD_BLOCKS = 64


def _cache_dir_is_writable():
    here = os.path.dirname(__file__)
    return os.access(os.path.join(here, "__pycache__") if os.path.isdir(
        os.path.join(here, "__pycache__")) else here, os.W_OK)


if "NUMBA_CACHE_DIR" not in os.environ and not _cache_dir_is_writable():
    # An installed, read-only package: cache the JIT output per user instead.
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(
        os.path.expanduser("~"), ".cache", "fastmlp", "numba")
    numba.config.reload_config()


def _twins(fn):
    """Compile ``fn`` as (serial, parallel) njit kernels with distinct cache keys."""
    par_fn = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_parallel",
                                fn.__defaults__, fn.__closure__)
    par_fn.__qualname__ = fn.__qualname__ + "_parallel"
    serial = njit(cache=True, fastmath=False, nogil=True)(fn)
    parallel = njit(cache=True, parallel=True, fastmath=False, nogil=True)(par_fn)
    return serial, parallel


@njit(inline="always")
def _act(x, code, alpha):
    if code == RELU:
        return x if x > 0 else x * 0
    if code == LEAKY_RELU:
        return x if x > 0 else alpha * x
    if code == TANH:
        return math.tanh(x)
    if code == SIGMOID:
        return 0.5 * (1.0 + math.tanh(0.5 * x))
    return x


@njit(inline="always")
def _act_grad(a, code, alpha):
    # derivative written with the output a = act(x); see reference.act_grad_from_output
    if code == RELU:
        return 1.0 if a > 0 else 0.0
    if code == LEAKY_RELU:
        return 1.0 if a > 0 else alpha
    if code == TANH:
        return 1.0 - a * a
    if code == SIGMOID:
        return a * (1.0 - a)
    return 1.0


def _bias_act_forward(z, b, code, alpha):
    # z is (N, M), updated in place to act(z + b); b is (M,)
    n, m = z.shape
    for i in prange(n):
        for j in range(m):
            z[i, j] = _act(z[i, j] + b[j], code, alpha)


def _act_backward_bias_grad(dz, db, partial, da, a, code, alpha):
    # dz (N, M) = da * act'(a); db (M,) = sum over rows of dz.
    # partial is a (BLOCKS, M) float64 scratch owned by the caller: rows are
    # split into at most BLOCKS blocks, each summed into its own row (in
    # float64, deterministic whatever the thread count), then the rows summed.
    n, m = dz.shape
    nblocks = min(n, partial.shape[0])
    partial[:nblocks] = 0.0
    for blk in prange(nblocks):
        lo = blk * n // nblocks
        hi = (blk + 1) * n // nblocks
        for i in range(lo, hi):
            for j in range(m):
                g = da[i, j] * _act_grad(a[i, j], code, alpha)
                dz[i, j] = g
                partial[blk, j] += g
    for j in range(m):
        s = 0.0
        for blk in range(nblocks):
            s += partial[blk, j]
        db[j] = s


def _act_forward(y, x, code, alpha):
    # y, x flat views of the same size
    for i in prange(x.size):
        y[i] = _act(x[i], code, alpha)


def _act_backward(dx, dy, y, code, alpha):
    # dx, dy, y flat views of the same size
    for i in prange(dx.size):
        dx[i] = dy[i] * _act_grad(y[i], code, alpha)


def _softmax_forward(p, logits):
    # p, logits (N, C)
    n, c = logits.shape
    for i in prange(n):
        mx = logits[i, 0]
        for j in range(1, c):
            mx = max(mx, logits[i, j])
        s = 0.0
        for j in range(c):
            e = math.exp(logits[i, j] - mx)
            p[i, j] = e
            s += e
        for j in range(c):
            p[i, j] = p[i, j] / s


def _softmax_xent(dlogits, stats, logits, labels, scale):
    # logits (N, C), labels (N,) ints; dlogits (N, C); stats (2,) += [loss sum, correct]
    n, c = logits.shape
    loss_sum = 0.0
    correct_sum = 0.0
    for i in prange(n):
        mx = np.float64(logits[i, 0])
        arg = 0
        for j in range(1, c):
            if logits[i, j] > mx:
                mx = logits[i, j]
                arg = j
        s = 0.0
        for j in range(c):
            s += math.exp(np.float64(logits[i, j]) - mx)
        lse = math.log(s)
        y = labels[i]
        loss_sum += lse - (np.float64(logits[i, y]) - mx)
        correct_sum += 1.0 if arg == y else 0.0
        inv = 1.0 / s
        for j in range(c):
            pj = math.exp(np.float64(logits[i, j]) - mx) * inv
            if j == y:
                pj -= 1.0
            dlogits[i, j] = pj * scale
    stats[0] += loss_sum
    stats[1] += correct_sum


def _bce_logits(dlogits, stats, logits, targets, scale):
    # logits, targets (N, K); per-sample loss is the mean over K
    n, k = logits.shape
    loss_sum = 0.0
    correct_sum = 0.0
    sk = scale / k
    for i in prange(n):
        ls = 0.0
        cs = 0.0
        for j in range(k):
            x = np.float64(logits[i, j])
            y = np.float64(targets[i, j])
            ls += max(x, 0.0) - x * y + math.log1p(math.exp(-abs(x)))
            dlogits[i, j] = (0.5 * (1.0 + math.tanh(0.5 * x)) - y) * sk
            if (x > 0) == (y > 0.5):
                cs += 1.0
        loss_sum += ls / k
        correct_sum += cs / k
    stats[0] += loss_sum
    stats[1] += correct_sum


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


@njit(inline="always")
def _reg(w, l1, l2):
    s = 0.0
    if w > 0:
        s = l1
    elif w < 0:
        s = -l1
    return s + 2.0 * l2 * w


def _sgd_update(params, prev, buf, bad, grads, seg_start, seg_l1, seg_l2,
                lr, momentum, nesterov):
    # flat (P,) buffers; segments carry the L1/L2 coefficients of their parameters
    nbad = 0
    for s in range(seg_l1.size):
        l1 = seg_l1[s]
        l2 = seg_l2[s]
        for i in prange(seg_start[s], seg_start[s + 1]):
            w = params[i]
            g = grads[i] + _reg(w, l1, l2)
            if momentum != 0.0:
                bnew = momentum * buf[i] + g
                buf[i] = bnew
                g = g + momentum * bnew if nesterov else bnew
            wn = w - lr * g
            prev[i] = w
            params[i] = wn
            if not math.isfinite(params[i]):  # the stored value: float32 may overflow
                nbad += 1
    bad[0] += nbad


def _adam_update(params, prev, m, v, bad, grads, seg_start, seg_l1, seg_l2,
                 lr, beta1, beta2, eps, step):
    bc1 = 1.0 - beta1 ** step
    step_size = lr / bc1
    sqrt_bc2 = math.sqrt(1.0 - beta2 ** step)
    nbad = 0
    for s in range(seg_l1.size):
        l1 = seg_l1[s]
        l2 = seg_l2[s]
        for i in prange(seg_start[s], seg_start[s + 1]):
            w = params[i]
            g = grads[i] + _reg(w, l1, l2)
            mi = beta1 * m[i] + (1.0 - beta1) * g
            vi = beta2 * v[i] + (1.0 - beta2) * g * g
            m[i] = mi
            v[i] = vi
            wn = w - step_size * mi / (math.sqrt(vi) / sqrt_bc2 + eps)
            prev[i] = w
            params[i] = wn
            if not math.isfinite(params[i]):  # the stored value: float32 may overflow
                nbad += 1
    bad[0] += nbad


def _add_reg_grad(grads, params, seg_start, seg_l1, seg_l2):
    for s in range(seg_l1.size):
        l1 = seg_l1[s]
        l2 = seg_l2[s]
        if l1 == 0.0 and l2 == 0.0:
            continue
        for i in prange(seg_start[s], seg_start[s + 1]):
            grads[i] += _reg(params[i], l1, l2)


def _reg_penalty(out, params, seg_start, seg_l1, seg_l2):
    # out (1,) float64 = sum over segments of l1 * sum|w| + l2 * sum w^2
    total = 0.0
    for s in range(seg_l1.size):
        l1 = seg_l1[s]
        l2 = seg_l2[s]
        if l1 == 0.0 and l2 == 0.0:
            continue
        acc = 0.0
        for i in prange(seg_start[s], seg_start[s + 1]):
            w = np.float64(params[i])
            acc += l1 * abs(w) + l2 * w * w
        total += acc
    out[0] = total


def _gather_rows(out, x, idx):
    # out (B, F) = x[idx]; x (N, F) with rows flattened to F
    b, f = out.shape
    for r in prange(b):
        src = idx[r]
        for j in range(f):
            out[r, j] = x[src, j]


bias_act_forward = _twins(_bias_act_forward)
act_backward_bias_grad = _twins(_act_backward_bias_grad)
act_forward = _twins(_act_forward)
act_backward = _twins(_act_backward)
softmax_forward = _twins(_softmax_forward)
softmax_xent = _twins(_softmax_xent)
bce_logits = _twins(_bce_logits)
mse = _twins(_mse)
sgd_update = _twins(_sgd_update)
adam_update = _twins(_adam_update)
add_reg_grad = _twins(_add_reg_grad)
reg_penalty = _twins(_reg_penalty)
gather_rows = _twins(_gather_rows)
