"""Data for the peers runner: cat / non-cat (P1) and MNIST t10k (P2, sweeps).

The real files live outside the repository (see shared/data/README.md). The
folder is taken from `--data DIR`, else $FASTMLP_DATA, else ../shared/data
relative to the working directory. Where a file is missing, a random stand-in
of the same shape is returned with a note saying so: timings do not depend on
the pixel values, but accuracies would be meaningless.

Every loader returns (X, y, note): X (N, D) float32 in [0, 1], row-major;
y (N, 1) float32 of 0/1 for binary tasks, (N,) int64 for class labels.
"""
import gzip
import os
from pathlib import Path

import numpy as np


def resolve_data_dir(arg=None):
    """The data folder to use and where it came from, or (None, reason)."""
    if arg:
        return Path(arg), "--data"
    if os.environ.get("FASTMLP_DATA"):
        return Path(os.environ["FASTMLP_DATA"]), "$FASTMLP_DATA"
    default = Path.cwd() / ".." / "shared" / "data"
    if default.is_dir():
        return default.resolve(), "../shared/data"
    return None, "no --data, no $FASTMLP_DATA and no ../shared/data"


def load_catvnoncat(data_dir):
    """The 209 training images of cat / non-cat, flattened to (209, 12288)."""
    path = data_dir / "catvnoncat" / "train_catvnoncat.h5" if data_dir else None
    try:
        import h5py
        with h5py.File(path, "r") as f:
            images = np.asarray(f["train_set_x"])   # (209, 64, 64, 3) uint8
            labels = np.asarray(f["train_set_y"])   # (209,) int64
    except Exception as exc:
        rng = np.random.default_rng(1)
        X = rng.random((209, 64 * 64 * 3), dtype=np.float32)
        y = (rng.random((209, 1)) < 72 / 209).astype(np.float32)
        return X, y, f"cat/non-cat: random stand-in (209 x 12288), could not read {path}: {exc}"
    X = (images.reshape(len(images), -1) / 255.0).astype(np.float32)
    y = labels.reshape(-1, 1).astype(np.float32)
    return X, y, f"cat/non-cat: {path}"


def read_idx(path):
    # an IDX file (gzip): magic (2 zero bytes, type 0x08, ndim), ndim big-endian
    # uint32 sizes, then uint8 data
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_mnist_t10k(data_dir):
    """The 10,000 MNIST t10k images (10000, 784) and labels (10000,).

    Project convention: the first 8,000 are the training split."""
    folder = data_dir / "mnist-t10k" if data_dir else None
    try:
        images = read_idx(folder / "t10k-images-idx3-ubyte.gz")   # (10000, 28, 28)
        labels = read_idx(folder / "t10k-labels-idx1-ubyte.gz")   # (10000,)
    except Exception as exc:
        rng = np.random.default_rng(4)
        X = rng.random((10000, 784), dtype=np.float32)
        y = rng.integers(0, 10, 10000).astype(np.int64)
        return X, y, f"MNIST t10k: random stand-in (10000 x 784), could not read {folder}: {exc}"
    X = (images.reshape(len(images), -1) / 255.0).astype(np.float32)
    return X, labels.astype(np.int64), f"MNIST t10k: {folder}"
