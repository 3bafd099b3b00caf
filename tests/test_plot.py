"""fastmlp.plot renders real PNGs: magic, size, pixel dimensions, and what the pixels show."""
import os
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason='fastmlp.plot needs matplotlib: pip install "fastmlp[plot]"')
from matplotlib.image import imread  # noqa: E402

import fastmlp as fm  # noqa: E402
from fastmlp import plot  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_png(path):
    """(H, W, 3) float pixels of a written PNG, after checking that it is one."""
    data = open(path, "rb").read()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    return imread(path)[..., :3]


def test_history_curves(tmp_path):
    h = fm.History()
    for e in range(6):
        h.on_epoch_end(e, {"loss": 1.0 / (e + 1), "accuracy": 0.5 + 0.08 * e, "val_loss": 1.2 / (e + 1) + 0.01 * e,
                           "val_accuracy": 0.45 + 0.07 * e, "test_loss": 1.3 / (e + 1), "test_accuracy": 0.4 + 0.07 * e,
                           "seconds": 0.1})
    out = plot.history(h, tmp_path / "curves.png", dpi=50)
    assert os.fspath(out) == os.fspath(tmp_path / "curves.png")
    img = read_png(out)
    assert img.shape[:2] == (round(3.8 * 50), round(2 * 5.2 * 50))    # two panels: loss, accuracy
    # a loss-only history (MSE regression without accuracy) gets one panel
    one = read_png(plot.history({"loss": [3.0, 2.0, 1.5]}, tmp_path / "loss.png", dpi=50))
    assert one.shape[:2] == (round(3.8 * 50), round(5.2 * 50))
    with pytest.raises(ValueError, match="loss"):
        plot.history({"seconds": [1.0]}, tmp_path / "none.png")
    with pytest.raises(TypeError, match="History"):
        plot.history([0.1, 0.2], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def _tile_colours(img, n):
    """Mean colour of the middle of each of n equal-width columns, over the rows that hold tiles."""
    dark = (img.min(axis=2) < 0.9)                       # not the white page
    rows = np.flatnonzero(dark.mean(axis=1) > 0.5)       # rows crossing the tiles
    band = img[rows[len(rows) // 4]:rows[3 * len(rows) // 4]]
    w = img.shape[1] / n
    return [band[:, int((i + 0.3) * w):int((i + 0.7) * w)].reshape(-1, 3).mean(axis=0) for i in range(n)]


def test_gallery_tints_mistakes_red_and_dims_true_negatives(tmp_path):
    images = np.full((4, 16, 16), 0.5)                   # mid-grey tiles: the tint is all there is to see
    y_true = np.array([1, 1, 0, 0])
    y_pred = np.array([1, 0, 0, 1])                      # right cat, missed cat, right non-cat, false cat
    out = plot.gallery(images, y_true, y_pred, tmp_path / "gallery.png", classes=["non-cat", "cat"], cols=4)
    img = read_png(out)
    ok, missed, negative, false_cat = _tile_colours(img, 4)
    print("tile colours:", ok, missed, negative, false_cat)
    np.testing.assert_allclose(ok, 0.5, atol=0.03)                         # shown as it is
    for red in (missed, false_cat):                                        # misclassified: red-dominant
        assert red[0] > 0.6 and red[0] > red[1] + 0.3 and red[0] > red[2] + 0.3
    assert np.all(negative > 0.75) and np.ptp(negative) < 0.03             # a true negative: faded grey


def test_gallery_of_flat_uint8_images_with_probabilities(tmp_path, rng):
    # flattened (N, H*W*3) uint8 images and (N, 1) sigmoid outputs, as the cat model gives them
    X = rng.integers(0, 256, (7, 12 * 10 * 3), dtype=np.uint8)
    p = rng.random((7, 1))
    y = (p[:, 0] > 0.5).astype(int)
    y[0] = 1 - y[0]
    img = read_png(plot.gallery(X, y, p, tmp_path / "g.png", image_shape=(12, 10), dpi=60))
    assert img.shape[0] > 50 and img.shape[1] > 100
    red = (img[..., 0] > 0.6) & (img[..., 1] < 0.45) & (img[..., 2] < 0.45)
    assert red.sum() > 50                                                  # the one mistake shows
    with pytest.raises(ValueError, match="y_pred with 7"):
        plot.gallery(X, y, y[:5], tmp_path / "bad.png", image_shape=(12, 10))
    with pytest.raises(ValueError, match="image_shape"):
        plot.gallery(X, y, y, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_gallery_of_all_correct_multiclass_has_no_red(tmp_path, rng):
    X = rng.random((6, 1, 8, 8))                                            # NCHW, grey: no red of its own
    y = np.arange(6) % 3
    img = read_png(plot.gallery(X, y, np.eye(3)[y], tmp_path / "g.png", max_images=4))
    red = (img[..., 0] > 0.6) & (img[..., 1] < 0.3) & (img[..., 2] < 0.3)
    assert red.sum() == 0


def test_dataset_stats(tmp_path):
    from fastmlp.data import make_shapes
    X, y, classes = make_shapes(120, size=16, seed=0)
    img = read_png(plot.dataset_stats(X, y, tmp_path / "stats.png", classes=classes, dpi=50))
    assert img.shape[:2] == (round(7.2 * 50), round(9.0 * 50))
    # the variance maps use a dark colour map: the figure is not all white
    assert (img.max(axis=2) < 0.2).mean() > 0.01
    flat = read_png(plot.dataset_stats(np.random.default_rng(0).random((30, 5)), np.arange(30) % 3,
                                       tmp_path / "flat.png", dpi=50))
    assert flat.shape[:2] == img.shape[:2]
    uint8 = plot.dataset_stats((X * 255).astype(np.uint8).reshape(120, -1), y, tmp_path / "u8.png",
                               image_shape=(16, 16), dpi=50)
    read_png(uint8)
    with pytest.raises(ValueError, match="labels < 2"):
        plot.dataset_stats(X, y, tmp_path / "bad.png", classes=["a", "b"])


def test_writes_are_atomic(tmp_path, monkeypatch):
    from matplotlib.figure import Figure
    target = tmp_path / "curves.png"
    target.write_bytes(b"previous")

    def broken(self, f, **kw):
        f.write(b"\x89PNG half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        plot.history({"loss": [1.0, 0.5]}, target)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]
    with pytest.raises(FileNotFoundError):
        plot.history({"loss": [1.0]}, tmp_path / "no" / "such" / "folder.png")


def test_missing_matplotlib_names_the_extra(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "fastmlp\[plot\]"'):
        plot.history({"loss": [1.0]}, tmp_path / "x.png")


def test_without_a_path_each_function_returns_the_figure(tmp_path):
    # as in a notebook: plot.history(h) gives the Figure to show, and writes nothing
    from matplotlib.figure import Figure
    from fastmlp.data import make_shapes
    h = {"loss": [1.0, 0.6, 0.4], "accuracy": [0.5, 0.7, 0.8]}
    fig = plot.history(h)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "accuracy"]
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), h["loss"])
    X, y, classes = make_shapes(12, size=8, seed=0)
    assert isinstance(plot.gallery(X, y, y, classes=classes), Figure)
    assert isinstance(plot.dataset_stats(X, y, classes=classes), Figure)
    fig.savefig(tmp_path / "c.png", format="png")
    read_png(tmp_path / "c.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png"]


def test_flat_colour_images_take_an_image_shape_with_channels(tmp_path, rng):
    # flat (N, 64*64*3) rows, as the cat files are fed to an MLP, shown with image_shape=(64, 64, 3)
    X = rng.integers(0, 256, (5, 64 * 64 * 3), dtype=np.uint8)
    X.reshape(5, 64, 64, 3)[0, :, :, 1:] = 0                  # image 0: pure red
    y = np.array([1, 0, 1, 0, 1])
    img = read_png(plot.gallery(X, y, y, tmp_path / "g.png", image_shape=(64, 64, 3), cols=5, dpi=60))
    first = _tile_colours(img, 5)[0]
    print("first tile:", first)
    assert first[0] > 0.4 and first[1] < 0.1 and first[2] < 0.1      # the channels landed as channels
    from matplotlib.figure import Figure
    stats = plot.dataset_stats(X, y, image_shape=(64, 64, 3))
    assert isinstance(stats, Figure) and stats.axes[2].images[0].get_array().shape == (64, 64)
    for bad in ((64, 64, 4), (64,), (32, 32, 3)):
        with pytest.raises(ValueError, match="image_shape"):
            plot.gallery(X, y, y, tmp_path / "bad.png", image_shape=bad)
    assert not (tmp_path / "bad.png").exists()


def test_dataset_stats_default_title_describes_the_data():
    from fastmlp.data import make_shapes
    X, y, classes = make_shapes(40, size=16, seed=0)
    fig = plot.dataset_stats(X, y, classes=classes)
    title = fig._suptitle.get_text()
    print("title:", title)
    assert title.startswith("40 samples of 16x16 images, ")
    assert f"{len(classes)} classes ({classes[0]}, {classes[1]}" in title
    flat = plot.dataset_stats(np.zeros((9, 7)), np.arange(9) % 3)
    assert flat._suptitle.get_text() == "9 samples of 7 features, 3 classes (0, 1, 2)"
    assert plot.dataset_stats(X, y, title="mine")._suptitle.get_text() == "mine"
