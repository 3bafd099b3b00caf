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
import ctypes
import os
import threading

import numba
import numpy as np

from . import blas_pool
from . import blas_threads as blas_threads_
from . import openblas
from .cores import most as planned_threads

SMALL_MACS = int(os.environ.get("FASTMLP_BLAS_SMALL", 1 << 22))

_local = threading.local()   # whose threads run big GEMMs: each Python thread says for itself


def blas_threads():
    """NumPy's BLAS thread count now (what set_blas_threads last set), 1 if it can't be found."""
    return blas_threads_.count()


def set_blas_threads(n):
    """NumPy's BLAS on n threads from now on (the training step's count, thread_count.py); the
    small GEMMs and the predictions put back this count after their single-threaded calls."""
    blas_threads_.set_count(n)


def use_numba_thread_gemms(flag):
    """Run big GEMMs on Numba's threads from now on (True: a model with chunked conv kernels),
    or on OpenBLAS's (False). Each model says which before its steps."""
    _local.numba_thread_gemms = bool(flag) and openblas.available()


def numba_thread_gemms():
    """Whether big GEMMs run on Numba's threads now."""
    return getattr(_local, "numba_thread_gemms", False)


# Predictions, from any number of Python threads at once. Each holds NumPy's BLAS at one
# thread while it runs, and a big GEMM of a prediction runs as blocks of single-threaded
# OpenBLAS calls (openblas.matmul), planned for the most threads: on Numba's threads when the
# prediction runs alone, one block after the other when others run beside it. The blocks
# are the same either way, so a prediction gives the same bits alone and among others
# (OpenBLAS itself rounds a product on one thread and on two differently), and callers
# sharing OpenBLAS's single pool of worker threads never queue for it.
_concurrent = [0]           # predictions running now
_concurrent_lock = threading.Lock()
_team_owner = [None]        # the thread whose predictions start Numba's parallel regions


def begin_inference(hold_blas=True):
    """A thread starts a prediction (Sequential._enter); ``hold_blas``: BLAS at one thread
    meanwhile (not needed by a prediction that calls no BLAS: dense_chain.uses_blas)."""
    with _concurrent_lock:
        _concurrent[0] += 1
    if hold_blas:
        blas_threads_.hold()
    _local.predicting = True


def inference_parallel():
    """Whether the calling prediction may run on Numba's threads: it is the only one running
    (begin_inference counted it), on the thread whose parallel regions predictions run from.

    Numba's OpenMP threads belong to the Python thread that starts a parallel region: every
    thread that starts one gets a team of its own, and once the teams hold more threads than
    there are cores, libgomp stops spinning between regions and wakes its threads through the
    OS each time. On the project's 2-core VM that made a 32-row prediction from a second
    thread 280 against 105 us (one parallel region a layer), 150 on one core: so one thread
    at a time runs parallel predictions, the first to ask, until it ends; the others predict
    on their own thread, with the same bits."""
    if _concurrent[0] > 1:
        return False
    me = threading.current_thread()
    owner = _team_owner[0]
    if owner is me:
        return True
    with _concurrent_lock:
        if _team_owner[0] is None or not _team_owner[0].is_alive():
            _team_owner[0] = me
    return _team_owner[0] is me


def release_team():
    """The calling thread stops running parallel predictions, and its OpenMP team of worker
    threads is freed (``omp_pause_resource_all``), so that the next thread to predict alone
    takes the cores with a team of its own. True if this thread had them.

    For a server that warms its model up in the main thread and serves from request
    threads: the main thread owns the team while it lives, and the request threads would
    predict on one core each (P2 at 32 rows from a request thread: 113-115 us; handed the
    cores without the main thread's team freed, two teams of threads on two cores: 217-222;
    after this call: 68-72, as the main thread's own 69-75)."""
    me = threading.current_thread()
    with _concurrent_lock:
        if _team_owner[0] is not me:
            return False
        _team_owner[0] = None
    _pause_team()
    return True


def _pause_team():
    # omp_pause_resource_all(omp_pause_soft) of the OpenMP runtime under Numba's omp layer:
    # frees the calling thread's pool of threads (the next parallel region makes a new one).
    # Nothing to free under the other layers (tbb, workqueue), or before any parallel region
    try:
        if numba.threading_layer() != "omp":
            return
        from numba.np.ufunc import omppool   # present only where Numba built its OpenMP layer
        pause = getattr(ctypes.CDLL(omppool.__file__), "omp_pause_resource_all", None)
    except (ValueError, ImportError, OSError):   # no parallel region yet, no omp pool
        return
    if pause is not None:
        pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
        pause(1)


def end_inference(hold_blas=True):
    """The prediction of begin_inference(hold_blas) is done."""
    _local.predicting = False
    if hold_blas:
        blas_threads_.release()
    with _concurrent_lock:
        _concurrent[0] -= 1


# Below this many multiply-adds OpenBLAS runs a GEMM on one thread by itself
# (SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD in its interface/gemm.c): no need to say so.
BLAS_SINGLE_MACS = 1 << 18


def matmul(out, a, b):
    # out (m, n) = a (m, k) @ b (k, n); a and b may be transposed views
    macs = a.shape[0] * a.shape[1] * b.shape[1]
    if macs < BLAS_SINGLE_MACS:
        np.matmul(a, b, out=out)
        return
    small = macs < SMALL_MACS
    if getattr(_local, "predicting", False):   # BLAS is held at one thread (begin_inference)
        if small or not openblas.matmul(out, a, b, planned_threads(), inference_parallel()):
            np.matmul(a, b, out=out)
        return
    if not small and getattr(_local, "numba_thread_gemms", False):
        plan = planned_threads()  # blocks for the most threads, whatever runs them now: same sums
        if plan > 1 and openblas.matmul(out, a, b, plan):
            return
    if small and blas_threads_.count() > 1:
        blas_threads_.hold()
        try:
            np.matmul(a, b, out=out)
        finally:
            blas_threads_.release()
    else:
        np.matmul(a, b, out=out)


# Two independent products of a backward pass (a Dense layer's dW and dx) run side by side,
# each on one core, while OpenBLAS's jobs run on Numba's threads (blas_pool.py, during a fit):
# P2's 256x256 layer at batch 128, both products, 155-180 against 198-236 us one after the
# other on two threads each (the 2-core Intel Xeon; bench/README.md). Smaller ones one after
# the other.
PAIR_MACS = BLAS_SINGLE_MACS


def matmul_pair(out1, a1, b1, out2, a2, b2):
    """out1 = a1 @ b1 and out2 = a2 @ b2, two products that don't depend on each other."""
    if (blas_pool.active() and blas_threads_.count() > 1 and not getattr(_local, "predicting", False)
            and a1.shape[0] * a1.shape[1] * b1.shape[1] >= PAIR_MACS
            and a2.shape[0] * a2.shape[1] * b2.shape[1] >= PAIR_MACS
            and openblas.pair(out1, a1, b1, out2, a2, b2)):
        return
    matmul(out1, a1, b1)
    matmul(out2, a2, b2)
