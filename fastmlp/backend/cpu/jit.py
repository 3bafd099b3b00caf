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

from numba import njit
from numba.extending import overload

from .blas import numba_thread_gemms

# Below this many elements a kernel runs serially. The fused kernels are memory-bound, so a
# second thread gains little, while a parallel region waits for a core that OpenBLAS's
# worker threads keep spinning on after a GEMM (bench/README.md, "CPU thresholds").
PARALLEL_MIN_WORK = int(os.environ.get("FASTMLP_PARALLEL_MIN_WORK", 1 << 24))
# The threshold while big GEMMs run on Numba's threads (blas.use_numba_thread_gemms): nothing
# spins on the cores then and Numba's threads are awake. Not the default: between the short
# kernels of an MLP's step they fall asleep, and waking them costs more than they save.
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
    least = PARALLEL_MIN_WORK_SHARED if numba_thread_gemms() else PARALLEL_MIN_WORK
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
