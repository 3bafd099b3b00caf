"""Data augmentation on the GPU: the launcher of kernels/augment.cu.

Must match reference.augment_images; the same name and arguments as cpu/augment.py.
"""
import numpy as np

from .launch import THREADS, blocks, ftype, kernel, same_shape
from .source import expr


def augment_images(out, x, params, c, h, w, channels_last, nearest):
    # out, x (N, C*H*W) flat images; params (N, 6) float64 per-sample affine maps
    n = x.shape[0]
    same_shape("out", out, x.shape)
    same_shape("params", params, (n, 6))
    t = ftype(out, x)
    if params.dtype != np.float64 or not params.flags.c_contiguous:
        raise TypeError(f"expected params as a C-contiguous float64 array, got {params.dtype}")
    if x.ndim != 2 or x.shape[1] != c * h * w:
        raise ValueError(f"expected x of shape (N, {c}*{h}*{w}), got {x.shape}")
    if x.size == 0:
        return
    kernel("augment", expr("augment_images", t))(
        (blocks(n * h * w),), (THREADS,),
        (out, x, params, np.int64(n), np.int32(c), np.int32(h), np.int32(w),
         np.int32(bool(channels_last)), np.int32(bool(nearest))))
