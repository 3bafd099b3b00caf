"""How many threads a CPU training step runs on: the cores that are free now.

On a quiet machine a step is fastest on all the cores. When another process
keeps a core busy, every parallel region (an OpenBLAS GEMM, a Numba kernel)
waits for the thread that lost its core: P2 at batch 128 on 2 cores with one
busy process ran 33,516 samples/s on 2 threads against 78,751 on 1. No count
fixed in advance is right for both, and the load changes while a model trains.

So ``fit`` looks, while it trains, at how many other threads want a core
(``StepThreads``): every ``SAMPLE_S`` seconds it counts the runnable threads
of the machine (``procs_running`` in /proc/stat) less its own runnable ones
(/proc/self/task), and every ``PERIOD`` seconds it runs the steps on the cores
that the average leaves free (at least one). A fit starts on the count the last
fit ended with when that ended less than ``RECENT_S`` ago (a warm-up fit, fits in
a loop), else on what one look leaves free. A core counts as taken only when
some other thread wanted it most of the period (``BUSY``). Reading /proc costs
about 0.1 ms a sample: under 0.5 % of the time. Where /proc is missing (not
Linux) every step runs on all the cores.

On a quiet machine the count stays at all the cores, so a run is bitwise
repeatable as before. A count chosen under load changes the rounding of the
multi-threaded GEMMs (OpenBLAS splits a product differently on 1 and 2
threads), so runs that met different loads can differ in the last bits;
``FASTMLP_THREADS=N`` fixes the count (1 up to the cores) for bitwise
repeatable runs whatever the load. ``History.threads`` records the counts a fit
used; ``fastmlp info`` prints the policy and the last fit's choice.
"""
import ctypes
import os
import threading
import time

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import blas, blas_pool
from .cores import most

ENV = "FASTMLP_THREADS"
SAMPLE_S = 0.05       # seconds between two looks at the machine's runnable threads
PERIOD = 0.25         # seconds of samples behind each choice
BUSY = 0.9            # another thread on a core this share of the time: the core is taken
RECENT_S = 5.0        # a fit starting this soon after the last one starts on its last count

last_choice = None    # what the last fit chose (``fastmlp info``)
# the last fit's final count, when it ended (time.monotonic) and its looks since its last choice
_last = [None, -1e9, []]


def fixed():
    """The count FASTMLP_THREADS fixes, or None for ``auto``; a clear error for anything else."""
    raw = os.environ.get(ENV, "auto")
    if raw not in _fixed:
        _fixed.clear()
        _fixed[raw] = _parse(raw)
    return _fixed[raw]


_fixed = {}   # the last FASTMLP_THREADS value read, and what it means


def _parse(raw):
    raw = raw.strip().lower()
    if raw in ("", "auto"):
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{ENV}: expected 'auto' or a whole number of threads >= 1, got {raw!r}")
    return min(n, numba.config.NUMBA_NUM_THREADS)


@intrinsic
def _gettid(typingctx):
    # the calling thread's id in /proc/self/task (Linux's gettid, from the C library)
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(32), [])
        fn = builder.module.globals.get("gettid") or ir.Function(builder.module, fnty, name="gettid")
        return builder.sext(builder.call(fn, []), ir.IntType(64))
    return types.int64(), codegen


@njit(parallel=True, cache=True)
def _team_ids(out):
    # out[t] = the thread id of Numba's thread t of the calling thread's team
    for t in prange(out.size):
        out[numba.get_thread_id()] = _gettid()


_teams = {}   # (Python thread's native id, team size) -> the ids of that team's threads
_tells = []   # [whether the threads can be told apart here], found once


def _can_tell():
    # /proc/self/task to read, and gettid in the C library (glibc 2.30 and later)
    if not _tells:
        try:
            libc = ctypes.CDLL(None)
        except OSError:
            libc = None
        _tells.append(os.path.isdir("/proc/self/task") and hasattr(libc, "gettid"))
    return _tells[0]


def team_threads():
    """The /proc/self/task ids (str) of the calling thread's team of Numba threads, itself
    included, at its present size; None where they can't be told (no /proc, no gettid)."""
    key = (threading.get_native_id(), numba.get_num_threads())
    found = _teams.get(key)
    if found is not None and not found <= set(os.listdir("/proc/self/task")):
        found = None    # the team was freed (release_prediction_threads) and made anew
    if found is None:
        if not _can_tell():
            return None
        ids = np.zeros(key[1], dtype=np.int64)
        _team_ids(ids)
        found = _teams[key] = {str(i) for i in ids.tolist() if i > 0} | {str(key[0])}
    return found


def foreign_running():
    """The ids of this process's threads running or waiting for a core now, other than the
    calling thread and its team of Numba threads: OpenBLAS's worker spinning after a NumPy
    product, a busy thread of the program's own. None where that can't be told."""
    team = team_threads()
    if team is None:
        return None
    try:
        return _my_running() - team
    except OSError:
        return None


def _my_running():
    """The ids of this process's threads that are running or waiting for a core."""
    mine = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:             # the thread ended meanwhile
            continue
        if stat[stat.rindex(")") + 2] == "R":
            mine.add(tid)
    return mine


def others_running():
    """Threads of other processes that are running or waiting for a core now, or None
    where /proc can't tell (not Linux). Our own are read just before and just after the
    machine's count, and a thread of ours runnable in either read counts as ours: a worker
    thread that stops spinning in between is not taken for another process's."""
    try:
        mine = _my_running()
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("procs_running"):
                    total = int(line.split()[1])
                    break
            else:
                return None
        mine |= _my_running()
        return max(0, total - len(mine))
    except (OSError, ValueError):
        return None


def free_cores(others, cores):
    """Cores left for the step when ``others`` threads (an average) want one: at least 1."""
    taken = int(others + (1 - BUSY))
    return max(1, cores - taken)


# A prediction running alone spreads its rows over the cores that are free (model.predict,
# inference.py). It looks at the machine at most every PREDICT_LOOK_S seconds (a look costs
# about 0.1 ms, a prediction can take 0.03), every STALL_LOOK_S while a core is taken, and
# uses what the last look left free.
# FASTMLP_THREADS is read at each look too (reading the environment costs a prediction of one
# row about a tenth of its time).
PREDICT_LOOK_S = 0.1
_predict_look = [-1.0, 1]   # when the last look goes stale (time.monotonic), the threads it found

# After a stalled parallel prediction (prediction_stalled), the predictions run on one thread
# while this process's other threads keep a core busy, looked at every STALL_LOOK_S seconds:
# the CPU time they took (the process's less the calling thread's) over the time that passed,
# above STALL_BUSY cores. A worker that finished the stalled call spins a little longer, a
# millisecond or so of the look's ten.
STALL_LOOK_S = 0.01
STALL_BUSY = 0.5

# A parallel call (a prediction's kernel call, a training step) stalled when it took more than
# STALL_FACTOR times what it should, plus STALL_S: a thread that lost its core holds a call up
# for a whole time slice, 3-15 ms on the project's VM, where calls on a quiet machine stayed
# under 2 ms (P2's predictions, 62,000 calls of 1, 32 and 256 rows: none above 2 ms).
STALL_FACTOR = 2.0
STALL_S = 2e-3


def is_stall(seconds, should):
    """Whether a parallel call that took ``seconds``, where it should take ``should``, stalled."""
    return seconds > STALL_FACTOR * should + STALL_S


def _others_cpu():
    # CPU seconds this process's threads other than the calling one have used
    return time.process_time() - time.thread_time()


class Stall:
    """One thread after a stalled prediction or step, while this process's other threads keep
    a core busy: over once a look, at most every STALL_LOOK_S, finds the CPU time they took
    since the last look (``cpu``: _others_cpu) under STALL_BUSY cores."""

    def __init__(self, now, cpu=_others_cpu):
        self.cpu = cpu
        self.since, self.then = now, cpu()

    def over(self, now):
        """Whether the look at ``now`` ends it (no look before STALL_LOOK_S has passed)."""
        if now - self.since < STALL_LOOK_S:
            return False
        cpu = self.cpu()
        busy = (cpu - self.then) / (now - self.since)
        self.since, self.then = now, cpu
        return busy <= STALL_BUSY


_stall = [None]   # the Stall holding predictions at one thread, or None


def prediction_threads():
    """Threads a prediction running alone may use: FASTMLP_THREADS when set, else the cores
    that the other processes' threads and this process's busy threads outside the calling
    thread's team (foreign_running) left free, both as found at the last look; 1 after a
    stall while this process's other threads keep a core busy (prediction_stalled)."""
    now = time.monotonic()
    if now >= _predict_look[0]:
        if _stall[0] is not None:
            if not _stall[0].over(now):    # still in the way: another look later
                _predict_look[0] = now + STALL_LOOK_S
                return 1
            _stall[0] = None
        n, again = fixed(), PREDICT_LOOK_S
        if n is None:
            others = others_running()
            if others is not None:          # and this process's busy threads beside the team
                others += len(foreign_running() or ())
            n = most() if others is None else free_cores(others, most())
            if n < most():
                # a core taken: look again soon. One runnable thread of another process at
                # the moment of the look (a daemon waking up) held P2's predictions at one
                # thread for 0.1 s, now and then, on a quiet machine
                again = STALL_LOOK_S
        _predict_look[1] = n
        _predict_look[0] = now + again
    return _predict_look[1]


def prediction_stalled():
    """A parallel prediction waited far longer than its kind usually takes (inference.py):
    a thread it needed lost its core. Often the thread in the way is one of this process's
    own, which /proc's count of other processes' threads does not see: OpenBLAS's worker
    spins on a core for about 0.1 s after each multi-threaded NumPy product (2^28 cycles,
    then it sleeps). Beside it, P2's predictions right after one NumPy product took 4-7 ms
    each, call after call, against 12 (1 row) and 70 us (32 rows) on a quiet machine, and
    16 and 106 us on one thread. So the predictions run on one thread until a look finds
    this process's other threads idle again (STALL_LOOK_S, STALL_BUSY), then the machine is
    looked at afresh. A count fixed by FASTMLP_THREADS is kept."""
    if fixed() is None:
        now = time.monotonic()
        _stall[0] = Stall(now)
        _predict_look[1] = 1
        _predict_look[0] = now + STALL_LOOK_S


def policy():
    """One line for ``fastmlp info``: the policy and the last fit's choice."""
    n = fixed()
    line = (f"{ENV}={n}: every step on {n} thread(s)" if n is not None else
            f"auto: the free cores of {most()} (at least 1), looked at every {SAMPLE_S} s "
            f"while training; {ENV}=N fixes it")
    return line + (f"; last fit: {last_choice}" if last_choice else "")


def _set(n):
    numba.set_num_threads(n)       # the calling thread's Numba kernels (a per-thread setting)
    blas.set_blas_threads(n)            # NumPy's BLAS (one setting for the process)


# A step stalled (is_stall) when it takes more than STALL_FACTOR times the fastest step of its
# size at the same count, plus STALL_S: a thread of the step lost its core for a time slice. Most
# often to a thread of this process that /proc's count of other processes' threads does not
# see: OpenBLAS's worker spins on a core for about 0.1 s after each multi-threaded NumPy
# product, and P2's steps right after one took 5.4 against 1.4 ms every third step (a fit of
# 20 steps 58-264 ms against 31 quiet, 41 on one thread). The steps then run on one thread
# until a look (every STALL_LOOK_S) finds this process's other threads idle again
# (STALL_BUSY, as for predictions), then on the chosen count again.
# the fastest steps seen, (kind, rows, count) -> s, kept from fit to fit: a fit that starts
# beside the spinning worker stalls from its first steps, which then can't be its yardstick
_fastest = {}


class StepThreads:
    """The thread count of one fit's steps. ``start()`` before the first step, ``begin(rows)``
    and ``end()`` around each, ``stop()`` after the last: the counts found at ``start`` are put
    back. ``look`` (others_running), ``clock``, ``cpu`` (_others_cpu) and ``foreign``
    (foreign_running) can be replaced (tests)."""

    def __init__(self, look=others_running, clock=time.monotonic, cpu=_others_cpu, foreign=foreign_running):
        self.look, self.clock, self.cpu, self.foreign = look, clock, cpu, foreign
        self.fixed = fixed()
        self.top = most() if self.fixed is None else self.fixed
        self.current = self.top
        self.used = {}                 # count -> steps run on it
        self.samples = []
        self.before = None
        self.pool = False              # whether start() installed blas_pool's callback
        self.next_sample = 0.0
        self.kind = None               # what a step of this fit is (start)
        self.began = None              # (when, rows) of the step running now (begin)
        self.stalled = None            # the Stall holding the steps at one thread, or None
        self.stalls = 0

    def start(self, kind=None):
        """``kind``: what a step is (the model's shape), the key of the fastest steps seen."""
        self.kind = kind
        self.before = (numba.get_num_threads(), blas.blas_threads())
        self.current = self.top
        now = self.clock()
        self.samples, self.next_sample = [], now + SAMPLE_S
        seen = None if self.fixed is not None or self.top < 2 else self.look()
        if seen is None:
            self.next_sample = float("inf")        # nothing to choose, or no way to see the load
        else:   # the first steps on the last fit's count when it just ended, else on what one look leaves
            recent = _last[0] is not None and time.monotonic() - _last[1] < RECENT_S
            self.current = min(_last[0], self.top) if recent else free_cores(seen, self.top)
            if recent:
                # and its looks go on counting: fits shorter than PERIOD, one after the other,
                # would otherwise never gather the PERIOD of looks that takes the count back up
                # (P2's quick benchmark: every fit of a process on one thread after its first
                # one met a busy moment, 0.71 against 0.56 ms a step)
                self.samples = list(_last[2])
        _set(self.current)
        if seen is not None and self.current > 1 and self.foreign():
            # a thread of this process is busy beside the team (OpenBLAS's worker spinning
            # after a NumPy product): the first steps on one thread, as after a stall
            self.stalls += 1
            self.stalled = Stall(now, self.cpu)
            _set(1)
        self.pool = blas_pool.install()    # OpenBLAS's jobs on Numba's threads while the fit runs

    def begin(self, rows):
        """A step of ``rows`` rows starts."""
        self.began = (self.clock(), rows)

    def running(self):
        """The thread count the steps run on now (1 while a stall holds them)."""
        return 1 if self.stalled is not None else self.current

    def end(self):
        running = self.running()
        self.used[running] = self.used.get(running, 0) + 1
        now = self.clock()
        if self.began is not None:
            self._watch(now, now - self.began[0], self.began[1])
            self.began = None
        if now < self.next_sample:
            return
        self.next_sample = now + SAMPLE_S
        seen = self.look()
        if seen is None:
            return
        self.samples.append(seen)
        if len(self.samples) * SAMPLE_S >= PERIOD:
            n = free_cores(sum(self.samples) / len(self.samples), self.top)
            self.samples = []
            if n != self.current:
                self.current = n
                if self.stalled is None:
                    _set(n)

    def _watch(self, now, step, rows):
        # a stalled step sends the next ones to one thread until its Stall is over
        if self.stalled is not None:
            if self.stalled.over(now):
                self.stalled = None
                _set(self.current)
            return
        if self.current < 2 or self.fixed is not None:
            return
        key = (self.kind, rows, self.current)
        fastest = _fastest.get(key)
        if fastest is not None and is_stall(step, fastest):
            self.stalls += 1
            self.stalled = Stall(now, self.cpu)
            _set(1)
        elif fastest is None and len(_fastest) < 256 or fastest is not None and step < fastest:
            _fastest[key] = step

    def stop(self):
        global last_choice
        if self.before is None:
            return
        if self.pool:
            blas_pool.uninstall()
            self.pool = False
        numba.set_num_threads(self.before[0])
        blas.set_blas_threads(self.before[1])
        self.before = None
        last_choice = self.describe()
        if self.fixed is None and self.next_sample != float("inf"):
            _last[:] = [self.current, time.monotonic(), list(self.samples)]

    def describe(self):
        how = f"fixed by {ENV}" if self.fixed is not None else "auto"
        steps = ", ".join(f"{n} thread(s) for {k} step(s)" for n, k in sorted(self.used.items(), reverse=True))
        stalls = f", {self.stalls} stall(s) sent steps to one thread" if self.stalls else ""
        return f"{steps or 'no steps'} ({how}{stalls})"
