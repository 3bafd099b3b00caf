"""The workflow examples run end to end on small data and report what they claim.

Each example's ``main(argv)`` runs in-process (the scripts are loaded by path),
on data made in tmp_path or, for the cat gallery, the real cat files.
"""
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def last_pairs(stdout):
    return {k: float(v) for k, v in (kv.split("=", 1) for kv in stdout.strip().splitlines()[-1].split())}


def shapes_uint8(n, size, seed):
    from fastmlp.data import make_shapes
    X, y, classes = make_shapes(n, size=size, seed=seed, centered=True)
    return (X * 255).astype(np.uint8), y, classes


def test_organamnist_table_on_a_medmnist_npz(tmp_path, capsys):
    X, y, _ = shapes_uint8(480, 28, 0)
    parts = {"train": slice(0, 320), "val": slice(320, 400), "test": slice(400, 480)}
    np.savez(tmp_path / "organamnist.npz", **{f"{s}_images": X[i] for s, i in parts.items()},
             **{f"{s}_labels": y[i, None] for s, i in parts.items()})
    example("organamnist_mlp").main(["--data", str(tmp_path / "organamnist.npz"), "--quick", "--epochs", "2"])
    out = capsys.readouterr().out
    print(out)
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 11
    for needle in ("softmax regression", "LeakyReLU", "tanh", "sigmoid", "L1 1e-05", "L2 0.0001",
                   "no normalisation", "augmentation", "early stopping"):
        assert needle in out
    got = last_pairs(out)
    assert set(got) == {"rows", "baseline_test_acc", "best_row", "best_val_acc", "best_test_acc", "seconds"}
    assert got["rows"] == 11 and 0 <= got["best_test_acc"] <= 1
    assert got["baseline_test_acc"] > 0.5       # 4 centred shapes: far above chance after 2 epochs


def test_organamnist_without_data_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMLP_DATA", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        example("organamnist_mlp").main(["--quick", "--only", "2"])
    assert "--data" in str(e.value) and "t10k" in str(e.value)


def test_organamnist_quick_rows_on_mnist_t10k(data_dir, capsys):
    example("organamnist_mlp").main(["--mnist", str(data_dir / "mnist-t10k"), "--quick", "--only", "0,9",
                                     "--max-train", "600", "--epochs", "1"])
    out = capsys.readouterr().out
    assert "MNIST t10k" in out and "validation 800, test 2000" in out
    assert last_pairs(out)["rows"] == 2


def _image_folder(root, rng, n=16, size=40):
    from PIL import Image
    for cls, bright_disc in (("cats", True), ("dogs", False)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            yy, xx = np.mgrid[:size, :size]
            cy, cx = rng.uniform(size * 0.35, size * 0.65, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (size / 5) ** 2
            bar = (np.abs(yy - cy) < size / 12) & (np.abs(xx - cx) < size / 3)
            img = np.clip((disc if bright_disc else bar) * 200 + rng.normal(30, 10, (size, size)), 0, 255)
            rgb = np.repeat(img.astype(np.uint8)[..., None], 3, axis=2)     # colour files, read as grey
            Image.fromarray(rgb).save(root / cls / f"{cls}.{i}.png")


def test_dogs_vs_cats_dense_on_an_image_folder(tmp_path, capsys, rng):
    _image_folder(tmp_path / "photos", rng)
    curves = tmp_path / "curves.png"
    example("dogs_vs_cats_dense").main(["--data", str(tmp_path / "photos"), "--size", "24", "--hidden", "32",
                                        "--epochs", "6", "--batch-size", "8", "--lr", "1e-3", "--augment",
                                        "--curves", str(curves)])
    out = capsys.readouterr().out
    assert "2 classes (cats, dogs)" in out and "Dense(in_features=576" in out
    got = last_pairs(out)
    assert set(got) == {"train_acc", "val_acc", "test_acc", "epochs", "seconds"}
    assert got["epochs"] == 6 and got["train_acc"] >= 0.6
    assert curves.read_bytes()[:8] == PNG_MAGIC


def test_dogs_vs_cats_missing_folder(tmp_path):
    with pytest.raises(SystemExit) as e:
        example("dogs_vs_cats_dense").main(["--data", str(tmp_path / "nope")])
    assert "ROOT/cats" in str(e.value)


def test_cat_gallery_trains_saves_and_reloads(data_dir, tmp_path, capsys):
    gallery = example("cat_gallery")
    cats = str(data_dir / "catvnoncat")
    gallery.main(["--data", cats, "--iterations", "40", "--save", str(tmp_path / "cat.fmlp"),
                  "--out", str(tmp_path / "gallery.png")])
    trained = capsys.readouterr().out
    got = last_pairs(trained)
    assert set(got) == {"train_acc", "test_acc", "misclassified", "seconds"}
    assert got["misclassified"] == round((1 - got["test_acc"]) * 50)
    assert (tmp_path / "gallery.png").read_bytes()[:8] == PNG_MAGIC
    gallery.main(["--data", cats, "--model", str(tmp_path / "cat.fmlp"), "--out", str(tmp_path / "again.png")])
    loaded = capsys.readouterr().out
    assert "loaded" in loaded
    assert last_pairs(loaded)["test_acc"] == got["test_acc"]


def test_cat_cnn_holds_out_a_validation_split_and_is_deterministic(data_dir, capsys):
    cnn = example("cat_cnn")
    args = ["--data", str(data_dir / "catvnoncat"), "--epochs", "2", "--filters", "4,8", "--val", "0.2",
            "--batchnorm"]
    cnn.main(args)
    first = capsys.readouterr().out
    got = last_pairs(first)
    assert set(got) == {"train_acc", "test_acc", "val_acc", "seconds", "ms_per_epoch", "params"}
    # conv 3->4 (108 + 4), BN 4 (8), conv 4->8 (288 + 8), BN 8 (16), dense 8->1 (8 + 1)
    assert got["params"] == 441
    assert "trained on 168 images, validated on 41" in first   # 20 % of 72 cats (14), of 137 non-cats (27)
    assert all(0 <= got[k] <= 1 for k in ("train_acc", "test_acc", "val_acc"))
    # the same seed gives the same split, weights, augmentation and so the same figures
    cnn.main(args)
    second = capsys.readouterr().out
    again = last_pairs(second)
    assert all(again[k] == got[k] for k in ("train_acc", "test_acc", "val_acc"))
    epochs = [[ln for ln in out.splitlines() if ln.startswith("epoch ")] for out in (first, second)]
    assert len(epochs[0]) == 2 and epochs[0] == epochs[1]


def test_cat_cnn_trains_on_all_209_images_without_val(data_dir, capsys):
    example("cat_cnn").main(["--data", str(data_dir / "catvnoncat"), "--epochs", "1", "--filters", "4",
                             "--no-flip", "--shift", "0", "--head", "flat", "--dropout", "0.5"])
    out = capsys.readouterr().out
    got = last_pairs(out)
    assert "trained on 209 images" in out and "val_acc" not in got
    # no BatchNorm by default; the flat head reads the whole 4 x 32 x 32 map
    assert got["params"] == 3 * 4 * 9 + 4 + 4 * 32 * 32 + 1
    assert re.search(r"test image 0: predicted '(cat|non-cat)'", out)
