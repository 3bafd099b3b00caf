"""One model, many threads: predict / evaluate from any number of threads return exactly what
the same call returns alone; training excludes them with a clear error; two models in two
threads never touch each other's scratch; workspaces stay bounded whatever the batch sizes."""
import threading

import numpy as np
import pytest

import fastmlp as fm


def _mlp(seed=0):
    model = fm.Sequential([fm.Dense(50, 64), fm.ReLU(), fm.BatchNorm(64), fm.Dense(64, 64), fm.Tanh(),
                           fm.Dense(64, 5)], loss="softmax_crossentropy", optimizer=fm.Adam(0.01), seed=seed)
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((512, 50)).astype(np.float32), rng.integers(0, 5, 512)
    model.fit(X, y, epochs=2, batch_size=64)
    return model


def _cnn(seed=0):
    model = fm.Sequential([fm.Conv2D(2, 6, 3, padding=1), fm.ReLU(), fm.MaxPool2D(2), fm.Conv2D(6, 8, 3),
                           fm.ReLU(), fm.Flatten(), fm.Dense(8 * 4 * 4, 3)],
                          loss="softmax_crossentropy", optimizer=fm.SGD(0.05, momentum=0.9), seed=seed)
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((96, 2, 12, 12)).astype(np.float32), rng.integers(0, 3, 96)
    model.fit(X, y, epochs=1, batch_size=32)
    return model


def _hammer(calls, threads):
    """Run the (function, args) calls on ``threads`` threads at once; results in call order."""
    results = [None] * len(calls)
    errors = []
    start = threading.Barrier(threads)

    def work(t):
        start.wait()
        try:
            for i in range(t, len(calls), threads):
                fn, args = calls[i]
                results[i] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=300)
    assert not errors, errors[:3]
    return results


def _p2(seed=0):
    # P2's network: its GEMMs are big enough that OpenBLAS rounds them differently on one
    # thread and on two, and it predicts through the one-call path (fastmlp/inference.py)
    model = fm.Sequential([fm.Dense(784, 256, activation="relu"), fm.Dense(256, 256, activation="relu"),
                           fm.Dense(256, 10)], loss="softmax_crossentropy", seed=seed)
    rng = np.random.default_rng(seed)
    model.set_weights([w + 0.01 * rng.standard_normal(w.shape) for w in model.get_weights()])
    return model


def _wide_cnn(seed=0):
    # a CNN whose Dense GEMMs are big: the layer-by-layer path's block GEMMs (blas.matmul)
    model = fm.Sequential([fm.Conv2D(1, 8, 3, padding=1), fm.ReLU(), fm.MaxPool2D(2), fm.Flatten(),
                           fm.Dense(8 * 14 * 14, 512), fm.ReLU(), fm.Dense(512, 10)],
                          loss="softmax_crossentropy", seed=seed, input_shape=(1, 28, 28))
    rng = np.random.default_rng(seed)
    model.set_weights([w + 0.01 * rng.standard_normal(w.shape) for w in model.get_weights()])
    return model


def _narrowing(seed=0):
    # the cat model's shape (hidden layers 20, 7, 5): hidden outputs of different widths share
    # the one-call path's scratch buffers
    sizes = (300, 20, 7, 5)
    model = fm.Sequential([fm.Dense(a, b, activation="relu") for a, b in zip(sizes, sizes[1:])] +
                          [fm.Dense(5, 1)], loss="binary_crossentropy", seed=seed)
    rng = np.random.default_rng(seed)
    model.set_weights([w + 0.3 * rng.standard_normal(w.shape) for w in model.get_weights()])
    return model


@pytest.mark.parametrize("kind", ["mlp", "cnn", "p2", "wide_cnn", "narrowing"])
def test_concurrent_predictions_equal_sequential_ones(kind):
    model = {"mlp": _mlp, "cnn": _cnn, "p2": _p2, "wide_cnn": _wide_cnn, "narrowing": _narrowing}[kind]()
    rng = np.random.default_rng(1)
    shape = {"mlp": (50,), "cnn": (2, 12, 12), "p2": (784,), "wide_cnn": (1, 28, 28), "narrowing": (300,)}[kind]
    count, most = {"mlp": (2400, 300), "cnn": (320, 40), "p2": (600, 260), "wide_cnn": (120, 100),
                   "narrowing": (600, 200)}[kind]
    inputs = [rng.standard_normal((int(n),) + shape).astype(np.float32) for n in rng.integers(1, most, count)]
    labels = [rng.integers(0, model.output_shape[0], len(x)) for x in inputs]
    calls = []
    for i, (x, y) in enumerate(zip(inputs, labels)):
        calls.append((model.evaluate, (x, y)) if i % 7 == 3 else
                     (model.predict_classes, (x,)) if i % 7 == 5 else (model.predict, (x,)))
    alone = [fn(*args) for fn, args in calls]
    together = _hammer(calls, threads=8)
    wrong = sum(not (a == b if isinstance(a, dict) else np.array_equal(a, b)) for a, b in zip(alone, together))
    print(f"{kind}: {len(calls)} calls on 8 threads, {wrong} differ from the same calls made alone")
    assert wrong == 0


def test_two_models_in_two_threads_do_not_share_scratch():
    a, b = _mlp(0), _mlp(1)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((200, 50)).astype(np.float32)
    y = rng.integers(0, 5, 200)
    alone = [m.loss_and_grads(X, y) for m in (a, b)]
    calls = [(m.loss_and_grads, (X, y)) for _ in range(30) for m in (a, b)]
    together = _hammer(calls, threads=2)          # thread 0 runs a's, thread 1 b's
    for i, (loss, grads) in enumerate(together):
        ref_loss, ref_grads = alone[i % 2]
        assert loss == ref_loss and all(np.array_equal(g, r) for g, r in zip(grads, ref_grads))


def test_training_and_predicting_from_two_threads_are_refused_clearly():
    model = _mlp()
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((4096, 50)).astype(np.float32), rng.integers(0, 5, 4096)
    inside = threading.Event()
    release = threading.Event()
    seen = []

    class Pause(fm.Callback):
        def on_epoch_end(self, epoch, logs=None):
            inside.set()
            release.wait(timeout=60)
            seen.append(self.model.predict(X[:3]))     # the training thread may predict

    trainer = threading.Thread(target=model.fit, args=(X, y), kwargs={"epochs": 1, "callbacks": [Pause()]})
    trainer.start()
    assert inside.wait(timeout=60)
    with pytest.raises(RuntimeError, match="training in another thread"):
        model.predict(X[:5])
    with pytest.raises(RuntimeError, match="training in another thread"):
        model.fit(X, y, epochs=1)
    release.set()
    trainer.join(timeout=60)
    assert len(seen) == 1 and seen[0].shape == (3, 5)
    model.predict(X[:5])                                # after fit: allowed again

    # and the other way round: fit refuses to start while predictions run
    started, finish = threading.Event(), threading.Event()
    first = model.layers[0]                       # before the BatchNorm: run layer by layer
    real = first.forward

    def slow(x, training):
        started.set()
        finish.wait(timeout=60)
        return real(x, training)

    first.forward = slow
    predictor = threading.Thread(target=model.predict, args=(X[:5],))
    predictor.start()
    assert started.wait(timeout=60)
    weights = model.get_weights()
    with pytest.raises(RuntimeError, match="prediction.* running in other threads"):
        model.fit(X, y, epochs=1)
    assert all(np.array_equal(u, v) for u, v in zip(weights, model.get_weights()))
    finish.set()
    predictor.join(timeout=60)
    del first.forward
    model.fit(X[:64], y[:64], epochs=1)


def test_workspaces_stay_bounded_over_many_batch_sizes():
    model = fm.Sequential([fm.Dense(256, 512), fm.ReLU(), fm.Dense(512, 512), fm.ReLU(), fm.Dense(512, 10)],
                          loss="softmax_crossentropy", seed=0)
    rng = np.random.default_rng(4)
    X = rng.standard_normal((300, 256)).astype(np.float32)
    model.predict(X)
    one = sum(layer.workspace_bytes() for layer in model.layers) + model.workspace_bytes()
    for n in range(1, 301):
        model.predict(X[:n])
    held = sum(layer.workspace_bytes() for layer in model.layers) + model.workspace_bytes()
    print(f"workspaces after one 300-row call {one} bytes, after calls of 1..300 rows {held} bytes")
    assert held <= 2 * one


def test_a_layer_belongs_to_one_model():
    layers = [fm.Dense(4, 8), fm.ReLU(), fm.Dense(8, 2)]
    first = fm.Sequential(layers, loss="softmax_crossentropy", optimizer="sgd", seed=0)
    weights = first.get_weights()
    with pytest.raises(ValueError, match=r"layer 0 \(Dense.*already belongs to another model.*new layer instance"):
        fm.Sequential(layers, loss="softmax_crossentropy", optimizer="adam", seed=1)
    assert all(np.array_equal(u, v) for u, v in zip(weights, first.get_weights()))
    X = np.random.default_rng(5).standard_normal((6, 4)).astype(np.float32)
    p = first.predict(X)
    del first                                   # once its model is gone, a layer may join another
    again = fm.Sequential(layers, loss="softmax_crossentropy", optimizer="adam", seed=1)
    assert again.predict(X).shape == p.shape


def test_blas_threads_are_given_back_when_concurrent_predictions_end():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]

    model = _mlp()
    before = blas_threads()
    x = np.random.default_rng(6).standard_normal((32, 50)).astype(np.float32)
    _hammer([(model.predict, (x,))] * 400, threads=4)
    after = blas_threads()
    print(f"BLAS threads before {before}, after 4 threads predicting {after}")
    assert after == before
