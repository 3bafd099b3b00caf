"""Max pooling on the CPU: the Numba twins of kernels/pool.cu and their ops.

Must match reference.maxpool_forward and maxpool_backward. A thread owns whole
(image, channel) planes, so there are no write races. (Max pooling fused after a
convolution, with its activation, is conv.py's conv_bias_act_pool_*.)
"""
from numba import njit, prange

from .jit import cover_dependencies, pick, twins


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


cover_dependencies(__name__)
