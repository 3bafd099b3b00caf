"""The Keras callbacks: ModelCheckpoint, ReduceLROnPlateau, CSVLogger, LearningRateScheduler,
LambdaCallback, the batch-level hooks, EarlyStopping's report, History's lr."""
import csv

import numpy as np
import pytest

import fastmlp as fm
from fastmlp.callbacks import overrides


def _data(n=32):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 4))
    return X, (X[:, 0] > 0).astype(int)


def _model(opt=None):
    return fm.Sequential([fm.Dense(4, 6), fm.ReLU(), fm.Dense(6, 1)], loss="bce", optimizer=opt or fm.SGD(0.1),
                         seed=3)


def test_checkpoint_every_epoch_with_a_formatted_path(tmp_path):
    X, y = _data()
    model = _model()
    path = str(tmp_path / "ckpt-{epoch:02d}-{loss:.3f}.fmlp")
    h = model.fit(X, y, epochs=3, batch_size=8, callbacks=[fm.ModelCheckpoint(path)])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"ckpt-{e + 1:02d}-{loss:.3f}.fmlp" for e, loss in enumerate(h["loss"])]
    back = fm.load_model(tmp_path / files[-1])
    for a, b in zip(back.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode, saved", [("min", [1, 2, 3]), ("max", [1])])
def test_checkpoint_save_best_only(tmp_path, mode, saved):
    X, y = _data()
    path = str(tmp_path / "best-{epoch}.fmlp")
    _model().fit(X, y, epochs=3, batch_size=8,
                 callbacks=[fm.ModelCheckpoint(path, monitor="loss", save_best_only=True, mode=mode)])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"best-{e}.fmlp" for e in saved]


def test_checkpoint_weights_only_and_checks(tmp_path):
    X, y = _data()
    model = _model()
    model.fit(X, y, epochs=2, batch_size=8, callbacks=[fm.ModelCheckpoint(tmp_path / "w.h5", save_weights_only=True)])
    other = _model()
    other.load_weights(tmp_path / "w.h5")
    for a, b in zip(other.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    w0 = model.get_weights()
    with pytest.raises(ValueError, match="val_loss"):   # save_best_only on a metric fit will not log
        model.fit(X, y, epochs=1, callbacks=[fm.ModelCheckpoint(tmp_path / "x", save_best_only=True)])
    with pytest.raises(ValueError, match="fields are epoch or logged metrics"):
        model.fit(X, y, epochs=1, callbacks=[fm.ModelCheckpoint(tmp_path / "{val_acc}.fmlp")])
    for a, b in zip(model.get_weights(), w0):
        np.testing.assert_array_equal(a, b)


class _Opt:
    def __init__(self):
        self.lr, self.schedule = 1.0, None


class _Model:
    optimizer = None


def _plateau_rates(values, **kwargs):
    cb = fm.ReduceLROnPlateau(monitor="val_loss", **kwargs)
    cb.set_model(_Model())
    cb.model.optimizer = _Opt()
    cb.on_train_begin()
    rates = []
    for e, v in enumerate(values):
        cb.on_epoch_end(e, {"val_loss": v})
        rates.append(cb.model.optimizer.lr)
    return rates


def test_reduce_lr_on_plateau_follows_keras():
    # Keras: after `patience` epochs without improvement by min_delta, lr *= factor, then
    # `cooldown` epochs in which the wait does not count; never below min_lr
    values = [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.5, 0.5, 0.5]
    assert _plateau_rates(values, factor=0.5, patience=2) == [1, 1, 1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125, 0.125,
                                                               0.0625]
    assert _plateau_rates(values, factor=0.5, patience=2, cooldown=2) == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25,
                                                                          0.25, 0.125]
    assert _plateau_rates(values, factor=0.1, patience=1, min_lr=0.05)[-1] == 0.05
    assert _plateau_rates([1.0, 0.99995, 0.99985], factor=0.5, patience=1, min_delta=1e-4) == [1, 0.5, 0.5]
    with pytest.raises(ValueError, match="factor"):
        fm.ReduceLROnPlateau(factor=1.0)


def test_reduce_lr_on_plateau_in_fit_and_with_a_schedule():
    X, y = _data()
    model = _model(fm.SGD(0.1))
    h = model.fit(X, y, epochs=4, batch_size=8, callbacks=[fm.ReduceLROnPlateau(monitor="loss", mode="max",
                                                                                 patience=1, factor=0.5)])
    assert h["lr"] == [0.1, 0.1, 0.05, 0.025]   # loss goes down: worse for mode max; the rate each epoch ran at
    model = _model(fm.SGD(fm.schedules.StepDecay(0.1, 2)))
    with pytest.raises(ValueError, match="number as its rate"):
        model.fit(X, y, epochs=1, callbacks=[fm.ReduceLROnPlateau(monitor="loss")])


def test_csv_logger(tmp_path):
    X, y = _data()
    path = tmp_path / "log.csv"
    h = _model().fit(X, y, epochs=3, batch_size=8, validation_split=0.25, callbacks=[fm.CSVLogger(path)])
    rows = list(csv.DictReader(open(path)))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert list(rows[0]) == ["epoch"] + sorted(h.keys())
    assert [float(r["val_loss"]) for r in rows] == h["val_loss"]
    _model().fit(X, y, epochs=2, batch_size=8, validation_split=0.25, callbacks=[fm.CSVLogger(path, append=True)])
    lines = open(path).read().splitlines()
    assert len(lines) == 1 + 3 + 2 and lines[0].startswith("epoch,")
    _model().fit(X, y, epochs=1, batch_size=8, validation_split=0.25, callbacks=[fm.CSVLogger(path)])
    assert len(open(path).read().splitlines()) == 2


def test_learning_rate_scheduler_and_history_lr():
    X, y = _data()
    cb = fm.LearningRateScheduler(lambda epoch, lr: lr if epoch < 2 else lr * 0.1)
    h = _model(fm.Adam(0.01)).fit(X, y, epochs=4, batch_size=8, callbacks=[cb])
    np.testing.assert_allclose(h["lr"], [0.01, 0.01, 0.001, 0.0001])
    model = _model()
    w0 = model.get_weights()
    with pytest.raises(ValueError, match="returned -1.0 for epoch 0"):
        model.fit(X, y, epochs=1, callbacks=[fm.LearningRateScheduler(lambda e, lr: -1.0)])
    for a, b in zip(model.get_weights(), w0):
        np.testing.assert_array_equal(a, b)


def test_lambda_callback_and_batch_hooks():
    X, y = _data(30)
    calls = []
    cb = fm.LambdaCallback(on_epoch_begin=lambda e, logs: calls.append(("begin", e)),
                           on_train_batch_end=lambda b, logs: calls.append(("batch", b, logs["size"])),
                           on_epoch_end=lambda e, logs: calls.append(("end", e)))
    _model().fit(X, y, epochs=2, batch_size=8, callbacks=[cb])
    one = [("begin", 0), ("batch", 0, 8), ("batch", 1, 8), ("batch", 2, 8), ("batch", 3, 6), ("end", 0)]
    assert calls == one + [(c[0], 1, *c[2:]) if c[0] != "batch" else c for c in one]
    assert overrides(cb, "on_train_batch_end") and not overrides(cb, "on_train_batch_begin")
    with pytest.raises(TypeError, match="on_batch_end"):
        fm.LambdaCallback(on_batch_end=print)


def test_batch_hooks_cost_nothing_unless_defined(monkeypatch):
    # no batch hook defined: fit never reads the running sums per batch
    X, y = _data(32)
    model = _model()
    reads = []
    real = model.be.to_host
    monkeypatch.setattr(model.be, "to_host", lambda a: (reads.append(a.shape), real(a))[1])
    model.fit(X, y, epochs=1, batch_size=4, callbacks=[fm.EarlyStopping(monitor="loss")])
    base = len(reads)

    class Counting(fm.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.n = getattr(self, "n", 0) + 1
    c = Counting()
    reads.clear()
    model.fit(X, y, epochs=1, batch_size=4, callbacks=[c])
    assert c.n == 8 and len(reads) == base     # a begin hook needs no read either
    assert not overrides(fm.EarlyStopping(), "on_train_batch_begin") and overrides(c, "on_train_batch_begin")


def test_early_stopping_says_when_it_stopped_and_what_it_restored(capsys):
    X, y = _data()
    cb = fm.EarlyStopping(monitor="loss", mode="max", patience=2, restore_best_weights=True, verbose=1)
    h = _model().fit(X, y, epochs=10, batch_size=8, callbacks=[cb])
    out = capsys.readouterr().out
    assert len(h.epoch) == 3 and "Epoch 3: early stopping" in out
    assert "Restoring model weights from the end of the best epoch: 1" in out
    silent = fm.EarlyStopping(monitor="loss", mode="max", patience=2)
    _model().fit(X, y, epochs=10, batch_size=8, callbacks=[silent], verbose=0)   # fit's own lines off
    assert capsys.readouterr().out == ""
