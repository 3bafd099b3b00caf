"""How many BLAS threads each GEMM shape gets on the CPU.

A small GEMM finishes sooner on one BLAS thread than on several that must
wake up and synchronise, and on a shared 2-core machine a second thread that
has to wait for its core stalls the whole product (measured here, see
``bench/gemm_threads.py``). So a GEMM below ``SMALL_MACS`` multiply-adds runs
on one thread and a bigger one on all of them; the rule depends on the shape
only, never on a timing, so a run is bitwise repeatable (a plan chosen by
timing could differ between two runs, and with it the rounding).
``FASTMLP_BLAS_SMALL`` overrides the threshold (0: always all threads).

The thread count is set through threadpoolctl and put back right after the
call, so the caller's own NumPy code never inherits our setting.
"""
import os

import numpy as np

SMALL_MACS = int(os.environ.get("FASTMLP_BLAS_SMALL", 1 << 22))

_blas = []


def _controller():
    """threadpoolctl's handle on NumPy's BLAS, or None if it can't be found."""
    if not _blas:
        try:
            from threadpoolctl import ThreadpoolController
            found = ThreadpoolController().select(user_api="blas").lib_controllers
            ctl = found[0] if found else None
            _blas.extend([ctl, ctl.get_num_threads() if ctl is not None else 1])
        except Exception:  # threadpoolctl missing or BLAS not introspectable
            _blas.extend([None, 1])
    return _blas[0], _blas[1]


def threads_for(m, k, n):
    """BLAS threads for an (m, k) @ (k, n) product."""
    ctl, most = _controller()
    return 1 if m * k * n < SMALL_MACS else most


def matmul(out, a, b):
    """out = a @ b; a and b may be transposed views."""
    ctl, most = _controller()
    if ctl is not None and most > 1 and a.shape[0] * a.shape[1] * b.shape[1] < SMALL_MACS:
        ctl.set_num_threads(1)
        try:
            np.matmul(a, b, out=out)
        finally:
            ctl.set_num_threads(most)
    else:
        np.matmul(a, b, out=out)
