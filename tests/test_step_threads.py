"""The thread count of a CPU training step (backend/cpu/thread_count.py): all the cores on a
quiet machine, the free ones under load, FASTMLP_THREADS to fix it; the counts a fit found
are put back after it, and a fixed count gives the same bits as before."""
import time

import numba
import numpy as np
import pytest

import fastmlp as fm
from fastmlp.backend.cpu import blas, thread_count
from fastmlp.backend.cpu.thread_count import StepThreads, free_cores


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _mlp(seed=0):
    return fm.Sequential([fm.Dense(784, 256), fm.ReLU(), fm.Dense(256, 10)], loss="softmax_crossentropy",
                         optimizer=fm.SGD(0.1), seed=seed)


@pytest.mark.parametrize("others, cores, want", [(0, 2, 2), (0.2, 2, 2), (0.95, 2, 1), (0.8, 2, 2), (1, 2, 1), (3, 2, 1),
                                                 (1, 8, 7), (2.5, 8, 6), (2.95, 8, 5), (0.5, 8, 8)])
def test_free_cores_count_a_core_taken_only_when_another_thread_mostly_wants_it(others, cores, want):
    assert free_cores(others, cores) == want


def test_auto_follows_the_load_and_puts_the_counts_back(monkeypatch):
    monkeypatch.delenv("FASTMLP_THREADS", raising=False)
    monkeypatch.setattr(thread_count, "most", lambda: 2)
    load = [0]
    clock = Clock()
    before = numba.get_num_threads(), blas.blas_threads()
    st = StepThreads(look=lambda: load[0], clock=clock, foreign=set)
    st.start()
    assert st.current == 2 and numba.get_num_threads() == 2
    seen = []
    for step in range(40):
        load[0] = 1 if 10 <= step < 25 else 0      # another busy process for a while
        clock.t += 0.05
        st.end()
        seen.append(st.current)
    st.stop()
    assert seen[:10] == [2] * 10                        # quiet: all the cores
    assert 1 in seen[10:25] and seen[-1] == 2           # busy: one; quiet again: back to two
    assert (numba.get_num_threads(), blas.blas_threads()) == before
    assert set(st.used) == {1, 2} and sum(st.used.values()) == 40
    assert "auto" in st.describe()


def test_no_proc_means_all_the_cores(monkeypatch):
    monkeypatch.delenv("FASTMLP_THREADS", raising=False)
    clock = Clock()
    st = StepThreads(look=lambda: None, clock=clock, foreign=set)
    st.start()
    for _ in range(20):
        clock.t += 1
        st.end()
    st.stop()
    assert set(st.used) == {thread_count.most()}


def test_the_machine_is_looked_at_through_proc():
    seen = thread_count.others_running()
    assert seen is None or (isinstance(seen, int) and seen >= 0)


@pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5"])
def test_a_bad_thread_count_is_refused_before_training(monkeypatch, rng, raw):
    monkeypatch.setenv("FASTMLP_THREADS", raw)
    model = _mlp()
    w = [a.copy() for a in model.get_weights()]
    with pytest.raises(ValueError, match="FASTMLP_THREADS: expected 'auto' or a whole number"):
        model.fit(rng.random((64, 784)), rng.integers(0, 10, 64), epochs=1)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), w))


def test_a_fixed_count_is_used_for_every_step_and_reported(monkeypatch, rng):
    monkeypatch.setenv("FASTMLP_THREADS", "1")
    before = numba.get_num_threads()
    h = _mlp().fit(rng.random((256, 784)), rng.integers(0, 10, 256), epochs=2, batch_size=64)
    assert h.threads == {1: 8}
    assert numba.get_num_threads() == before
    assert "fixed by FASTMLP_THREADS" in thread_count.last_choice and "FASTMLP_THREADS=1" in thread_count.policy()


def test_chunked_conv_kernels_give_the_same_bits_on_any_count(monkeypatch, rng):
    """The conv chunks, the reductions and the GEMM blocks on Numba's threads are fixed by
    the shapes: a CNN trains to the same bits on 1 thread and on all of them."""
    X, y = rng.standard_normal((32, 1, 12, 12)), rng.integers(0, 3, 32)
    runs = []
    for n in ("1", str(thread_count.most())):
        monkeypatch.setenv("FASTMLP_THREADS", n)
        model = fm.Sequential([fm.Conv2D(1, 8, 3, padding=1), fm.ReLU(), fm.MaxPool2D(2), fm.Flatten(),
                               fm.Dense(288, 3)], loss="softmax_crossentropy", optimizer=fm.SGD(0.05),
                              seed=3, input_shape=(1, 12, 12))
        model.fit(X, y, epochs=2, batch_size=8)
        runs.append(model.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def _stepping(monkeypatch, cores=2):
    monkeypatch.delenv("FASTMLP_THREADS", raising=False)
    monkeypatch.setattr(thread_count, "most", lambda: cores)
    monkeypatch.setattr(thread_count, "_fastest", {})
    clock, cpu = Clock(), [0.0]
    st = StepThreads(look=lambda: 0, clock=clock, cpu=lambda: cpu[0], foreign=set)
    return st, clock, cpu


def _step(st, clock, cpu, seconds, rows=128, others=0.0):
    # one step of ``seconds`` while this process's other threads take ``others`` cores
    st.begin(rows)
    clock.t += seconds
    cpu[0] += others * seconds
    st.end()
    return st.running()


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="one thread: nothing to fall back from")
def test_a_stalled_step_sends_the_steps_to_one_thread_while_another_thread_of_ours_is_busy(monkeypatch):
    st, clock, cpu = _stepping(monkeypatch)
    before = numba.get_num_threads(), blas.blas_threads()
    st.start()
    try:
        assert [_step(st, clock, cpu, 0.001) for _ in range(5)] == [2] * 5       # steady: no stall
        limit = thread_count.STALL_FACTOR * 0.001 + thread_count.STALL_S
        assert _step(st, clock, cpu, limit * 0.99) == 2                          # slow, not stalled
        assert _step(st, clock, cpu, 0.0004, rows=16) == 2     # a smaller batch: a size of its own
        assert _step(st, clock, cpu, limit * 1.01, others=1.0) == 1              # stalled
        assert numba.get_num_threads() == 1 and blas.blas_threads() == 1
        # a spinning thread of ours keeps a core: one thread, looked at every STALL_LOOK_S
        assert [_step(st, clock, cpu, 0.002, others=1.0) for _ in range(20)] == [1] * 20
        # idle again: the next look brings the count back
        states = [_step(st, clock, cpu, 0.002) for _ in range(12)]
        assert states[-1] == 2 and 1 in states and numba.get_num_threads() == 2
        assert st.stalls == 1 and st.used[1] > 20
        assert "1 stall(s)" in st.describe()
    finally:
        st.stop()
    assert (numba.get_num_threads(), blas.blas_threads()) == before


def test_a_fixed_count_has_no_stalls(monkeypatch):
    st, clock, cpu = _stepping(monkeypatch)
    monkeypatch.setenv("FASTMLP_THREADS", "2")
    st = StepThreads(look=lambda: 0, clock=clock, cpu=lambda: cpu[0], foreign=set)
    st.start()
    try:
        _step(st, clock, cpu, 0.001)
        assert _step(st, clock, cpu, 1.0, others=1.0) == st.current and st.stalls == 0
    finally:
        st.stop()


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="one thread: nothing to fall back from")
def test_the_fastest_steps_carry_over_to_the_next_fit_of_the_same_kind(monkeypatch):
    # a fit that stalls from its first step is measured against the last fit's steps of its kind
    st, clock, cpu = _stepping(monkeypatch)
    st.start(kind="p2")
    try:
        for _ in range(3):
            _step(st, clock, cpu, 0.001)
    finally:
        st.stop()
    for kind, stalled in (("p2", True), ("another model", False)):
        st = StepThreads(look=lambda: 0, clock=clock, cpu=lambda: cpu[0], foreign=set)
        st.start(kind=kind)
        try:
            assert (_step(st, clock, cpu, 0.01, others=1.0) == 1) is stalled
        finally:
            st.stop()


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="one thread: nothing to fall back from")
def test_a_fit_that_starts_beside_a_busy_thread_of_ours_starts_on_one_thread(monkeypatch):
    monkeypatch.delenv("FASTMLP_THREADS", raising=False)
    monkeypatch.setattr(thread_count, "most", lambda: 2)
    monkeypatch.setattr(thread_count, "_last", [None, -1e9, []])
    clock, cpu = Clock(), [0.0]
    for busy, first in ((set(), 2), ({"4242"}, 1)):
        st = StepThreads(look=lambda: 0, clock=clock, cpu=lambda: cpu[0], foreign=lambda: busy)
        st.start()
        try:
            assert st.running() == first and numba.get_num_threads() == first
        finally:
            st.stop()


def test_a_busy_thread_of_ours_is_told_from_the_team():
    # foreign_running: this process's running threads but the caller and its Numba team
    import threading
    import time
    team = thread_count.team_threads()
    if team is None:
        pytest.skip("no /proc/self/task or no gettid here: the threads can't be told apart")
    assert str(threading.get_native_id()) in team and len(team) <= numba.get_num_threads()
    import hashlib
    stop, data = [False], bytes(1 << 20)

    def spin():   # in C without the GIL most of the time: running when /proc is read
        while not stop[0]:
            hashlib.sha256(data).digest()

    busy = threading.Thread(target=spin)
    busy.start()
    try:
        time.sleep(0.05)
        seen = thread_count.foreign_running()
        assert seen is None or str(busy.native_id) in seen
        assert seen is None or not (seen & team)
    finally:
        stop[0] = True
        busy.join()


def test_the_team_is_read_again_once_it_was_freed_and_made_anew():
    # release_prediction_threads frees the caller's OpenMP team (blas._pause_team); the next
    # parallel region makes a new one, and team_threads names the new team's threads, never
    # ids of threads that have ended
    import os
    from fastmlp.backend.cpu import blas
    team = thread_count.team_threads()
    if team is None or numba.get_num_threads() < 2:
        pytest.skip("needs /proc/self/task, gettid and two Numba threads")
    blas._pause_team()
    fresh = np.zeros(numba.get_num_threads(), dtype=np.int64)
    thread_count._team_ids(fresh)      # a parallel region: a team again
    alive = set(os.listdir("/proc/self/task"))
    now = thread_count.team_threads()
    assert now <= alive and {str(i) for i in fresh.tolist() if i > 0} <= now


def test_short_fits_one_after_the_other_take_the_count_back_up(monkeypatch):
    # a fit that starts right after one that ended on one thread starts on one thread, and
    # the looks of such short fits add up: a PERIOD of quiet looks over several fits, each
    # shorter than PERIOD, brings the count back to all the cores
    monkeypatch.delenv("FASTMLP_THREADS", raising=False)
    monkeypatch.setattr(thread_count, "most", lambda: 2)
    monkeypatch.setattr(thread_count, "_last", [1, time.monotonic(), []])
    clock = Clock()
    starts = []
    for fit in range(8):
        st = StepThreads(look=lambda: 0, clock=clock, foreign=set)
        st.start()
        starts.append(st.current)
        clock.t += thread_count.SAMPLE_S * 1.1       # one step, one look
        st.end()
        st.stop()
    looks = int(np.ceil(thread_count.PERIOD / thread_count.SAMPLE_S))
    assert starts[:looks] == [1] * looks and starts[-1] == 2
