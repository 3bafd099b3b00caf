"""How the CUDA kernels are compiled and launched, and the checks every launcher makes.

Each family of kernels (one ``kernels/<family>.cu``) is compiled once per
process (NVRTC through ``cupy.RawModule``, with the source, options and name
expressions of source.py) on first use; the instantiation is picked by dtype.
Every op launches on the current stream and never synchronises with the host:
scalars travel as kernel arguments, ``stats`` and ``bad`` stay on the device.

Reductions (bias gradients, loss sums) are two fixed-order passes through a
float64 workspace cached per (device, stream), with grid sizes that depend on
the shape only: results are bitwise reproducible, and a step allocates nothing
once the workspace has grown to the largest shape seen.
"""
import threading

import cupy
import numpy as np

from . import source

THREADS = 256                 # a block; the kernels' fixed-tree reductions assume it
MAX_BLOCKS = 1 << 16          # grid-stride loops cover the rest
MAX_REDUCE_BLOCKS = 1024      # partial sums of one reduction (a fixed cap keeps results reproducible)
CHANNEL_PARTIALS = 1024       # cap on the partial sums of a per-channel reduction, over all channels
FLOAT = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
INDEX = {np.dtype(np.int32): "int", np.dtype(np.int64): "long long"}

_modules = {}     # family -> cupy.RawModule
_kernels = {}     # (family, name expression) -> cupy.RawKernel (compiled per device by CuPy)
_workspaces = {}  # (device id, stream ptr, thread) -> float64 cupy array


def kernel(family, expression):
    """The compiled kernel of one name expression (source.expr) of ``family``."""
    k = _kernels.get((family, expression))
    if k is None:
        mod = _modules.get(family)
        if mod is None:
            mod = _modules[family] = cupy.RawModule(
                code=source.source(family), options=source.options(family),
                name_expressions=source.name_expressions(family))
        k = _kernels[(family, expression)] = mod.get_function(expression)
    return k


def workspace(count):
    """A float64 scratch array of ``count`` elements for this device, stream and thread (two
    threads on one stream enqueue in any interleaving: each needs its own)."""
    key = (cupy.cuda.runtime.getDevice(), cupy.cuda.get_current_stream().ptr, threading.get_ident())
    buf = _workspaces.get(key)
    if buf is None or buf.size < count:
        size = 1 << max(10, (count - 1).bit_length())
        buf = _workspaces[key] = cupy.empty(size, dtype=cupy.float64)
    return buf[:count]


def cdiv(a, b):
    return -(-a // b)


def blocks(work):
    """Blocks of a grid-stride loop over ``work`` elements."""
    return min(max(1, cdiv(work, THREADS)), MAX_BLOCKS)


def channel_grid(count, c):
    """G blocks per channel for a reduction of C channels of ``count`` values each:
    at least 4 values a thread, about CHANNEL_PARTIALS blocks in all; a function
    of the shape only, so results are reproducible."""
    if c > 65535:
        raise ValueError(f"expected at most 65535 channels for a per-channel reduction, got {c}")
    return max(1, min(cdiv(count, 4 * THREADS), max(1, CHANNEL_PARTIALS // c)))


def ftype(*arrays):
    """The kernel type name for arrays that must share one float dtype and be C-contiguous."""
    dt = arrays[0].dtype
    t = FLOAT.get(dt)
    if t is None:
        raise TypeError(f"expected float32 or float64 arrays, got {dt}")
    for a in arrays:
        if a.dtype != dt:
            raise TypeError(f"expected all arrays of dtype {dt}, got {a.dtype}")
        if not a.flags.c_contiguous:
            raise ValueError(f"expected C-contiguous arrays, got strides {a.strides} "
                             f"for shape {a.shape}")
    return t


def itype(a, what):
    """The kernel type name of an int32 or int64 C-contiguous array."""
    t = INDEX.get(a.dtype)
    if t is None:
        raise TypeError(f"expected {what} of dtype int32 or int64, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"expected {what} C-contiguous, got strides {a.strides}")
    return t


def same_shape(what, a, shape):
    if a.shape != shape:
        raise ValueError(f"expected {what} of shape {shape}, got {a.shape}")


def check_f64(what, a, size):
    if a.dtype != np.float64 or a.shape != (size,) or not a.flags.c_contiguous:
        raise TypeError(f"expected {what} as a C-contiguous float64 array of shape ({size},), "
                        f"got {a.dtype} {a.shape}")


def check_argmax(argmax, shape):
    same_shape("argmax", argmax, shape)
    if argmax.dtype != np.int32 or not argmax.flags.c_contiguous:
        raise TypeError(f"expected argmax as a C-contiguous int32 array, got {argmax.dtype}")
