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
from numba.extending import overload

from .reference import IDENTITY, LEAKY_RELU, RELU, SIGMOID, TANH

# Below this many elements a kernel runs serially. Measured here (2 cores): right
# after a GEMM, OpenBLAS's worker thread keeps spinning on the second core, and a
# Numba parallel region that needs that core waits for the OS to preempt it: an
# SGD update of 1.6 M parameters took 16 ms in parallel against 0.6 ms serially.
# The fused kernels are memory-bound, so a second thread gains little anyway;
# only very large kernels go parallel. FASTMLP_PARALLEL_MIN_WORK overrides.
PARALLEL_MIN_WORK = int(os.environ.get("FASTMLP_PARALLEL_MIN_WORK", 1 << 24))
# The threshold while big GEMMs run on Numba's threads (cpu_gemm.use_numba_threads: a
# model with chunked conv kernels), when nothing else spins and Numba's threads are
# awake. It is not the default: in an MLP's short steps they fall asleep between
# kernels, and at 64 K P1 took 0.59 against 0.25 ms a step (waking them, about 0.18 ms).
PARALLEL_MIN_WORK_SHARED = int(os.environ.get("FASTMLP_PARALLEL_MIN_WORK_SHARED", 1 << 16))
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


def cast_like(value, arr):
    """``value`` converted to ``arr``'s dtype inside a kernel (so that float32
    arithmetic stays float32 instead of promoting to float64)."""
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(cast_like, inline="always")
def _cast_like(value, arr):
    dt = arr.dtype

    def impl(value, arr):
        return dt(value)
    return impl


def _twins(fn):
    """Compile ``fn`` as (serial, parallel) njit kernels with distinct cache keys."""
    par_fn = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_parallel",
                                fn.__defaults__, fn.__closure__)
    par_fn.__qualname__ = fn.__qualname__ + "_parallel"
    # error_model="numpy": x / 0 gives inf as in NumPy and C; Python's model would
    # test every divisor for a ZeroDivisionError and stop LLVM from vectorising
    serial = njit(cache=True, nogil=True, error_model="numpy")(fn)
    parallel = njit(cache=True, parallel=True, nogil=True, error_model="numpy")(par_fn)
    return serial, parallel


@njit(inline="always", error_model="numpy")
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


@njit(inline="always", error_model="numpy")
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


@njit(inline="always", error_model="numpy")
def _grad_factor(a, code, alpha, one, zero):
    # act'(x) from the output a; see reference.act_grad_from_output (typed like a)
    if code == RELU:
        return one if a > 0 else zero
    if code == LEAKY_RELU:
        return one if a > 0 else alpha
    if code == TANH:
        return one - a * a
    if code == SIGMOID:
        return a * (one - a)
    return one


def _act_backward_bias_grad(dz, db, partial, da, a, code, alpha):
    # dz (N, M) = da * act'(a); db (M,) = sum over rows of dz; dz may be da (in place).
    # partial is a (BLOCKS, M) float64 scratch owned by the caller: blocks of at
    # least 32 rows are summed into their own row, then the rows in order, so the
    # result depends on N only, not on the thread count. Loops are kept to two
    # arrays each: LLVM vectorises them only when it can rule out aliasing, which
    # an in-place call (dz is da) defeats unless that case has its own loop.
    n, m = dz.shape
    one, zero, al = cast_like(1.0, dz), cast_like(0.0, dz), cast_like(alpha, dz)
    same = dz.ctypes.data == da.ctypes.data
    nblocks = max(1, min(partial.shape[0], n // 32))
    for blk in prange(nblocks):
        acc = partial[blk]
        acc[:] = 0.0
        for i in range(blk * n // nblocks, (blk + 1) * n // nblocks):
            dzr, ar = dz[i], a[i]
            if same:
                for j in range(m):
                    dzr[j] = dzr[j] * _grad_factor(ar[j], code, al, one, zero)
            else:
                dar = da[i]
                for j in range(m):
                    dzr[j] = dar[j] * _grad_factor(ar[j], code, al, one, zero)
            for j in range(m):
                acc[j] += dzr[j]
    total = partial[0]
    for blk in range(1, nblocks):
        row = partial[blk]
        for j in range(m):
            total[j] += row[j]
    for j in range(m):
        db[j] = total[j]


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
                mx = np.float64(logits[i, j])
                arg = j
        s = 0.0
        for j in range(c):                      # one exp per element, kept in dlogits
            e = math.exp(np.float64(logits[i, j]) - mx)
            dlogits[i, j] = e
            s += e
        y = labels[i]
        loss_sum += math.log(s) - (np.float64(logits[i, y]) - mx)
        correct_sum += 1.0 if arg == y else 0.0
        k = scale / s
        for j in range(c):
            dlogits[i, j] = dlogits[i, j] * k
        dlogits[i, y] -= scale
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


# The optimizer kernels loop over the segments of the flat buffer and hand each
# segment to an inlined helper as 1-D slices: indexing the whole buffer with
# [lo, hi) bounds kept LLVM from vectorising (7x slower, measured), slices
# with their own base pointers vectorise. Scalars are cast to the parameter
# dtype (``cast_like``), so float32 arithmetic stays float32, as in torch.

@njit(inline="always", error_model="numpy")
def _reg(w, l1, l2x2):
    # d/dw of l1 |w| + l2 w^2 (0 at w = 0), in w's dtype (l1, l2x2 already cast);
    # adds exactly 0 to the gradient of an unregularised (finite) parameter
    return l1 * np.sign(w) + l2x2 * w


@njit(inline="always", error_model="numpy")
def _sgd_segment(w, prev, buf, g, lr, momentum, nesterov, l1, l2x2):
    lr, momentum = cast_like(lr, w), cast_like(momentum, w)
    l1, l2x2 = cast_like(l1, w), cast_like(l2x2, w)
    nbad = 0
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
        nbad += not np.isfinite(w[i])     # the stored value: float32 may overflow
    return nbad


def _sgd_update(params, prev, buf, bad, grads, seg_start, seg_l1, seg_l2,
                lr, momentum, nesterov):
    # flat (P,) buffers; segments carry the L1/L2 coefficients of their parameters
    nbad = 0
    for s in range(seg_l1.size):
        lo, hi = seg_start[s], seg_start[s + 1]
        l1, l2 = seg_l1[s], seg_l2[s]
        mbuf = buf[lo:hi] if momentum != 0 else prev[lo:hi]   # unused without momentum
        nbad += _sgd_segment(params[lo:hi], prev[lo:hi], mbuf, grads[lo:hi], lr, momentum,
                             nesterov, l1, 2.0 * l2)
    bad[0] += nbad


@njit(inline="always", error_model="numpy")
def _adam_segment(w, prev, m, v, g, beta1, beta2, eps, step_size, sqrt_bc2, l1, l2x2):
    # 1 - beta is formed in float64 before the cast (as torch does with Python floats):
    # 1 - 0.999 in float32 would be off by 5e-5
    one_m_b1, one_m_b2 = cast_like(1.0 - beta1, w), cast_like(1.0 - beta2, w)
    beta1, beta2, eps = cast_like(beta1, w), cast_like(beta2, w), cast_like(eps, w)
    step_size, sqrt_bc2 = cast_like(step_size, w), cast_like(sqrt_bc2, w)
    l1, l2x2 = cast_like(l1, w), cast_like(l2x2, w)
    nbad = 0
    for i in prange(w.size):
        wi = w[i]
        gi = g[i] + _reg(wi, l1, l2x2)
        mi = beta1 * m[i] + one_m_b1 * gi
        vi = beta2 * v[i] + one_m_b2 * gi * gi
        m[i] = mi
        v[i] = vi
        prev[i] = wi
        w[i] = wi - step_size * mi / (math.sqrt(vi) / sqrt_bc2 + eps)
        nbad += not np.isfinite(w[i])
    return nbad


def _adam_update(params, prev, m, v, bad, grads, seg_start, seg_l1, seg_l2,
                 lr, beta1, beta2, eps, step):
    # torch.optim.Adam; step (1,) int64 holds the step's count, from 1
    step = float(step[0])
    bc1 = 1.0 - beta1 ** step
    step_size = lr / bc1
    sqrt_bc2 = math.sqrt(1.0 - beta2 ** step)
    nbad = 0
    for s in range(seg_l1.size):
        lo, hi = seg_start[s], seg_start[s + 1]
        l1, l2 = seg_l1[s], seg_l2[s]
        nbad += _adam_segment(params[lo:hi], prev[lo:hi], m[lo:hi], v[lo:hi], grads[lo:hi],
                              beta1, beta2, eps, step_size, sqrt_bc2, l1, 2.0 * l2)
    bad[0] += nbad


@njit(inline="always", error_model="numpy")
def _add_reg_segment(g, w, l1, l2x2):
    l1, l2x2 = cast_like(l1, w), cast_like(l2x2, w)
    for i in prange(w.size):
        g[i] += _reg(w[i], l1, l2x2)


def _add_reg_grad(grads, params, seg_start, seg_l1, seg_l2):
    for s in range(seg_l1.size):
        if seg_l1[s] != 0.0 or seg_l2[s] != 0.0:
            lo, hi = seg_start[s], seg_start[s + 1]
            _add_reg_segment(grads[lo:hi], params[lo:hi], seg_l1[s], 2.0 * seg_l2[s])


@njit(inline="always", error_model="numpy")
def _penalty_segment(w, l1, l2):
    acc = 0.0
    for i in prange(w.size):
        wi = np.float64(w[i])
        acc += l1 * abs(wi) + l2 * wi * wi
    return acc


def _reg_penalty(out, params, seg_start, seg_l1, seg_l2):
    # out (1,) float64 = sum over segments of l1 * sum|w| + l2 * sum w^2
    total = 0.0
    for s in range(seg_l1.size):
        if seg_l1[s] != 0.0 or seg_l2[s] != 0.0:
            lo, hi = seg_start[s], seg_start[s + 1]
            total += _penalty_segment(params[lo:hi], seg_l1[s], seg_l2[s])
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


# --- images (NCHW): im2col convolution, max pooling, batch norm, dropout ------------
# Image kernels run in parallel over (image, channel) planes (or channels): each
# thread owns what it writes, so there are no write races and the summation order
# does not depend on the thread count.

@njit(inline="always", error_model="numpy")
def _out_range(count, size, offset, stride):
    # [lo, hi): the outputs o in [0, count) whose input o * stride + offset is in [0, size)
    lo = 0
    if offset < 0:
        lo = (-offset + stride - 1) // stride
    last = size - 1 - offset
    hi = 0 if last < 0 else min(count, last // stride + 1)
    lo = min(lo, count)
    return lo, max(lo, hi)


# The image kernels index 1-D slices from 0 (``d = dst[lo:hi]; for k in range(hi - lo)``): an
# index that might be negative makes Numba add a wrap-around test that stops LLVM from
# vectorising (a 14-element copy ran 20x slower, measured).

@njit(inline="always", error_model="numpy")
def _copy(dst, src):
    # dst[:] = src, 1-D of the same size
    for k in range(dst.size):
        dst[k] = src[k]


@njit(inline="always", error_model="numpy")
def _fill0(dst):
    for k in range(dst.size):
        dst[k] = 0


def _im2col(cols, x, kh, kw, stride, pad):
    # x (N, C, H, W) C-contiguous; cols (C*KH*KW, N*L), column n*L + oh*OW + ow, row
    # (c*KH + i)*KW + j. A thread writes whole rows of cols (one (c, i, j) tap each), image
    # by image. With stride 1 and OW == W (a "same" convolution) the block of an image is
    # the plane shifted by (i - P)*W + j - P: one flat copy, then the padding columns zeroed;
    # otherwise a copy per output row.
    n, c, h, w = x.shape
    oh = (h + 2 * pad - kh) // stride + 1
    ow = (w + 2 * pad - kw) // stride + 1
    npix = oh * ow
    planes = x.reshape(n, c, h * w)
    flat = stride == 1 and ow == w
    for r in prange(c * kh * kw):
        ch = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        p_lo, p_hi = _out_range(oh, h, i - pad, stride)
        q_lo, q_hi = _out_range(ow, w, j - pad, stride)
        crow = cols[r]
        for img in range(n):
            src = planes[img, ch]
            dst = crow[img * npix:(img + 1) * npix]
            _fill0(dst[:p_lo * ow])
            _fill0(dst[p_hi * ow:])
            if flat:
                shift = (i - pad) * w + j - pad
                t_lo = max(p_lo * ow, -shift)          # what the clipping drops is padding
                t_hi = min(p_hi * ow, h * w - shift)
                if t_hi > t_lo:
                    _copy(dst[t_lo:t_hi], src[t_lo + shift:t_hi + shift])
                for q in range(q_lo):               # the padding columns, one at a time
                    for p in range(p_lo, p_hi):
                        dst[p * ow + q] = 0
                for q in range(q_hi, ow):
                    for p in range(p_lo, p_hi):
                        dst[p * ow + q] = 0
                continue
            for p in range(p_lo, p_hi):
                row = dst[p * ow:(p + 1) * ow]
                _fill0(row[:q_lo])
                _fill0(row[q_hi:])
                if q_hi > q_lo:
                    s0 = (p * stride + i - pad) * w + q_lo * stride + j - pad
                    seg = row[q_lo:q_hi]
                    if stride == 1:
                        _copy(seg, src[s0:s0 + seg.size])
                    else:
                        for k in range(seg.size):
                            seg[k] = src[s0 + k * stride]


def _col2im(dx, cols, kh, kw, stride, pad):
    # dx (N, C, H, W) C-contiguous = the adjoint of im2col of cols (C*KH*KW, N*L); each
    # (image, channel) plane is summed by one thread in the fixed (i, j, oh, ow) order, a
    # contiguous run of cols per output row (the CUDA twin gathers in the same order).
    # With stride 1 and OW == W, as in im2col, a tap's block is the plane shifted: one flat
    # add over it, which skips the padding columns (they would wrap to the next or previous
    # row) by ``keep``: the same sums as row by row, in loops long enough for LLVM to
    # vectorise (a row of 14 is not: 12.5 against 5.3 to 6.9 us an image, P3's second conv)
    n, c, h, w = dx.shape
    oh = (h + 2 * pad - kh) // stride + 1
    ow = (w + 2 * pad - kw) // stride + 1
    npix = oh * ow
    planes = dx.reshape(n, c, h * w)
    flat = stride == 1 and ow == w
    keep = np.ones((kw, npix if flat else 0), dtype=np.bool_)   # keep[j, t]: column t % OW in tap j's range
    for j in range(kw if flat else 0):
        q_lo, q_hi = _out_range(ow, w, j - pad, stride)
        for t in range(npix):
            keep[j, t] = q_lo <= t % ow < q_hi
    for plane in prange(n * c):
        img = plane // c
        ch = plane - img * c
        out = planes[img, ch]
        _fill0(out)
        for i in range(kh):
            p_lo, p_hi = _out_range(oh, h, i - pad, stride)
            for j in range(kw):
                q_lo, q_hi = _out_range(ow, w, j - pad, stride)
                if q_hi <= q_lo:
                    continue
                src = cols[(ch * kh + i) * kw + j, img * npix:(img + 1) * npix]
                if flat:
                    shift = (i - pad) * w + j - pad
                    t_lo = max(p_lo * ow, -shift)
                    t_hi = min(p_hi * ow, h * w - shift)
                    if t_hi <= t_lo:
                        continue
                    acc, seg, use = out[t_lo + shift:t_hi + shift], src[t_lo:t_hi], keep[j, t_lo:t_hi]
                    zero = seg.dtype.type(0)
                    for k in range(seg.size):
                        acc[k] += seg[k] if use[k] else zero
                    continue
                for p in range(p_lo, p_hi):
                    d0 = (p * stride + i - pad) * w + q_lo * stride + j - pad
                    seg = src[p * ow + q_lo:p * ow + q_hi]
                    if stride == 1:
                        acc = out[d0:d0 + seg.size]
                        for k in range(seg.size):
                            acc[k] += seg[k]
                    else:
                        for k in range(seg.size):
                            out[d0 + k * stride] += seg[k]


def _conv_bias_forward(y, z, b):
    # z (M, N*L) = W @ cols; y (N, M, L) = z per image + b (M,)
    n, m, npix = y.shape
    for plane in prange(n * m):
        img = plane // m
        ch = plane - img * m
        bias = b[ch]
        off = img * npix
        for t in range(npix):
            y[img, ch, t] = z[ch, off + t] + bias


def _conv_bias_backward(dz, db, dy):
    # dy (N, M, L); dz (M, N*L) = dy laid out as z; db (M,) = sums over N and L in float64
    n, m, npix = dy.shape
    for ch in prange(m):
        s = 0.0
        for img in range(n):
            dz[ch, img * npix:(img + 1) * npix] = dy[img, ch]
            s += _sum4(dy[img, ch])
        db[ch] = s


def _maxpool_forward(y, argmax, x, k, stride):
    # x (N, C, H, W); y, argmax (N, C, OH, OW); argmax = ih*W + iw, the first maximum
    # in row-major window order. A NaN counts as the maximum (as np.argmax); it is
    # looked for only in a window that has one, keeping the common path branch-light.
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for plane in prange(n * c):
        img = plane // c
        ch = plane - img * c
        for p in range(oh):
            ih0 = p * stride
            for q in range(ow):
                iw0 = q * stride
                best = x[img, ch, ih0, iw0]
                arg = ih0 * w + iw0
                nan = False
                for i in range(k):
                    for j in range(k):
                        v = x[img, ch, ih0 + i, iw0 + j]
                        nan |= v != v
                        if v > best:
                            best = v
                            arg = (ih0 + i) * w + iw0 + j
                if nan:
                    arg = _first_nan(x, img, ch, ih0, iw0, k, w)
                    best = x[img, ch, arg // w, arg % w]
                y[img, ch, p, q] = best
                argmax[img, ch, p, q] = arg


@njit(inline="always", error_model="numpy")
def _first_nan(x, img, ch, ih0, iw0, k, w):
    for i in range(k):
        for j in range(k):
            v = x[img, ch, ih0 + i, iw0 + j]
            if v != v:
                return (ih0 + i) * w + iw0 + j
    return ih0 * w + iw0


def _maxpool_backward(dx, dy, argmax, k, stride):
    # dx (N, C, H, W) = 0 except at each window's argmax, which gets its dy (N, C, OH, OW);
    # k, stride unused here (the CUDA twin gathers with them)
    n, c, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    for plane in prange(n * c):
        img = plane // c
        ch = plane - img * c
        for a in range(h):
            for b in range(w):
                dx[img, ch, a, b] = 0
        for p in range(oh):
            for q in range(ow):
                a = argmax[img, ch, p, q]
                ih = a // w
                dx[img, ch, ih, a - ih * w] += dy[img, ch, p, q]


@njit(inline="always", error_model="numpy")
def _pool_row(yr, ar, src, bias, r0, ow, code, al, k, stride):
    # one row of pooled outputs yr, ar (PW,) from the conv output plane src (OH*OW,): windows
    # of rows r0 .. r0 + K - 1; a NaN counts as the maximum (the first one wins)
    for q in range(yr.size):
        iw0 = q * stride
        arg = r0 * ow + iw0
        best = _act(src[arg] + bias, code, al)
        for i in range(k):
            for j in range(k):
                a = (r0 + i) * ow + iw0 + j
                v = _act(src[a] + bias, code, al)
                if v > best or (v != v and best == best):
                    best = v
                    arg = a
        yr[q] = best
        ar[q] = arg


@njit(inline="always", error_model="numpy")
def _has_nan(v):
    # whether the 1-D v holds a NaN (a loop LLVM vectorises: no early exit)
    bad = False
    for t in range(v.size):
        bad |= v[t] != v[t]
    return bad


@njit(inline="always", error_model="numpy")
def _max4_first(a, b, c, d, i0, i1, i2, i3):
    # (max of a, b, c, d, the index i of the first one equal to it); no NaN among them
    best = max(max(a, b), max(c, d))
    arg = i3
    arg = i2 if c == best else arg
    arg = i1 if b == best else arg
    arg = i0 if a == best else arg
    return best, arg


@njit(inline="always", error_model="numpy")
def _pool_image_2x2(y, argmax, rows, b, img, ow, code, al):
    # K = S = 2 for image img, every channel at once: y, argmax (N, M, PH, PW); rows (L, M)
    # its block of zt, no NaN in act(rows + b). The inner loop runs over the channels,
    # contiguous in zt, and LLVM vectorises it once the caller has made ``code`` a literal
    # (_act's switch on a run-time code stops it: 3x slower, measured; so do views of y).
    # The windows' results go to (PH*PW, M) buffers first, stored whole vectors at a time,
    # then are laid out as (M, PH*PW): 5.3 us an image against 7.6 storing into y channel
    # by channel (P3's first conv, measured).
    ph, pw, m = y.shape[2], y.shape[3], b.size
    best = np.empty((ph * pw, m), dtype=y.dtype)
    arg = np.empty((ph * pw, m), dtype=argmax.dtype)
    for p in range(ph):
        for q in range(pw):
            i0 = 2 * p * ow + 2 * q          # the window's four pixels: i0, i0 + 1, i2, i2 + 1
            i2 = i0 + ow
            ra, rb, rc, rd = rows[i0], rows[i0 + 1], rows[i2], rows[i2 + 1]
            vo, ao = best[p * pw + q], arg[p * pw + q]
            for ch in range(m):
                vo[ch], ao[ch] = _max4_first(
                    _act(ra[ch] + b[ch], code, al), _act(rb[ch] + b[ch], code, al),
                    _act(rc[ch] + b[ch], code, al), _act(rd[ch] + b[ch], code, al), i0, i0 + 1, i2, i2 + 1)
    yo = y[img].reshape(m, ph * pw)
    ao = argmax[img].reshape(m, ph * pw)
    for ch in range(m):
        yr, ar = yo[ch], ao[ch]
        for t in range(ph * pw):
            yr[t] = best[t, ch]
            ar[t] = arg[t, ch]


def _conv_bias_act_pool_forward(y, argmax, zt, b, oh, ow, code, alpha, k, stride):
    # zt (N*L, M) = cols.T @ W2.T, L = OH*OW; b (M,); y, argmax (N, M, PH, PW): max pooling of
    # act(z + b) laid out as (N, M, OH, OW), argmax = oh*OW + ow, the first maximum in
    # row-major window order, a NaN the maximum; see reference.conv_bias_act_pool_forward.
    # One thread an image. K = S = 2 on an image with no NaN in zt (and a finite bias, so
    # none in act(z + b)) runs across the channels; anything else a window at a time.
    n, m, ph, pw = y.shape
    npix = oh * ow
    al = cast_like(alpha, zt)
    fast = k == 2 and stride == 2
    for ch in range(m):
        fast &= b[ch] - b[ch] == 0
    flat = zt.reshape(zt.size)
    for img in prange(n):
        rows = zt[img * npix:(img + 1) * npix]
        if fast and not _has_nan(flat[img * npix * m:(img + 1) * npix * m]):
            if code == RELU:
                _pool_image_2x2(y, argmax, rows, b, img, ow, RELU, al)
            elif code == IDENTITY:
                _pool_image_2x2(y, argmax, rows, b, img, ow, IDENTITY, al)
            else:
                _pool_image_2x2(y, argmax, rows, b, img, ow, code, al)
            continue
        for ch in range(m):
            for p in range(ph):
                _pool_row(y[img, ch, p], argmax[img, ch, p], rows[:, ch], b[ch], p * stride, ow, code, al,
                          k, stride)


@njit(inline="always", error_model="numpy")
def _unpool_plane(rows, ch, dy, y, argmax, code, al, one, zero):
    # rows[argmax, ch] += dy * act'(y) for one (image, channel) plane: dy, y, argmax (PH, PW);
    # returns the float64 sum of those gradients, in two interleaved partial sums (even and
    # odd windows of a row) that do not wait on one add at a time
    s0 = 0.0
    s1 = 0.0
    for p in range(dy.shape[0]):
        gr, yr, ar = dy[p], y[p], argmax[p]
        for q in range(gr.size):
            g = gr[q] * _grad_factor(yr[q], code, al, one, zero)
            rows[ar[q], ch] += g
            if q % 2 == 0:
                s0 += np.float64(g)
            else:
                s1 += np.float64(g)
    return s0 + s1


def _conv_bias_act_pool_backward(dzt, db, partial, dy, y, argmax, oh, ow, code, alpha, k, stride):
    # dzt (N*L, M), dz transposed: 0 except at each window's argmax, which gets dy * act'(y)
    # (summed in row-major window order where windows overlap); db (M,) = the sums of those
    # gradients, the sums of dz without its zeros. dy, y, argmax (N, M, PH, PW); k, stride
    # unused here (the CUDA twin gathers with them). partial is a (BLOCKS, M) float64 scratch
    # owned by the caller: blocks of images sum into their own row, then the rows in order,
    # so db depends on N only, not on the thread count. An image's block of dzt is zeroed
    # and scattered into while it is in cache.
    n, m, ph, pw = dy.shape
    npix = oh * ow
    one, zero, al = cast_like(1.0, dzt), cast_like(0.0, dzt), cast_like(alpha, dzt)
    flat = dzt.reshape(dzt.size)
    nblocks = max(1, min(partial.shape[0], n))
    for blk in prange(nblocks):
        acc = partial[blk]
        acc[:] = 0.0
        for img in range(blk * n // nblocks, (blk + 1) * n // nblocks):
            _fill0(flat[img * npix * m:(img + 1) * npix * m])
            rows = dzt[img * npix:(img + 1) * npix]
            for ch in range(m):
                gy, yy, ay = dy[img, ch], y[img, ch], argmax[img, ch]
                if code == RELU:    # a literal code: _grad_factor's switch folds away
                    acc[ch] += _unpool_plane(rows, ch, gy, yy, ay, RELU, al, one, zero)
                else:
                    acc[ch] += _unpool_plane(rows, ch, gy, yy, ay, code, al, one, zero)
    for ch in range(m):
        s = 0.0
        for blk in range(nblocks):
            s += partial[blk, ch]
        db[ch] = s


def _transpose(out, a):
    # out (B, A) = a.T for a (A, B): a weight gradient computed transposed, put in its layout
    na, nb = a.shape
    for j in prange(nb):
        for i in range(na):
            out[j, i] = a[i, j]


# Row reductions in float64 with four interleaved partial sums: a fixed order (so
# deterministic) that does not wait on one add at a time.

@njit(inline="always", error_model="numpy")
def _sum4(v):
    # sum of the 1-D v
    s0 = s1 = s2 = s3 = 0.0
    n4 = v.size - v.size % 4
    for t in range(0, n4, 4):
        s0 += v[t]
        s1 += v[t + 1]
        s2 += v[t + 2]
        s3 += v[t + 3]
    for t in range(n4, v.size):
        s0 += v[t]
    return (s0 + s1) + (s2 + s3)


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
    # x, y (N, C, L); mean, invstd, running_mean, running_var (C,) float64;
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
                    partial[blk, ch] += _sum4(x[i, ch])
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


def _batchnorm_backward(dx, dgamma, dbeta, partial, dy, x, mean, invstd, gamma, training):
    # dy, x, dx (N, C, L); dgamma, dbeta (C,); partial (BLOCKS, 2C) float64 scratch:
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


def _dropout_forward(y, mask, x, rate):
    # flat views; mask: uniform [0, 1) draws in, the multiplier 0 or 1/(1 - rate) out
    scale = 1.0 / (1.0 - rate)
    for i in prange(x.size):
        mask[i] = scale if mask[i] >= rate else 0.0
        y[i] = x[i] * mask[i]


def _dropout_backward(dx, dy, mask):
    # flat views: dx = dy * mask
    for i in prange(dx.size):
        dx[i] = dy[i] * mask[i]


im2col = _twins(_im2col)
col2im = _twins(_col2im)
conv_bias_forward = _twins(_conv_bias_forward)
conv_bias_backward = _twins(_conv_bias_backward)
maxpool_forward = _twins(_maxpool_forward)
maxpool_backward = _twins(_maxpool_backward)
conv_bias_act_pool_forward = _twins(_conv_bias_act_pool_forward)
conv_bias_act_pool_backward = _twins(_conv_bias_act_pool_backward)
transpose = _twins(_transpose)
batchnorm_forward = _twins(_batchnorm_forward)
batchnorm_backward = _twins(_batchnorm_backward)
dropout_forward = _twins(_dropout_forward)
dropout_backward = _twins(_dropout_backward)


def _augment_images(out, x, params, c, h, w, channels_last, nearest):
    # out, x (N, F) with F = C*H*W, planes (channels_last=0) or pixels of C values (=1);
    # params (N, 6) float64: output pixel (i, j) reads source point
    # (sy, sx) = (p3*j + p4*i + p5, p0*j + p1*i + p2), zero outside; see reference.py.
    # Coordinates and weights in float64 whatever the image dtype (cheap on a CPU).
    n = x.shape[0]
    if channels_last:
        sc, si, sj = 1, w * c, c
    else:
        sc, si, sj = h * w, w, 1
    for s in prange(n):
        p0, p1, p2 = params[s, 0], params[s, 1], params[s, 2]
        p3, p4, p5 = params[s, 3], params[s, 4], params[s, 5]
        for i in range(h):
            for j in range(w):
                sx = p0 * j + p1 * i + p2
                sy = p3 * j + p4 * i + p5
                o = i * si + j * sj
                if nearest:
                    fx = math.floor(sx + 0.5)
                    fy = math.floor(sy + 0.5)
                    if 0.0 <= fx < w and 0.0 <= fy < h:   # checked as floats: no int overflow
                        src = int(fy) * si + int(fx) * sj
                        for ch in range(c):
                            out[s, o + ch * sc] = x[s, src + ch * sc]
                    else:
                        for ch in range(c):
                            out[s, o + ch * sc] = 0.0
                    continue
                if not (-1.0 < sx < w and -1.0 < sy < h):   # all four taps outside
                    for ch in range(c):
                        out[s, o + ch * sc] = 0.0
                    continue
                fx = math.floor(sx)
                fy = math.floor(sy)
                tx = sx - fx
                ty = sy - fy
                x0 = int(fx)
                y0 = int(fy)
                for ch in range(c):
                    acc = 0.0
                    base = ch * sc
                    if y0 >= 0:
                        if x0 >= 0:
                            acc += (1.0 - ty) * (1.0 - tx) * x[s, base + y0 * si + x0 * sj]
                        if x0 + 1 < w:
                            acc += (1.0 - ty) * tx * x[s, base + y0 * si + (x0 + 1) * sj]
                    if y0 + 1 < h:
                        if x0 >= 0:
                            acc += ty * (1.0 - tx) * x[s, base + (y0 + 1) * si + x0 * sj]
                        if x0 + 1 < w:
                            acc += ty * tx * x[s, base + (y0 + 1) * si + (x0 + 1) * sj]
                    out[s, o + base] = acc


augment_images = _twins(_augment_images)
