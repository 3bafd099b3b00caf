"""GEMMs on the CPU: out = a @ b through NumPy's BLAS, and whose threads run it.

A small GEMM finishes sooner on one BLAS thread than on several that must
wake up and synchronise, and a second thread that has to wait for its core
stalls the whole product. So a GEMM below ``SMALL_MACS`` multiply-adds runs
on one thread and a bigger one on all of them (``bench/gemm_threads.py``
times both). The rule depends on the shape only, never on a timing, so a run
is bitwise repeatable. ``FASTMLP_BLAS_SMALL`` overrides the threshold (0:
always all threads). The thread count is set through threadpoolctl and put
back right after the call, so the caller's own NumPy code never inherits it.

Whose threads run a big GEMM is the model's choice (``use_numba_thread_gemms``):
OpenBLAS's own for an MLP, Numba's (openblas.py: blocks of single-threaded
OpenBLAS calls) for a model whose convolutions run as chunked Numba kernels.
OpenBLAS's threads keep spinning after each GEMM and would take the cores
the next Numba kernel needs; in an MLP, whose steps are GEMMs and short
kernels, OpenBLAS's own threading is the faster.
"""
import os

import numba
import numpy as np

from . import openblas

SMALL_MACS = int(os.environ.get("FASTMLP_BLAS_SMALL", 1 << 22))

_blas = []
_numba_thread_gemms = [False]


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


def use_numba_thread_gemms(flag):
    """Run big GEMMs on Numba's threads from now on (True: a model with chunked conv kernels),
    or on OpenBLAS's (False). Each model says which before its steps."""
    _numba_thread_gemms[0] = bool(flag) and openblas.available()


def numba_thread_gemms():
    """Whether big GEMMs run on Numba's threads now."""
    return _numba_thread_gemms[0]


def matmul(out, a, b):
    # out (m, n) = a (m, k) @ b (k, n); a and b may be transposed views
    set_threads, most = _controller()
    small = a.shape[0] * a.shape[1] * b.shape[1] < SMALL_MACS
    if not small and _numba_thread_gemms[0] and numba.get_num_threads() > 1:
        if openblas.matmul(out, a, b, numba.get_num_threads()):
            return
    if set_threads is not None and most > 1 and small:
        set_threads(1)
        try:
            np.matmul(a, b, out=out)
        finally:
            set_threads(most)
    else:
        np.matmul(a, b, out=out)
