"""fastmlp.data: the real shared files, and small generated files for every format.

Real files are found through ``$FASTMLP_DATA`` or ``../shared/data`` beside
the checkout (the ``data_dir`` fixture of ``conftest.py``); those tests skip with a reason where the folder is absent.
Malformed files (truncated, wrong magic, missing keys, corrupt images) are
made in ``tmp_path`` so that every error path runs everywhere.
"""
import gzip
import struct
import sys
import time
import warnings

import h5py
import numpy as np
import pytest

from fastmlp import data as fd


def _need(path):
    if not path.exists():
        pytest.skip(f"{path} not found in the shared data folder")
    return path


# ------------------------------------------------------------- real files


@pytest.mark.parametrize("split, n, cats", [("train", 209, 72), ("test", 50, 33)])
def test_cat_files_shapes_dtypes_classes(data_dir, split, n, cats):
    X, y, classes = fd.load_h5(_need(data_dir / "catvnoncat" / f"{split}_catvnoncat.h5"))
    assert X.shape == (n, 64, 64, 3) and X.dtype == np.uint8
    assert y.shape == (n,) and y.dtype == np.int64
    assert set(np.unique(y)) == {0, 1}
    assert int(y.sum()) == cats
    assert classes == ["non-cat", "cat"]


def test_cat_file_explicit_keys_match_auto(data_dir):
    path = _need(data_dir / "catvnoncat" / "train_catvnoncat.h5")
    X, y, _ = fd.load_h5(path)
    X2, y2, _ = fd.load_h5(path, x_key="train_set_x", y_key="train_set_y")
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)


def test_mnist_t10k_idx(data_dir):
    root = _need(data_dir / "mnist-t10k")
    X, y = fd.load_idx(root / "t10k-images-idx3-ubyte.gz", root / "t10k-labels-idx1-ubyte.gz")
    assert X.shape == (10_000, 28, 28) and X.dtype == np.uint8
    assert y.shape == (10_000,) and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(10))
    assert X.max() == 255 and X.min() == 0
    assert X.flags.writeable and X.flags.c_contiguous


def test_mnist_t10k_uncompressed_equals_gzip(data_dir, tmp_path):
    root = _need(data_dir / "mnist-t10k")
    plain = []
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(gzip.decompress((root / (name + ".gz")).read_bytes()))
        plain.append(tmp_path / name)
    Xg, yg = fd.load_idx(root / "t10k-images-idx3-ubyte.gz", root / "t10k-labels-idx1-ubyte.gz")
    Xp, yp = fd.load_idx(*plain)
    np.testing.assert_array_equal(Xg, Xp)
    np.testing.assert_array_equal(yg, yp)


def test_load_mnist_t10k_split_convention(data_dir, monkeypatch):
    root = _need(data_dir / "mnist-t10k")
    monkeypatch.setenv("FASTMLP_DATA", str(data_dir))
    X_tr, y_tr, X_te, y_te = fd.load_mnist_t10k()
    assert X_tr.shape == (8000, 28, 28) and X_te.shape == (2000, 28, 28)
    assert y_tr.shape == (8000,) and y_te.shape == (2000,)
    X, y = fd.load_idx(root / "t10k-images-idx3-ubyte.gz", root / "t10k-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(X_tr, X[:8000])
    np.testing.assert_array_equal(y_te, y[8000:])
    assert set(np.unique(y_te)) == set(range(10))


def test_load_mnist_t10k_missing_says_where(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTMLP_DATA", raising=False)
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # no ../shared/data beside this folder
    with pytest.raises(FileNotFoundError, match="mnist-t10k"):
        fd.load_mnist_t10k()
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        fd.load_mnist_t10k(root=tmp_path)


def test_default_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMLP_DATA", str(tmp_path))
    assert fd.default_data_dir() == tmp_path.resolve()
    monkeypatch.delenv("FASTMLP_DATA")
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "main").mkdir()
    monkeypatch.chdir(tmp_path / "main")
    assert fd.default_data_dir() == (tmp_path / "shared" / "data").resolve()
    (tmp_path / "elsewhere" / "main").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "elsewhere" / "main")
    assert fd.default_data_dir() is None


# -------------------------------------------------------------------- IDX


def _idx_bytes(magic, arr):
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


@pytest.fixture
def idx_pair(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 5).astype(np.uint8)
    img, lab = tmp_path / "img-idx3-ubyte.gz", tmp_path / "lab-idx1-ubyte"
    img.write_bytes(gzip.compress(_idx_bytes(2051, X)))
    lab.write_bytes(_idx_bytes(2049, y))  # one gzip, one plain: detection is per file
    return img, lab, X, y


def test_idx_round_trip_gzip_and_plain(idx_pair):
    img, lab, X, y = idx_pair
    X2, y2 = fd.load_idx(img, lab)
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)
    assert y2.dtype == np.int64


def test_idx_truncated_data(idx_pair, tmp_path):
    img, lab, X, _ = idx_pair
    short = tmp_path / "short-idx3"
    short.write_bytes(_idx_bytes(2051, X)[:-10])
    with pytest.raises(ValueError, match=r"expected 3936 bytes .* got 3926"):
        fd.load_idx(short, lab)
    short.write_bytes(_idx_bytes(2051, X)[:10])
    with pytest.raises(ValueError, match="expected an IDX header of 16 bytes, got a 10-byte"):
        fd.load_idx(short, lab)


def test_idx_truncated_gzip_stream(idx_pair, tmp_path):
    img, lab, _, _ = idx_pair
    cut = tmp_path / "cut.gz"
    cut.write_bytes(img.read_bytes()[:-20])
    with pytest.raises(ValueError, match="gzip"):
        fd.load_idx(cut, lab)


def test_idx_wrong_magic(idx_pair):
    img, lab, _, _ = idx_pair
    with pytest.raises(ValueError, match="expected IDX magic number 2051, got 2049"):
        fd.load_idx(lab, img)  # files swapped


def test_idx_count_mismatch(idx_pair, tmp_path):
    img, _, _, _ = idx_pair
    lab = tmp_path / "lab4"
    lab.write_bytes(_idx_bytes(2049, np.zeros(4, np.uint8)))
    with pytest.raises(ValueError, match=r"expected as many labels as images \(5\), got 4"):
        fd.load_idx(img, lab)


def test_idx_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope-idx3-ubyte"
    with pytest.raises(FileNotFoundError, match="nope-idx3-ubyte"):
        fd.load_idx(missing, missing)


# ------------------------------------------------------------------- HDF5


def _write_h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
    return path


@pytest.mark.parametrize("x_name, y_name", [("images", "labels"), ("x", "y"), ("X_train", "y_train"),
                                             ("train_data", "train_labels")])
def test_h5_key_detection(tmp_path, x_name, y_name):
    X = np.arange(6 * 4 * 4, dtype=np.float32).reshape(6, 4, 4)
    y = np.array([0, 1, 2, 0, 1, 2])
    path = _write_h5(tmp_path / "f.h5", **{x_name: X, y_name: y})
    X2, y2, classes = fd.load_h5(path)
    assert X2.dtype == np.float32  # stored dtype kept
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)
    assert classes is None


@pytest.mark.parametrize("shape", [(1, 6), (6, 1)])
def test_h5_label_row_or_column_squeezed(tmp_path, shape):
    y = np.arange(6).reshape(shape)
    path = _write_h5(tmp_path / "f.h5", x=np.zeros((6, 3, 3), np.uint8), y=y)
    _, y2, _ = fd.load_h5(path)
    assert y2.shape == (6,)
    np.testing.assert_array_equal(y2, np.arange(6))


def test_h5_classes_key_variable_length_str(tmp_path):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f["x"], f["y"] = np.zeros((2, 3, 3), np.uint8), np.array([0, 1])
        f.create_dataset("classes", data=["chat", "chien"], dtype=h5py.string_dtype())
    assert fd.load_h5(path)[2] == ["chat", "chien"]


def test_h5_two_pairs_is_ambiguous(tmp_path):
    z = np.zeros((4, 3, 3), np.uint8)
    path = _write_h5(tmp_path / "f.h5", train_x=z, train_y=np.zeros(4), test_x=z, test_y=np.ones(4))
    with pytest.raises(ValueError, match="expected one image/label pair, got 4") as e:
        fd.load_h5(path)
    for key in ("train_x", "train_y", "test_x", "test_y", "x_key="):
        assert key in str(e.value)
    _, y, _ = fd.load_h5(path, x_key="test_x", y_key="test_y")
    np.testing.assert_array_equal(y, np.ones(4))


def test_h5_no_pair_lists_keys(tmp_path):
    path = _write_h5(tmp_path / "f.h5", weights=np.zeros((3, 3)), bias=np.zeros(3))
    with pytest.raises(ValueError, match="expected one image dataset") as e:
        fd.load_h5(path)
    assert "weights (3, 3) float64" in str(e.value) and "bias (3,) float64" in str(e.value)
    with pytest.raises(ValueError, match="expected a dataset named 'pixels'"):
        fd.load_h5(path, x_key="pixels")


def test_h5_length_mismatch(tmp_path):
    path = _write_h5(tmp_path / "f.h5", images=np.zeros((5, 2, 2)), labels=np.zeros(4))
    with pytest.raises(ValueError, match="expected 5 labels .* got 4"):
        fd.load_h5(path)


def test_h5_not_hdf5_and_missing(tmp_path):
    bogus = tmp_path / "bogus.h5"
    bogus.write_bytes(b"this is not an HDF5 file at all")
    with pytest.raises(ValueError, match="HDF5"):
        fd.load_h5(bogus)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        fd.load_h5(tmp_path / "missing.h5")


# ------------------------------------------------------ save_images_to_h5


def test_save_round_trip_exact_from_array(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, (7, 9, 11, 3), dtype=np.uint8)
    y = rng.integers(0, 3, 7)
    path = fd.save_images_to_h5(tmp_path / "a.h5", X, y, classes=["a", "bb", "ccc"])
    X2, y2, classes = fd.load_h5(path)
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)
    assert X2.dtype == np.uint8 and y2.dtype == np.int64
    assert classes == ["a", "bb", "ccc"]
    with h5py.File(path) as f:
        assert f["x"].compression == "gzip" and f["x"].chunks is not None
        assert f["list_classes"].dtype.kind == "S"
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5"]  # no temp file left behind


def test_save_scales_unit_floats_and_casts_0_255(tmp_path):
    X8 = np.random.default_rng(2).integers(0, 256, (4, 5, 5), dtype=np.uint8)
    fd.save_images_to_h5(tmp_path / "unit.h5", X8 / 255.0, np.zeros(4))
    fd.save_images_to_h5(tmp_path / "byte.h5", X8.astype(np.float64), np.zeros(4))
    fd.save_images_to_h5(tmp_path / "int.h5", X8.astype(np.int64), np.zeros(4))
    for name in ("unit.h5", "byte.h5", "int.h5"):
        np.testing.assert_array_equal(fd.load_h5(tmp_path / name)[0], X8)


@pytest.mark.parametrize("bad", [np.full((2, 3, 3), 300.0), np.full((2, 3, 3), -0.5),
                                 np.full((2, 3, 3), np.nan), np.zeros((2, 3)), np.zeros((2, 3, 3), bool)])
def test_save_rejects_bad_images(tmp_path, bad):
    with pytest.raises(ValueError, match="expected"):
        fd.save_images_to_h5(tmp_path / "bad.h5", bad, np.zeros(len(bad)))
    assert list(tmp_path.iterdir()) == []


def test_save_from_png_paths_exact(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(3)
    X = rng.integers(0, 256, (3, 10, 12, 3), dtype=np.uint8)
    paths = []
    for i, a in enumerate(X):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(a).save(paths[-1])
    out = fd.save_images_to_h5(tmp_path / "png.h5", [str(p) for p in paths], [0, 1, 0])
    X2, y2, _ = fd.load_h5(out)
    np.testing.assert_array_equal(X2, X)  # PNG is lossless: pixels survive both hops
    np.testing.assert_array_equal(y2, [0, 1, 0])
    resized = fd.save_images_to_h5(tmp_path / "small.h5", paths, [0, 1, 0], size=(6, 4))
    assert fd.load_h5(resized)[0].shape == (3, 4, 6, 3)  # size is (width, height)


def _ramp16(path, h=64, w=64):
    """A smooth 16-bit grayscale ramp 0 .. 65535 saved as a PNG (Pillow mode I;16); returns it."""
    Image = pytest.importorskip("PIL.Image")
    a = np.round(np.linspace(0, 65535, h * w)).astype(np.uint16).reshape(h, w)
    Image.fromarray(a).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I;16"), img.mode
    return a


def _as8(a16):
    # 16 bits scaled to the 8-bit range: 65535 -> 255, rounded
    return np.rint(a16 / 257.0).astype(np.uint8)


def test_save_16bit_pngs_scaled_not_clipped_and_gray_stays_gray(tmp_path):
    """Pillow's 8-bit conversion clips 16-bit data at 255 (a ramp came back as 0, then 255
    everywhere) and a 16-bit grayscale PNG came back as (1, 64, 64, 3). Now 16 bits are scaled to
    the uint8 range and a grayscale image stays (N, H, W)."""
    a = _ramp16(tmp_path / "ramp.png")
    path = fd.save_images_to_h5(tmp_path / "x.h5", [tmp_path / "ramp.png"], [0])
    X, y, _ = fd.load_h5(path)
    print(f"16-bit ramp -> {X.dtype} {X.shape}, {len(np.unique(X))} levels, range [{X.min()}, {X.max()}]")
    assert X.shape == (1, 64, 64) and X.dtype == np.uint8
    np.testing.assert_array_equal(X[0], _as8(a))
    assert len(np.unique(X)) == 256
    # resized: smooth, never saturated
    path = fd.save_images_to_h5(tmp_path / "y.h5", [tmp_path / "ramp.png"], [0], size=(32, 16))
    X, _, _ = fd.load_h5(path)
    print(f"resized to 32 x 16: range [{X.min()}, {X.max()}], {len(np.unique(X))} levels")
    assert X.shape == (1, 16, 32) and X.min() < 16 and X.max() > 239 and len(np.unique(X)) > 50


@pytest.mark.parametrize("grayscale", [True, False])
def test_image_folder_16bit_pngs_scaled_not_clipped(grayscale, tmp_path):
    (tmp_path / "depth").mkdir()
    a = _ramp16(tmp_path / "depth" / "0.png")
    X, y, classes = fd.load_image_folder(tmp_path, size=(64, 64), grayscale=grayscale)
    assert X.dtype == np.uint8 and classes == ["depth"]
    want = _as8(a)
    if grayscale:
        assert X.shape == (1, 64, 64)
        got = X[0].astype(int)
    else:
        assert X.shape == (1, 64, 64, 3)
        assert np.array_equal(X[0, ..., 0], X[0, ..., 1]) and np.array_equal(X[0, ..., 0], X[0, ..., 2])
        got = X[0, ..., 0].astype(int)
    print(f"grayscale={grayscale}: largest difference from the scaled ramp {np.abs(got - want).max()}")
    assert np.abs(got - want).max() <= 1 and len(np.unique(got)) > 250


def test_save_resizes_arrays_to_width_height(tmp_path):
    pytest.importorskip("PIL.Image")
    for shape, out in (((2, 10, 12, 3), (2, 4, 6, 3)), ((2, 10, 12), (2, 4, 6)), ((2, 10, 12, 1), (2, 4, 6, 1))):
        flat = np.full(shape, 90, np.uint8)
        path = fd.save_images_to_h5(tmp_path / "r.h5", flat, [0, 1], size=(6, 4))
        X = fd.load_h5(path)[0]
        assert X.shape == out and np.all(X == 90)  # a flat image stays flat when resized


def test_save_from_paths_needs_same_shape(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"expected every image to have shape \(4, 4\).*got \(5, 4\)"):
        fd.save_images_to_h5(tmp_path / "x.h5", [tmp_path / "a.png", tmp_path / "b.png"], [0, 1])
    assert not (tmp_path / "x.h5").exists()


def test_save_wrong_label_length_leaves_nothing(tmp_path):
    target = tmp_path / "out.h5"
    with pytest.raises(ValueError, match="expected 3 labels .* got 2"):
        fd.save_images_to_h5(target, np.zeros((3, 4, 4), np.uint8), [0, 1])
    assert list(tmp_path.iterdir()) == []


def test_save_failure_mid_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "out.h5"
    old = np.full((2, 3, 3), 7, np.uint8)
    fd.save_images_to_h5(target, old, [0, 1])
    real = h5py.Group.create_dataset

    def fail_on_labels(self, name, *args, **kwargs):
        if name == "y":  # the images are already written when this fires
            raise OSError("disk full (simulated)")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", fail_on_labels)
    with pytest.raises(OSError, match="simulated"):
        fd.save_images_to_h5(target, np.zeros((5, 3, 3), np.uint8), np.zeros(5))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]
    np.testing.assert_array_equal(fd.load_h5(target)[0], old)


def test_save_labels_outside_classes(tmp_path):
    with pytest.raises(ValueError, match=r"expected labels in \[0, 2\)"):
        fd.save_images_to_h5(tmp_path / "f.h5", np.zeros((2, 3, 3), np.uint8), [0, 2], classes=["a", "b"])
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------- MedMNIST


@pytest.mark.parametrize("px", [28, 128])
def test_medmnist_splits(tmp_path, px):
    rng = np.random.default_rng(4)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, px, px), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 11, (n, 1))
    path = tmp_path / "organamnist.npz"
    np.savez_compressed(path, **arrays)
    for split in ("train", "val", "test"):
        X, y = fd.load_medmnist(path, split)
        np.testing.assert_array_equal(X, arrays[f"{split}_images"])
        assert y.shape == (len(X),) and y.dtype == np.int64
        np.testing.assert_array_equal(y, arrays[f"{split}_labels"][:, 0])


def test_medmnist_errors(tmp_path):
    path = tmp_path / "part.npz"
    np.savez(path, train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="expected split"):
        fd.load_medmnist(path, "validation")
    with pytest.raises(ValueError, match=r"expected keys .*train_labels.* got \['train_images'\]"):
        fd.load_medmnist(path)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, train_images=np.zeros((1, 2, 2)), train_labels=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="expected plain arrays"):
        fd.load_medmnist(pickled)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(ValueError, match=r"expected an \.npz archive"):
        fd.load_medmnist(single)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="expected"):
        fd.load_medmnist(garbage)
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        fd.load_medmnist(tmp_path / "absent.npz")


# ----------------------------------------------------------- image folders


@pytest.fixture
def image_folder(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    root = tmp_path / "pets"
    for name, value in (("dog", 200), ("cat", 50)):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (20 + i, 16), (value, value, value)).save(root / name / f"{i}.png")
        Image.new("RGB", (16, 16), (value, 0, 0)).save(root / name / "photo.JPG")
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this JPEG stops here")
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_reads_resizes_and_skips(image_folder):
    with pytest.warns(UserWarning, match="broken.jpg") as record:
        X, y, classes = fd.load_image_folder(image_folder, size=(12, 8))
    assert "notes.txt" not in str(record[0].message)  # other extensions are skipped silently
    assert classes == ["cat", "dog"]  # sorted by name, not by creation order
    assert X.shape == (6, 8, 12) and X.dtype == np.uint8  # size is (width, height)
    np.testing.assert_array_equal(np.bincount(y), [3, 3])
    assert X[y == 1][:2].min() == 200 and X[y == 0][:2].max() == 50


def test_image_folder_rgb(image_folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        X, y, _ = fd.load_image_folder(image_folder, size=(10, 10), grayscale=False)
    assert X.shape == (6, 10, 10, 3)
    red = X[y == 0][2]  # cat/ in name order: 0.png, 1.png, (broken.jpg), photo.JPG = (50, 0, 0)
    assert abs(int(red[..., 0].mean()) - 50) <= 3 and red[..., 1].max() <= 5


def test_image_folder_empty_and_missing(tmp_path):
    pytest.importorskip("PIL.Image")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no readable images"):
        fd.load_image_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        fd.load_image_folder(tmp_path / "nowhere")


def test_missing_pillow_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import ...` fail
    with pytest.raises(ImportError, match=r'pip install "fastmlp\[images\]"'):
        fd.load_image_folder(tmp_path)


# ----------------------------------------------------------------- shapes


def test_make_shapes_deterministic_and_typed():
    X, y, names = fd.make_shapes(200, seed=5)
    X2, y2, _ = fd.make_shapes(200, seed=5)
    X3, _, _ = fd.make_shapes(200, seed=6)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(X, X3)
    assert X.shape == (200, 28, 28) and X.dtype == np.float32 and y.dtype == np.int64
    assert X.min() >= 0.0 and X.max() <= 1.0
    assert names == ["square", "circle", "triangle", "cross"]


@pytest.mark.parametrize("n", [400, 10, 7])
def test_make_shapes_balanced(n):
    _, y, names = fd.make_shapes(n, seed=0)
    counts = np.bincount(y, minlength=len(names))
    assert counts.sum() == n and counts.max() - counts.min() <= 1


def test_make_shapes_centered_vs_random_position():
    def centres(centered):
        X, _, _ = fd.make_shapes(400, size=32, seed=1, centered=centered, noise=0.0)
        grid = np.arange(32)
        mass = X.sum(axis=(1, 2))
        return (X.sum(axis=1) @ grid) / mass, (X.sum(axis=2) @ grid) / mass

    cx, cy = centres(True)
    assert np.abs(cx - 15.5).max() < 1.0 and np.abs(cy - 15.5).max() < 1.0
    cx, cy = centres(False)
    assert cx.std() > 3.0 and cy.std() > 3.0


def test_make_shapes_centered_is_separable():
    # A nearest-class-mean classifier, far weaker than an MLP, already separates them.
    X, y, _ = fd.make_shapes(2000, seed=3, centered=True)
    Xt, yt, _ = fd.make_shapes(1000, seed=4, centered=True)
    means = np.stack([X[y == k].mean(axis=0).ravel() for k in range(4)])
    dist = ((Xt.reshape(len(Xt), 1, -1) - means[None]) ** 2).sum(axis=-1)
    assert (dist.argmin(axis=1) == yt).mean() > 0.9


def test_make_shapes_class_subset_and_errors():
    X, y, names = fd.make_shapes(50, size=16, classes=("circle", "cross"), noise=0.0)
    assert names == ["circle", "cross"] and set(np.unique(y)) == {0, 1} and X.shape == (50, 16, 16)
    for kwargs in ({"classes": ("circle", "hexagon")}, {"classes": ("circle", "circle")},
                   {"n": 0}, {"size": 4}, {"noise": -1.0}):
        with pytest.raises(ValueError, match="expected"):
            fd.make_shapes(**{"n": 10, **kwargs})


def test_make_shapes_fast():
    best = min(_timed(lambda: fd.make_shapes(10_000, seed=0)) for _ in range(3))
    print(f"make_shapes(10000): {best * 1e3:.0f} ms")
    assert best < 1.0


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
