"""A prediction wakes Numba's threads only when that pays (fastmlp/backend/cpu/team_wake.py)."""
import os
import threading
from types import SimpleNamespace

import numba
import numpy as np
import pytest

import fastmlp as fm
from fastmlp import inference
from fastmlp.backend import cpu
from fastmlp.backend.cpu import team_wake, thread_count
from fastmlp.backend.cpu.team_wake import PARALLEL, SERIAL, WAKE, WAKE_AFTER_S, WARM_S, TeamWake

needs_chain = pytest.mark.skipif(cpu.dense_chain_kernels() is None, reason="NumPy's OpenBLAS symbols were not found: "
                                 "predict runs layer by layer (backend/cpu/openblas.py)")


def test_a_cold_team_is_left_asleep_until_a_burst_has_paid_for_a_wake():
    team = TeamWake()
    assert team.plan(10.0) == SERIAL                # never ran: asleep
    # a burst of serial calls, each starting right after the last: serial until they have
    # taken WAKE_AFTER_S, then one call wakes the team
    t, call = 10.0, WAKE_AFTER_S / 3.9
    for _ in range(4):
        assert team.plan(t) == SERIAL
        team.done(SERIAL, t, t + call)
        t += call + WARM_S / 10
    assert team.plan(t) == WAKE
    team.done(WAKE, t, t + call)
    t += call
    # awake while the calls keep within WARM_S of the last parallel one
    for _ in range(3):
        assert team.plan(t + WARM_S * 0.9) == PARALLEL
        team.done(PARALLEL, t + WARM_S * 0.9, t + WARM_S * 0.9 + call)
        t += WARM_S * 0.9 + call
    # a pause past WARM_S: asleep again, and the next burst starts from nothing
    t += WARM_S * 1.1
    assert team.plan(t) == SERIAL


def test_a_pause_between_serial_calls_starts_the_count_again():
    team = TeamWake()
    t = 0.0
    team.done(SERIAL, t, t + WAKE_AFTER_S * 0.9)
    t += WAKE_AFTER_S * 0.9 + WARM_S * 1.1          # the burst ended: 0.9 of a wake is forgotten
    assert team.plan(t) == SERIAL
    team.done(SERIAL, t, t + WAKE_AFTER_S * 0.5)
    assert team.plan(t + WAKE_AFTER_S * 0.5) == SERIAL
    team.done(SERIAL, t, t + WAKE_AFTER_S * 0.6)    # the same burst: 1.1 of a wake
    assert team.plan(t + WAKE_AFTER_S * 0.6) == WAKE


def test_each_thread_has_its_own_record():
    mine = team_wake.prediction_team()
    assert team_wake.prediction_team() is mine
    theirs = []
    worker = threading.Thread(target=lambda: theirs.append(team_wake.prediction_team()))
    worker.start()
    worker.join()
    assert theirs[0] is not mine and isinstance(theirs[0], TeamWake)


def _team_of_two():
    # the calling thread's team with at least one worker, its workers' ids; None where the
    # machine or the platform can't give one
    if numba.get_num_threads() < 2 or not hasattr(os, "sched_setaffinity"):
        return None
    model = fm.Sequential([fm.Dense(64, 64), fm.ReLU(), fm.Dense(64, 3)], loss="softmax_crossentropy", seed=0)
    model.predict(np.zeros((64, 64), np.float32))       # any parallel region starts the team
    team = thread_count.team_threads()
    if not team or len(os.sched_getaffinity(0)) < 2:
        return None
    workers = team - {str(threading.get_native_id())}
    return sorted(int(t) for t in workers) or None


def test_a_wake_pins_the_workers_away_from_the_callers_core_and_gives_their_cores_back():
    workers = _team_of_two()
    if workers is None:
        pytest.skip("needs two cores, a team of Numba threads and sched_setaffinity")
    before = {w: os.sched_getaffinity(w) for w in workers}
    with team_wake.pinned_away() as pin:
        during = {w: os.sched_getaffinity(w) for w in workers}
        saved = dict(pin.saved)
    assert saved == {w: before[w] for w in saved} and saved, "no worker was pinned"
    for w in saved:
        gone = before[w] - during[w]
        assert len(gone) == 1 and during[w], (before[w], during[w])   # one core left out: the caller's
    assert {w: os.sched_getaffinity(w) for w in workers} == before


@needs_chain
def test_predictions_run_on_this_thread_while_the_team_sleeps_and_wake_it_in_a_burst(monkeypatch):
    rng = np.random.default_rng(0)
    model = fm.Sequential([fm.Dense(784, 256), fm.ReLU(), fm.Dense(256, 10)], loss="softmax_crossentropy", seed=0)
    x = rng.random((32, 784), dtype=np.float32)
    alone = model.predict(x)
    chain = model._dense_chain
    if chain.plan_rows(32)[2] < 2:
        pytest.skip("one thread: nothing runs in parallel")
    monkeypatch.setattr(chain, "_threads_free", lambda: 2)     # the cores free, whatever a look finds
    seen = []
    real = chain.kernels.dense_chain_forward
    clock = [100.0]
    call_s = WAKE_AFTER_S / 2.9

    def spy(*args):
        seen.append(args[8])            # its ``parallel``
        clock[0] += call_s              # each call takes call_s
        return real(*args)
    monkeypatch.setattr(chain.kernels, "dense_chain_forward", spy)
    monkeypatch.setattr(inference, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(team_wake, "_owner", threading.local())   # this thread's team: never ran
    outs = []
    for _ in range(3):                  # far apart: each on this thread
        clock[0] += 1.0
        outs.append(model.predict(x))
    assert seen == [False] * 3
    # a burst, each call right after the last: three on this thread pay for a wake, the
    # fourth wakes the team, the rest find it awake
    seen.clear()
    clock[0] += 1.0
    for _ in range(6):
        outs.append(model.predict(x))
    assert seen == [False, False, False, True, True, True]
    for out in outs:
        np.testing.assert_array_equal(out, alone)


def test_a_layer_by_layer_prediction_keeps_to_this_thread_while_the_team_sleeps(monkeypatch):
    # a CNN predicts layer by layer (no one-call chain): cold, its kernels run with this
    # thread's Numba count at 1 (no team started); awake, on the team; the same bits
    if numba.get_num_threads() < 2:
        pytest.skip("one Numba thread: nothing runs in parallel")
    model = fm.Sequential([fm.Conv2D(1, 4, 3, padding=1), fm.ReLU(), fm.MaxPool2D(2), fm.Flatten(),
                           fm.Dense(4 * 4 * 4, 3)], loss="softmax_crossentropy", seed=0, input_shape=(1, 8, 8))
    x = np.random.default_rng(1).random((16, 1, 8, 8), dtype=np.float32)
    counts = []
    real = model.forward
    monkeypatch.setattr(model, "forward", lambda *a: counts.append(numba.get_num_threads()) or real(*a))
    clock = [50.0]
    monkeypatch.setattr(team_wake, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(team_wake, "_owner", threading.local())   # never ran: asleep
    cold = model.predict(x)
    team = team_wake.prediction_team()
    team.done(PARALLEL, clock[0], clock[0])                        # a parallel call just ended
    warm = model.predict(x)
    assert counts == [1, numba.get_num_threads()]
    np.testing.assert_array_equal(cold, warm)
