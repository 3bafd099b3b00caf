"""Getting image arrays into fastmlp: file readers, one writer, one generator.

Every loader returns images row-major as ``(N, H, W)`` or ``(N, H, W, C)``
with the dtype they were stored in, and labels as int64 ``(N,)``. Scaling,
flattening and splitting belong to :mod:`fastmlp.preprocessing`, so that a
loader never decides how the data will be normalised.

Shape vocabulary: N images, H x W pixels, C channels, K classes.
"""
import gzip
import math
import os
import re
import secrets
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from . import image_cache

# Dataset names treated as class names rather than images or labels.
_CLASS_KEYS = ("list_classes", "classes")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_SHAPES = ("square", "circle", "triangle", "cross")
_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC = 2051, 2049
_MNIST_T10K_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_MNIST_T10K_TRAIN = 8000


def _require_pillow():
    # Pillow is an extra: only image files need it, arrays and HDF5 do not.
    try:
        from PIL import Image, ImageOps
    except ImportError as e:
        raise ImportError(
            'reading or resizing image files needs Pillow: pip install "fastmlp[images]"'
        ) from e
    return Image, ImageOps


def _existing_file(path, what):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not path.is_file():
        raise ValueError(f"expected {what} to be a file, got a directory: {path}")
    return path


def _label_vector(y, name):
    # The course files store labels as (1, N); Keras-style code uses (N, 1).
    y = np.asarray(y)
    if y.ndim == 2 and 1 in y.shape:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise ValueError(f"expected {name} of shape (N,), (1, N) or (N, 1), got {y.shape}")
    return y


def _decode_classes(raw):
    return [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in np.ravel(raw)]


def default_data_dir():
    """The shared data folder: ``$FASTMLP_DATA``, else ``../shared/data``, else None.

    Data never lives inside the repository, so code and tests look for it
    beside the checkout, and a user points elsewhere with one variable."""
    env = os.environ.get("FASTMLP_DATA")
    if env:
        return Path(env).expanduser().resolve()
    beside = (Path.cwd() / ".." / "shared" / "data").resolve()
    return beside if beside.is_dir() else None


# --------------------------------------------------------------------- HDF5


def _h5_datasets(f):
    import h5py

    found = {}

    def collect(name, obj):
        if isinstance(obj, h5py.Dataset):
            found[name] = obj

    f.visititems(collect)  # datasets inside groups count too: "train/x"
    return found


def _name_tokens(name):
    return re.split(r"[^a-z0-9]+", name.rsplit("/", 1)[-1].lower())


def _looks_like_images(name, ds):
    tokens = _name_tokens(name)
    hit = any(t == "x" or t.startswith(("image", "img", "data", "feature", "input")) for t in tokens)
    return hit and ds.ndim >= 2


def _looks_like_labels(name, ds):
    tokens = _name_tokens(name)
    hit = any(t == "y" or t.startswith(("label", "target")) for t in tokens)
    squeezable = ds.ndim == 1 or (ds.ndim == 2 and 1 in ds.shape)
    return hit and squeezable


def _label_len(ds):
    return int(np.prod(ds.shape))


def _find_pair(datasets, x_key, y_key):
    """Pick the one (images, labels) pair in the file, or explain why not.

    Guessing silently between two pairs (train/test in one file) would train
    on the wrong data, so anything but exactly one candidate is an error."""
    listing = ", ".join(f"{k} {ds.shape} {ds.dtype}" for k, ds in datasets.items())
    for key in (x_key, y_key):
        if key is not None and key not in datasets:
            raise ValueError(f"expected a dataset named {key!r}, got datasets: {listing}")
    usable = {k: ds for k, ds in datasets.items() if k.rsplit("/", 1)[-1] not in _CLASS_KEYS}
    xs = [x_key] if x_key is not None else [
        k for k, ds in usable.items() if _looks_like_images(k, ds) and not _looks_like_labels(k, ds)]
    ys = [y_key] if y_key is not None else [
        k for k, ds in usable.items() if _looks_like_labels(k, ds) and not _looks_like_images(k, ds)]
    if len(xs) == 1 and len(ys) == 1:
        return xs[0], ys[0]  # lengths are checked by the caller with a precise message
    pairs = [(x, y) for x in xs for y in ys if datasets[x].shape[:1] == (_label_len(datasets[y]),)]
    if len(pairs) == 1:
        return pairs[0]
    hint = "pass x_key= and y_key= to choose"
    if not pairs:
        raise ValueError(
            "expected one image dataset (named like x/images/data, ndim >= 2) and one label "
            f"dataset (named like y/labels) with the same first dimension, got datasets: {listing}; {hint}")
    raise ValueError(f"expected one image/label pair, got {len(pairs)}: {pairs} "
                     f"among datasets: {listing}; {hint}")


def load_h5(path, x_key=None, y_key=None):
    """Read ``(X, y, classes)`` from an HDF5 file holding one image/label pair.

    Keys are found by name (``train_set_x``/``train_set_y``, ``images``/
    ``labels``, ``x``/``y``) unless given. X keeps its stored dtype so that a
    uint8 file stays 1 byte per pixel until the user chooses a float type.
    ``classes`` is a list of str from ``list_classes`` or ``classes``, else None.
    """
    import h5py

    path = _existing_file(path, "HDF5 file")
    if not h5py.is_hdf5(path):
        raise ValueError(f"expected an HDF5 file, got a file without the HDF5 signature: {path}")
    try:
        with h5py.File(path, "r") as f:
            datasets = _h5_datasets(f)
            x_key, y_key = _find_pair(datasets, x_key, y_key)
            X_ds, y_ds = datasets[x_key], datasets[y_key]
            if X_ds.ndim < 2:
                raise ValueError(f"expected images {x_key!r} with ndim >= 2, got shape {X_ds.shape}")
            X = X_ds[()]
            y = _label_vector(y_ds[()], f"labels {y_key!r}")
            class_key = next((k for k in _CLASS_KEYS if k in f), None)
            classes = _decode_classes(f[class_key][()]) if class_key else None
    except OSError as e:  # truncated or corrupt file behind a valid signature
        raise ValueError(f"expected a readable HDF5 file, got {path}: {e}") from e
    if len(y) != len(X):
        raise ValueError(f"expected {len(X)} labels in {y_key!r} (one per image of {x_key!r} "
                         f"{X.shape}), got {len(y)} in {path}")
    return X, y, classes


def _to_uint8_images(images):
    """Images as uint8, the storage type: exact for uint8, scaled for [0, 1] floats.

    Anything whose range leaves the intent unclear is refused rather than
    clipped, so that saving never silently changes pixel values."""
    images = np.asarray(images)
    if images.dtype == object or images.ndim not in (3, 4) or len(images) == 0:
        raise ValueError(f"expected images of shape (N, H, W) or (N, H, W, C) with N >= 1, "
                         f"got shape {images.shape} dtype {images.dtype}")
    if images.dtype == np.uint8:
        return images
    if not (np.issubdtype(images.dtype, np.floating) or np.issubdtype(images.dtype, np.integer)):
        raise ValueError(f"expected uint8, integer or float images, got dtype {images.dtype}")
    if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
        raise ValueError("expected finite images, got NaN or inf")
    lo, hi = images.min(), images.max()
    if np.issubdtype(images.dtype, np.floating) and lo >= 0 and hi <= 1:
        return np.rint(images * 255.0).astype(np.uint8)
    if lo >= 0 and hi <= 255:
        return np.rint(images).astype(np.uint8)
    raise ValueError(f"expected pixel values in [0, 1] (float) or [0, 255], got range [{lo}, {hi}]")


_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")   # 16-bit grayscale, as Pillow opens it


def _pil_to_array(img, Image, size, mode=None):
    """A Pillow image as a uint8 array (H, W) or (H, W, C), resized to ``size`` when given.

    mode=None keeps L, RGB and RGBA as they are and maps palettes and other modes to
    RGB(A); mode="L" or "RGB" converts to that. 16-bit grayscale (medical, microscopy
    and depth images; Pillow's 8-bit conversion would clip it at 255) is scaled to
    0..255, value / 257 rounded (65535 -> 255), resized in floating point, and stays
    one channel unless mode="RGB" asks for three."""
    if img.mode in _16BIT_MODES:
        return _16bit_to_uint8(img, Image, size, mode)
    if mode is not None:
        img = img.convert(mode)
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode not in ("L", "RGB", "RGBA"):
        has_alpha = "A" in img.mode or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
    if size is not None:
        img = img.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _16bit_to_uint8(img, Image, size, mode):
    a = np.asarray(img)
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi > 65535:   # mode "I" holds 32-bit integers: only 16-bit data has a known scale
        raise ValueError(f"expected 16-bit pixel values (0 .. 65535) in a {img.mode} image, "
                         f"got range [{lo}, {hi}]")
    scaled = Image.fromarray((a / 257.0).astype(np.float32), mode="F")
    if size is not None:
        scaled = scaled.resize(size, Image.Resampling.BILINEAR)
    out = np.rint(np.clip(np.asarray(scaled), 0.0, 255.0)).astype(np.uint8)
    return np.repeat(out[..., None], 3, axis=-1) if mode == "RGB" else out


def _check_size(size):
    if size is None:
        return None
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size)):
        raise ValueError(f"expected size=(width, height) of two positive ints, got {size!r}")
    return (int(size[0]), int(size[1]))


def _read_image_files(paths, size):
    Image, _ = _require_pillow()
    arrays, first = [], None
    for p in paths:
        with Image.open(_existing_file(p, "image file")) as img:
            a = _pil_to_array(img, Image, size)
        if first is None:
            first = (p, a.shape)
        elif a.shape != first[1]:
            raise ValueError(f"expected every image to have shape {first[1]} like {first[0]}, "
                             f"got {a.shape} for {p}; pass size=(width, height) to resize")
        arrays.append(a)
    return np.stack(arrays)


def _resize_array(images, size):
    Image, _ = _require_pillow()
    if images.ndim == 4 and images.shape[-1] == 1:  # Pillow has no (H, W, 1) mode
        return _resize_array(images[..., 0], size)[..., None]
    return np.stack([_pil_to_array(Image.fromarray(a), Image, size) for a in images])


def _is_path_list(images):
    return (isinstance(images, (list, tuple)) and len(images) > 0
            and all(isinstance(p, (str, os.PathLike)) for p in images))


def save_images_to_h5(path, images, labels, *, x_key="x", y_key="y", classes=None, size=None):
    """Write images and labels to an HDF5 file that :func:`load_h5` reads back exactly.

    ``images`` is an array ``(N, H, W[, C])`` or a list of image file paths
    (read with Pillow, resized to ``size=(width, height)`` when given):
    grayscale files give ``(N, H, W)``, RGB ``(N, H, W, 3)``, RGBA
    ``(N, H, W, 4)``; palettes and other modes are read as RGB(A).
    Pixels are stored as uint8 0 .. 255 (the smallest exact type for 8-bit
    images): 8-bit files exactly, 16-bit grayscale files scaled (value / 257,
    rounded: 65535 -> 255) rather than clipped. The array is chunked and
    gzip-compressed; labels are int64; ``classes`` fixed-length bytes under
    ``list_classes``, the layout of the course's cat files.

    The file is written under a temporary name in the same folder and moved
    into place with ``os.replace``, so a crash or a bad argument never leaves
    a half-written file and never clobbers an existing one. Returns the path.
    """
    import h5py

    if isinstance(images, (str, os.PathLike)):
        raise TypeError(f"expected an image array or a list of image paths, got a single path {images!r}")
    size = _check_size(size)
    if _is_path_list(images):
        X = _read_image_files(images, size)
    else:
        X = _to_uint8_images(images)
        if size is not None:
            X = _resize_array(X, size)
    y = _label_vector(labels, "labels")
    if len(y) != len(X):
        raise ValueError(f"expected {len(X)} labels (one per image), got {len(y)}")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)
            or (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0))):
        raise ValueError(f"expected integer labels, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if x_key == y_key or any(k in _CLASS_KEYS for k in (x_key, y_key)):
        raise ValueError(f"expected distinct x_key and y_key other than {_CLASS_KEYS}, "
                         f"got {x_key!r}, {y_key!r}")
    if classes is not None:
        classes = [str(c) for c in classes]
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise ValueError(f"expected labels in [0, {len(classes)}) for {len(classes)} classes, "
                             f"got range [{y.min()}, {y.max()}]")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder to write into not found: {path.parent}")

    # Chunks of about 1 MiB: whole images, small enough to read a batch cheaply.
    per_image = int(np.prod(X.shape[1:]))
    chunk_n = max(1, min(len(X), (1 << 20) // per_image))
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        with h5py.File(tmp, "x") as f:
            f.create_dataset(x_key, data=X, chunks=(chunk_n,) + X.shape[1:],
                             compression="gzip", compression_opts=4, shuffle=True)
            f.create_dataset(y_key, data=y)
            if classes is not None:
                encoded = [c.encode("utf-8") for c in classes]
                width = max([len(c) for c in encoded] + [1])
                f.create_dataset("list_classes", data=np.array(encoded, dtype=f"S{width}"))
            f.flush()
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------- IDX


def _read_maybe_gzip(path):
    raw = _existing_file(path, "IDX file").read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"expected a complete gzip stream, got a corrupt one in {path}: {e}") from e
    return raw


def _idx_array(path, magic, ndim):
    """Parse one IDX file: big-endian magic, ``ndim`` int32 sizes, then uint8 data."""
    data = _read_maybe_gzip(path)
    header = 4 * (1 + ndim)
    # Magic first: a swapped images/labels pair should say so, not "too short".
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found != magic:
        raise ValueError(f"expected IDX magic number {magic}, got {found} in {path}")
    if len(data) < header:
        raise ValueError(f"expected an IDX header of {header} bytes, got a {len(data)}-byte file: {path}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(dims)  # Python ints: a corrupt header cannot overflow
    if len(data) != expected:
        raise ValueError(f"expected {expected} bytes for dims {dims}, got {len(data)} in {path}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def load_idx(images_path, labels_path):
    """Read an MNIST-style IDX image/label pair, gzip-compressed or not.

    Returns ``X`` uint8 ``(N, rows, cols)`` (28 x 28 for MNIST) and ``y`` int64
    ``(N,)``. Sizes are checked against the file length, so a truncated
    download fails here instead of as a reshape error or silent garbage."""
    X = _idx_array(images_path, _IDX_IMAGES_MAGIC, 3)
    y = _idx_array(labels_path, _IDX_LABELS_MAGIC, 1).astype(np.int64)
    if len(X) != len(y):
        raise ValueError(f"expected as many labels as images ({len(X)}), got {len(y)} "
                         f"in {labels_path}")
    return X, y


def _t10k_file(root, stem):
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def load_mnist_t10k(root=None):
    """The project's 28 x 28, 10-class benchmark: ``(X_train, y_train, X_test, y_test)``.

    The MNIST t10k set split by convention into its first 8,000 images for
    training and its last 2,000 for testing, so every script and benchmark
    compares on the same split. ``root`` defaults to
    ``$FASTMLP_DATA/mnist-t10k``, else ``../shared/data/mnist-t10k``."""
    if root is None:
        base = default_data_dir()
        root = base / "mnist-t10k" if base is not None else None
    files = [_t10k_file(Path(root), s) for s in _MNIST_T10K_FILES] if root is not None else [None]
    if None in files:
        raise FileNotFoundError(
            f"MNIST t10k files not found (looked in {root}); put {_MNIST_T10K_FILES[0]}.gz and "
            f"{_MNIST_T10K_FILES[1]}.gz in $FASTMLP_DATA/mnist-t10k or ../shared/data/mnist-t10k, "
            "or pass root=")
    X, y = load_idx(*files)
    if len(X) != 10_000:
        raise ValueError(f"expected the 10,000-image t10k set, got {len(X)} images in {root}")
    n = _MNIST_T10K_TRAIN
    return X[:n], y[:n], X[n:], y[n:]


# ----------------------------------------------------------------- MedMNIST


def load_medmnist(path, split="train"):
    """Read one split ``(X, y)`` of a MedMNIST ``.npz`` file (28 or 128 pixel sizes).

    Labels stored as ``(N, 1)`` come back as int64 ``(N,)``; multi-label sets
    (ChestMNIST, ``(N, 14)``) keep their shape. Pickles are refused: an
    ``.npz`` from the internet must not run code when loaded."""
    import zipfile

    if split not in ("train", "val", "test"):
        raise ValueError(f"expected split 'train', 'val' or 'test', got {split!r}")
    path = _existing_file(path, "MedMNIST .npz file")
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"expected a readable .npz archive, got {path}: {e}") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"expected an .npz archive, got a single .npy array: {path}")
    with npz:
        keys = (f"{split}_images", f"{split}_labels")
        missing = [k for k in keys if k not in npz.files]
        if missing:
            raise ValueError(f"expected keys {list(keys)} in {path}, got {sorted(npz.files)}")
        try:
            X, y = npz[keys[0]], npz[keys[1]]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"expected plain arrays under {list(keys)} in {path}: {e}") from e
    if X.ndim not in (3, 4):
        raise ValueError(f"expected {split}_images of shape (N, H, W) or (N, H, W, C), got {X.shape}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim not in (1, 2) or len(y) != len(X):
        raise ValueError(f"expected {split}_labels of shape ({len(X)},) or ({len(X)}, 1), got {y.shape}")
    return X, y.astype(np.int64)


# ------------------------------------------------------------ image folders


def _image_files(root):
    """(classes, [(path, class index)]): class sub-folders sorted by name, their JPG/PNG files
    sorted by name, so that labels and order do not depend on the file system's listing."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [(p, k) for k, name in enumerate(classes) for p in sorted((root / name).iterdir())
             if p.is_file() and p.suffix.lower() in _IMAGE_EXTENSIONS]
    return classes, files


class _ReadProgress:
    """'reading ROOT: i/N images' on stderr while a read runs longer than ``after`` seconds,
    redrawn in place at most every 0.25 s (a new line each 10 % where stderr is not a terminal)."""

    def __init__(self, root, total, after=1.0):
        self.root, self.total, self.after = root, total, after
        self.start = self.last = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.shown = False
        self.step = max(1, total // 10)

    def update(self, done):
        now = time.perf_counter()
        if now - self.start < self.after or done == self.total:
            return
        if self.tty and now - self.last < 0.25:
            return
        if not self.tty and done % self.step:
            return
        self.last, self.shown = now, True
        end = "\r" if self.tty else "\n"
        print(f"reading {self.root}: {done}/{self.total} images", end=end, file=sys.stderr, flush=True)

    def close(self):
        if self.shown:
            print(f"reading {self.root}: {self.total}/{self.total} images in "
                  f"{time.perf_counter() - self.start:.1f} s", file=sys.stderr, flush=True)


def _decode_files(files, root, size, grayscale, progress):
    Image, ImageOps = _require_pillow()
    shown = _ReadProgress(root, len(files)) if progress else None
    images, labels, read, skipped = [], [], [], []
    for i, (p, k) in enumerate(files):
        try:
            with Image.open(p) as img:
                img = ImageOps.exif_transpose(img)  # phone photos store rotation in EXIF
                images.append(_pil_to_array(img, Image, size, "L" if grayscale else "RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            skipped.append(f"{p} ({type(e).__name__})")
            continue
        labels.append(k)
        read.append(p.relative_to(root).as_posix())
        if shown:
            shown.update(i + 1)
    if shown:
        shown.close()
    X = np.stack(images) if images else None
    return X, np.asarray(labels, dtype=np.int64), read, skipped


def load_image_folder(root, size=(96, 96), grayscale=True, cache=None, progress=True):
    """Read a folder of class sub-folders of JPG/PNG files as ``(X, y, classes)``.

    Classes are the sub-folder names sorted, so indices do not depend on the
    file system's listing order. Every image is resized to ``size=(width,
    height)``: X is uint8 ``(N, H, W)`` in grayscale, else ``(N, H, W, 3)``,
    values 0 .. 255. 8-bit images keep their values; 16-bit grayscale PNGs
    are scaled to 0 .. 255 (value / 257, rounded), not clipped.
    Unreadable files are skipped with one warning naming them, because one
    corrupt photo in a scraped set should not stop training.

    ``cache``: None or False decodes every file; True keeps the decoded
    arrays in an HDF5 file under the user cache folder ($FASTMLP_CACHE_DIR,
    else ~/.cache/fastmlp), a path under that folder instead; the next call
    with the same files (names, sizes, modification times), size and colour
    mode reads that file and decodes nothing (fastmlp/image_cache.py).
    ``progress``: a line on stderr while decoding takes more than a second."""
    _require_pillow()
    size = _check_size(size)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    classes, files = _image_files(root)
    path = key = None
    if cache is not None and cache is not False:
        path, key = image_cache.entry(image_cache.cache_folder(cache), root, [p for p, _ in files],
                                      size, grayscale)
        hit = image_cache.read(path, key, classes)
        if hit is not None:
            X, y, skipped = hit
            _warn_skipped(skipped)
            return X, y, classes
    X, y, read, skipped = _decode_files(files, root, size, grayscale, progress)
    _warn_skipped(skipped)
    if X is None:
        raise ValueError(f"expected class sub-folders holding JPG/PNG images in {root}, "
                         f"got no readable images (sub-folders: {classes})")
    if path is not None:
        image_cache.write(path, key, X, y, classes, read, skipped)
    return X, y, classes


def _warn_skipped(skipped):
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image(s): {', '.join(skipped)}", stacklevel=3)


def load_image_splits(root, size=(96, 96), grayscale=True, cache=None, progress=True):
    """The given split of an image folder: ``{"train": (X, y), "test": (X, y) or None, "classes"}``.

    ``root`` holding ``train/`` and ``test/`` folders of class sub-folders (the
    Kaggle Dogs vs. Cats layout, ``train/cats``, ``train/dogs``, ``test/cats``,
    ...) gives both splits, with the same classes; any other folder of class
    sub-folders is all ``train`` (``test`` None: split it by fractions).
    Arguments as for :func:`load_image_folder`, applied to each split."""
    root = Path(root)
    given = is_split_folder(root)
    parts = ("train", "test") if given else (None,)
    out = {"train": None, "test": None, "classes": None}
    for part in parts:
        X, y, classes = load_image_folder(root / part if part else root, size, grayscale, cache, progress)
        if out["classes"] is not None and classes != out["classes"]:
            raise ValueError(f"expected the same class sub-folders in {root / 'train'} and {root / 'test'}, "
                             f"got {out['classes']} and {classes}")
        out[part or "train"], out["classes"] = (X, y), classes
    return out


def is_split_folder(root):
    """Whether ``root`` holds ``train/`` and ``test/`` folders (a given train / test split)."""
    root = Path(root)
    return (root / "train").is_dir() and (root / "test").is_dir()


# ------------------------------------------------------------------- shapes


def _shape_distance(name, a, b):
    """Signed distance to the shape's edge, in units of its radius (< 0 inside).

    Exact inside, an upper bound outside: enough for a one-pixel soft edge,
    which keeps small rotated shapes from aliasing into each other."""
    if name == "circle":
        return np.sqrt(a * a + b * b) - 1.0
    if name == "square":  # half-side 0.75: corners reach 1.06, area close to the circle's
        return np.maximum(np.abs(a), np.abs(b)) - 0.75
    if name == "triangle":  # equilateral, circumradius 1, inradius 0.5
        d = None
        for phi in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6):
            side = a * np.float32(np.cos(phi)) + b * np.float32(np.sin(phi))
            d = side if d is None else np.maximum(d, side)
        return d - 0.5
    if name == "cross":  # a plus sign: union of two bars of half-width 0.3
        aa, bb = np.abs(a), np.abs(b)
        return np.minimum(np.maximum(aa - 1.0, bb - 0.3), np.maximum(aa - 0.3, bb - 1.0))
    raise AssertionError(name)


def make_shapes(n, size=28, seed=0, classes=_SHAPES, centered=False, noise=0.1):
    """A built-in K-class image set that needs no download: ``(X, y, class_names)``.

    X is float32 ``(N, size, size)`` in [0, 1]: white shapes of random size,
    position and rotation on black, plus Gaussian noise of std ``noise``,
    clipped. ``centered=True`` puts every shape at the centre with a small
    size and rotation jitter, which a dense MLP learns to > 90 % accuracy.
    Classes are balanced (counts differ by at most one) and the result is a
    pure function of the arguments (``np.random.default_rng(seed)``).
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"expected n to be a positive int, got {n!r}")
    if not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"expected size to be an int >= 8, got {size!r}")
    classes = [classes] if isinstance(classes, str) else list(classes)
    unknown = [c for c in classes if c not in _SHAPES]
    if not classes or unknown or len(set(classes)) != len(classes):
        raise ValueError(f"expected distinct class names from {_SHAPES}, got {classes}")
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"expected noise >= 0, got {noise!r}")

    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % len(classes)).astype(np.int64)
    if centered:
        radius = size * 0.35 * rng.uniform(0.9, 1.1, n)
        theta = rng.uniform(-np.pi / 12, np.pi / 12, n)
        cx = cy = np.full(n, (size - 1) / 2.0)
    else:
        radius = size * rng.uniform(0.18, 0.4, n)
        theta = rng.uniform(0.0, 2 * np.pi, n)
        margin = 1.1 * radius  # the rotated square's corner reaches 1.06 radii
        cx = rng.uniform(margin, size - 1 - margin)
        cy = rng.uniform(margin, size - 1 - margin)
    X = np.zeros((n, size, size), dtype=np.float32)
    if noise > 0:
        X += rng.standard_normal((n, size, size), dtype=np.float32) * np.float32(noise)

    grid = np.arange(size, dtype=np.float32)
    for k, name in enumerate(classes):
        idx = np.flatnonzero(y == k)
        if idx.size == 0:
            continue
        # Rotate pixel offsets into each shape's frame, in units of its radius.
        c = (np.cos(theta[idx]) / radius[idx]).astype(np.float32)[:, None, None]
        s = (np.sin(theta[idx]) / radius[idx]).astype(np.float32)[:, None, None]
        dx = grid[None, None, :] - cx[idx].astype(np.float32)[:, None, None]   # (n_k, 1, W)
        dy = grid[None, :, None] - cy[idx].astype(np.float32)[:, None, None]   # (n_k, H, 1)
        a, b = c * dx + s * dy, c * dy - s * dx                                 # (n_k, H, W)
        dist_px = _shape_distance(name, a, b) * radius[idx].astype(np.float32)[:, None, None]
        X[idx] += np.clip(0.5 - dist_px, 0.0, 1.0)
    np.clip(X, 0.0, 1.0, out=X)
    return X, y, list(classes)
