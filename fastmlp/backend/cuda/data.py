"""Arrays on the GPU and the data ops: creation, transfers, copies, gathering a mini-batch,
uniform draws. The launcher of kernels/data.cu (gather_rows, to match
reference.gather_rows); the same names and arguments as cpu/data.py.

Copies run on the current stream and do not synchronise with the host.
"""
import cupy
import numpy as np

from .launch import FLOAT, THREADS, blocks, itype, kernel, same_shape
from .source import expr

_GATHER_BITS = {1: "unsigned char", 2: "unsigned short", 4: "unsigned int", 8: "unsigned long long"}


def empty(shape, dtype):
    return cupy.empty(shape, dtype=dtype)


def zeros(shape, dtype):
    return cupy.zeros(shape, dtype=dtype)


def to_device(host, dtype=None):
    """A C-contiguous array of ``dtype`` on this device (no copy when it already is one)."""
    a = cupy.asarray(host, dtype=dtype)
    return a if a.flags.c_contiguous else cupy.ascontiguousarray(a)


def to_host(a):
    return cupy.asnumpy(a)


def synchronize():
    cupy.cuda.Device().synchronize()


def _check_same(out, a, what):
    if out.shape != a.shape or out.dtype != a.dtype:
        raise ValueError(f"expected {what} of shape {out.shape} dtype {out.dtype}, got {a.shape} {a.dtype}")


def copy(out, a):
    # out = a, device arrays of one shape and dtype, C-contiguous: a device-to-device copy
    # on the current stream
    _check_same(out, a, "an array")
    if not (out.flags.c_contiguous and a.flags.c_contiguous):
        raise ValueError("expected out and a C-contiguous")
    out.data.copy_from_device_async(a.data, a.nbytes, cupy.cuda.get_current_stream())


def copy_from_host(out, host):
    # out (any shape) = host, a NumPy array of the same shape and dtype. Asynchronous on the
    # current stream: from pageable memory CUDA stages the bytes before returning, so the
    # host array may be rewritten at once, and the device is not synchronised.
    _check_same(out, host, "a host array")
    out.set(host, stream=cupy.cuda.get_current_stream())


def gather_rows(out, x, idx):
    # out (N, ...) = x[idx], x (rows, ...) the same trailing shape, idx (N,) integers
    b = out.shape[0]
    same_shape("idx", idx, (b,))
    if x.dtype != out.dtype:
        raise TypeError(f"expected x of dtype {out.dtype} (as out), got {x.dtype}")
    if out.shape[1:] != x.shape[1:]:
        raise ValueError(f"expected x rows of shape {out.shape[1:]} (as out), got {x.shape[1:]}")
    if not (out.flags.c_contiguous and x.flags.c_contiguous):
        raise ValueError("expected out and x C-contiguous")
    it = itype(idx, "idx")
    if out.size == 0:
        return
    et = FLOAT.get(out.dtype) or _GATHER_BITS.get(out.dtype.itemsize)
    if et is None:
        raise TypeError(f"expected rows of 1, 2, 4 or 8-byte elements, got {out.dtype}")
    kernel("data", expr("gather_rows", et, it))(
        (blocks(out.size),), (THREADS,),
        (out, x, idx, np.int64(b), np.int64(out.size // b)))


_device_generators = {}   # id(host generator) -> (host generator, cupy Generator)


def random_uniform(out, rng):
    """Fill out (float32 or float64) with uniform [0, 1) draws, in place, on the device.

    The draws come from a cupy Generator seeded once by the model's generator
    ``rng`` (one 63-bit draw at first use), so the same model seed gives the same
    masks run to run; the values differ from the CPU backend's."""
    entry = _device_generators.get(id(rng))
    if entry is None or entry[0] is not rng:
        seed = int(rng.integers(0, 2**63 - 1))
        entry = _device_generators[id(rng)] = (rng, cupy.random.Generator(cupy.random.XORWOW(seed)))
    entry[1].random(dtype=out.dtype, out=out)
