"""An HDF5 cache of decoded image folders: each photo is decoded and resized once.

``load_image_folder(root, cache=True)`` looks here before it opens a single
image. An entry is found by a key, the SHA-256 of:

- the format version of this file's layout;
- the requested size (width, height) and colour mode (grayscale or RGB);
- the folder's listing: every image file's path relative to the root, its
  size in bytes and its modification time in nanoseconds.

A file added, removed, renamed, rewritten or touched changes the key, so an
entry never outlives the photos it was made from. An entry is one file,
``<cache dir>/image-folders/<folder>-<where>-<W>x<H>-<mode>-<key>.h5``
(``where``: a hash of the folder's absolute path, so that two folders both
called ``train`` do not share a name), holding ``x`` uint8 (N, H, W[, 3]),
``y`` int64 (N,), ``list_classes``, ``files`` (the relative paths read) and
``skipped`` (the unreadable ones), and the key as an attribute. It is written
atomically (``fastmlp.atomic``); older entries of the same folder, size and
mode are removed then. An entry that cannot be read or does not hold what
its key says (truncated, corrupted, another version) is ignored with a
warning, and the caller rebuilds it.

The cache folder: the ``cache`` argument when it is a path, else
``$FASTMLP_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastmlp``, else
``~/.cache/fastmlp``: never inside the data folder, which may be read-only
or shared.

Shape vocabulary: N images, H x W pixels.
"""
import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

FORMAT = 1
SUBFOLDER = "image-folders"


def default_cache_dir():
    """``$FASTMLP_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastmlp``, else ``~/.cache/fastmlp``."""
    env = os.environ.get("FASTMLP_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "fastmlp"


def cache_folder(cache):
    """The folder entries go to for a ``cache`` argument: True for the default, or a path."""
    if cache is True:
        base = default_cache_dir()
    elif isinstance(cache, (str, os.PathLike)):
        base = Path(cache).expanduser()
    else:
        raise TypeError(f"expected cache to be True, False, None or a folder path, got {cache!r}")
    return base / SUBFOLDER


def _mode(grayscale):
    return "gray" if grayscale else "rgb"


def entry(folder, root, files, size, grayscale):
    """(path of the entry, key) for the image ``files`` (paths under ``root``) read at
    ``size=(width, height)`` in the colour mode. Stats every file (no decoding)."""
    root = Path(root)
    h = hashlib.sha256(f"fastmlp image folder v{FORMAT} {size[0]}x{size[1]} {_mode(grayscale)}\n".encode())
    for p in files:
        st = os.stat(p)
        rel = Path(p).relative_to(root).as_posix()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    key = h.hexdigest()
    absolute = root.resolve()
    where = hashlib.sha256(os.fsencode(absolute)).hexdigest()[:8]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in absolute.name) or "root"
    prefix = f"{name}-{where}-{size[0]}x{size[1]}-{_mode(grayscale)}-"
    return Path(folder) / f"{prefix}{key[:24]}.h5", key


def _strings(ds):
    return [s.decode("utf-8", "surrogateescape") if isinstance(s, bytes) else str(s) for s in ds[()]]


def read(path, key, classes):
    """``(X, y, skipped)`` from the entry at ``path`` if it holds ``key`` and ``classes``,
    else None: absent, or (with a warning) unreadable or inconsistent."""
    import h5py

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("key") != key or int(f.attrs.get("format", -1)) != FORMAT:
                raise ValueError(f"expected key {key[:12]}... of format {FORMAT}, got "
                                 f"{str(f.attrs.get('key'))[:12]}... of format {f.attrs.get('format')}")
            X, y = f["x"][()], f["y"][()]
            stored = _strings(f["list_classes"])
            n_files = len(f["files"])
            skipped = _strings(f["skipped"])
        if X.dtype != np.uint8 or X.ndim not in (3, 4) or y.shape != (len(X),) or n_files != len(X):
            raise ValueError(f"expected uint8 images with one label and one file name each, got x "
                             f"{X.shape} {X.dtype}, y {y.shape}, {n_files} file names")
        if stored != list(classes) or (len(y) and (y.min() < 0 or y.max() >= len(classes))):
            raise ValueError(f"expected classes {list(classes)} and labels in [0, {len(classes)}), got "
                             f"{stored} and labels in [{y.min()}, {y.max()}]")
    except Exception as e:   # a corrupt file raises OSError, KeyError, ValueError... from h5py
        warnings.warn(f"ignoring the image cache {path} ({type(e).__name__}: {e}); the images are read "
                      "again and the cache rebuilt", stacklevel=3)
        return None
    return X, y.astype(np.int64), skipped


def write(path, key, X, y, classes, files, skipped):
    """Write the entry atomically and remove the older entries of the same folder, size and
    mode. A cache that cannot be written (read-only, full disk) is a warning, not an error:
    the images are in memory already."""
    import h5py

    from .atomic import atomic_write

    path = Path(path)

    def fill(f):
        with h5py.File(f, "w") as h:
            h.attrs["key"], h.attrs["format"] = key, FORMAT
            h.create_dataset("x", data=X)      # uncompressed: the cache is there to be read fast
            h.create_dataset("y", data=np.asarray(y, dtype=np.int64))
            text = h5py.string_dtype("utf-8")
            h.create_dataset("list_classes", data=np.array(list(classes), dtype=object), dtype=text)
            h.create_dataset("files", data=np.array([str(p) for p in files], dtype=object), dtype=text)
            h.create_dataset("skipped", data=np.array(list(skipped), dtype=object), dtype=text)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, fill)
    except OSError as e:
        warnings.warn(f"could not write the image cache {path} ({e}); the next run reads the images "
                      "again", stacklevel=3)
        return None
    stem = path.name[:-len(key[:24]) - 3]       # the prefix: folder, where, size, mode
    for old in path.parent.glob(f"{stem}*.h5"):
        if old != path and len(old.name) == len(path.name):
            try:
                old.unlink()
            except OSError:
                pass
    return path
