"""The CLI beyond MLPs and image files: --model cnn / FILE.toml, --x-key / --y-key, predict on
a data set, warnings for converted photos, and help that shows every default as plain text."""
import argparse
import json

import numpy as np
import pytest

from fastmlp.cli import build_parser, main
from fastmlp.layer_stack import build_stack, cnn_stack


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def pairs(stdout):
    return {k: v for k, v in (kv.split("=", 1) for kv in stdout.strip().splitlines()[-1].split())}


def _h5(path, X, y, x_key, y_key):
    import h5py
    with h5py.File(path, "w") as f:
        f[x_key] = X
        f[y_key] = y


def _squares(rng, n=80, side=12, colour=False):
    """uint8 images, class 1 with a bright square: (N, H, W) or (N, H, W, 3)."""
    shape = (n, side, side, 3) if colour else (n, side, side)
    X = rng.integers(0, 60, shape, dtype=np.uint8)
    y = np.arange(n) % 2
    X[y == 1, 3:9, 3:9] = 220
    return X, y


def test_train_a_cnn_then_evaluate_and_predict_it(tmp_path, capsys, rng):
    X, y = _squares(rng, colour=True)
    _h5(tmp_path / "train.h5", X[:64], y[:64], "train_set_x", "train_set_y")
    _h5(tmp_path / "test.h5", X[64:], y[64:], "test_set_x", "test_set_y")
    rc, out, err = run(capsys, "train", tmp_path / "train.h5", "--test-data", tmp_path / "test.h5",
                       "--model", "cnn", "--filters", "4", "--kernel", "3", "--batchnorm", "--pool", "2",
                       "--hidden", "8", "--epochs", "8", "--batch-size", "16", "--lr", "0.01",
                       "--out", tmp_path / "run", "--verbose", "2")
    assert rc == 0, err
    print(out)
    assert "Conv2D" in out and "BatchNorm" in out and "MaxPool2D" in out
    assert "Training memory at batch_size=16" in out                  # the batch size it trains at
    assert "is the running mean over that epoch's batches" in out     # train_acc vs the epoch's accuracy
    got = {k: float(v) for k, v in pairs(out).items()}
    assert got["test_acc"] >= 0.8
    prep = json.loads((tmp_path / "run" / "preprocess.json").read_text())
    assert prep["layout"] == "nchw" and prep["image_shape"] == [12, 12, 3]
    rc, out, err = run(capsys, "evaluate", tmp_path / "run", tmp_path / "test.h5")
    assert rc == 0, err
    assert float(pairs(out)["accuracy"]) == pytest.approx(got["test_acc"], abs=1e-6)
    # predict takes the data set too: per-sample lines, its accuracy, the key=value line
    rc, out, err = run(capsys, "predict", tmp_path / "run", tmp_path / "test.h5", "--show", "3")
    assert rc == 0, err
    print(out)
    lines = out.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines[:3]] == ["0", "1", "2"] and "true " in lines[0]
    assert lines[3] == "... 13 more (--show N prints more)"
    kv = pairs(out)
    assert kv["n"] == "16" and float(kv["accuracy"]) == pytest.approx(got["test_acc"], abs=1e-6)


def test_model_from_a_toml_file(tmp_path, capsys):
    (tmp_path / "stack.toml").write_text('''
[[layer]]
type = "Conv2D"
out_channels = 3
kernel_size = 3
padding = "same"
activation = "relu"

[[layer]]
type = "MaxPool2D"
pool_size = 2

[[layer]]
type = "Flatten"

[[layer]]
type = "Dense"
out_features = 10

[[layer]]
type = "Dropout"
rate = 0.1
''')
    rc, out, err = run(capsys, "train", "shapes", "--samples", "200", "--image-size", "12", "--model",
                       tmp_path / "stack.toml", "--epochs", "1", "--out", tmp_path / "run", "--verbose", "0")
    assert rc == 0, err
    from fastmlp import load_model
    model = load_model(tmp_path / "run" / "model.fmlp")
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Conv2D", "MaxPool2D", "Flatten", "Dense", "Dropout", "Dense"]
    assert model.input_shape == (1, 12, 12) and model.layers[3].in_features == 3 * 6 * 6
    assert model.output_shape == (4,)                       # the output layer: the 4 shapes


@pytest.mark.parametrize("text,fragment", [
    ('[[layer]]\ntype = "Flatten"\n[[layer]]\ntype = "Dense"\nout_features = 4\n'
     '[[layer]]\ntype = "Conv2D"\nout_channels = 2\nkernel_size = 3\n',
     "layer 3: Conv2D takes (C, H, W) images, got samples of shape (4,)"),
    ('[[layer]]\ntype = "Conv2D"\nout_channels = 2\nkernel_size = 3\n[[layer]]\ntype = "Dense"\nout_features = 4\n',
     "layer 2: Dense takes flat rows, got samples of shape (2, 10, 10); put a Flatten layer before it"),
    ('[[layer]]\ntype = "Dense2"\n', "layer 1: unknown type 'Dense2'; expected one of"),
    ('[[layer]]\ntype = "Dense"\nunits = 4\n', "layer 1 (Dense):"),
    ('layers = 3\n', "expected a list of [[layer]] tables"),
    ('[[layer]\n', "not valid TOML"),
])
def test_bad_model_files_say_which_layer(tmp_path, capsys, text, fragment):
    (tmp_path / "m.toml").write_text(text)
    rc, out, err = run(capsys, "train", "shapes", "--samples", "40", "--image-size", "12", "--model",
                       tmp_path / "m.toml", "--epochs", "1", "--out", tmp_path / "run", "--verbose", "0")
    print(err)
    assert rc == 1 and fragment in err
    assert not (tmp_path / "run").exists()                  # refused before anything was written
    rc, _, err = run(capsys, "train", "shapes", "--model", tmp_path / "none.toml")
    assert rc == 1 and "expected 'auto', 'mlp', 'cnn' or a TOML file" in err


def test_cnn_stack_matches_its_options():
    layers = build_stack(cnn_stack([4, 8], kernel=5, batchnorm=True, pool=2, hidden=[16]), (3, 16, 16), 2)
    assert [type(x).__name__ for x in layers] == ["Conv2D", "BatchNorm", "ReLU", "MaxPool2D", "Conv2D",
                                                  "BatchNorm", "ReLU", "MaxPool2D", "Flatten", "Dense", "ReLU",
                                                  "Dense"]
    assert (layers[0].in_channels, layers[0].out_channels, layers[0].kh) == (3, 4, 5)
    assert layers[4].in_channels == 4 and layers[9].in_features == 8 * 4 * 4
    assert layers[-1].out_features == 2


def test_h5_keys_the_loader_cannot_guess(tmp_path, capsys, rng):
    X, y = _squares(rng, n=40)
    _h5(tmp_path / "odd.h5", X, y, "pixels", "answers")
    rc, _, err = run(capsys, "train", tmp_path / "odd.h5", "--epochs", "1", "--verbose", "0")
    print(err)
    assert rc == 1 and "pass --x-key NAME and --y-key NAME to choose" in err and "x_key=" not in err
    rc, out, err = run(capsys, "train", tmp_path / "odd.h5", "--x-key", "pixels", "--y-key", "answers",
                       "--hidden", "8", "--epochs", "1", "--out", tmp_path / "run", "--verbose", "0")
    assert rc == 0, err
    rc, out, err = run(capsys, "evaluate", tmp_path / "run", tmp_path / "odd.h5", "--x-key", "pixels",
                       "--y-key", "answers")
    assert rc == 0 and pairs(out)["n"] == "40", err
    rc, out, err = run(capsys, "predict", tmp_path / "run", tmp_path / "odd.h5", "--x-key", "pixels",
                       "--y-key", "answers")
    assert rc == 0 and pairs(out)["n"] == "40", err


def test_predict_warns_when_a_photo_is_converted(tmp_path, capsys, rng):
    from PIL import Image
    X, y = _squares(rng, n=40)                                   # a grayscale model of 12x12 images
    _h5(tmp_path / "grey.h5", X, y, "x", "y")
    rc, _, err = run(capsys, "train", tmp_path / "grey.h5", "--hidden", "8", "--epochs", "1",
                     "--out", tmp_path / "run", "--verbose", "0")
    assert rc == 0, err
    Image.fromarray(rng.integers(0, 255, (30, 20, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    Image.fromarray(X[0]).save(tmp_path / "same.png")
    rc, out, err = run(capsys, "predict", tmp_path / "run", tmp_path / "photo.png", tmp_path / "same.png")
    print(err)
    assert rc == 0
    warned = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warned) == 1 and "photo.png" in warned[0]        # the matching image passes silently
    assert "colour (RGB) converted to grayscale" in warned[0]
    assert "resized from 20x30 to 12x12" in warned[0] and "aspect ratio differs" in warned[0]
    assert pairs(out)["n"] == "2"
    Image.fromarray(rng.integers(0, 255, (12, 12, 4), dtype=np.uint8), mode="RGBA").save(tmp_path / "rgba.png")
    rc, out, err = run(capsys, "predict", tmp_path / "run", tmp_path / "rgba.png")
    assert rc == 0 and "colour (RGBA) converted to grayscale" in err and "transparency dropped" in err
    assert "resized" not in err
    rc, _, err = run(capsys, "predict", tmp_path / "run", tmp_path / "photo.png", tmp_path / "grey.h5")
    assert rc == 1 and "is a data set: pass it alone" in err


def _subparsers():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


def test_help_is_plain_text_and_shows_every_default(capsys):
    parser, commands = _subparsers()
    texts = [parser.format_help()] + [p.format_help() for p in commands.values()]
    for text in texts:
        assert "``" not in text
    missing = []
    for name, p in commands.items():
        formatter = p._get_formatter()
        for action in p._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            text = formatter._get_help_string(action)
            if "default" not in text:
                missing.append(f"{name} {action.option_strings[0]}: {text!r}")
    assert not missing, "\n".join(missing)
