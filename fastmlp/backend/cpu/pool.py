"""Pooling on the CPU: the Numba twins of kernels/pool.cu and their ops.

Must match reference.maxpool_forward, maxpool_backward, avgpool_forward,
avgpool_backward, global_avgpool_forward, global_avgpool_backward,
global_maxpool_forward and global_maxpool_backward. A thread owns whole
(image, channel) planes, so there are no write races. Sums run in float64.
(Max pooling fused after a convolution, with its activation, is conv.py's
conv_bias_act_pool_*.)
"""
from numba import njit, prange

from . import reduce
from .jit import cover_dependencies, pick, twins
from .reduce import sum4


@njit(inline="always", error_model="numpy")
def _first_nan(x, img, ch, ih0, iw0, k, w):
    for i in range(k):
        for j in range(k):
            v = x[img, ch, ih0 + i, iw0 + j]
            if v != v:
                return (ih0 + i) * w + iw0 + j
    return ih0 * w + iw0


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


maxpool_forward_twins = twins(_maxpool_forward)


def maxpool_forward(y, argmax, x, k, stride):
    # x (N, C, H, W); y, argmax (N, C, OH, OW), argmax int32
    pick(maxpool_forward_twins, x.size)(y, argmax, x, k, stride)


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


maxpool_backward_twins = twins(_maxpool_backward)


def maxpool_backward(dx, dy, argmax, k, stride):
    # dx (N, C, H, W) from dy, argmax (N, C, OH, OW) and the window geometry
    pick(maxpool_backward_twins, dx.size)(dx, dy, argmax, k, stride)


def _avgpool_forward(y, x, k, stride):
    # x (N, C, H, W); y (N, C, OH, OW): the mean of each KxK window, summed in float64
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    scale = 1.0 / (k * k)
    for plane in prange(n * c):
        img = plane // c
        ch = plane - img * c
        for p in range(oh):
            for q in range(ow):
                s = 0.0
                for i in range(k):
                    row = x[img, ch, p * stride + i]
                    for j in range(k):
                        s += row[q * stride + j]
                y[img, ch, p, q] = s * scale


avgpool_forward_twins = twins(_avgpool_forward)


def avgpool_forward(y, x, k, stride):
    # x (N, C, H, W); y (N, C, OH, OW)
    pick(avgpool_forward_twins, x.size)(y, x, k, stride)


def _avgpool_backward(dx, dy, k, stride):
    # dx (N, C, H, W): every pixel of a window gets the window's dy (N, C, OH, OW) / K^2,
    # summed over the windows that cover it in row-major window order
    n, c, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    scale = 1.0 / (k * k)
    for plane in prange(n * c):
        img = plane // c
        ch = plane - img * c
        out = dx[img, ch]
        for a in range(h):
            for b in range(w):
                out[a, b] = 0
        for p in range(oh):
            for q in range(ow):
                g = dy[img, ch, p, q] * scale
                for i in range(k):
                    row = out[p * stride + i]
                    for j in range(k):
                        row[q * stride + j] += g


avgpool_backward_twins = twins(_avgpool_backward)


def avgpool_backward(dx, dy, k, stride):
    # dx (N, C, H, W) from dy (N, C, OH, OW) and the window geometry
    pick(avgpool_backward_twins, dx.size)(dx, dy, k, stride)


def _global_avgpool_forward(y, planes):
    # planes (N, C, H*W); y (N, C): each plane's mean, summed in float64
    n, c, hw = planes.shape
    for plane in prange(n * c):
        img = plane // c
        ch = plane - img * c
        y[img, ch] = sum4(planes[img, ch]) / hw


global_avgpool_forward_twins = twins(_global_avgpool_forward)


def global_avgpool_forward(y, x):
    # x (N, C, H, W); y (N, C)
    n, c = x.shape[:2]
    pick(global_avgpool_forward_twins, x.size)(y, x.reshape(n, c, -1))


def _global_avgpool_backward(planes, dy):
    # planes (N, C, H*W) of dx = dy (N, C) / (H*W)
    n, c, hw = planes.shape
    for plane in prange(n * c):
        img = plane // c
        ch = plane - img * c
        g = dy[img, ch] / hw
        out = planes[img, ch]
        for t in range(hw):
            out[t] = g


global_avgpool_backward_twins = twins(_global_avgpool_backward)


def global_avgpool_backward(dx, dy):
    # dx (N, C, H, W) from dy (N, C)
    n, c = dx.shape[:2]
    pick(global_avgpool_backward_twins, dx.size)(dx.reshape(n, c, -1), dy)


def _global_maxpool_forward(y, argmax, planes):
    # planes (N, C, H*W); y, argmax (N, C): each plane's first maximum and its index; a NaN
    # counts as the maximum (as np.argmax)
    n, c, hw = planes.shape
    for plane in prange(n * c):
        img = plane // c
        ch = plane - img * c
        v = planes[img, ch]
        best = v[0]
        arg = 0
        for t in range(1, hw):
            if best != best:
                break
            if v[t] > best or v[t] != v[t]:
                best = v[t]
                arg = t
        y[img, ch] = best
        argmax[img, ch] = arg


global_maxpool_forward_twins = twins(_global_maxpool_forward)


def global_maxpool_forward(y, argmax, x):
    # x (N, C, H, W); y, argmax (N, C), argmax int32 = ih*W + iw
    n, c = x.shape[:2]
    pick(global_maxpool_forward_twins, x.size)(y, argmax, x.reshape(n, c, -1))


def _global_maxpool_backward(planes, dy, argmax):
    # planes (N, C, H*W) of dx: 0 except at each plane's argmax (N, C), which gets its dy
    n, c, hw = planes.shape
    for plane in prange(n * c):
        img = plane // c
        ch = plane - img * c
        out = planes[img, ch]
        for t in range(hw):
            out[t] = 0
        out[argmax[img, ch]] = dy[img, ch]


global_maxpool_backward_twins = twins(_global_maxpool_backward)


def global_maxpool_backward(dx, dy, argmax):
    # dx (N, C, H, W) from dy, argmax (N, C)
    n, c = dx.shape[:2]
    pick(global_maxpool_backward_twins, dx.size)(dx.reshape(n, c, -1), dy, argmax)


cover_dependencies(__name__, reduce)
