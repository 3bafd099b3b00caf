"""Training steps replayed as CUDA graphs (fastmlp/backend/cuda/graph.py).

On a GPU (marked ``gpu``): a fit through graphs gives bitwise the weights of the
same fit run eagerly (same kernels, same launch shapes), for full-batch and
mini-batch training with a partial last batch, dense and convolutional models,
and a learning rate changed by a callback between epochs; steps that cannot be
replayed (Dropout, augmentation) run eagerly; Adam's step count lives on the
device and follows the CPU run across fits and a state reload. Everywhere: the state
machine of ``StepGraphs`` (run eagerly, capture, replay; refuse allocations
while capturing; fall back to eager steps on any capture failure) on a
stand-in CuPy.
"""
import importlib.util
import os
import sys
import types

import numpy as np
import pytest

import fastmlp as fm
from fastmlp.backend import cuda_available

_CUDA_OK, _CUDA_WHY = cuda_available()


def gpu(test):
    return pytest.mark.gpu(pytest.mark.skipif(not _CUDA_OK, reason=f"no CUDA device: {_CUDA_WHY}")(test))


GRAPH_PY = os.path.join(os.path.dirname(fm.__file__), "backend", "cuda", "graph.py")


def _dense_model(graphs, optimizer=None, dtype="float64"):
    m = fm.Sequential([fm.Dense(20, 16), fm.ReLU(), fm.Dense(16, 8), fm.Tanh(), fm.Dense(8, 3)],
                      loss="softmax_crossentropy", optimizer=optimizer or fm.SGD(0.1, momentum=0.9),
                      device="cuda", dtype=dtype, seed=7)
    m.cuda_graphs = graphs
    return m


def _data(n=70, d=20, k=3, seed=0):
    r = np.random.default_rng(seed)
    return r.standard_normal((n, d)), r.integers(0, k, n)


def _fit_both(make, X, y, **fit):
    out = []
    for graphs in (True, False):
        m = make(graphs)
        h = m.fit(X, y, **fit)
        out.append((m, h))
    return out


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
@pytest.mark.parametrize("batch_size", [None, 16])  # full batch; 70 = 4 x 16 + 6: two graphs
@gpu
def test_graph_fit_equals_eager_fit_bitwise(batch_size, optimizer):
    X, y = _data()

    def make(graphs):
        opt = fm.SGD(0.1, momentum=0.9) if optimizer == "momentum" else fm.Adam(0.01)
        return _dense_model(graphs, optimizer=opt)
    (g, hg), (e, he) = _fit_both(make, X, y, epochs=6, batch_size=batch_size)
    assert g.step_graphs is not None and g.step_graphs.disabled is None, g.step_graphs and g.step_graphs.disabled
    assert g.step_graphs.captured == (1 if batch_size is None else 2)
    assert g.step_graphs.replays > 0
    assert g.cuda_graph_info == {"captured": g.step_graphs.captured, "replays": g.step_graphs.replays,
                                 "disabled": None}
    assert e.step_graphs is None and e.cuda_graph_info is None
    for a, b in zip(g.get_weights(), e.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert hg.history["loss"] == he.history["loss"]
    assert g.optimizer.t == e.optimizer.t == (6 if batch_size is None else 30)
    # a second fit goes on from the step count (Adam's bias correction) bitwise alike
    g.fit(X, y, epochs=2, batch_size=batch_size)
    e.fit(X, y, epochs=2, batch_size=batch_size)
    for a, b in zip(g.get_weights(), e.get_weights()):
        np.testing.assert_array_equal(a, b)


class _HalveLr(fm.callbacks.Callback):
    def on_epoch_end(self, epoch, logs):
        if epoch == 2:
            self.model.optimizer.lr *= 0.5


@gpu
def test_a_learning_rate_changed_by_a_callback_is_a_new_graph():
    X, y = _data()
    (g, _), (e, _) = _fit_both(_dense_model, X, y, epochs=5, batch_size=None, callbacks=[_HalveLr()])
    assert g.step_graphs.disabled is None and g.step_graphs.captured == 2
    for a, b in zip(g.get_weights(), e.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("batchnorm", [True, False])  # without: Conv2D + ReLU + MaxPool2D fused
@gpu
def test_cnn_graph_fit_equals_eager_fit(batchnorm):
    r = np.random.default_rng(1)
    X, y = r.standard_normal((24, 1, 10, 10)), r.integers(0, 4, 24)

    def make(graphs):
        bn = [fm.BatchNorm(4)] if batchnorm else []
        m = fm.Sequential([fm.Conv2D(1, 4, 3, padding=1)] + bn + [fm.ReLU(), fm.MaxPool2D(2),
                           fm.Flatten(), fm.Dense(100, 4)], loss="softmax_crossentropy",
                          optimizer=fm.SGD(0.05), device="cuda", dtype="float64", seed=3)
        m.cuda_graphs = graphs
        return m
    (g, _), (e, _) = _fit_both(make, X, y, epochs=3, batch_size=8)
    assert g.step_graphs.disabled is None and g.step_graphs.captured == 1
    for a, b in zip(g.get_weights(), e.get_weights()):
        np.testing.assert_array_equal(a, b)
    for lg, le in zip(g.layers, e.layers):
        for k, v in lg.get_state().items():  # BatchNorm running statistics
            np.testing.assert_array_equal(v, le.get_state()[k])


@gpu
def test_adam_graph_matches_the_cpu_reference_step_count():
    """Adam's bias correction reads the step count from the device: after a graph fit,
    a state reload and more steps, the weights follow the CPU float64 run."""
    X, y = _data()
    models = []
    for device in ("cuda", "cpu"):
        m = fm.Sequential([fm.Dense(20, 8), fm.ReLU(), fm.Dense(8, 3)], loss="softmax_crossentropy",
                          optimizer=fm.Adam(0.01), device=device, dtype="float64", seed=4)
        m.fit(X, y, epochs=3, batch_size=16)
        m.optimizer.load_state_dict({"step": 100})  # as a resumed run would
        m.fit(X, y, epochs=2, batch_size=16)
        models.append(m)
    assert models[0].cuda_graph_info["disabled"] is None and models[0].optimizer.t == 110
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@gpu
def test_steps_that_draw_on_the_host_run_eagerly():
    X, y = _data()
    m = fm.Sequential([fm.Dense(20, 8), fm.ReLU(), fm.Dropout(0.5), fm.Dense(8, 3)],
                      loss="softmax_crossentropy", device="cuda", seed=1)
    m.fit(X, y, epochs=1, batch_size=16)
    assert m.step_graphs is None


def test_adam_device_step_count_follows_the_host():
    opt, be = fm.Adam(0.01), fm.backend.get_backend("cpu")
    opt.prepare_step(be)
    assert opt._count.tolist() == [0]
    opt.load_state_dict({"step": 41})
    opt.prepare_step(be)
    assert opt._count.tolist() == [41]
    opt.set_step(42)          # after a replayed step, which incremented the device count
    opt._count += 1
    opt.prepare_step(be)      # in sync: nothing written
    assert opt._count.tolist() == [42] and opt.t == 42


def test_no_graphs_on_the_cpu():
    X, y = _data()
    m = fm.Sequential([fm.Dense(20, 3)], loss="softmax_crossentropy", seed=0)
    m.fit(X, y, epochs=1, batch_size=16)
    assert m.step_graphs is None and m.cuda_graph_info is None and m.optimizer.t == 5


# --- the state machine, on a stand-in CuPy (runs everywhere) --------------------------

class _FakeStream:
    def __init__(self, log):
        self.log, self.capturing = log, False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def record(self):
        return object()

    def wait_event(self, event):
        self.log.append("wait")

    def begin_capture(self):
        self.capturing = True
        self.log.append("begin")

    def end_capture(self):
        self.capturing = False
        self.log.append("end")
        log = self.log
        return types.SimpleNamespace(launch=lambda: log.append("launch"))


def _fake_cupy(log):
    fake = types.ModuleType("cupy")
    state = {"allocator": "pool"}
    cuda = types.SimpleNamespace(
        Stream=lambda non_blocking: _FakeStream(log),
        get_current_stream=lambda: _FakeStream(log),
        get_allocator=lambda: state["allocator"],
        set_allocator=lambda a: state.__setitem__("allocator", a))
    fake.cuda, fake.state = cuda, state
    return fake


@pytest.fixture
def graphs_on_fake(monkeypatch):
    log = []
    fake = _fake_cupy(log)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    spec = importlib.util.spec_from_file_location("fastmlp.backend._cuda_graph_on_fake", GRAPH_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, fake, log


def test_warm_up_then_capture_then_replay(graphs_on_fake):
    mod, fake, log = graphs_on_fake
    g, ran = mod.StepGraphs(), []
    step = lambda: ran.append(fake.state["allocator"])  # noqa: E731
    for _ in range(4):
        g.run(("k",), step)
    # one eager step (allocations allowed), one capture (allocations refused), replays
    assert ran[0] == "pool" and ran[1] is mod._refuse_allocation and len(ran) == 2
    assert fake.state["allocator"] == "pool"  # restored after the capture
    assert log.count("launch") == 3 and g.replays == 3 and g.captured == 1 and g.disabled is None
    g.run(("other",), step)  # a new key starts over with an eager step
    assert len(ran) == 3 and g.replays == 3


def test_an_allocating_step_switches_graphs_off_and_still_runs(graphs_on_fake):
    mod, fake, log = graphs_on_fake
    g, done = mod.StepGraphs(), []

    def step():
        fake.state["allocator"](64) if callable(fake.state["allocator"]) else None
        done.append(1)
    for _ in range(3):
        g.run(("k",), step)
    assert "allocated 64 bytes" in g.disabled
    assert len(done) == 3 and g.captured == 0 and "launch" not in log  # every step ran eagerly
    assert log.count("end") == 1 and fake.state["allocator"] == "pool"  # capture closed, pool back
