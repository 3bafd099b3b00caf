"""ONNX export: onnxruntime's output of the exported file against model.predict.

Every model is trained a few steps first (so that BatchNorm's running
statistics and the weights are not at their initial values), exported, run by
onnxruntime, and compared with ``predict`` on the same inputs: at most 1e-5
apart in float32.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

import fastmlp as fm
from fastmlp.cli import main
from fastmlp.layers import Layer

onnx = pytest.importorskip("onnx", reason='ONNX export tests need onnx: pip install "fastmlp[onnx]"')
ort = pytest.importorskip("onnxruntime", reason='ONNX export tests need onnxruntime: pip install "fastmlp[onnx]"')

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5


def trained(layers, loss, X, y, dtype="float32", epochs=2):
    model = fm.Sequential(layers, loss=loss, optimizer=fm.Adam(1e-2), dtype=dtype, seed=3,
                          input_shape=X.shape[1:])
    model.fit(X, y, epochs=epochs, batch_size=16)
    return model


def run_onnx(path, X):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": X})[0]


def assert_matches(model, path, X, tol=TOL, logits=False):
    got = run_onnx(path, X)
    want = model.predict(X)
    if logits:   # predict's probabilities, back to logits, compared through the loss's function
        got = softmax(got) if want.shape[1] > 1 else 1 / (1 + np.exp(-got))
    err = float(np.max(np.abs(got.astype(np.float64) - want)))
    print(f"max |onnxruntime - predict| = {err:.2e} over {want.shape}")
    assert got.shape == want.shape and got.dtype == want.dtype
    assert err <= tol


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def images(rng):
    X = rng.normal(size=(48, 2, 12, 12)).astype(np.float32)
    return X, (X[:, 0, :6].mean(axis=(1, 2)) > 0).astype(np.int64) + (X[:, 1].mean(axis=(1, 2)) > 0)


def test_dense_softmax_model(tmp_path, rng):
    X = rng.normal(size=(64, 10)).astype(np.float32)
    y = rng.integers(0, 4, 64)
    model = trained([fm.Dense(10, 32), fm.ReLU(), fm.Dense(32, 16), fm.Tanh(), fm.Dense(16, 16),
                     fm.LeakyReLU(0.2), fm.Dense(16, 8), fm.Sigmoid(), fm.Dense(8, 4)],
                    fm.SoftmaxCrossEntropy(), X, y)
    path = fm.export_onnx(model, tmp_path / "dense.onnx")
    onnx.checker.check_model(str(path))
    assert_matches(model, path, X)


def test_cnn_with_batchnorm_pooling_and_dropout(tmp_path, images):
    X, y = images
    # fused conv + relu + pool, then an unfused chain (BatchNorm between Conv2D and its activation),
    # a strided conv without pool, dense BatchNorm and Dropout
    layers = [fm.Conv2D(2, 6, 3, padding=1), fm.ReLU(), fm.MaxPool2D(2),
              fm.Conv2D(6, 8, 3, padding=1), fm.BatchNorm(8), fm.ReLU(), fm.MaxPool2D(2, stride=1),
              fm.Conv2D(8, 4, (3, 2), stride=2), fm.LeakyReLU(0.1), fm.Flatten(), fm.Dropout(0.3),
              fm.Dense(4 * 2 * 2, 12), fm.BatchNorm(12), fm.ReLU(), fm.Dropout(0.1), fm.Dense(12, 3)]
    model = trained(layers, fm.SoftmaxCrossEntropy(), X, y, epochs=3)
    assert model.layers[2].fused and not model.layers[6].fused   # both paths are exported
    assert np.any(model.layers[4].get_state()["running_mean"] != 0)
    path = model.to_onnx(tmp_path / "cnn.onnx")
    assert_matches(model, path, X)


def test_binary_sigmoid_model_and_mse(tmp_path, rng):
    X = rng.normal(size=(40, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    model = trained([fm.Dense(6, 8), fm.ReLU(), fm.Dense(8, 1)], fm.BinaryCrossEntropy(), X, y)
    assert_matches(model, fm.export_onnx(model, tmp_path / "bce.onnx"), X)
    reg = trained([fm.Dense(6, 8), fm.Tanh(), fm.Dense(8, 2)], fm.MeanSquaredError(), X, X[:, :2] * 2)
    assert_matches(reg, fm.export_onnx(reg, tmp_path / "mse.onnx"), X)


def test_logits_output(tmp_path, rng):
    X = rng.normal(size=(30, 5)).astype(np.float32)
    model = trained([fm.Dense(5, 7), fm.ReLU(), fm.Dense(7, 3)], fm.SoftmaxCrossEntropy(), X,
                    rng.integers(0, 3, 30))
    path = fm.export_onnx(model, tmp_path / "logits.onnx", output="logits")
    logits = run_onnx(path, X)
    assert not np.allclose(logits.sum(axis=1), 1.0)   # not probabilities
    assert_matches(model, path, X, logits=True)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Softmax" not in ops


def test_dynamic_batch_one_file(tmp_path, rng, images):
    X, y = images
    model = trained([fm.Conv2D(2, 3, 3), fm.ReLU(), fm.MaxPool2D(2), fm.Flatten(), fm.Dense(75, 3)],
                    fm.SoftmaxCrossEntropy(), X, y)
    path = fm.export_onnx(model, tmp_path / "dyn.onnx")
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [2, 12, 12]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 7, 48):
        got = session.run(None, {"input": X[:n]})[0]
        assert got.shape == (n, 3)
        assert np.max(np.abs(got - model.predict(X[:n]))) <= TOL


def test_float64_dense_model_keeps_its_dtype(tmp_path, rng):
    X = rng.normal(size=(32, 6))
    model = trained([fm.Dense(6, 9), fm.ReLU(), fm.BatchNorm(9), fm.Dense(9, 3)],
                    fm.SoftmaxCrossEntropy(), X, rng.integers(0, 3, 32), dtype="float64")
    path = fm.export_onnx(model, tmp_path / "f64.onnx")
    elem = onnx.load(str(path)).graph.input[0].type.tensor_type.elem_type
    assert elem == onnx.TensorProto.DOUBLE
    assert_matches(model, path, X, tol=1e-12)


def test_cli_export(tmp_path, rng, capsys):
    X = rng.normal(size=(30, 4)).astype(np.float32)
    model = trained([fm.Dense(4, 6), fm.ReLU(), fm.Dense(6, 2)], fm.SoftmaxCrossEntropy(), X,
                    rng.integers(0, 2, 30))
    model.save(tmp_path / "model.fmlp")
    out = tmp_path / "m.onnx"
    rc = main(["export", str(tmp_path / "model.fmlp"), str(out), "--output", "logits"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    print(last)
    pairs = dict(kv.split("=", 1) for kv in last.split())
    assert rc == 0 and pairs["onnx"] == str(out) and pairs["output"] == "logits" and pairs["opset"] == "17"
    assert pairs["input_shape"] == "Nx4" and int(pairs["bytes"]) == out.stat().st_size
    assert_matches(model, out, X, logits=True)
    # a folder without a model: an error message, exit status 1, nothing written
    rc = main(["export", str(tmp_path / "nowhere"), str(tmp_path / "x.onnx")])
    assert rc == 1 and "model not found" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_cli_export_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "usage: fastmlp export" in out and "--output" in out


class Doubler(Layer):
    """A custom layer with no ONNX exporter."""

    def forward(self, x, training):
        return x * 2

    def backward(self, dy):
        return dy * 2


def test_unknown_layer_is_refused_by_name(tmp_path):
    model = fm.Sequential([fm.Dense(3, 4), Doubler(), fm.Dense(4, 2)], loss=fm.SoftmaxCrossEntropy())
    path = tmp_path / "custom.onnx"
    with pytest.raises(ValueError, match=r"layer 1 \(Doubler.*cannot be exported.*Dense"):
        fm.export_onnx(model, path)
    assert not path.exists()


def test_bad_arguments(tmp_path):
    model = fm.Sequential([fm.Dense(3, 2)], loss=fm.SoftmaxCrossEntropy())
    with pytest.raises(ValueError, match="output='probabilities' or 'logits', got 'probs'"):
        fm.export_onnx(model, tmp_path / "a.onnx", output="probs")
    with pytest.raises(ValueError, match="opset to be an int >= 13, got 9"):
        fm.export_onnx(model, tmp_path / "a.onnx", opset=9)
    with pytest.raises(TypeError, match="expected a fastmlp Sequential, got list"):
        fm.export_onnx([model], tmp_path / "a.onnx")
    unbuilt = fm.Sequential([fm.Conv2D(1, 2, 3), fm.Flatten()])
    with pytest.raises(ValueError, match="expected a built model"):
        fm.export_onnx(unbuilt, tmp_path / "a.onnx")
    assert not list(tmp_path.iterdir())


def test_opset_is_recorded(tmp_path):
    model = fm.Sequential([fm.Dense(3, 2)], loss=fm.SoftmaxCrossEntropy())
    proto = onnx.load(str(fm.export_onnx(model, tmp_path / "a.onnx", opset=13)))
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 13)]
    X = np.ones((2, 3), np.float32)
    assert_matches(model, tmp_path / "a.onnx", X)


# ---------------------------------------------------------------------- the examples' models

def _example(name):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(ROOT / "examples"))


@pytest.mark.parametrize("head", ["flatten", "max"])
def test_example_cat_cnn_models(tmp_path, rng, head):
    cat_cnn = _example("cat_cnn")
    args = argparse.Namespace(filters="4,8", batchnorm=True, head=head, dropout=0.25, l2=1e-4, lr=1e-2,
                              device="cpu", seed=0)
    model = cat_cnn.build(args)
    X = rng.uniform(size=(24, 3, 64, 64)).astype(np.float32)
    model.fit(X, (X[:, 0].mean(axis=(1, 2)) > 0.5).astype(np.int64), epochs=1, batch_size=12)
    assert_matches(model, model.to_onnx(tmp_path / "cat_cnn.onnx"), X)


def test_example_dense_models(tmp_path, rng):
    cat = _example("cat_vs_noncat").build(argparse.Namespace(hidden="20,7,5", init="he", l2=0.0, lr=0.0075,
                                                             device="cpu", dtype="float32", seed=1))
    X = rng.uniform(size=(8, 12288)).astype(np.float32)
    cat.fit(X, np.arange(8) % 2, epochs=2, batch_size=None)
    assert_matches(cat, cat.to_onnx(tmp_path / "cat.onnx"), X)
    organ = _example("organamnist_mlp")
    for act in ("relu", "leaky_relu", "tanh", "sigmoid"):
        cfg = {"hidden": [32, 16], "act": act, "l1": 0.0, "l2": 1e-4}
        model = organ.build(cfg, 784, 11, 0, "cpu")
        X = rng.uniform(size=(16, 784)).astype(np.float32)
        model.fit(X, np.arange(16) % 11, epochs=1, batch_size=8)
        assert_matches(model, model.to_onnx(tmp_path / f"organ_{act}.onnx"), X)


@pytest.mark.parametrize("which", ["avg", "global_max"])
def test_keras_spellings_and_the_new_pooling_layers(tmp_path, images, which):
    """activation= on Dense and Conv2D, padding "same" with an even kernel (uneven pads) and a
    pair, AvgPool2D, GlobalAveragePooling2D, GlobalMaxPooling2D."""
    X, y = images
    c = X.shape[1]
    if which == "avg":
        layers = [fm.Conv2D(c, 4, 2, padding="same", activation="relu"), fm.AvgPool2D(2),
                  fm.Conv2D(4, 5, 3, padding=(1, 2)), fm.GlobalAveragePooling2D(),
                  fm.Dense(5, 3, activation="tanh"), fm.Dense(3, 3)]
    else:
        layers = [fm.Conv2D(c, 4, 3, padding="same", activation="leaky_relu"), fm.MaxPool2D(2),
                  fm.GlobalMaxPooling2D(), fm.Dense(4, 3)]
    model = fm.Sequential(layers, loss="softmax_crossentropy", optimizer="adam", input_shape=X.shape[1:], seed=0)
    model.fit(X, y % 3, epochs=2, batch_size=8)
    path = tmp_path / "m.onnx"
    model.to_onnx(path)
    assert_matches(model, path, X)
