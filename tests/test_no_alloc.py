"""After the first step of a batch size, a training step allocates no arrays."""
import tracemalloc

import numpy as np
import pytest

import fastmlp as fm


def _model(opt):
    return fm.Sequential([fm.Dense(300, 64, l2=1e-4), fm.ReLU(), fm.Dense(64, 32), fm.Tanh(),
                          fm.Dense(32, 10)], loss=fm.SoftmaxCrossEntropy(), optimizer=opt, seed=0)


def _traced_peak(fn):
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base


@pytest.mark.parametrize("opt", [fm.SGD(0.01), fm.SGD(0.01, momentum=0.9), fm.Adam(1e-3)],
                         ids=["sgd", "momentum", "adam"])
def test_train_step_allocates_nothing(opt, rng):
    X = rng.random((256, 300), dtype=np.float32)
    y = rng.integers(0, 10, 256)
    model = _model(opt)
    model.fit(X, y, epochs=1, batch_size=64)          # warm-up: JIT, workspaces, gather buffers
    xb, tb = model.batch_buffers.get(64, *model.prepare(X, y))
    model.train_step(xb, tb, model.stats)

    def steps():
        for _ in range(50):
            model.train_step(xb, tb, model.stats)

    grew = _traced_peak(steps)
    one_batch = xb.nbytes
    print(f"peak traced growth over 50 steps: {grew} bytes (one input batch is {one_batch} bytes)")
    assert grew < 2048 < one_batch


def test_full_batch_fit_uses_x_in_place(rng):
    X = rng.random((200, 300), dtype=np.float32)      # already the model dtype: no conversion copy
    y = rng.integers(0, 10, 200)
    model = _model(fm.SGD(0.01))
    model.fit(X, y, epochs=2, batch_size=None)
    grew = _traced_peak(lambda: model.fit(X, y, epochs=40, batch_size=None))
    print(f"peak traced growth over a 40-epoch full-batch fit: {grew} bytes (X is {X.nbytes})")
    assert grew < X.nbytes // 4


def test_a_step_that_skips_the_batchs_zeros_allocates_nothing(rng):
    # the first layer's products without the zeros (backend/cpu/zero_tiles.py): its lists are
    # grown once, then reused
    from fastmlp.backend.cpu import zero_tiles
    if not zero_tiles.available():
        pytest.skip("the register tiles need AVX-512: the first layer multiplies the whole batch")
    live = rng.random(300) < 0.3               # image-like: zeros outside a third of the columns
    X = np.where(live & (rng.random((256, 300)) < 0.5), rng.random((256, 300)), 0).astype(np.float32)
    y = rng.integers(0, 10, 256)
    model = _model(fm.Adam(1e-3))
    model.fit(X, y, epochs=1, batch_size=64)
    xb, tb = model.batch_buffers.get(64, *model.prepare(X, y))
    model.train_step(xb, tb, model.stats)
    assert model.layers[0].skipping

    def steps():
        for _ in range(50):
            model.train_step(xb, tb, model.stats)

    grew = _traced_peak(steps)
    assert grew < 2048 < xb.nbytes
