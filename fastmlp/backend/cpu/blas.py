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
import threading
import time

import numba
import numpy as np

from . import openblas
from .cores import most as planned_threads

SMALL_MACS = int(os.environ.get("FASTMLP_BLAS_SMALL", 1 << 22))

_blas = []
_local = threading.local()   # whose threads run big GEMMs: each Python thread says for itself


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


def blas_threads():
    """NumPy's BLAS thread count now (what set_blas_threads last set), 1 if it can't be found."""
    return _controller()[1]


def set_blas_threads(n):
    """NumPy's BLAS on n threads from now on (the training step's count, thread_count.py); the
    small GEMMs and the predictions put back this count after their single-threaded calls."""
    set_threads_, _ = _controller()
    if set_threads_ is None:
        return
    with _concurrent_lock:
        _blas[1] = n
        if not _single[0]:
            set_threads_(n)


def use_numba_thread_gemms(flag):
    """Run big GEMMs on Numba's threads from now on (True: a model with chunked conv kernels),
    or on OpenBLAS's (False). Each model says which before its steps."""
    _local.numba_thread_gemms = bool(flag) and openblas.available()


def numba_thread_gemms():
    """Whether big GEMMs run on Numba's threads now."""
    return getattr(_local, "numba_thread_gemms", False)


# Predictions running at once in several Python threads: while two or more do, every GEMM
# runs on one BLAS thread. OpenBLAS has one pool of worker threads for the process, and a
# threaded GEMM waits for it while another thread's holds it, so callers sharing the pool
# queue up; each on one thread of its own, they run side by side. Callers that come back
# to back overlap only in part, so while any prediction runs, the pool returns to all its
# threads only once none has run beside another for SERVING_QUIET seconds; when none runs,
# it gets them back at once (the caller's own NumPy code never inherits the setting).
SERVING_QUIET = 0.05
_concurrent = [0]           # predictions running now
_single = [False]           # whether BLAS is held to one thread for them
_last_overlap = [0.0]       # when two last ran at once (time.monotonic)
_concurrent_lock = threading.Lock()


def begin_inference():
    """A thread starts a prediction (Sequential._enter)."""
    set_threads, most = _controller()
    if set_threads is None or most < 2:
        return
    with _concurrent_lock:
        _concurrent[0] += 1
        now = time.monotonic()
        if _concurrent[0] > 1:
            _last_overlap[0] = now
            if not _single[0]:
                set_threads(1)
                _single[0] = True
        else:
            _release_if_quiet(now)


def _release_if_quiet(now):
    # BLAS back to all its threads once no two predictions have overlapped for a while
    # (called with _concurrent_lock held)
    if _single[0] and _concurrent[0] < 2 and now - _last_overlap[0] > SERVING_QUIET:
        set_threads, most = _controller()
        set_threads(most)
        _single[0] = False


def end_inference():
    """The prediction of begin_inference is done."""
    set_threads, most = _controller()
    if set_threads is None or most < 2:
        return
    with _concurrent_lock:
        _concurrent[0] -= 1
        if _concurrent[0] == 0 and _single[0]:   # nothing of ours runs: the caller's code gets it all
            set_threads(most)
            _single[0] = False


# Below this many multiply-adds OpenBLAS runs a GEMM on one thread by itself
# (SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD in its interface/gemm.c): no need to say so.
BLAS_SINGLE_MACS = 1 << 18


def matmul(out, a, b):
    # out (m, n) = a (m, k) @ b (k, n); a and b may be transposed views
    macs = a.shape[0] * a.shape[1] * b.shape[1]
    if macs < BLAS_SINGLE_MACS:
        np.matmul(a, b, out=out)
        return
    set_threads, most = _controller()
    small = macs < SMALL_MACS
    if _single[0]:                  # BLAS is on one thread already (begin_inference)
        if _concurrent[0] > 1 or time.monotonic() - _last_overlap[0] <= SERVING_QUIET:
            np.matmul(a, b, out=out)
            return
        with _concurrent_lock:      # a training step after the serving has stopped
            _release_if_quiet(time.monotonic())
    if not small and getattr(_local, "numba_thread_gemms", False):
        plan = planned_threads()  # blocks for the most threads, whatever runs them now: same sums
        if plan > 1 and openblas.matmul(out, a, b, plan):
            return
    if set_threads is not None and most > 1 and small:
        with _concurrent_lock:      # not while a second prediction starts (begin_inference)
            set_threads(1)
        try:
            np.matmul(a, b, out=out)
        finally:
            with _concurrent_lock:
                if not _single[0]:
                    set_threads(most)
    else:
        np.matmul(a, b, out=out)
