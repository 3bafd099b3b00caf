"""Data augmentation on the CPU: the Numba twin of kernels/augment.cu and its op.

Must match reference.augment_images: a per-sample affine warp (flip, rotation, shift)
of a batch of images, zero outside the image.
"""
import math

from numba import prange

from .jit import cover_dependencies, pick, twins


def _augment_images(out, x, params, c, h, w, channels_last, nearest):
    # out, x (N, C*H*W), planes (channels_last=0) or pixels of C values (=1);
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


augment_images_twins = twins(_augment_images)


def augment_images(out, x, params, c, h, w, channels_last, nearest):
    # out, x (N, C*H*W) flat images; params (N, 6) float64 per-sample affine maps
    pick(augment_images_twins, x.size)(out, x, params, c, h, w, channels_last, nearest)


cover_dependencies(__name__)
