"""How the CPU kernels are compiled and chosen.

Every kernel is compiled twice (``twins``): a serial version and a
``parallel=True`` one. An op picks one by its work (``pick``): waking Numba's
thread pool costs more than a small kernel takes. Kernels are cached on disk
(``cache=True``; the package's ``__init__`` says where), and
``cover_dependencies`` makes a cached kernel go stale when a file whose code
it compiles in changes, not only its own.
"""
import os
import sys
import types
from collections import namedtuple

import numpy as np
from llvmlite import ir
from numba import njit
from numba import types as nbtypes
from numba.extending import intrinsic, overload

from . import blas_pool
from .blas import numba_thread_gemms

# Below this many elements a kernel runs serially: a parallel region waits for a core that
# OpenBLAS's worker threads keep spinning on after a GEMM (bench/README.md, "CPU thresholds"),
# unless OpenBLAS's jobs run on Numba's threads (blas_pool.py, while a fit trains).
PARALLEL_MIN_WORK = int(os.environ.get("FASTMLP_PARALLEL_MIN_WORK", 1 << 24))
# The threshold while big GEMMs run on Numba's threads (OpenBLAS's jobs through blas_pool.py,
# or blocks of single-threaded calls, blas.use_numba_thread_gemms): nothing spins against
# Numba's threads then, and they are awake between the GEMMs.
PARALLEL_MIN_WORK_SHARED = int(os.environ.get("FASTMLP_PARALLEL_MIN_WORK_SHARED", 1 << 16))

Twins = namedtuple("Twins", "serial parallel")


def twins(fn):
    """``fn`` compiled as a serial and a parallel njit kernel, with distinct cache keys."""
    par_fn = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_parallel",
                                fn.__defaults__, fn.__closure__)
    par_fn.__qualname__ = fn.__qualname__ + "_parallel"
    # error_model="numpy": x / 0 gives inf as in NumPy and C; Python's model would test
    # every divisor for a ZeroDivisionError and keep LLVM from vectorising
    return Twins(njit(cache=True, nogil=True, error_model="numpy")(fn),
                 njit(cache=True, parallel=True, nogil=True, error_model="numpy")(par_fn))


def pick(kernels, work):
    """The twin to run for ``work`` elements: the parallel one from the threshold on."""
    least = PARALLEL_MIN_WORK_SHARED if numba_thread_gemms() or blas_pool.active() else PARALLEL_MIN_WORK
    return kernels.parallel if work >= least else kernels.serial


def cast_like(value, arr):
    """``value`` converted to ``arr``'s dtype inside a kernel, so that float32 arithmetic
    stays float32 instead of promoting to float64."""
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(cast_like, inline="always")
def _cast_like(value, arr):
    dt = arr.dtype

    def impl(value, arr):
        return dt(value)
    return impl


@intrinsic
def _float_bits(typingctx, x):
    # the bits of a float32 / float64 as an int32 / int64 (a bitcast)
    width = 32 if x == nbtypes.float32 else 64
    sig = (nbtypes.int32 if width == 32 else nbtypes.int64)(x)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(width))

    return sig, codegen


def nonfinite_bits(x):
    """An unsigned integer of x's width whose top bit is set exactly when x is NaN or Inf:
    x's exponent field plus the exponent's lowest bit (all ones carries into the top bit).
    The largest over values (``max``, a reduction Numba's prange also takes) is tested with
    ``any_nonfinite``: integer operations only, so LLVM vectorises them beside a loop's
    float arithmetic (a test of x - x != x - x there cost the loop its vector width)."""
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(nonfinite_bits, inline="always")
def _nonfinite_bits(x):
    if x == nbtypes.float32:
        def impl(x):
            # each step cast back: Numba widens uint32 arithmetic to 64 bits (half the lanes)
            return np.uint32(np.uint32(np.uint32(_float_bits(x)) & np.uint32(0x7F800000)) + np.uint32(0x00800000))
    else:
        def impl(x):
            return (np.uint64(np.uint64(_float_bits(x)) & np.uint64(0x7FF0000000000000)) +
                    np.uint64(0x0010000000000000))
    return impl


def any_nonfinite(acc, arr):
    """Whether ``acc``, the largest nonfinite_bits of values of ``arr``'s dtype, saw a NaN or Inf."""
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(any_nonfinite, inline="always")
def _any_nonfinite(acc, arr):
    top = np.uint32(0x80000000) if arr.dtype == nbtypes.float32 else np.uint64(0x8000000000000000)

    def impl(acc, arr):
        return (acc & top) != 0
    return impl


_FILES = {}   # module name -> the source files its kernels' machine code comes from


def cover_dependencies(name, *deps):
    """Make the cached kernels of module ``name`` go stale when any of the modules ``deps``
    (or what they depend on) changes.

    Numba keys a cached kernel on the stamp (mtime, size) of its own file only, while a
    kernel compiles in the code of everything it calls: an inlined helper, another kernel,
    a constant. Without this an edit of activation.py alone would leave dense.py's kernels
    loading stale machine code. Where Numba's cache internals differ from this version's,
    nothing is changed."""
    module = sys.modules[name]
    files = {module.__file__, __file__}
    for dep in deps:
        files |= _FILES.get(dep.__name__, {dep.__file__})
    _FILES[name] = files
    try:
        stats = [os.stat(f) for f in sorted(files)]
    except OSError:
        return
    stamp = (max(st.st_mtime for st in stats), sum(st.st_size for st in stats))
    for value in list(vars(module).values()):
        for kernel in (value if isinstance(value, Twins) else (value,)):
            if getattr(getattr(kernel, "py_func", None), "__module__", None) != name:
                continue
            cache_file = getattr(getattr(kernel, "_cache", None), "_cache_file", None)
            if cache_file is not None and hasattr(cache_file, "_source_stamp"):
                cache_file._source_stamp = stamp
