"""Model files, checkpoints, Ctrl-C, crashes, streaming from HDF5, memory, determinism.

What a user relies on when a run is long or a machine unreliable: a saved
model comes back bitwise (and trains on bitwise as if never saved); a
damaged file is refused with a message that says what is wrong; a crash or
a SIGKILL in the middle of a save leaves the previous file whole and no
temporary behind; Ctrl-C never leaves half a step.
"""
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

import fastmlp as fm
from fastmlp import atomic, files
from fastmlp.backend import cpu as cpu_backend
from fastmlp.backend.cpu.reduce import partial_sums
from fastmlp.layers import Layer, register

ROOT = Path(__file__).resolve().parents[1]


def _data(rng, n=192, d=6, c=3):
    centres = rng.standard_normal((c, d)) * 2
    y = rng.integers(0, c, n)
    return (centres[y] + rng.standard_normal((n, d))).astype(np.float32), y


def _mlp(opt="adam", dtype="float32", seed=3, extras=True):
    opts = {"adam": lambda: fm.Adam(0.01), "momentum": lambda: fm.SGD(0.05, momentum=0.9),
            "nesterov": lambda: fm.SGD(0.05, momentum=0.9, nesterov=True), "sgd": lambda: fm.SGD(0.1)}
    layers = [fm.Dense(6, 16, l2=1e-3), fm.ReLU()]
    if extras:
        layers += [fm.BatchNorm(16), fm.Dropout(0.2)]
    layers += [fm.Dense(16, 8), fm.Tanh(), fm.Dense(8, 3)]
    return fm.Sequential(layers, loss="softmax_crossentropy", optimizer=opts[opt](), dtype=dtype, seed=seed)


def _same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(wa, wb))


def _full_state(model):
    """Everything that decides the next steps: weights, optimizer, generator, layer state."""
    return {"weights": model.get_weights(),
            "opt": [np.array(model.be.to_host(s)) for s in model.flat.state], "t": model.optimizer.t,
            "rng": model.rng.bit_generator.state,
            "layers": [layer.get_state() for layer in model.layers]}


def _assert_same_state(a, b):
    sa, sb = _full_state(a), _full_state(b)
    for x, y in zip(sa["weights"], sb["weights"]):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(sa["opt"], sb["opt"]):
        np.testing.assert_array_equal(x, y)
    assert sa["t"] == sb["t"] and sa["rng"] == sb["rng"]
    for x, y in zip(sa["layers"], sb["layers"]):
        assert sorted(x) == sorted(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def _only(folder, names):
    left = sorted(os.listdir(folder))
    assert left == sorted(names), f"expected only {sorted(names)} in {folder}, found {left}"


# --------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("opt", ["adam", "momentum", "nesterov", "sgd"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_is_bitwise(opt, dtype, rng, tmp_path):
    X, y = _data(rng)
    model = _mlp(opt, dtype)
    model.fit(X, y, epochs=2, batch_size=32)
    path = tmp_path / "model.fmlp"
    model.save(path)
    back = fm.load_model(path)
    _assert_same_state(model, back)
    assert back.dtype == model.dtype and back.seed == model.seed and back.device == "cpu"
    assert [repr(layer) for layer in back.layers] == [repr(layer) for layer in model.layers]
    assert repr(back.optimizer) == repr(model.optimizer) and repr(back.loss) == repr(model.loss)
    np.testing.assert_array_equal(back.predict(X), model.predict(X))
    assert back.evaluate(X, y) == model.evaluate(X, y)
    _only(tmp_path, ["model.fmlp"])


def test_round_trip_conv_model(rng, tmp_path):
    X = rng.standard_normal((24, 2, 8, 8)).astype(np.float32)
    y = rng.integers(0, 2, 24)
    model = fm.Sequential([fm.Conv2D(2, 3, (3, 2), padding=1), fm.ReLU(), fm.MaxPool2D(2), fm.Flatten(),
                           fm.Dense(3 * 4 * 4, 1)], loss="bce", optimizer=fm.Adam(0.01), seed=1,
                          input_shape=(2, 8, 8))
    model.fit(X, y, epochs=2, batch_size=8)
    model.save(tmp_path / "cnn.fmlp")
    back = fm.load_model(tmp_path / "cnn.fmlp")
    _assert_same_state(model, back)
    np.testing.assert_array_equal(back.predict(X), model.predict(X))


@pytest.mark.parametrize("opt", ["adam", "momentum"])
def test_save_load_continue_equals_uninterrupted(opt, rng, tmp_path):
    """3 epochs, save, load, 2 more == 5 epochs: shuffle order, dropout masks, momentum /
    Adam moments and step count all come back from the file."""
    X, y = _data(rng)
    straight = _mlp(opt)
    h5 = straight.fit(X, y, epochs=5, batch_size=32)
    first = _mlp(opt)
    first.fit(X, y, epochs=3, batch_size=32)
    first.save(tmp_path / "m.fmlp")
    del first
    back = fm.load_model(tmp_path / "m.fmlp")
    h2 = back.fit(X, y, epochs=2, batch_size=32)
    _assert_same_state(straight, back)
    assert h2["loss"] == h5["loss"][3:]
    # without the optimizer state the two would differ: the test can fail
    other = _mlp(opt)
    other.fit(X, y, epochs=3, batch_size=32)
    other.optimizer.t = 0
    for buf in other.flat.state:
        buf[...] = 0
    other.fit(X, y, epochs=2, batch_size=32)
    assert not _same_weights(other, straight)


def test_file_is_a_plain_npz_without_pickle(rng, tmp_path):
    X, y = _data(rng)
    model = _mlp("adam")
    model.fit(X, y, epochs=1, batch_size=64)
    path = tmp_path / "m.fmlp"
    model.save(path)
    with np.load(path, allow_pickle=False) as npz:
        header = json.loads(npz["header"].tobytes().decode())
        assert npz["param_0"].shape == (6, 16)
    print(json.dumps({k: header[k] for k in ("format", "version", "optimizer_step", "training")}))
    assert header["format"] == "fastmlp-model" and header["version"] == files.MODEL_VERSION
    arch = header["model"]
    assert [e["class"] for e in arch["layers"]] == ["Dense", "ReLU", "BatchNorm", "Dropout", "Dense",
                                                   "Tanh", "Dense"]
    assert arch["loss"]["class"] == "SoftmaxCrossEntropy" and arch["optimizer"]["class"] == "Adam"
    assert arch["dtype"] == "float32" and arch["device"] == "cpu" and arch["seed"] == 3
    assert header["rng"]["bit_generator"] == "PCG64" and header["optimizer_step"] == 3
    assert set(header["arrays"]["layers"]) == {"2"}                 # BatchNorm running statistics
    comment = zipfile.ZipFile(path).comment.decode()
    assert comment.startswith(f"fastmlp-model {files.MODEL_VERSION} sha256:")


def test_no_pickle_in_the_package():
    out = subprocess.run(["grep", "-rn", "pickle", str(ROOT / "fastmlp"), "--include=*.py"],
                         capture_output=True, text=True).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    print("\n".join(lines))
    # files are read without pickle; the one other use is mpi4py's object broadcast between
    # the ranks of one job (fastmlp/distributed/comm.py), which never touches a file
    between_ranks = [line for line in lines if "MPI-pickle" in line and "distributed/comm.py" in line]
    assert len(between_ranks) <= 1
    assert lines and all("allow_pickle=False" in line for line in lines if line not in between_ranks)


def test_custom_registered_layer_with_state_round_trips(rng, tmp_path):
    @register
    class CountingIdentity(Layer):
        """Identity that counts training batches: non-trainable state."""

        def __init__(self, note="x"):
            super().__init__()
            self.note, self.count = note, np.zeros(1)

        def forward(self, x, training):
            if training:
                self.count += 1
            return x

        def backward(self, dy):
            return dy

        def get_state(self):
            return {"count": self.count.copy()}

        def set_state(self, state):
            self.count = np.asarray(state["count"], dtype=np.float64).copy()

        def get_config(self):
            return {"note": self.note}

    X, y = _data(rng)
    model = fm.Sequential([fm.Dense(6, 4), CountingIdentity("hi"), fm.Dense(4, 3)],
                          loss="softmax_crossentropy", seed=0)
    model.fit(X, y, epochs=1, batch_size=64)
    model.save(tmp_path / "c.fmlp")
    back = fm.load_model(tmp_path / "c.fmlp")
    assert back.layers[1].note == "hi" and back.layers[1].count[0] == 3


def test_unsaveable_model_fails_before_touching_the_file(rng, tmp_path):
    class Unregistered(Layer):
        def forward(self, x, training):
            return x

        def backward(self, dy):
            return dy

    path = tmp_path / "m.fmlp"
    path.write_bytes(b"previous")
    model = fm.Sequential([fm.Dense(6, 3), Unregistered()], seed=0)
    with pytest.raises(ValueError, match="register"):
        model.save(path)
    assert path.read_bytes() == b"previous"
    _only(tmp_path, ["m.fmlp"])
    with pytest.raises(ValueError, match="built"):
        fm.Sequential([fm.ReLU()]).save(tmp_path / "x.fmlp")


def test_load_on_another_device_name_and_bad_device(rng, tmp_path, monkeypatch):
    model = _mlp("sgd", extras=False)
    model.save(tmp_path / "m.fmlp")
    assert fm.load_model(tmp_path / "m.fmlp", device="auto").device in ("cpu", "cuda")
    with pytest.raises(ValueError, match="expected device"):
        fm.load_model(tmp_path / "m.fmlp", device="tpu")
    if fm.backend.cuda_available()[0]:
        return
    real = fm.Sequential.get_config
    monkeypatch.setattr(fm.Sequential, "get_config", lambda m: dict(real(m), device="cuda"))
    model.save(tmp_path / "gpu.fmlp")                 # as if saved on a GPU machine
    monkeypatch.undo()
    with pytest.raises((ImportError, RuntimeError), match="device='cpu'"):
        fm.load_model(tmp_path / "gpu.fmlp")
    assert fm.load_model(tmp_path / "gpu.fmlp", device="cpu").device == "cpu"


# --------------------------------------------------------------------------- damaged files

@pytest.fixture
def saved(rng, tmp_path):
    X, y = _data(rng)
    model = _mlp("adam")
    model.fit(X, y, epochs=1, batch_size=64)
    path = tmp_path / "good.fmlp"
    model.save(path)
    return path, path.read_bytes()


def _refused(path, *fragments):
    with pytest.raises(ValueError) as info:
        fm.load_model(path)
    msg = str(info.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


def test_truncated_files_are_refused(saved, tmp_path):
    path, blob = saved
    bad = tmp_path / "bad.fmlp"
    for cut in [1, 4, 100, len(blob) // 3, len(blob) // 2, len(blob) - 100, len(blob) - 65, len(blob) - 1]:
        bad.write_bytes(blob[:cut])
        msg = _refused(bad)
        assert "truncated" in msg or "corrupted" in msg, msg
    print(msg)


def test_every_flipped_bit_is_caught(saved, tmp_path):
    path, blob = saved
    bad = tmp_path / "bad.fmlp"
    r = np.random.default_rng(0)
    positions = sorted(set(r.integers(0, len(blob), 150).tolist()) | {0, 5, 40, len(blob) - 1,
                                                                     len(blob) - 64, len(blob) - 70})
    msgs = set()
    for pos in positions:
        b = bytearray(blob)
        b[pos] ^= 1 << int(r.integers(0, 8))
        bad.write_bytes(bytes(b))
        with pytest.raises(ValueError) as info:
            fm.load_model(bad)
        msgs.add(str(info.value).split(":")[0][:60])
    print(f"{len(positions)} flips, all refused; messages such as {sorted(msgs)[:3]}")
    bad.write_bytes(blob)
    fm.load_model(bad)  # the undamaged bytes still load


def test_foreign_files_are_refused(tmp_path):
    cases = {
        "empty.fmlp": b"",
        "text.fmlp": b"hello, this is not a model\n" * 10,
        "random.fmlp": np.random.default_rng(0).bytes(5000),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        print(_refused(tmp_path / name, "not a fastmlp model file"))
    np.savez(tmp_path / "other.npz", a=np.arange(3))
    print(_refused(tmp_path / "other.npz", "not a fastmlp model file"))
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["x"] = np.arange(3)
    print(_refused(tmp_path / "data.h5", "HDF5", "not a fastmlp model file"))


def test_future_version_is_refused(saved, tmp_path, monkeypatch):
    path, _ = saved
    model = fm.load_model(path)
    monkeypatch.setattr(files, "MODEL_VERSION", 7)
    model.save(tmp_path / "future.fmlp")
    monkeypatch.setattr(files, "MODEL_VERSION", 1)
    print(_refused(tmp_path / "future.fmlp", "newer fastmlp", "version 7", "upgrade"))


def test_io_failures_are_oserrors(tmp_path, saved):
    with pytest.raises(FileNotFoundError):
        fm.load_model(tmp_path / "missing.fmlp")
    with pytest.raises(IsADirectoryError):
        fm.load_model(tmp_path)
    model = fm.load_model(saved[0])
    with pytest.raises(FileNotFoundError):
        model.save(tmp_path / "no" / "such" / "folder" / "m.fmlp")
    with pytest.raises(IsADirectoryError):
        model.save(tmp_path)
    assert not (tmp_path / "no").exists()


# --------------------------------------------------------------------------- crash-safe writes

def test_exception_mid_save_keeps_previous_file(saved, tmp_path, monkeypatch):
    path, blob = saved
    model = fm.load_model(path)
    model.set_weights([w + 1 for w in model.get_weights()])
    real = np.lib.format.write_array
    calls = []

    def failing(*args, **kw):
        calls.append(1)
        if len(calls) == 4:
            raise OSError(28, "No space left on device (simulated)")
        return real(*args, **kw)

    monkeypatch.setattr(np.lib.format, "write_array", failing)
    with pytest.raises(OSError, match="simulated"):
        model.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == blob
    _only(path.parent, ["good.fmlp"])


@pytest.mark.parametrize("mode", ["named-temp", "copy-after-failed-link"])
def test_fallback_paths_are_atomic_too(mode, saved, tmp_path, monkeypatch):
    """Without O_TMPFILE (macOS, Windows, some filesystems) a named temporary is used."""
    path, blob = saved
    model = fm.load_model(path)
    if mode == "named-temp":
        monkeypatch.setattr(atomic, "_open_unnamed", lambda folder: None)
    else:
        monkeypatch.setattr(atomic, "_link_unnamed", lambda fd, dest: False)
    monkeypatch.setattr(atomic, "_link_works", {})
    model.save(path)
    back = fm.load_model(path)
    _assert_same_state(model, back)
    real = np.lib.format.write_array
    monkeypatch.setattr(np.lib.format, "write_array",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        model.save(path)
    monkeypatch.setattr(np.lib.format, "write_array", real)
    fm.load_model(path)
    _only(path.parent, ["good.fmlp"])


def test_stale_temporaries_of_dead_processes_are_swept(saved):
    path, _ = saved
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    host = atomic.socket.gethostname().replace(".", "_") or "host"
    stale = path.parent / f".{path.name}.{host}-{dead}.0123abcd.tmp"
    alive = path.parent / f".{path.name}.{host}-{os.getppid()}.4567abcd.tmp"
    stale.write_bytes(b"left by a killed save")
    alive.write_bytes(b"another process, still saving")
    fm.load_model(path).save(path)
    assert not stale.exists() and alive.exists()
    alive.unlink()


_SAVER = """
import sys
import numpy as np
import fastmlp as fm
path = sys.argv[1]
model = fm.Sequential([fm.Dense(1000, 1000), fm.ReLU(), fm.Dense(1000, 10)], optimizer=fm.Adam(),
                      seed=0)
shapes = [w.shape for w in model.get_weights()]
k = 1
while True:
    model.set_weights([np.full(s, float(k)) for s in shapes])
    model.optimizer.t = k
    model.save(path)
    print(k, flush=True)
    k += 1
"""


def test_sigkill_during_save_leaves_a_whole_file_and_no_temporary(tmp_path):
    """A child saves a 12 MB model in a loop (each version: every weight equal to k);
    SIGKILL at a random moment; the file must load and be one of the versions."""
    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    folder = tmp_path / "out"
    folder.mkdir()
    path = folder / "model.fmlp"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = np.random.default_rng()
    for trial in range(3):
        child = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                                 text=True, env=env)
        try:
            seen = [int(child.stdout.readline())]       # at least one complete save
            time.sleep(float(r.uniform(0.0, 0.3)))
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
            seen += [int(line) for line in child.stdout.read().split()]
        finally:
            if child.poll() is None:
                child.kill()
            child.stdout.close()
        _only(folder, ["model.fmlp"])
        model = fm.load_model(path)
        ws = model.get_weights()
        k = ws[0].flat[0]
        assert all(np.all(w == k) for w in ws), "a mix of two versions"
        assert k in (seen[-1], seen[-1] + 1) and model.optimizer.t == k
        print(f"trial {trial}: killed after {len(seen)} save(s); the file holds version {int(k)}")


# --------------------------------------------------------------------------- weight files

def test_save_weights_round_trip_and_checks(rng, tmp_path):
    X, y = _data(rng)
    model = _mlp("adam")
    model.fit(X, y, epochs=1, batch_size=64)
    path = tmp_path / "w.h5"
    model.save_weights(path)
    assert h5py.is_hdf5(path)
    other = _mlp("adam", seed=9)
    other.load_weights(path)
    assert _same_weights(model, other)
    # from a full model file too
    model.save(tmp_path / "m.fmlp")
    third = _mlp("adam", seed=11)
    third.load_weights(tmp_path / "m.fmlp")
    assert _same_weights(model, third)
    # a model of another shape: refused before any weight changes
    small = fm.Sequential([fm.Dense(6, 5), fm.Dense(5, 3)], seed=0)
    before = small.get_weights()
    with pytest.raises(ValueError, match="expected 4 weight arrays|expected weight 0 of shape"):
        small.load_weights(path)
    assert all(np.array_equal(a, b) for a, b in zip(before, small.get_weights()))
    # damaged, foreign
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 4
    (tmp_path / "bad.h5").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="corrupted"):
        other.load_weights(tmp_path / "bad.h5")
    (tmp_path / "cut.h5").write_bytes(bytes(path.read_bytes()[:700]))
    with pytest.raises(ValueError, match="corrupted or truncated"):
        other.load_weights(tmp_path / "cut.h5")
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["weights/0"] = np.zeros((6, 16))
    with pytest.raises(ValueError, match="not a fastmlp weights file"):
        other.load_weights(tmp_path / "plain.h5")
    assert _same_weights(model, other)
    _only(tmp_path, ["bad.h5", "cut.h5", "m.fmlp", "plain.h5", "w.h5"])


# --------------------------------------------------------------------------- checkpoints, resume

class _Record(fm.Callback):
    def on_train_begin(self, logs=None):
        self.weights = {}

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch] = self.model.get_weights()


def test_checkpoint_every_and_final(rng, tmp_path):
    X, y = _data(rng)
    path = tmp_path / "ck.fmlp"
    rec = _Record()

    class Peek(fm.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if path.exists():
                self.last = (epoch, fm.load_model(path).get_weights())

    peek = Peek()
    model = _mlp("adam")
    model.fit(X, y, epochs=5, batch_size=32, checkpoint=path, checkpoint_every=2, callbacks=[rec, peek])
    # at the end of epoch index 4 the newest checkpoint on disk was the one of epoch index 3
    assert peek.last[0] == 4
    assert all(np.array_equal(a, b) for a, b in zip(peek.last[1], rec.weights[3]))
    final = fm.load_model(path)
    _assert_same_state(model, final)
    with np.load(path, allow_pickle=False) as npz:
        header = json.loads(npz["header"].tobytes().decode())
    assert header["training"]["epoch"] == 5 and header["training"]["step"] == 0
    _only(tmp_path, ["ck.fmlp"])


@pytest.mark.parametrize("patience", [1, 100])   # stopped early, or ran to the last epoch
def test_final_checkpoint_holds_the_restored_best_weights(patience, rng, tmp_path):
    """With EarlyStopping(restore_best_weights=True) fit returns the best epoch's weights (and
    BatchNorm statistics); the checkpoint written when fit ends holds the same, not the last
    epoch's. Resuming from it continues from those weights at the epoch where fit stopped."""
    X, y = _data(rng)
    path = tmp_path / "ck.fmlp"
    model = _mlp("sgd")
    model.optimizer.lr = 3.0                  # the validation loss bounces: the best epoch is not the last
    stop = fm.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    h = model.fit(X, y, epochs=8, batch_size=32, validation_split=0.25, checkpoint=path, callbacks=[stop])
    print(f"patience={patience}: val_loss {np.round(h['val_loss'], 3)}, best epoch {stop.best_epoch}, "
          f"ran {len(h.epoch)} epochs")
    assert stop.best_epoch != h.epoch[-1]
    saved = fm.load_model(path)
    _assert_same_state(model, saved)
    with np.load(path, allow_pickle=False) as npz:
        header = json.loads(npz["header"].tobytes().decode())
    assert header["training"]["epoch"] == h.epoch[-1] + 1 and header["training"]["step"] == 0


@pytest.mark.parametrize("opt", ["adam", "nesterov"])
def test_resume_from_checkpoint_equals_uninterrupted(opt, rng, tmp_path):
    X, y = _data(rng)
    straight = _mlp(opt)
    h = straight.fit(X, y, epochs=5, batch_size=32)
    path = tmp_path / "ck.fmlp"
    _mlp(opt).fit(X, y, epochs=3, batch_size=32, checkpoint=path)
    fresh = _mlp(opt, seed=99)                       # whatever it was, the checkpoint decides
    h2 = fresh.fit(X, y, epochs=5, batch_size=32, resume=path)
    assert h2.epoch == [3, 4] and h2["loss"] == h["loss"][3:]
    _assert_same_state(straight, fresh)
    done = _mlp(opt)
    assert len(done.fit(X, y, epochs=3, batch_size=32, resume=path).epoch) == 0   # nothing left


def test_resume_checks_before_changing_anything(rng, tmp_path):
    X, y = _data(rng)
    path = tmp_path / "ck.fmlp"
    _mlp("adam").fit(X, y, epochs=1, batch_size=32, checkpoint=path)
    other = fm.Sequential([fm.Dense(6, 5), fm.ReLU(), fm.Dense(5, 3)], loss="softmax_crossentropy",
                          optimizer=fm.Adam(), seed=0)
    before = _full_state(other)
    with pytest.raises(ValueError, match="expected a file of a model with 3 layers"):
        other.fit(X, y, epochs=3, resume=path)
    sgd = _mlp("momentum")
    with pytest.raises(ValueError, match="optimizer state of SGD, got Adam"):
        sgd.fit(X, y, epochs=3, resume=path)
    assert all(np.array_equal(a, b) for a, b in zip(before["weights"], other.get_weights()))
    with pytest.raises(FileNotFoundError):
        _mlp().fit(X, y, epochs=3, resume=tmp_path / "nope.fmlp")
    for kw, exc in [({"checkpoint_every": 0, "checkpoint": path}, ValueError),
                    ({"checkpoint": 3}, TypeError),
                    ({"checkpoint": tmp_path / "no" / "c.fmlp"}, ValueError),
                    ({"checkpoint": tmp_path}, ValueError),
                    ({"resume": path, "initial_epoch": 2}, ValueError),
                    ({"initial_epoch": -1}, ValueError)]:
        with pytest.raises(exc, match="expected"):
            other.fit(X, y, epochs=3, **kw)
    assert all(np.array_equal(a, b) for a, b in zip(before["weights"], other.get_weights()))


def test_initial_epoch_keras_semantics(rng):
    X, y = _data(rng)
    h = _mlp("adam").fit(X, y, epochs=4, initial_epoch=2, batch_size=64)
    assert h.epoch == [2, 3]


# --------------------------------------------------------------------------- Ctrl-C

def _interrupt_at_update(monkeypatch, kernel, at):
    """SIGINT delivered inside the optimizer's backend call number ``at``, after Adam/SGD
    has counted the step and before its kernel runs: the worst moment."""
    real = getattr(cpu_backend, kernel)
    calls = {"started": 0, "done": 0}

    def update(*args):
        calls["started"] += 1
        if calls["started"] == at:
            os.kill(os.getpid(), signal.SIGINT)
        real(*args)
        calls["done"] += 1

    monkeypatch.setattr(cpu_backend, kernel, update)
    return calls


@pytest.mark.parametrize("opt,kernel", [("adam", "adam_update"), ("momentum", "sgd_update")])
def test_ctrl_c_mid_epoch_then_resume_is_bitwise(opt, kernel, rng, tmp_path, monkeypatch):
    X, y = _data(rng)
    straight = _mlp(opt)
    h = straight.fit(X, y, epochs=4, batch_size=32)
    path = tmp_path / "ck.fmlp"
    model = _mlp(opt)
    calls = _interrupt_at_update(monkeypatch, kernel, at=14)   # epoch 2, step 1 (6 steps per epoch)
    with pytest.raises(KeyboardInterrupt):
        model.fit(X, y, epochs=4, batch_size=32, checkpoint=path, checkpoint_every=100)
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # the step in flight completed: counter, weights and optimizer state agree
    assert calls["done"] == 14 and model.optimizer.t == 14
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    ck = fm.load_model(path)
    _assert_same_state(model, ck)
    with np.load(path, allow_pickle=False) as npz:
        pos = json.loads(npz["header"].tobytes().decode())["training"]
    assert (pos["epoch"], pos["step"]) == (2, 2)
    resumed = _mlp(opt, seed=42)
    h2 = resumed.fit(X, y, epochs=4, batch_size=32, resume=path)
    _assert_same_state(straight, resumed)
    assert h2.epoch == [2, 3] and h2["loss"] == h["loss"][2:]
    # mid-epoch positions need the same batches
    with pytest.raises(ValueError, match="same batch_size"):
        _mlp(opt).fit(X, y, epochs=4, batch_size=16, resume=path)


def test_ctrl_c_full_batch_keeps_last_completed_step(rng, monkeypatch):
    X, y = _data(rng)
    model = _mlp("adam", extras=False)
    calls = _interrupt_at_update(monkeypatch, "adam_update", at=7)
    with pytest.raises(KeyboardInterrupt):
        model.fit(X, y, epochs=50, batch_size=None)
    monkeypatch.undo()
    assert model.optimizer.t == calls["done"] == 7
    again = _mlp("adam", extras=False)
    again.fit(X, y, epochs=7, batch_size=None)
    _assert_same_state(again, model)


def test_ctrl_c_during_the_final_checkpoint_is_not_lost(rng, tmp_path, monkeypatch):
    X, y = _data(rng)
    path = tmp_path / "ck.fmlp"
    real = files.write_model_file

    def save_and_interrupt(p, state):
        os.kill(os.getpid(), signal.SIGINT)      # arrives while the file is being written
        return real(p, state)

    monkeypatch.setattr(files, "write_model_file", save_and_interrupt)
    model = _mlp("adam")
    with pytest.raises(KeyboardInterrupt):
        model.fit(X, y, epochs=2, batch_size=64, checkpoint=path, checkpoint_every=5)
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    _assert_same_state(model, fm.load_model(path))   # the save finished, then Ctrl-C was raised
    assert model.optimizer.t == 6
    _only(tmp_path, ["ck.fmlp"])


def test_ctrl_c_from_another_thread_at_a_random_time(rng, tmp_path):
    import threading
    X = np.repeat(_data(rng)[0], 20, axis=0)
    y = np.repeat(_data(np.random.default_rng(12345))[1], 20)
    path = tmp_path / "ck.fmlp"
    model = _mlp("adam")
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            model.fit(X, y, epochs=10_000, batch_size=16, checkpoint=path, checkpoint_every=10_000)
    finally:
        timer.cancel()
    assert model.optimizer.t > 0
    _assert_same_state(model, fm.load_model(path))
    _only(tmp_path, ["ck.fmlp"])


# --------------------------------------------------------------------------- streaming from HDF5

def _h5_data(tmp_path, rng, n=8000, d=256, dtype=np.float64):
    X = rng.standard_normal((n, d)).astype(dtype)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=X, chunks=(64, d))
        f.create_dataset("y", data=y)
    return path, X, y


def _bce_model(d=256, seed=0):
    return fm.Sequential([fm.Dense(d, 32), fm.ReLU(), fm.Dense(32, 1)], loss="bce",
                         optimizer=fm.SGD(0.05, momentum=0.9), seed=seed)


def test_fit_streams_from_h5py_bitwise_like_in_memory(rng, tmp_path):
    path, X, y = _h5_data(tmp_path, rng, n=1000, d=64)
    mem = _bce_model(64)
    hm = mem.fit(X, y, epochs=2, batch_size=64, validation_split=0.1)
    with h5py.File(path, "r") as f:
        disk = _bce_model(64)
        hd = disk.fit(f["x"], f["y"], epochs=2, batch_size=64, validation_split=0.1)
        assert _same_weights(mem, disk)
        assert hd.history == {k: v for k, v in hm.history.items() if k != "seconds"} | {"seconds": hd["seconds"]}
        np.testing.assert_array_equal(disk.predict(f["x"], batch_size=100), mem.predict(X, batch_size=100))
        assert disk.evaluate(f["x"], f["y"]) == mem.evaluate(X, y)
        full = _bce_model(64)
        full.fit(f["x"], y, epochs=2, batch_size=None)
    full_mem = _bce_model(64)
    full_mem.fit(X, y, epochs=2, batch_size=None)
    assert _same_weights(full, full_mem)


def test_fit_from_h5py_does_not_load_the_data_set(rng, tmp_path):
    path, X, y = _h5_data(tmp_path, rng)
    nbytes = X.nbytes
    del X
    with h5py.File(path, "r") as f:
        model = _bce_model()
        model.fit(f["x"][:256], y[:256], epochs=1, batch_size=64)   # JIT and workspaces
        tracemalloc.start()
        try:
            model.fit(f["x"], f["y"], epochs=1, batch_size=64)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    print(f"traced peak while streaming a {nbytes / 2**20:.1f} MiB data set: {peak / 2**20:.2f} MiB")
    assert peak < nbytes / 3


def test_h5py_input_is_validated_before_training(rng, tmp_path):
    X = rng.standard_normal((300, 5))
    X[250, 2] = np.nan
    with h5py.File(tmp_path / "nan.h5", "w") as f:
        f["x"] = X
        f["big"] = np.full((300, 5), 1e300)
        f["wide"] = np.zeros((300, 7))
        f["text"] = np.array([b"a"] * 300)
        model = fm.Sequential([fm.Dense(5, 1)], loss="bce", seed=0)
        before = model.get_weights()
        y = np.zeros(300)
        for key, exc, frag in [("x", ValueError, "rows 0..299"), ("big", ValueError, "float32 range"),
                               ("wide", ValueError, "(N, 5)"), ("text", TypeError, "numeric")]:
            with pytest.raises(exc, match=frag.replace("(", r"\(").replace(")", r"\)")):
                model.fit(f[key], y, epochs=1)
        assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
        with pytest.raises(ValueError, match="200"):
            model.fit(f["wide"][:, :5][:200], y, epochs=1)  # plain ndarray, wrong length


# --------------------------------------------------------------------------- memory

def _actual_bytes(model, b):
    flat = model.flat
    parts = [flat.params, flat.grads, flat.prev, *flat.state, model.stats, flat.bad, flat._penalty, *flat.seg]
    total = sum(a.nbytes for a in parts)
    total += sum(layer.workspace_bytes() for layer in model.layers)
    total += model.batch_buffers.nbytes()
    total += model.workspace_bytes()
    widths = {layer.out_features for layer in model.layers if isinstance(layer, fm.Dense)}
    widths |= {w * layer.features for layer in model.layers if isinstance(layer, fm.BatchNorm) for w in (1, 2)}
    widths |= {layer.out_channels for layer in model.layers           # a fused conv epilogue's sums
               if isinstance(layer, fm.Conv2D) and layer.pool is not None}
    total += sum(partial_sums(w).nbytes for w in widths)
    return total


@pytest.mark.parametrize("kind", ["mlp", "bn-dropout", "cnn"])
def test_memory_report_matches_the_buffers(kind, rng):
    b, n = 32, 128
    if kind == "cnn":
        X = rng.standard_normal((n, 2, 8, 8)).astype(np.float32)
        model = fm.Sequential([fm.Conv2D(2, 4, 3, padding=1), fm.ReLU(), fm.MaxPool2D(2), fm.Flatten(),
                               fm.Dense(64, 3)], loss="softmax_crossentropy", optimizer=fm.Adam(),
                              seed=0, input_shape=(2, 8, 8))
        y = rng.integers(0, 3, n)
    else:
        X, y = _data(rng, n=n)
        model = _mlp("adam", extras=kind == "bn-dropout")
    model.fit(X, y, epochs=1, batch_size=b)
    report = model.memory_report(b)
    actual = _actual_bytes(model, b)
    print(f"{kind}: report {report}, buffers {actual}")
    assert report["total"] == actual
    assert "Training memory at batch_size=32" in model.summary(print_fn=None)
    with pytest.raises(ValueError, match="batch_size"):
        model.memory_report(0)


def test_memory_report_bounds_what_a_first_fit_allocates(rng):
    d, h, c, b, n = 512, 1024, 10, 256, 2048
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = rng.integers(0, c, n)

    def make():
        return fm.Sequential([fm.Dense(d, h), fm.ReLU(), fm.Dense(h, c)], loss="softmax_crossentropy",
                             optimizer=fm.Adam(), seed=0)

    make().fit(X[:b], y[:b], epochs=1, batch_size=b)     # JIT compilation outside the measurement
    model = make()   # the flat buffers exist from here (building also draws float64 initial values)
    flat = sum(a.nbytes for a in [model.flat.params, model.flat.grads, model.flat.prev, *model.flat.state])
    tracemalloc.start()
    try:
        model.fit(X, y, epochs=1, batch_size=b, shuffle=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    report = model.memory_report(b)["total"]
    used = flat + peak
    data = y.nbytes * 2 + n * 8                          # labels as int64, the epoch's order
    print(f"report {report / 2**20:.2f} MiB, flat buffers + traced peak of fit {used / 2**20:.2f} MiB")
    assert 0.95 * report <= used <= report + data + (256 << 10)


# --------------------------------------------------------------------------- determinism

_DETERMINISM = """
import hashlib, sys
import numpy as np
import fastmlp as fm
r = np.random.default_rng(0)
X = r.standard_normal((768, 32)).astype(np.float32)
y = r.integers(0, 10, 768)
model = fm.Sequential([fm.Dense(32, 4096), fm.ReLU(), fm.BatchNorm(4096), fm.Dropout(0.3),
                       fm.Dense(4096, 10)], loss="softmax_crossentropy", optimizer=fm.Adam(1e-3), seed=7)
h = model.fit(X, y, epochs=2, batch_size=256, verbose=0)   # 256 x 4096: the parallel kernels run
digest = hashlib.sha256()
for w in model.get_weights():
    digest.update(w.tobytes())
digest.update(model.predict(X).tobytes())
digest.update(np.array(h["loss"]).tobytes())
print(digest.hexdigest())
"""


def test_same_seed_and_threads_bitwise_across_processes(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_DETERMINISM)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               NUMBA_NUM_THREADS="2", OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2", MKL_NUM_THREADS="2")
    runs = [subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                           timeout=300) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    digests = [r.stdout.strip() for r in runs]
    print(digests)
    assert digests[0] == digests[1] and len(digests[0]) == 64
