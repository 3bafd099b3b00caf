"""The dense network against the small CNN on photo folders (fastmlp/photo_compare.py).

On generated folders (train/ and test/ of class sub-folders, tiny images) with
small recipes, so that each run takes a second: the split, the epoch chosen by
validation (never by the test set), the figures reported, the CLI paths.
"""
import json

import numpy as np
import pytest

from fastmlp import photo_compare as pc
from fastmlp.cli import main

Image = pytest.importorskip("PIL.Image")

SMALL = {
    "dense": {**pc.RECIPES["dense"], "side": 12, "hidden": (16,), "lr": 3e-3, "batch_size": 8},
    "cnn": {**pc.RECIPES["cnn"], "side": 12, "filters": (4, 8), "lr": 3e-3, "batch_size": 8},
}


def _photos(root, n, seed):
    """Bright discs on the right for dogs, on the left for cats, in RGB noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:20, :20]
    for cls, cx in (("cats", 5), ("dogs", 14)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            disc = ((yy - 10 + rng.integers(-2, 3)) ** 2 + (xx - cx) ** 2) < 16
            img = np.clip(rng.normal(60, 20, (20, 20, 3)) + 150 * disc[..., None], 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"{cls[:-1]}.{i}.png")


@pytest.fixture(scope="module")
def split_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("dvc")
    _photos(root / "train", 30, 0)
    _photos(root / "test", 10, 1)
    return root


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMLP_CACHE_DIR", str(tmp_path / "cache"))


def test_given_split_keeps_test_apart(split_folder):
    d = pc.load_photos(split_folder, "cnn", seed=3, recipe=SMALL["cnn"])
    assert len(d["train"][0]) == 48 and len(d["val"][0]) == 12 and len(d["test"][0]) == 20
    assert d["train"][0].shape[1:] == (12, 12, 3) and "given" in d["split"]
    assert np.bincount(d["val"][1]).tolist() == [6, 6]            # stratified
    other = pc.load_photos(split_folder, "cnn", seed=4, recipe=SMALL["cnn"])
    assert not np.array_equal(d["val"][0], other["val"][0])       # the seed draws the validation split
    np.testing.assert_array_equal(d["test"][0], other["test"][0])  # test/ is the test set, whole
    one = pc.load_photos(split_folder / "train", "dense", seed=0, recipe=SMALL["dense"], val=0.2, test=0.2)
    assert len(one["train"][0]) == 36 and len(one["val"][0]) == 12 and len(one["test"][0]) == 12
    assert one["train"][0].shape[1:] == (12, 12) and "fractions" in one["split"]


def test_model_input_layouts():
    gray = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    rgb = np.arange(2 * 3 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 3)
    assert pc.model_input("dense", gray).shape == (2, 9)
    X = pc.model_input("cnn", rgb)
    assert X.shape == (2, 3, 3, 3) and X.dtype == np.float32
    np.testing.assert_allclose(X[1, 2, 0, 1], rgb[1, 0, 1, 2] / 255)


@pytest.mark.parametrize("kind", pc.MODELS)
def test_train_keeps_the_best_validation_epoch(split_folder, kind):
    data = pc.load_photos(split_folder, kind, seed=0, recipe=SMALL[kind])
    run = pc.train(kind, data, seed=0, epochs=5, recipe=SMALL[kind])
    h, model = run["history"], run["model_object"]
    val = np.array(h["val_accuracy"])
    assert run["best_epoch"] == int(np.argmax(val)) + 1 and run["val_acc"] == val.max()
    assert "test_accuracy" not in h                                # the test set saw no epoch
    # the returned model holds the kept epoch's weights: its validation accuracy is that epoch's
    Xv, yv = pc.model_input(kind, data["val"][0]), data["val"][1]
    assert np.mean(model.predict(Xv).argmax(1) == yv) == pytest.approx(val.max())
    Xt, yt = pc.model_input(kind, data["test"][0]), data["test"][1]
    assert run["test_acc"] == pytest.approx(np.mean(model.predict(Xt).argmax(1) == yt))
    assert run["params"] == model.count_params() and run["n_test"] == 20
    assert 0 < run["train_seconds"] <= run["fit_seconds"]
    assert run["train_samples_per_s"] == pytest.approx(48 * run["epochs_run"] / run["train_seconds"])
    assert run["test_pred"].shape == (20, 2)


def test_dense_is_the_write_up_network():
    model = pc.build("dense")
    sizes = [w.shape for w in model.get_weights()]
    assert sizes == [(9216, 256), (256,), (256, 64), (64,), (64, 2), (2,)]
    assert model.count_params() == 9216 * 256 + 256 + 256 * 64 + 64 + 64 * 2 + 2
    cnn = pc.build("cnn")
    assert cnn.input_shape == (3, 64, 64) and cnn.output_shape == (2,)
    with pytest.raises(ValueError, match="model kind"):
        pc.build("rnn")


def test_compare_photos_and_table(split_folder, tmp_path):
    pytest.importorskip("matplotlib")
    res = pc.compare_photos(split_folder, seeds=(0, 1), epochs=2, recipes=SMALL, curves=tmp_path / "c.png",
                            gallery=tmp_path / "g.png")
    assert [(r["model"], r["seed"]) for r in res["runs"]] == [("dense", 0), ("dense", 1), ("cnn", 0), ("cnn", 1)]
    for kind in pc.MODELS:
        accs = [r["test_acc"] for r in res["runs"] if r["model"] == kind]
        assert res["summary"][kind]["test_acc_mean"] == pytest.approx(np.mean(accs))
    text = pc.table(res)
    assert "epoch kept" in text and "train smp/s" in text and "mean" in text
    kv = dict(p.split("=") for p in pc.key_values(res).split())
    assert set(kv) == {"dense_test_acc", "dense_params", "dense_train_sps", "cnn_test_acc", "cnn_params",
                       "cnn_train_sps", "seeds"} and kv["seeds"] == "2"
    for png in ("c.png", "g.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    json.dumps(res)                                                # JSON-ready
    with pytest.raises(ValueError, match="models"):
        pc.compare_photos(split_folder, models=("rnn",))


def test_cli_compare_on_photos(split_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pc, "RECIPES", SMALL)
    rc = main(["compare", "--data", str(split_folder), "--seeds", "0", "--epochs", "2",
               "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "dense" in out and "cnn" in out and "epoch kept" in out
    kv = dict(p.split("=") for p in out.strip().splitlines()[-1].split())
    assert float(kv["cnn_test_acc"]) >= 0 and int(kv["dense_params"]) == 12 * 12 * 16 + 16 + 16 * 2 + 2
    assert json.loads((tmp_path / "r.json").read_text())["runs"][0]["model"] == "dense"
    assert main(["compare", "--data", str(split_folder), "--seeds", "x"]) == 1
    assert "--seeds" in capsys.readouterr().err
    assert pc.is_photo_folder(split_folder) and pc.is_photo_folder(split_folder / "test")
    assert not pc.is_photo_folder(tmp_path)


def test_cli_train_on_a_given_split(split_folder, tmp_path, capsys):
    rc = main(["train", str(split_folder), "--image-size", "12", "--hidden", "16", "--epochs", "3",
               "--batch-size", "8", "--out", str(tmp_path / "run"), "--verbose", "0"])
    out = capsys.readouterr().out
    assert rc == 0, out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # train/ gives training and validation (--val-split 0.1), test/ the test: none drawn from train/
    assert len(metrics["history"]["val_loss"]) == metrics["epochs_run"]
    assert metrics["classes"] == ["cats", "dogs"]
    rc = main(["evaluate", str(tmp_path / "run"), str(split_folder)])
    out = capsys.readouterr().out
    assert rc == 0 and " n=20" in out                               # evaluate reads test/
    assert len(list((tmp_path / "cache" / "image-folders").glob("*.h5"))) == 2   # cached train/, test/


def test_standardize_samples():
    from fastmlp.preprocessing import standardize_samples
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (5, 4, 6)).astype(np.uint8)
    X[3] = 77                                                      # a flat photo stays finite
    Z = standardize_samples(X)
    assert Z.shape == X.shape and Z.dtype == np.float32
    flat = X.reshape(5, -1).astype(np.float64)
    ref = (flat - flat.mean(1, keepdims=True)) / (flat.std(1, keepdims=True) + 1e-3)
    err = np.abs(Z.reshape(5, -1) - ref).max()
    print(f"max abs error against float64: {err:.2e}")
    assert err < 1e-5 and np.all(Z[3] == 0)
    # each photo alone: scaling one photo's brightness and contrast changes nothing
    np.testing.assert_allclose(standardize_samples(X[:1] * 0.5 + 3.0)[0], Z[0], atol=1e-3)
    bad = np.ones((2, 3), dtype=np.float32)
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        standardize_samples(bad)
    with pytest.raises(ValueError, match=r"\(N, \.\.\.\)"):
        standardize_samples(np.ones(3))
