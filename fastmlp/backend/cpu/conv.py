"""Convolution on the CPU: the Numba twins of kernels/conv.cu and their ops.

Must match reference.im2col, col2im, conv_bias_forward, conv_bias_backward,
conv_bias_act_pool_forward, conv_bias_act_pool_backward (the convolution's epilogue
fused with its activation and max pooling) and transpose. Shapes in codes.py's
letters: x (N, C, H, W); cols (C*KH*KW, N*L), L = OH*OW; z (M, N*L) = W2 @ cols and
zt (N*L, M) its transpose; y (N, M, OH, OW), pooled (N, M, PH, PW).

The kernels run in parallel over (image, channel) planes, images or channels: each
thread owns what it writes, so there are no write races and the summation order does
not depend on the thread count.
"""
import numpy as np
from numba import njit, prange

from .. import codes
from ..codes import IDENTITY, RELU, padded_output_size, pads4
from . import activation, reduce
from .activation import act_grad, act_value
from .jit import cast_like, cover_dependencies, pick, twins
from .reduce import partial_sums, sum4

_padded_size = njit(inline="always")(padded_output_size)


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
# vectorising the loop.

@njit(inline="always", error_model="numpy")
def _copy(dst, src):
    # dst[:] = src, 1-D of the same size
    for k in range(dst.size):
        dst[k] = src[k]


@njit(inline="always", error_model="numpy")
def _fill0(dst):
    for k in range(dst.size):
        dst[k] = 0


def _im2col(cols, x, kh, kw, stride, pt, pb, pl, pr):
    # x (N, C, H, W) C-contiguous; cols (C*KH*KW, N*L), column n*L + oh*OW + ow, row
    # (c*KH + i)*KW + j. A thread writes whole rows of cols (one (c, i, j) tap each), image
    # by image. With stride 1 and OW == W (a "same" convolution) the block of an image is
    # the plane shifted by (i - PT)*W + j - PL: one flat copy, then the padding columns zeroed;
    # otherwise a copy per output row.
    n, c, h, w = x.shape
    oh, ow = _padded_size(h, kh, stride, pt, pb), _padded_size(w, kw, stride, pl, pr)
    npix = oh * ow
    planes = x.reshape(n, c, h * w)
    flat = stride == 1 and ow == w
    for r in prange(c * kh * kw):
        ch = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        p_lo, p_hi = _out_range(oh, h, i - pt, stride)
        q_lo, q_hi = _out_range(ow, w, j - pl, stride)
        crow = cols[r]
        for img in range(n):
            src = planes[img, ch]
            dst = crow[img * npix:(img + 1) * npix]
            _fill0(dst[:p_lo * ow])
            _fill0(dst[p_hi * ow:])
            if flat:
                shift = (i - pt) * w + j - pl
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
                    s0 = (p * stride + i - pt) * w + q_lo * stride + j - pl
                    seg = row[q_lo:q_hi]
                    if stride == 1:
                        _copy(seg, src[s0:s0 + seg.size])
                    else:
                        for k in range(seg.size):
                            seg[k] = src[s0 + k * stride]


im2col_twins = twins(_im2col)


def im2col(cols, x, kh, kw, stride, pad):
    # x (N, C, H, W); cols (C*KH*KW, N*L); pad P or (PT, PB, PL, PR)
    pick(im2col_twins, cols.size)(cols, x, kh, kw, stride, *pads4(pad))


def _col2im(dx, cols, kh, kw, stride, pt, pb, pl, pr):
    # dx (N, C, H, W) C-contiguous = the adjoint of im2col of cols (C*KH*KW, N*L); each
    # (image, channel) plane is summed by one thread in the fixed (i, j, oh, ow) order, a
    # contiguous run of cols per output row (the CUDA twin gathers in the same order).
    # With stride 1 and OW == W, as in im2col, a tap's block is the plane shifted: one flat
    # add over it, which skips the padding columns (they would wrap to the next or previous
    # row) by ``keep``: the same sums as row by row, in loops long enough for LLVM to
    # vectorise (a row of 14 is not)
    n, c, h, w = dx.shape
    oh, ow = _padded_size(h, kh, stride, pt, pb), _padded_size(w, kw, stride, pl, pr)
    npix = oh * ow
    planes = dx.reshape(n, c, h * w)
    flat = stride == 1 and ow == w
    keep = np.ones((kw, npix if flat else 0), dtype=np.bool_)   # keep[j, t]: column t % OW in tap j's range
    for j in range(kw if flat else 0):
        q_lo, q_hi = _out_range(ow, w, j - pl, stride)
        for t in range(npix):
            keep[j, t] = q_lo <= t % ow < q_hi
    for plane in prange(n * c):
        img = plane // c
        ch = plane - img * c
        out = planes[img, ch]
        _fill0(out)
        for i in range(kh):
            p_lo, p_hi = _out_range(oh, h, i - pt, stride)
            for j in range(kw):
                q_lo, q_hi = _out_range(ow, w, j - pl, stride)
                if q_hi <= q_lo:
                    continue
                src = cols[(ch * kh + i) * kw + j, img * npix:(img + 1) * npix]
                if flat:
                    shift = (i - pt) * w + j - pl
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
                    d0 = (p * stride + i - pt) * w + q_lo * stride + j - pl
                    seg = src[p * ow + q_lo:p * ow + q_hi]
                    if stride == 1:
                        acc = out[d0:d0 + seg.size]
                        for k in range(seg.size):
                            acc[k] += seg[k]
                    else:
                        for k in range(seg.size):
                            out[d0 + k * stride] += seg[k]


col2im_twins = twins(_col2im)


def col2im(dx, cols, kh, kw, stride, pad):
    # cols (C*KH*KW, N*L); dx (N, C, H, W), overwritten; pad P or (PT, PB, PL, PR)
    pick(col2im_twins, cols.size)(dx, cols, kh, kw, stride, *pads4(pad))


def _per_image(a):
    # (N, M, OH, OW) -> (N, M, L), a view
    return a.reshape(a.shape[0], a.shape[1], -1)


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


conv_bias_forward_twins = twins(_conv_bias_forward)


def conv_bias_forward(y, z, b):
    # z (M, N*L); y (N, M, OH, OW); b (M,)
    pick(conv_bias_forward_twins, y.size)(_per_image(y), z, b)


def _conv_bias_backward(dz, db, dy):
    # dy (N, M, L); dz (M, N*L) = dy laid out as z; db (M,) = sums over N and L in float64
    n, m, npix = dy.shape
    for ch in prange(m):
        s = 0.0
        for img in range(n):
            dz[ch, img * npix:(img + 1) * npix] = dy[img, ch]
            s += sum4(dy[img, ch])
        db[ch] = s


conv_bias_backward_twins = twins(_conv_bias_backward)


def conv_bias_backward(dz, db, dy):
    # dy (N, M, OH, OW); dz (M, N*L); db (M,)
    pick(conv_bias_backward_twins, dy.size)(dz, db, _per_image(dy))


# --- the epilogue fused with the activation and max pooling (Conv2D -> act -> MaxPool2D)

@njit(inline="always", error_model="numpy")
def _pool_row(yr, ar, src, bias, r0, ow, code, al, k, stride):
    # one row of pooled outputs yr, ar (PW,) from the conv output plane src (OH*OW,): windows
    # of rows r0 .. r0 + K - 1; a NaN counts as the maximum (the first one wins)
    for q in range(yr.size):
        iw0 = q * stride
        arg = r0 * ow + iw0
        best = act_value(src[arg] + bias, code, al)
        for i in range(k):
            for j in range(k):
                a = (r0 + i) * ow + iw0 + j
                v = act_value(src[a] + bias, code, al)
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
    # (act_value's switch on a run-time code stops it; so do views of y). The windows'
    # results go to (PH*PW, M) buffers first, stored whole vectors at a time, then are laid
    # out as (M, PH*PW), which is faster than storing into y channel by channel.
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
                    act_value(ra[ch] + b[ch], code, al), act_value(rb[ch] + b[ch], code, al),
                    act_value(rc[ch] + b[ch], code, al), act_value(rd[ch] + b[ch], code, al),
                    i0, i0 + 1, i2, i2 + 1)
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


conv_bias_act_pool_forward_twins = twins(_conv_bias_act_pool_forward)


def conv_bias_act_pool_forward(y, argmax, zt, b, oh, ow, code, alpha, k, stride):
    # zt (N*L, M); b (M,); y, argmax (N, M, PH, PW), argmax int32 = oh*OW + ow
    pick(conv_bias_act_pool_forward_twins, zt.size)(y, argmax, zt, b, oh, ow, code, alpha, k, stride)


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
            g = gr[q] * act_grad(yr[q], code, al, one, zero)
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
                if code == RELU:    # a literal code: act_grad's switch folds away
                    acc[ch] += _unpool_plane(rows, ch, gy, yy, ay, RELU, al, one, zero)
                else:
                    acc[ch] += _unpool_plane(rows, ch, gy, yy, ay, code, al, one, zero)
    for ch in range(m):
        s = 0.0
        for blk in range(nblocks):
            s += partial[blk, ch]
        db[ch] = s


conv_bias_act_pool_backward_twins = twins(_conv_bias_act_pool_backward)


def conv_bias_act_pool_backward(dzt, db, dy, y, argmax, oh, ow, code, alpha, k, stride):
    # dy, y, argmax (N, M, PH, PW); dzt (N*L, M); db (M,)
    pick(conv_bias_act_pool_backward_twins, dzt.size)(dzt, db, partial_sums(dzt.shape[1]), dy, y, argmax,
                                                      oh, ow, code, alpha, k, stride)


def _transpose(out, a):
    # out = a.T, a 2-D: a weight gradient computed transposed, put in its layout
    na, nb = a.shape
    for j in prange(nb):
        for i in range(na):
            out[j, i] = a[i, j]


transpose_twins = twins(_transpose)


def transpose(out, a):
    # out = a.T, both 2-D
    pick(transpose_twins, a.size)(out, a)


cover_dependencies(__name__, activation, reduce, codes)
