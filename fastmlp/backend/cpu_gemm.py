"""How many BLAS threads each GEMM shape gets on the CPU.

A small GEMM finishes sooner on one BLAS thread than on several that must
wake up and synchronise, and on a shared 2-core machine a second thread that
has to wait for its core stalls the whole product (measured here, see
``bench/gemm_threads.py``). So a GEMM below ``SMALL_MACS`` multiply-adds runs
on one thread and a bigger one on all of them; the rule depends on the shape
only, never on a timing, so a run is bitwise repeatable (a plan chosen by
timing could differ between two runs, and with it the rounding).
``FASTMLP_BLAS_SMALL`` overrides the threshold (0: always all threads).

Whose threads run a big GEMM is the model's choice (``use_numba_threads``):
OpenBLAS's own for an MLP, Numba's (cpu_blas.py, blocks of single-threaded
OpenBLAS calls) for a model whose convolutions run as chunked Numba kernels.

The thread count is set through threadpoolctl and put back right after the
call, so the caller's own NumPy code never inherits our setting.
"""
import os

import numba
import numpy as np

from . import cpu_blas

SMALL_MACS = int(os.environ.get("FASTMLP_BLAS_SMALL", 1 << 22))

_blas = []


def _controller():
    """(set_num_threads of NumPy's BLAS, its thread count), or (None, 1) if it can't be found.

    threadpoolctl finds the library; for OpenBLAS its C setter is looked up once here,
    since threadpoolctl's own set_num_threads looks the symbol up (and builds its name)
    on every call, twice per small GEMM on the hot path."""
    if not _blas:
        try:
            from threadpoolctl import ThreadpoolController
            found = ThreadpoolController().select(user_api="blas").lib_controllers
            ctl = found[0] if found else None
            setter = ctl.set_num_threads if ctl is not None else None
            if ctl is not None and ctl.internal_api == "openblas":
                setter = getattr(ctl, "_get_symbol", lambda name: None)("openblas_set_num_threads") or setter
            _blas.extend([setter, ctl.get_num_threads() if ctl is not None else 1])
        except Exception:  # threadpoolctl missing or BLAS not introspectable
            _blas.extend([None, 1])
    return _blas[0], _blas[1]


_on_numba = [False]


def use_numba_threads(flag):
    """Run big GEMMs on Numba's threads (cpu_blas) from now on, or (False) on OpenBLAS's.

    A model whose convolutions run as chunked Numba kernels needs the first: OpenBLAS's
    threads keep spinning after each GEMM and then take the cores that the next Numba
    kernel needs (P3, 2 cores: 22 ms a step against 7 ms). An MLP runs faster on the
    second (about 5 % on P2), so each model says which before its steps."""
    _on_numba[0] = bool(flag) and cpu_blas.available()


def on_numba_threads():
    """Whether big GEMMs run on Numba's threads now."""
    return _on_numba[0]


def threads_for(m, k, n):
    """BLAS threads for an (m, k) @ (k, n) product."""
    _, most = _controller()
    return 1 if m * k * n < SMALL_MACS else most


def matmul(out, a, b):
    """out = a @ b; a and b may be transposed views."""
    set_threads, most = _controller()
    small = a.shape[0] * a.shape[1] * b.shape[1] < SMALL_MACS
    if not small and _on_numba[0] and numba.get_num_threads() > 1:
        if cpu_blas.matmul(out, a, b, numba.get_num_threads()):
            return
    if set_threads is not None and most > 1 and small:
        set_threads(1)
        try:
            np.matmul(a, b, out=out)
        finally:
            set_threads(most)
    else:
        np.matmul(a, b, out=out)
