"""The ``fastmlp`` command line: train / evaluate / predict / info, help, and clear errors.

Commands run in-process through ``fastmlp.cli.main`` (a subprocess only where
the entry point itself is under test), on tiny data sets made in tmp_path.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastmlp.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def pairs(stdout):
    """The last line's key=value pairs as floats."""
    return {k: float(v) for k, v in (kv.split("=", 1) for kv in stdout.strip().splitlines()[-1].split())}


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    """A model trained by the CLI on the built-in shapes, with --out: (folder, stdout)."""
    out = tmp_path_factory.mktemp("run")
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["train", "shapes", "--model", "mlp", "--samples", "600", "--image-size", "16", "--hidden", "32",
                   "--epochs", "4", "--batch-size", "32", "--lr", "0.003", "--rotate", "5", "--shift", "0.05",
                   "--early-stopping", "3", "--out", str(out), "--verbose", "0"])
    assert rc == 0, buf.getvalue()
    return out, buf.getvalue()


def test_train_writes_model_metrics_and_curves(shapes_run):
    out, stdout = shapes_run
    got = pairs(stdout)
    print(stdout)
    assert set(got) == {"train_acc", "val_acc", "test_acc", "epochs", "seconds"}
    assert got["test_acc"] >= 0.7 and 1 <= got["epochs"] <= 4
    assert {p.name for p in out.iterdir()} >= {"model.fmlp", "preprocess.json", "metrics.json", "curves.png"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data_kind"] == "shapes" and metrics["classes"] == ["square", "circle", "triangle", "cross"]
    assert metrics["test"]["accuracy"] == pytest.approx(got["test_acc"], abs=1e-4)
    assert len(metrics["history"]["val_loss"]) == metrics["epochs_run"]
    assert metrics["args"]["rotate"] == 5.0
    prep = json.loads((out / "preprocess.json").read_text())
    assert prep["image_shape"] == [16, 16] and prep["loss"] == "softmax"
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_and_predict_a_saved_model(shapes_run, capsys, tmp_path):
    out, _ = shapes_run
    rc, stdout, err = run(capsys, "evaluate", out, "shapes", "--samples", "200", "--image-size", "16")
    assert rc == 0, err
    got = pairs(stdout)
    assert got["n"] == 200 and got["accuracy"] >= 0.6
    from PIL import Image

    from fastmlp.data import make_shapes
    X, y, classes = make_shapes(4, size=40, seed=3, centered=True)   # larger: predict resizes
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray((X[i] * 255).astype(np.uint8)).save(paths[-1])
    rc, stdout, err = run(capsys, "predict", out / "model.fmlp", *paths)
    assert rc == 0, err
    *lines, last = stdout.strip().splitlines()     # a line per image, then the key=value line
    assert len(lines) == 4 and last.startswith("n=4 predicted=")
    assert last.split("predicted=")[1].split(",") == [ln.split(": ", 1)[1].split(" (p=")[0] for ln in lines]
    assert err.count("resized from 40x40 to 16x16") == 4   # converted as in training, and said so
    for line, p in zip(lines, paths):
        name, prob = line.split(": ", 1)[1].split(" (p=")
        assert line.startswith(str(p)) and name in classes and 0.25 <= float(prob.rstrip(")")) <= 1


def test_train_on_h5_with_a_test_file_and_bce(tmp_path, capsys, rng):
    from fastmlp.data import save_images_to_h5
    imgs = rng.integers(0, 60, (60, 12, 12, 3), dtype=np.uint8)
    y = np.arange(60) % 2
    imgs[y == 1, 3:9, 3:9] = 220                           # class 1: a bright square
    save_images_to_h5(tmp_path / "train.h5", imgs[:48], y[:48], classes=["plain", "square"])
    save_images_to_h5(tmp_path / "test.h5", imgs[48:], y[48:], classes=["plain", "square"])
    rc, stdout, err = run(capsys, "train", tmp_path / "train.h5", "--model", "mlp", "--test-data", tmp_path / "test.h5",
                          "--hidden", "8", "--epochs", "15", "--batch-size", "full", "--optimizer", "sgd",
                          "--momentum", "0.9", "--lr", "0.05", "--l2", "1e-4", "--flip-h", "--standardize",
                          "--out", tmp_path / "run", "--verbose", "0")
    assert rc == 0, err
    got = pairs(stdout)
    assert got["test_acc"] >= 0.75
    prep = json.loads((tmp_path / "run" / "preprocess.json").read_text())
    assert prep["loss"] == "bce" and prep["standardize"]["mode"] == "global"
    rc, stdout, err = run(capsys, "evaluate", tmp_path / "run", tmp_path / "test.h5")
    assert rc == 0, err
    assert pairs(stdout)["accuracy"] == pytest.approx(got["test_acc"], abs=1e-6)


def test_train_on_medmnist_npz(tmp_path, capsys, rng):
    from fastmlp.data import make_shapes
    X, y, _ = make_shapes(240, size=12, seed=1, centered=True)
    X = (X * 255).astype(np.uint8)
    splits = {"train": slice(0, 160), "val": slice(160, 200), "test": slice(200, 240)}
    np.savez(tmp_path / "toy.npz", **{f"{s}_images": X[i] for s, i in splits.items()},
             **{f"{s}_labels": y[i, None] for s, i in splits.items()})     # labels (N, 1), as MedMNIST
    rc, stdout, err = run(capsys, "train", tmp_path / "toy.npz", "--model", "mlp", "--hidden", "none", "--loss", "mse",
                          "--epochs", "2", "--verbose", "0")
    assert rc == 0, err
    assert set(pairs(stdout)) == {"train_acc", "val_acc", "test_acc", "epochs", "seconds"}


def test_train_on_mnist_t10k(data_dir, capsys):
    rc, stdout, err = run(capsys, "train", data_dir / "mnist-t10k", "--model", "mlp", "--max-samples", "500",
                          "--hidden", "64", "--epochs", "1", "--verbose", "0")
    assert rc == 0, err
    got = pairs(stdout)
    assert got["test_acc"] > 0.3 and set(got) == {"train_acc", "val_acc", "test_acc", "epochs", "seconds"}


def test_info(capsys):
    rc, stdout, _ = run(capsys, "info")
    assert rc == 0
    for needle in ("fastmlp", "numpy", "numba threads", "numba cache dir", "devices: cpu=yes", "matplotlib",
                   "conv on the CPU: "):
        assert needle in stdout


def test_info_says_which_pool_runs_blas_while_training(capsys, monkeypatch):
    from fastmlp.backend.cpu import blas_pool
    rc, stdout, _ = run(capsys, "info")
    line = [ln for ln in stdout.splitlines() if ln.startswith("BLAS while training: ")][0]
    assert rc == 0 and ("Numba's threads" in line or blas_pool.reason in line)
    monkeypatch.setenv(blas_pool.ENV, "0")
    rc, stdout, _ = run(capsys, "info")
    line = [ln for ln in stdout.splitlines() if ln.startswith("BLAS while training: ")][0]
    assert rc == 0 and line.endswith(f"OpenBLAS's own pool (switched off by {blas_pool.ENV}=0)")


def test_info_says_whether_the_first_layer_skips_zeros(capsys, monkeypatch):
    monkeypatch.setenv("FASTMLP_TILE_GEMM", "0")      # no register tiles: nothing skipped
    rc, stdout, _ = run(capsys, "info")
    line = [ln for ln in stdout.splitlines() if ln.startswith("first Dense layer in training: ")][0]
    assert rc == 0 and "the whole batch" in line and "AVX-512" in line
    from fastmlp.backend.cpu import zero_tiles
    monkeypatch.delenv("FASTMLP_TILE_GEMM")
    rc, stdout, _ = run(capsys, "info")
    line = [ln for ln in stdout.splitlines() if ln.startswith("first Dense layer in training: ")][0]
    assert rc == 0 and ("skips the batch's zeros" in line) == zero_tiles.available()
    line = [ln for ln in stdout.splitlines() if ln.startswith("Dense forward in training: ")][0]
    assert ("register tiles for batches of up to 256 rows" in line) == zero_tiles.available()


def test_info_says_why_the_fast_conv_path_is_off(capsys, monkeypatch):
    from fastmlp.backend.cpu import openblas
    monkeypatch.setattr(openblas, "_found", None)
    monkeypatch.setattr(openblas, "reason", "no OpenBLAS of NumPy's among the loaded BLAS libraries: mkl")
    rc, stdout, _ = run(capsys, "info")
    line = [ln for ln in stdout.splitlines() if ln.startswith("conv on the CPU: ")][0]
    print(line)
    assert rc == 0 and "fast path is off" in line and openblas.reason in line


@pytest.mark.parametrize("command", ["demo", "train", "evaluate", "predict", "info"])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "usage: fastmlp " + command in out


def test_entry_point_lists_the_commands():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "fastmlp", "--help"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for command in ("demo", "train", "evaluate", "predict", "info"):
        assert command in r.stdout


@pytest.mark.parametrize("argv, message", [
    (["train", "shapes", "--hidden", "256,x"], "--hidden: expected comma-separated positive layer sizes"),
    (["train", "shapes", "--batch-size", "0"], "--batch-size: expected a positive integer or 'full'"),
    (["train", "shapes", "--shift", "1.5"], "--shift: expected a number in [0, 1)"),
    (["train", "shapes", "--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
    (["train", "shapes", "--lr", "-1"], "--lr: expected a number in (0, 10]"),
    (["train"], "the following arguments are required: data"),
    (["predict", "run"], "the following arguments are required: IMAGE"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "usage:" in err


def test_bad_data_and_files_are_clear_errors(tmp_path, capsys):
    rc, _, err = run(capsys, "train", tmp_path / "missing.h5")
    assert rc == 1 and "data not found" in err and "shapes" in err
    rc, _, err = run(capsys, "train", "shapes", "--samples", "40", "--val-split", "0", "--early-stopping", "2")
    assert rc == 1 and "--early-stopping needs validation data" in err
    rc, _, err = run(capsys, "evaluate", tmp_path, "shapes")
    assert rc == 1 and "model not found" in err
    (tmp_path / "model.fmlp").write_bytes(b"not a model")
    rc, _, err = run(capsys, "predict", tmp_path, tmp_path / "x.png")
    assert rc == 1 and "preprocess.json not found" in err
    (tmp_path / "file").write_text("x")
    rc, _, err = run(capsys, "train", "shapes", "--out", tmp_path / "file")
    assert rc == 1 and "--out expects a folder" in err


def test_predict_missing_image(shapes_run, capsys, tmp_path):
    rc, _, err = run(capsys, "predict", shapes_run[0], tmp_path / "nope.png")
    assert rc == 1 and "image not found" in err


def _interrupt_train(out, extra=()):
    """`fastmlp train shapes --out out` in a subprocess, sent SIGINT once its first epoch line is
    out: (return code, stdout, stderr). Bounded in time."""
    import signal
    import time
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "fastmlp", "train", "shapes", "--model", "mlp", "--samples", "400",
            "--image-size", "12", "--hidden", "16", "--batch-size", "16", "--epochs", "100000", "--verbose", "2",
            "--out", str(out), *extra]
    p = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines, deadline = [], time.monotonic() + 120
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("epoch 2:"):
                break
        assert lines and lines[-1].startswith("epoch 2:"), "".join(lines) + p.stderr.read()
        p.send_signal(signal.SIGINT)
        rest, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    return p.returncode, "".join(lines) + rest, err


def test_ctrl_c_in_train_saves_what_was_trained_and_says_how_to_resume(tmp_path):
    """Ctrl-C used to end `fastmlp train --out DIR` with a traceback, exit status -2 and nothing
    in DIR. Now fit's Ctrl-C checkpoint goes to DIR/model.fmlp (with preprocess.json beside it),
    one line says how to resume, and the exit status is 130 (128 + SIGINT)."""
    import fastmlp as fm
    out = tmp_path / "run"
    rc, stdout, err = _interrupt_train(out)
    print(f"rc={rc}\nstdout tail: {stdout.splitlines()[-2:]}\nstderr: {err}")
    assert rc == 130, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--resume" in lines[0] and str(out / "model.fmlp") in lines[0]
    model = fm.load_model(out / "model.fmlp")
    assert model.position is not None and model.position["epoch"] >= 2
    assert (out / "preprocess.json").is_file()
    # the printed command continues the run: a few more epochs, from where it stopped
    epoch = model.position["epoch"]
    cmd = lines[0].split("resume with: ", 1)[1].split()
    assert cmd[:2] == ["fastmlp", "train"] and cmd[-1] == "--resume"
    args = cmd[1:]
    args[args.index("--epochs") + 1] = str(epoch + 2)
    rc, stdout2, err2 = run_main_capture(args)
    assert rc == 0, err2
    assert pairs(stdout2)["epochs"] == 2     # the rest of the interrupted epoch, then one more
    assert fm.load_model(out / "model.fmlp").position["epoch"] == epoch + 2


def run_main_capture(argv):
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_resume_needs_the_interrupted_runs_folder(tmp_path, capsys):
    rc, _, err = run(capsys, "train", "shapes", "--samples", "40", "--resume")
    assert rc == 1 and "--resume needs --out" in err
    rc, _, err = run(capsys, "train", "shapes", "--samples", "40", "--out", tmp_path, "--resume")
    assert rc == 1 and "nothing to resume" in err


def test_resume_of_a_run_written_before_cnns_and_what_differs_is_named(tmp_path, capsys):
    """A run folder written before the CLI trained CNNs has no "layout" in its preprocess.json:
    it was refused as different data. Now it resumes as the flat-rows run it was, and a
    command whose preprocessing really differs is refused with what differs."""
    import json

    import fastmlp as fm
    out = tmp_path / "run"
    base = ["train", "shapes", "--samples", "64", "--model", "mlp", "--hidden", "8", "--out", out]
    rc, _, err = run(capsys, *base, "--epochs", "1")
    assert rc == 0, err
    prep_file = out / "preprocess.json"
    prep = json.loads(prep_file.read_text())
    assert prep.pop("layout") == "flat"
    prep_file.write_text(json.dumps(prep))                  # as an older fastmlp wrote it
    rc, _, err = run(capsys, *base, "--epochs", "2", "--resume")
    assert rc == 0, err
    assert fm.load_model(out / "model.fmlp").position["epoch"] == 2
    cnn = ["train", "shapes", "--samples", "64", "--out", out, "--epochs", "3", "--resume"]   # auto: a CNN
    rc, _, err = run(capsys, *cnn)
    assert rc == 1
    assert 'layout: "flat" in the run, "nchw" now' in err and "--model mlp" in err
    rc, _, err = run(capsys, *base, "--epochs", "3", "--resume", "--standardize")
    assert rc == 1 and "standardize: null in the run" in err and "--model mlp" not in err
