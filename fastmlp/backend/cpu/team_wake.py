"""When a prediction's parallel kernel call is worth waking Numba's threads for.

After a parallel region libgomp's worker threads spin for a few milliseconds,
then sleep. Waking them costs far more than the prediction: on the project's
2-core VM (Intel Xeon, KVM), P2's 32-row prediction right after another took
82 us, after a 3 ms pause 113, after 10 ms 0.2-11 ms, after 100 ms 7.2 ms (the
median; 14 at worst), and a 1-row one 13 us against 6.9 ms. The woken worker
lands in the run queue of the caller's core, behind the caller spinning at the
region's end for it, until the kernel's balancer moves one of them to the idle
core (a tick or two); onnxruntime, whose worker is pinned, took 0.4-0.6 ms. The
same prediction on the calling thread alone took 0.14 ms after a 10 ms pause
and 0.4 ms after 100 ms (its caches cold).

So a prediction whose team has had no parallel region for WARM_S runs on the
calling thread (``plan`` says SERIAL), with the same bits (dense_chain.py):
calls far apart, a server's usual traffic, never wake the team. When calls keep
coming (each within WARM_S of the last) and the serial ones among them have
taken WAKE_AFTER_S, the next one wakes the team (WAKE) with its workers pinned,
for that call, to the cores other than the caller's (``pinned_away``): a 32-row
wake then took 0.66-0.92 ms against 7-14 unpinned. The serial calls paid so far
are what a wake costs: a rent-or-buy rule, never more than twice the best.
"""
import ctypes
import os
import threading
import time
from contextlib import contextmanager, nullcontext

import numba

from . import thread_count

SERIAL, PARALLEL, WAKE = 0, 1, 2
WARM_S = 1e-3         # the team still spins this long after a region (it spun 3 ms, slept by 10)
WAKE_AFTER_S = 2e-3   # serial calls of one burst worth a wake (a pinned wake: 0.66-0.92 ms)


class TeamWake:
    """Whether the next parallel-capable prediction of the team's owner runs on the team.

    ``plan(now)`` -> SERIAL, PARALLEL or WAKE; ``done(mode, start, end)`` after the call (the
    mode it ran in, perf_counter seconds). Used by the owner thread only (one Python thread
    at a time runs parallel predictions: blas.inference_parallel), so nothing is locked."""

    def __init__(self):
        self.parallel_end = float("-inf")   # when the team's last parallel call ended
        self.call_end = float("-inf")       # when the last call ended, either way
        self.serial_s = 0.0                 # serial seconds in this burst of calls

    def plan(self, now):
        """How the call starting at ``now`` runs."""
        if now - self.parallel_end <= WARM_S:
            return PARALLEL
        if now - self.call_end > WARM_S:    # a new burst
            self.serial_s = 0.0
        return WAKE if self.serial_s >= WAKE_AFTER_S else SERIAL

    def done(self, mode, start, end):
        """The call planned at ``start`` ran in ``mode`` and ended at ``end``."""
        self.call_end = end
        if mode == SERIAL:
            self.serial_s += end - start
        else:
            self.parallel_end = end
            self.serial_s = 0.0


    @contextmanager
    def call(self):
        """``with team.call():`` a prediction of Numba kernels (a CNN's, layer by layer) runs
        as ``plan`` says: on the team, waking it (``pinned_away``), or with this thread's
        Numba count at 1, which starts no team (the kernels' chunks are planned for the most
        threads whatever the count: the same bits)."""
        start = time.perf_counter()
        mode = self.plan(start)
        count = numba.get_num_threads()
        if mode == SERIAL and count > 1:
            numba.set_num_threads(1)
        try:
            with pinned_away() if mode == WAKE else nullcontext():
                yield mode
        finally:
            if mode == SERIAL and count > 1:
                numba.set_num_threads(count)
            self.done(mode, start, time.perf_counter())


_owner = threading.local()


def prediction_team():
    """The calling thread's TeamWake (its own team of Numba threads)."""
    team = getattr(_owner, "team", None)
    if team is None:
        team = _owner.team = TeamWake()
    return team


def _sched_getcpu():
    try:
        fn = ctypes.CDLL(None).sched_getcpu
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    return fn


_getcpu = _sched_getcpu()


class pinned_away:
    """``with pinned_away():`` the calling thread's Numba workers may run only on the cores
    other than the one the caller runs on now, and get their own affinity back at the end.
    Nothing is pinned where it can't be (no sched_setaffinity or sched_getcpu, the workers'
    ids unknown, no other core allowed)."""

    def __enter__(self):
        self.saved = []
        if _getcpu is None or not hasattr(os, "sched_setaffinity"):
            return self
        team = thread_count.team_threads()
        if not team:
            return self
        me = str(threading.get_native_id())
        cpu = _getcpu()
        for tid in team - {me}:
            try:
                allowed = os.sched_getaffinity(int(tid))
                away = allowed - {cpu}
                if away and away != allowed:
                    os.sched_setaffinity(int(tid), away)
                    self.saved.append((int(tid), allowed))
            except OSError:          # the thread ended, or may not be pinned
                continue
        return self

    def __exit__(self, *exc):
        for tid, allowed in self.saved:
            try:
                os.sched_setaffinity(tid, allowed)
            except OSError:
                pass
        return False
