"""OpenBLAS's parallel jobs on Numba's threads: one pool of threads while a model trains.

NumPy's OpenBLAS runs a multi-threaded GEMM on a pool of its own, whose workers then
spin for about 0.1 s waiting for the next product. Numba's parallel kernels run on a
second pool (OpenMP's), and a kernel whose thread needs a core an OpenBLAS worker spins
on waits for the OS to take that core away from the spinner: on the project's 2-core
machine a parallel update of P2's 269,322 parameters right after a 2-thread GEMM took
7.4 ms instead of 0.09. So the short kernels between a step's GEMMs had to run on one
thread (jit.PARALLEL_MIN_WORK).

OpenBLAS (0.3.27 on) lets its caller run the jobs of a parallel product
(``openblas_set_threads_callback_function``). While a fit trains, ``install`` hands it
``_callback``: a Numba cfunc that runs the jobs on Numba's OpenMP team. One pool then
serves the GEMMs and the kernels, nothing spins against it, and the kernels between the
GEMMs run in parallel too (jit.pick). OpenBLAS cuts a product into the same jobs for
either pool, so a GEMM gives the same bits on both. ``uninstall`` gives OpenBLAS its own
pool back.

What the callback must keep:
- Every job of a call runs at the same time: the jobs of a threaded GEMM wait for each
  other's packed panels, so two jobs on one thread would wait forever. The jobs run as
  one ``prange`` iteration each on a team of at least ``numjobs`` threads (the calling
  thread's Numba count is raised to it for the call), and ``install`` refuses where
  OpenBLAS could ask for more jobs than Numba has threads, or where the threading layer
  is not OpenMP's (TBB may run two iterations on one thread; the workqueue layer can't
  start parallel regions from two threads at once).
- One call at a time: each job works in OpenBLAS's static buffer of its job number,
  which OpenBLAS's own pool hands out to one caller at a time. Callers from several
  threads therefore take a lock around the whole call (an atomic word of the compiled
  callback; a caller that waits yields its core). The same word counts the calls
  (``calls``, for the tests).
- A forked child gets OpenBLAS's own pool back (``os.register_at_fork``).

``FASTMLP_BLAS_POOL=0`` leaves OpenBLAS's own pool in place; ``fastmlp info`` prints
whether the callback is used, or why not (``reason``).
"""
import ctypes
import os
import sys
import threading

import numba
import numpy as np
from llvmlite import ir
from numba import cfunc, njit, prange
from numba import types as nbtypes
from numba.extending import intrinsic
from numba.np.ufunc.parallel import _launch_threads

from . import blas_threads, openblas

ENV = "FASTMLP_BLAS_POOL"
MAX_THREADS = numba.config.NUMBA_NUM_THREADS   # the most threads a Numba team can have

_CALLBACK_SIG = nbtypes.void(nbtypes.int32, nbtypes.voidptr, nbtypes.int32, nbtypes.uintp,
                             nbtypes.voidptr, nbtypes.int32)


@intrinsic
def _call_job(typingctx, fn, i, job, data):
    # OpenBLAS's dojob(i, job, data): void (*)(int, void *, int) at address fn, job an address
    sig = nbtypes.void(nbtypes.intp, nbtypes.int32, nbtypes.intp, nbtypes.int32)

    def codegen(context, builder, signature, args):
        fn, i, job, data = args
        bytes_ptr = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(32), bytes_ptr, ir.IntType(32)])
        builder.call(builder.inttoptr(fn, fnty.as_pointer()), [i, builder.inttoptr(job, bytes_ptr), data])
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _address(typingctx, p):
    # a void * as an integer
    sig = nbtypes.intp(nbtypes.voidptr)

    def codegen(context, builder, signature, args):
        return builder.ptrtoint(args[0], ir.IntType(64))
    return sig, codegen


def _threads_fn(builder, name, fnty):
    # Numba's own per-thread team size functions (numba/np/ufunc/_num_threads.c), which
    # numba.np.ufunc.parallel._launch_threads makes known to the linker by name: so a cached
    # kernel can call them (numba.get_num_threads in a kernel holds their address instead)
    return builder.module.globals.get(name) or ir.Function(builder.module, fnty, name=name)


@intrinsic
def _team_size(typingctx):
    # the calling thread's Numba thread count (int get_num_threads(void))
    _launch_threads()
    sig = nbtypes.int32()

    def codegen(context, builder, signature, args):
        return builder.call(_threads_fn(builder, "get_num_threads", ir.FunctionType(ir.IntType(32), [])), [])
    return sig, codegen


@intrinsic
def _set_team_size(typingctx, n):
    # void set_num_threads(int): the calling thread's count for its next parallel regions
    _launch_threads()
    sig = nbtypes.void(nbtypes.int32)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(32)])
        builder.call(_threads_fn(builder, "set_num_threads", fnty), [args[0]])
        return context.get_dummy_value()
    return sig, codegen


def _state_word(builder):
    # the callback's lock and call count, one int64 of its own compiled module (zero at load):
    # even when free, odd while a call runs; calls so far = word // 2
    module = builder.module
    name = "fastmlp_blas_pool_state"
    word = module.globals.get(name)
    if word is None:
        word = ir.GlobalVariable(module, ir.IntType(64), name=name)
        word.linkage = "internal"
        word.initializer = ir.Constant(ir.IntType(64), 0)
    return word


@intrinsic
def _enter(typingctx):
    # wait (yielding the core) until the word is even, then make it odd: one call at a time
    sig = nbtypes.void()

    def codegen(context, builder, signature, args):
        word = _state_word(builder)
        i64 = ir.IntType(64)
        yield_fn = builder.module.globals.get("sched_yield") or ir.Function(
            builder.module, ir.FunctionType(ir.IntType(32), []), name="sched_yield")
        loop, body, done = (builder.append_basic_block(n) for n in ("lock.try", "lock.wait", "lock.done"))
        builder.branch(loop)
        builder.position_at_end(loop)
        seen = builder.load_atomic(word, "acquire", 8)
        free = builder.icmp_unsigned("==", builder.and_(seen, ir.Constant(i64, 1)), ir.Constant(i64, 0))
        with builder.if_then(free):
            pair = builder.cmpxchg(word, seen, builder.add(seen, ir.Constant(i64, 1)), "acquire", "monotonic")
            builder.cbranch(builder.extract_value(pair, 1), done, body)
        builder.branch(body)
        builder.position_at_end(body)
        builder.call(yield_fn, [])
        builder.branch(loop)
        builder.position_at_end(done)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _leave(typingctx):
    sig = nbtypes.void()

    def codegen(context, builder, signature, args):
        builder.atomic_rmw("add", _state_word(builder), ir.Constant(ir.IntType(64), 1), "release")
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _reset_state(typingctx):
    sig = nbtypes.void()

    def codegen(context, builder, signature, args):
        builder.store_atomic(ir.Constant(ir.IntType(64), 0), _state_word(builder), "release", 8)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _store_state(typingctx, at):
    # *(int64 *) at = the state word (calls() asks the callback for it)
    sig = nbtypes.void(nbtypes.intp)

    def codegen(context, builder, signature, args):
        seen = builder.load_atomic(_state_word(builder), "acquire", 8)
        builder.store(seen, builder.inttoptr(args[0], ir.IntType(64).as_pointer()))
        return context.get_dummy_value()
    return sig, codegen


@njit(parallel=True, nogil=True, cache=True)
def _jobs_parallel(fn, numjobs, elsize, jobdata, data):
    # job i on the i-th thread of the team: Numba cuts a range of numjobs iterations into one
    # chunk a thread (at most one iteration each when the team has numjobs threads or more)
    for i in prange(numjobs):
        _call_job(fn, np.int32(i), jobdata + i * elsize, data)


def _run_jobs(sync, dojob, numjobs, elsize, jobdata, data):
    # OpenBLAS always passes sync = 1 and expects every job done on return. numjobs < 0 is
    # never OpenBLAS's: -1 asks for the state word, written to jobdata (calls()), -2 frees
    # the lock (a forked child, where no call can be running)
    if numjobs == -1:
        _store_state(_address(jobdata))
        return
    if numjobs == -2:
        _reset_state()
        return
    _enter()
    if numjobs == 1:
        _call_job(_address(dojob), np.int32(0), _address(jobdata), data)
    else:
        # a team of at least numjobs threads (install keeps numjobs <= NUMBA_NUM_THREADS): a
        # thread whose own count is lower would run two jobs one after the other, and hang
        team = _team_size()
        if team < numjobs:
            _set_team_size(numjobs)
        _jobs_parallel(_address(dojob), numjobs, np.intp(elsize), _address(jobdata), data)
        if team < numjobs:
            _set_team_size(team)
    _leave()


reason = "not tried yet"      # why the callback is not used ("" when it can be)
_lock = threading.Lock()
_local = threading.local()    # .depth: this thread's installs not yet undone
_state = {"installs": 0, "setter": None, "slot": None, "missing": ""}
_QUERY = ctypes.CFUNCTYPE(None, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32, ctypes.c_size_t,
                          ctypes.c_void_p, ctypes.c_int32)


_compiled = []   # the cfunc, compiled (or loaded from the cache) at the first install


def _callback():
    if not _compiled:
        _compiled.append(cfunc(_CALLBACK_SIG, nopython=True, cache=True)(_run_jobs))
    return _compiled[0]


def calls():
    """How many parallel OpenBLAS calls the callback has run in this process (a half more
    while one runs)."""
    word = np.zeros(1, dtype=np.int64)
    if _compiled:
        _QUERY(_callback().address)(1, None, -1, 0, word.ctypes.data, 0)
    return int(word[0]) / 2


def active():
    """Whether this thread's fit runs OpenBLAS's jobs on Numba's threads now."""
    return getattr(_local, "depth", 0) > 0


def _find():
    """(setter, the slot OpenBLAS reads the callback from), or None with ``reason`` set."""
    global reason
    if not sys.platform.startswith("linux"):
        reason = "only on Linux (the callback's lock yields the core through sched_yield)"
        return None
    found = openblas.library()
    if found is None:
        reason = f"NumPy's OpenBLAS was not found ({openblas.reason})"
        return None
    lib, prefix = found
    try:
        setter = ctypes.CFUNCTYPE(None, ctypes.c_void_p)((f"{prefix}openblas_set_threads_callback_function64_", lib))
        slot = ctypes.c_void_p.in_dll(lib, "openblas_threads_callback_")
    except (AttributeError, ValueError):
        reason = "NumPy's OpenBLAS is older than 0.3.27 (no openblas_set_threads_callback_function)"
        return None
    _jobs_parallel(0, 0, 0, 0, 0)          # no jobs: decides Numba's threading layer
    layer = numba.threading_layer()
    if layer != "omp":
        reason = f"Numba's threading layer is {layer!r}, not 'omp' (OpenMP): its teams can't be trusted to run every job at once"
        return None
    reason = ""
    return setter, slot


def install():
    """From now on, until the matching ``uninstall``, OpenBLAS's parallel jobs run on Numba's
    threads (in every thread: OpenBLAS has one setting for the process), and ``active()`` is
    True in this one. False (nothing changed) where the callback can't be used (``reason``)."""
    global reason
    if os.environ.get(ENV, "1") == "0":
        reason = f"switched off by {ENV}=0"
        return False
    with _lock:
        if _state["installs"] == 0:
            if _state["setter"] is None:
                if _state["missing"]:          # looked for once: the reason stands
                    reason = _state["missing"]
                    return False
                found = _find()
                if found is None:
                    _state["missing"] = reason
                    return False
                _state["setter"], _state["slot"] = found
            if not _fits():
                return False
            previous = _state["slot"].value
            if previous and previous != _callback().address:
                reason = "another library already runs OpenBLAS's jobs (a callback of its own is installed)"
                return False
            _state["setter"](_callback().address)
        _state["installs"] += 1
    _local.depth = getattr(_local, "depth", 0) + 1
    return True


def _fits():
    # OpenBLAS asks for at most its thread count in jobs: no more than a Numba team can hold
    global reason
    n = blas_threads.current() or 1
    if n > MAX_THREADS:
        reason = (f"NumPy's OpenBLAS runs {n} threads, more than Numba's {MAX_THREADS} "
                  "(NUMBA_NUM_THREADS): every job of a product must have a thread of its own")
        return False
    return True


def uninstall():
    """Undo the calling thread's last ``install`` (True): the last one gives OpenBLAS its own
    pool back."""
    if getattr(_local, "depth", 0) == 0:
        return
    _local.depth -= 1
    with _lock:
        _state["installs"] -= 1
        if _state["installs"] == 0:
            _state["setter"](None)


def describe():
    """One line for ``fastmlp info``: which pool runs OpenBLAS's jobs while a model trains."""
    if install():
        uninstall()
        return f"OpenBLAS's jobs on Numba's threads (one pool for GEMMs and kernels; {ENV}=0 turns it off)"
    return f"OpenBLAS's own pool ({reason})"


def _forked_child():
    # libgomp can't be trusted in a child forked from a process whose team has run: the child
    # gets OpenBLAS's own pool back, and no thread of it is in a fit
    if _state["installs"]:
        _state["setter"](None)
    if _compiled:
        _QUERY(_compiled[0].address)(1, None, -2, 0, None, 0)
    _state["installs"] = 0
    _local.depth = 0


os.register_at_fork(after_in_child=_forked_child)
