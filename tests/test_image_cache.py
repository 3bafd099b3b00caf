"""The image-folder cache (fastmlp/image_cache.py), the given train/test split, and real photos.

A cache hit must decode nothing; any change to a file must miss; a corrupt
entry must be ignored and rebuilt, never trusted. The real-photo tests read a
few files of ../shared/data/dogs-vs-cats and skip when it is absent.
"""
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from fastmlp import data as fd
from fastmlp import image_cache

Image = pytest.importorskip("PIL.Image")


def _folder(root, n=3, size=(20, 16), seed=0):
    """root/cats/*.png dark, root/dogs/*.png bright, RGB, each image different."""
    rng = np.random.default_rng(seed)
    for cls, base in (("cats", 40), ("dogs", 200)):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.clip(rng.normal(base, 10, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"{cls[:-1]}.{i}.png")
    return root


def _entries(cache):
    return sorted((Path(cache) / image_cache.SUBFOLDER).glob("*.h5"))


@pytest.fixture
def no_decoding(monkeypatch):
    """Makes any image decode fail loudly: a cache hit must not need one."""
    def refuse(*a, **k):
        raise AssertionError("an image was decoded although the cache holds the folder")
    monkeypatch.setattr(fd, "_pil_to_array", refuse)


def test_second_read_is_a_hit_and_equal(tmp_path, monkeypatch):
    root, cache = _folder(tmp_path / "photos"), tmp_path / "cache"
    X1, y1, c1 = fd.load_image_folder(root, size=(12, 10), cache=cache)
    assert len(_entries(cache)) == 1
    monkeypatch.setattr(fd, "_pil_to_array", lambda *a, **k: pytest.fail("decoded on a cache hit"))
    X2, y2, c2 = fd.load_image_folder(root, size=(12, 10), cache=cache)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    assert c1 == c2 == ["cats", "dogs"] and X2.shape == (6, 10, 12) and X2.dtype == np.uint8
    assert y2.dtype == np.int64 and np.bincount(y2).tolist() == [3, 3]


def test_cached_equals_uncached(tmp_path):
    root = _folder(tmp_path / "photos")
    for grayscale in (True, False):
        X0, y0, _ = fd.load_image_folder(root, size=(9, 7), grayscale=grayscale)
        fd.load_image_folder(root, size=(9, 7), grayscale=grayscale, cache=tmp_path / "c")
        X1, y1, _ = fd.load_image_folder(root, size=(9, 7), grayscale=grayscale, cache=tmp_path / "c")
        np.testing.assert_array_equal(X0, X1)
        np.testing.assert_array_equal(y0, y1)
    assert len(_entries(tmp_path / "c")) == 2     # one per colour mode


def test_size_and_mode_are_part_of_the_key(tmp_path):
    root, cache = _folder(tmp_path / "photos"), tmp_path / "cache"
    a = fd.load_image_folder(root, size=(8, 8), cache=cache)[0]
    b = fd.load_image_folder(root, size=(6, 6), cache=cache)[0]
    c = fd.load_image_folder(root, size=(8, 8), grayscale=False, cache=cache)[0]
    assert a.shape == (6, 8, 8) and b.shape == (6, 6, 6) and c.shape == (6, 8, 8, 3)
    assert len(_entries(cache)) == 3


def test_a_changed_file_misses(tmp_path):
    root, cache = _folder(tmp_path / "photos"), tmp_path / "cache"
    X1, _, _ = fd.load_image_folder(root, size=(8, 8), cache=cache)
    old = _entries(cache)
    target = root / "cats" / "cat.1.png"
    Image.new("RGB", (20, 16), (255, 255, 255)).save(target)      # same name, new content
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a coarse clock must still differ
    X2, y2, _ = fd.load_image_folder(root, size=(8, 8), cache=cache)
    assert X2[1].min() == 255 and X1[1].max() < 255                # cat.1 is the second image
    np.testing.assert_array_equal(X1[[0, 2, 3, 4, 5]], X2[[0, 2, 3, 4, 5]])
    new = _entries(cache)
    assert len(new) == 1 and new != old                            # the stale entry is gone


def test_touching_adding_and_removing_files_miss(tmp_path):
    root, cache = _folder(tmp_path / "photos"), tmp_path / "cache"
    keys = set()

    def key():
        classes, files = fd._image_files(root)
        return image_cache.entry(cache, root, [p for p, _ in files], (8, 8), True)[1]
    keys.add(key())
    target = root / "dogs" / "dog.0.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    keys.add(key())
    shutil.copy(target, root / "dogs" / "dog.9.png")
    keys.add(key())
    (root / "cats" / "cat.2.png").unlink()
    keys.add(key())
    (root / "dogs" / "notes.txt").write_text("not an image")         # not part of the listing
    keys.add(key())
    assert len(keys) == 4
    X, y, _ = fd.load_image_folder(root, size=(8, 8), cache=cache)
    assert np.bincount(y).tolist() == [2, 4]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong key", "wrong shape"])
def test_a_corrupt_entry_is_ignored_and_rebuilt(tmp_path, damage):
    import h5py
    root, cache = _folder(tmp_path / "photos"), tmp_path / "cache"
    X1, y1, _ = fd.load_image_folder(root, size=(8, 8), cache=cache)
    (entry,) = _entries(cache)
    if damage == "garbage":
        entry.write_bytes(b"not an HDF5 file at all")
    elif damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:1000])
    elif damage == "wrong key":
        with h5py.File(entry, "r+") as f:
            f.attrs["key"] = "0" * 64
    else:
        with h5py.File(entry, "r+") as f:
            del f["y"]
            f["y"] = np.zeros(2, dtype=np.int64)
    with pytest.warns(UserWarning, match="ignoring the image cache"):
        X2, y2, _ = fd.load_image_folder(root, size=(8, 8), cache=cache)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                               # rebuilt: a clean hit now
        X3, _, _ = fd.load_image_folder(root, size=(8, 8), cache=cache)
    np.testing.assert_array_equal(X1, X3)


def test_unwritable_cache_is_a_warning(tmp_path):
    root = _folder(tmp_path / "photos")
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go")
    with pytest.warns(UserWarning, match="could not write the image cache"):
        X, y, _ = fd.load_image_folder(root, size=(8, 8), cache=blocker)
    assert X.shape == (6, 8, 8)


def test_no_cache_by_default_and_the_env_folder(tmp_path, monkeypatch):
    root = _folder(tmp_path / "photos")
    monkeypatch.setenv("FASTMLP_CACHE_DIR", str(tmp_path / "envcache"))
    fd.load_image_folder(root, size=(8, 8))
    assert not (tmp_path / "envcache").exists()
    fd.load_image_folder(root, size=(8, 8), cache=True)
    assert len(_entries(tmp_path / "envcache")) == 1
    monkeypatch.delenv("FASTMLP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert image_cache.default_cache_dir() == tmp_path / "xdg" / "fastmlp"
    with pytest.raises(TypeError, match="cache to be True"):
        fd.load_image_folder(root, size=(8, 8), cache=3)


def test_same_folder_name_elsewhere_gets_its_own_entry(tmp_path):
    a = _folder(tmp_path / "a" / "train", seed=1)
    b = _folder(tmp_path / "b" / "train", seed=2)
    cache = tmp_path / "cache"
    Xa = fd.load_image_folder(a, size=(8, 8), cache=cache)[0]
    Xb = fd.load_image_folder(b, size=(8, 8), cache=cache)[0]
    assert len(_entries(cache)) == 2 and not np.array_equal(Xa, Xb)
    np.testing.assert_array_equal(fd.load_image_folder(a, size=(8, 8), cache=cache)[0], Xa)


def test_unreadable_files_warn_again_on_a_hit(tmp_path):
    root, cache = _folder(tmp_path / "photos"), tmp_path / "cache"
    (root / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this JPEG stops here")
    for _ in range(2):
        with pytest.warns(UserWarning, match="broken.jpg"):
            X, y, _ = fd.load_image_folder(root, size=(8, 8), cache=cache)
        assert np.bincount(y).tolist() == [3, 3]


def test_progress_on_long_reads(tmp_path, capsys):
    root = _folder(tmp_path / "photos", n=5)
    shown = fd._ReadProgress(root, 10, after=0.0)
    for i in range(1, 11):
        shown.update(i)
    shown.close()
    err = capsys.readouterr().err
    assert f"reading {root}: 1/10 images" in err and "10/10 images in" in err
    quiet = fd._ReadProgress(root, 10, after=60.0)
    quiet.update(5)
    quiet.close()
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ the given split


def test_given_train_test_split(tmp_path):
    _folder(tmp_path / "set" / "train", n=4, seed=1)
    _folder(tmp_path / "set" / "test", n=2, seed=2)
    assert fd.is_split_folder(tmp_path / "set") and not fd.is_split_folder(tmp_path / "set" / "train")
    d = fd.load_image_splits(tmp_path / "set", size=(8, 8), cache=tmp_path / "cache")
    assert d["classes"] == ["cats", "dogs"]
    assert d["train"][0].shape == (8, 8, 8) and d["test"][0].shape == (4, 8, 8)
    assert np.bincount(d["train"][1]).tolist() == [4, 4] and np.bincount(d["test"][1]).tolist() == [2, 2]
    one = fd.load_image_splits(tmp_path / "set" / "train", size=(8, 8))
    assert one["test"] is None and one["train"][0].shape == (8, 8, 8)


def test_given_split_with_different_classes(tmp_path):
    _folder(tmp_path / "set" / "train")
    _folder(tmp_path / "set" / "test")
    shutil.rmtree(tmp_path / "set" / "test" / "dogs")
    (tmp_path / "set" / "test" / "birds").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "set" / "test" / "birds" / "b.png")
    with pytest.raises(ValueError, match="same class sub-folders"):
        fd.load_image_splits(tmp_path / "set", size=(8, 8))


# ------------------------------------------------------------------ real photos


@pytest.fixture(scope="module")
def photos():
    env = os.environ.get("FASTMLP_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    root = base / "dogs-vs-cats"
    if not (root / "train" / "cats").is_dir():
        pytest.skip(f"Dogs vs. Cats photos not found in {root} (set FASTMLP_DATA to the folder holding "
                    "dogs-vs-cats/)")
    return root


def test_real_photos_sizes_grayscale_and_labels(photos, tmp_path):
    """Two cats and two dogs of each split, copied (the shared folder is never written to)."""
    small = tmp_path / "dvc"
    originals = []
    for split in ("train", "test"):
        for cls in ("cats", "dogs"):
            (small / split / cls).mkdir(parents=True)
            for p in sorted((photos / split / cls).glob("*.jpg"))[:2]:
                assert p.name.startswith(cls[:-1] + ".")                # Kaggle names: cat.N.jpg
                shutil.copy2(p, small / split / cls / p.name)
                originals.append(p)
    d = fd.load_image_splits(small, size=(96, 96), grayscale=True, cache=tmp_path / "cache")
    rgb = fd.load_image_splits(small, size=(64, 64), grayscale=False, cache=tmp_path / "cache")
    assert d["classes"] == rgb["classes"] == ["cats", "dogs"]
    for split in ("train", "test"):
        X, y = d[split]
        assert X.shape == (4, 96, 96) and X.dtype == np.uint8 and y.tolist() == [0, 0, 1, 1]
        Xc, yc = rgb[split]
        assert Xc.shape == (4, 64, 64, 3) and yc.tolist() == [0, 0, 1, 1]
        assert X.std() > 20                  # photos, not blank frames
    # grayscale is Pillow's ITU-R 601-2 luma of the same resized photo, to rounding
    with Image.open(originals[0]) as img:
        assert max(img.size) == 128                                      # the shared set's longer side
        rgb96 = np.asarray(img.convert("RGB").resize((96, 96), Image.Resampling.BILINEAR), np.float64)
    luma = rgb96 @ np.array([0.299, 0.587, 0.114])
    err = np.abs(d["train"][0][0].astype(np.float64) - luma)
    print(f"grayscale against the luma of the RGB resize: max {err.max():.2f}, mean {err.mean():.3f}")
    assert err.mean() < 1.0 and err.max() <= 3.0
    again = fd.load_image_splits(small, size=(96, 96), grayscale=True, cache=tmp_path / "cache")
    np.testing.assert_array_equal(again["test"][0], d["test"][0])


def test_real_photos_listing_is_complete(photos):
    """The shared set as its README describes it: 1,000 JPGs per class and split."""
    for split in ("train", "test"):
        classes, files = fd._image_files(photos / split)
        assert classes == ["cats", "dogs"]
        assert np.bincount([k for _, k in files]).tolist() == [1000, 1000]
