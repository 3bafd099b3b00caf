"""Weight files (``save_weights`` / ``load_weights``): the weights only, as HDF5.

A 512-byte user block holds ``fastmlp-weights <version> sha256:<hex>``, the
SHA-256 of the rest of the file; datasets ``weights/<k>`` in get_weights()
order, each named ``<layer>:<class>:<param>`` in an attribute. Writes are
atomic (fastmlp/atomic.py). A model file's weights read here too.
"""
import os
import re

import numpy as np

from .atomic import atomic_write
from .files import USERBLOCK, hdf5_at, read_model_file, sha256_of

WEIGHTS_FORMAT = "fastmlp-weights"
WEIGHTS_VERSION = 1


def _require_h5py():
    try:
        import h5py
    except ImportError as e:  # a core dependency, but say so if it is missing
        raise ImportError("save_weights/load_weights need h5py: pip install h5py") from e
    return h5py


def write_weights_file(path, weights, names, dtype):
    """The arrays ``weights`` (get_weights() order) as HDF5 ``weights/<k>``, each with its
    ``names[k]`` as an attribute, checksummed, written atomically."""
    h5py = _require_h5py()

    def write(f):
        with h5py.File(f, "w", userblock_size=USERBLOCK) as h:
            h.attrs["format"] = WEIGHTS_FORMAT
            h.attrs["version"] = WEIGHTS_VERSION
            h.attrs["dtype"] = np.dtype(dtype).name
            g = h.create_group("weights")
            for k, (w, name) in enumerate(zip(weights, names)):
                d = g.create_dataset(str(k), data=w)
                d.attrs["name"] = name
        f.flush()
        size = f.seek(0, os.SEEK_END)
        prefix = f"{WEIGHTS_FORMAT} {WEIGHTS_VERSION} sha256:".encode()
        digest = sha256_of(f, USERBLOCK, size, prefix)
        f.seek(0)
        f.write(prefix + digest.encode())

    return atomic_write(path, write)


def read_weights_file(path):
    """The list of arrays of a verified weight file (or of a model file's weights)."""
    spath = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(4)
        if head == b"PK\x03\x04":
            f.close()
            return read_model_file(path)["weights"]
        if size < USERBLOCK or not hdf5_at(f, USERBLOCK):
            if head.startswith(b"\x89HDF"):
                raise ValueError(f"{spath} is an HDF5 file but not a fastmlp weights file (no fastmlp user block)")
            if size < USERBLOCK and head == WEIGHTS_FORMAT.encode()[:4]:
                raise ValueError(f"{spath} is truncated: {size} bytes")
            raise ValueError(f"{spath} is not a fastmlp weights file (expected HDF5, it starts with {head!r})")
        f.seek(0)
        block = f.read(USERBLOCK).rstrip(b"\0")
        m = re.fullmatch(rb"(\S+) (\d{1,6}) sha256:([0-9a-f]{64})", block)
        if m is None or m.group(1) != WEIGHTS_FORMAT.encode():
            raise ValueError(f"{spath} is not a fastmlp weights file, or its signature is damaged")
        if int(m.group(2)) > WEIGHTS_VERSION:
            raise ValueError(f"{spath} was written by a newer fastmlp (weights format version "
                             f"{int(m.group(2))}); this fastmlp reads up to {WEIGHTS_VERSION}: upgrade fastmlp")
        prefix = block[:m.start(3)]
        got = sha256_of(f, USERBLOCK, size, prefix)
        if got != m.group(3).decode():
            raise ValueError(f"{spath} is corrupted or truncated: SHA-256 mismatch (the file says "
                             f"{m.group(3).decode()[:16]}..., its bytes hash to {got[:16]}...)")
    h5py = _require_h5py()
    try:
        with h5py.File(path, "r") as h:
            g = h["weights"]
            n = len(g)
            if sorted(g.keys()) != sorted(str(k) for k in range(n)):
                raise ValueError(f"{spath}: expected datasets weights/0..{n - 1}, got {sorted(g.keys())}")
            return [g[str(k)][()] for k in range(n)]
    except KeyError as e:
        raise ValueError(f"{spath} is not a complete fastmlp weights file: {e}") from None
