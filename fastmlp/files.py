"""Model files: a state dict (``Sequential.state_dict()``) to bytes on disk and back.

A model file (``model.save`` / ``fm.load_model``) is a zip archive that
``np.load`` reads (``allow_pickle=False``), members stored uncompressed:

    header.npy          uint8, UTF-8 JSON: format, version, the architecture (layers by
                        registered class name + get_config, loss, optimizer config, dtype,
                        device, seed, input shape), the optimizer's step count, the
                        model's random-generator state, the training position, array index
    param_{k}.npy       the k-th array of get_weights(), in the model dtype
    opt_{name}_{k}.npy  optimizer state buffer ``name`` for parameter k
    layer_{i}_{key}.npy layer i's non-trainable state (get_state: BatchNorm statistics)

The zip comment, the last bytes of the file, is ``fastmlp-model <version>
sha256:<hex>``: the SHA-256 of every byte of the file before the hex digits.
A flipped bit anywhere, a truncation, a foreign file or a newer format is a
``ValueError`` that says which; failing to open or read is an ``OSError``.
Writes are atomic (fastmlp/atomic.py). This module knows nothing of models:
it checks that a file is whole and ours; ``Sequential.load_state_dict`` checks
that its contents fit a model.
"""
import hashlib
import json
import os
import re
import zipfile

import numpy as np

from .atomic import atomic_write
from .version import __version__

MODEL_FORMAT = "fastmlp-model"
MODEL_VERSION = 1
DIGEST_LEN = 64                   # hex characters of a SHA-256
USERBLOCK = 512                   # bytes before the HDF5 superblock of a weights file
_CHUNK = 1 << 20
_NAME = re.compile(r"[A-Za-z0-9_]+")


def sha256_of(f, start, stop, prefix=b""):
    h = hashlib.sha256(prefix)
    f.seek(start)
    left = stop - start
    while left > 0:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            break
        h.update(chunk)
        left -= len(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------- state dict <-> header and arrays

def jsonable(value, what):
    """``value`` as JSON would read it back; a ValueError naming ``what`` if it is not JSON."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"cannot save {what}: expected a JSON-serialisable value, got {value!r} ({e})") from None


def _to_header(state):
    """(header dict, {member name: host array}) of a state dict; raises before any write."""
    arrays, index = {}, {"params": [], "optimizer": {}, "layers": {}}
    for k, a in enumerate(state["weights"]):
        arrays[f"param_{k}"] = np.asarray(a)
        index["params"].append(f"param_{k}")
    for name, bufs in state["optimizer"]["state"].items():
        index["optimizer"][name] = []
        for k, a in enumerate(bufs):
            arrays[f"opt_{name}_{k}"] = np.asarray(a)
            index["optimizer"][name].append(f"opt_{name}_{k}")
    for i, layer_state in state["layer_state"].items():
        index["layers"][str(i)] = {}
        for key, a in layer_state.items():
            if not _NAME.fullmatch(str(key)):
                raise ValueError(f"cannot save layer {i} state: expected names of letters, digits and _, "
                                 f"got {key!r}")
            arrays[f"layer_{i}_{key}"] = np.asarray(a)
            index["layers"][str(i)][key] = f"layer_{i}_{key}"
    for name, a in arrays.items():
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise ValueError(f"cannot save {name}: expected a numeric array, got dtype {a.dtype}")
    header = {
        "format": MODEL_FORMAT, "version": MODEL_VERSION, "fastmlp_version": __version__,
        "model": jsonable(state["architecture"], "the architecture"),
        "optimizer_step": int(state["optimizer"]["step"]),
        "rng": jsonable(state["rng"], "the random-generator state"),
        "training": jsonable(state["training"], "the training position"),
        "arrays": index,
    }
    return header, arrays


def _from_header(header, arrays, path):
    """The state dict of a verified file's header and arrays; ValueError names a missing piece."""
    index = header["arrays"]

    def take(name, what):
        a = arrays.get(name) if isinstance(name, str) else None
        if a is None:
            raise ValueError(f"{path}: expected array {name!r} ({what}) in the file, got none")
        return a

    try:
        weights = [take(name, f"weight {k}") for k, name in enumerate(index["params"])]
        opt = {name: [take(a, f"optimizer state {name} of weight {k}") for k, a in enumerate(names)]
               for name, names in index["optimizer"].items()}
        layers = {int(i): {key: take(a, f"layer {i} state {key!r}") for key, a in entries.items()}
                  for i, entries in index["layers"].items()}
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        if isinstance(e, ValueError) and str(e).startswith(path):
            raise
        raise ValueError(f"{path} is not a complete fastmlp model file: its array index is damaged ({e})") from None
    return {"architecture": header["model"], "weights": weights,
            "optimizer": {"step": header["optimizer_step"], "state": opt},
            "layer_state": layers, "rng": header["rng"], "training": header.get("training")}


# ---------------------------------------------------------------------- the file

def write_model_file(path, state):
    """Write a state dict to ``path`` atomically (checked and converted before any byte is written)."""
    header, arrays = _to_header(state)
    return atomic_write(path, lambda f: _write(f, header, arrays))


def read_model_file(path):
    """The state dict of the verified model file at ``path``."""
    header, arrays = _read_verified(path)
    return _from_header(header, arrays, os.fspath(path))


def _write(f, header, arrays):
    blob = np.frombuffer(json.dumps(header, sort_keys=True, allow_nan=False).encode("utf-8"), dtype=np.uint8)
    prefix = f"{MODEL_FORMAT} {MODEL_VERSION} sha256:".encode()
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.comment = prefix + b"0" * DIGEST_LEN
        for name, a in [("header", blob)] + list(arrays.items()):
            with zf.open(name + ".npy", "w", force_zip64=True) as m:
                np.lib.format.write_array(m, np.ascontiguousarray(a), allow_pickle=False)
    f.flush()
    size = f.seek(0, os.SEEK_END)
    digest = sha256_of(f, 0, size - DIGEST_LEN)
    f.seek(size - DIGEST_LEN)
    f.write(digest.encode())


def _not_ours(path, head, f):
    if head == b"":
        return f"{path} is empty, not a fastmlp model file"
    if head.startswith(b"\x89HDF") or hdf5_at(f, USERBLOCK):
        return (f"{path} is an HDF5 file, not a fastmlp model file "
                "(a weights file? use model.load_weights)")
    return f"{path} is not a fastmlp model file (expected a zip/.npz archive, it starts with {head[:8]!r})"


def hdf5_at(f, offset):
    f.seek(offset)
    return f.read(8) == b"\x89HDF\r\n\x1a\n"


def _check_signature(f, path, fmt, version, size, tail_at):
    """Parse ``<fmt> <version> sha256:<hex>`` at ``tail_at``; returns the expected digest."""
    f.seek(tail_at)
    tail = f.read(size - tail_at) if size > tail_at else b""
    m = re.fullmatch(rb"(\S+) (\d{1,6}) sha256:([0-9a-f]{64})", tail.rstrip(b"\0"))
    if m is None or m.group(1) != fmt.encode():
        return None, tail
    v = int(m.group(2))
    if v > version:
        raise ValueError(f"{path} was written by a newer fastmlp (file format {fmt} version {v}); "
                         f"this fastmlp reads versions up to {version}: upgrade fastmlp")
    if v < 1:
        raise ValueError(f"{path} is corrupted: expected a format version >= 1, got {v}")
    return m.group(3).decode(), tail


def _read_verified(path):
    """(header, {name: array}) of a verified model file; ValueError says what is wrong."""
    spath = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(4)
        if head != b"PK\x03\x04":
            raise ValueError(_not_ours(spath, head, f))
        sig_len = len(f"{MODEL_FORMAT} {MODEL_VERSION} sha256:") + DIGEST_LEN
        # the version may have more digits than ours: search the last bytes for the signature
        f.seek(max(0, size - sig_len - 8))
        tail = f.read()
        at = tail.rfind(MODEL_FORMAT.encode() + b" ")
        if at < 0:
            raise ValueError(_zip_problem(f, spath))
        expected, _ = _check_signature(f, spath, MODEL_FORMAT, MODEL_VERSION, size, max(0, size - sig_len - 8) + at)
        if expected is None:
            raise ValueError(f"{spath} is corrupted or truncated: its fastmlp signature is damaged")
        got = sha256_of(f, 0, size - DIGEST_LEN)
        if got != expected:
            raise ValueError(f"{spath} is corrupted: SHA-256 mismatch (the file says {expected[:16]}..., "
                             f"its bytes hash to {got[:16]}...); it was modified or damaged after writing")
        f.seek(0)
        try:
            with np.load(f, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (zipfile.BadZipFile, ValueError, KeyError, EOFError, OverflowError, UnicodeDecodeError) as e:
            raise ValueError(f"{spath} is corrupted: its archive does not read back ({e})") from None
    blob = arrays.pop("header", None)
    if blob is None or blob.dtype != np.uint8 or blob.ndim != 1:
        raise ValueError(f"{spath} is not a fastmlp model file: expected a header entry, got none")
    try:
        header = json.loads(blob.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{spath} is corrupted: its header is not JSON ({e})") from None
    if not isinstance(header, dict) or header.get("format") != MODEL_FORMAT:
        raise ValueError(f"{spath} is not a fastmlp model file: expected format {MODEL_FORMAT!r}, "
                         f"got {header.get('format') if isinstance(header, dict) else type(header).__name__!r}")
    if not isinstance(header.get("version"), int) or header["version"] > MODEL_VERSION:
        raise ValueError(f"{spath} was written by a newer fastmlp (format version {header.get('version')!r}); "
                         f"this fastmlp reads versions up to {MODEL_VERSION}: upgrade fastmlp")
    for key in ("model", "rng", "arrays", "optimizer_step"):
        if key not in header:
            raise ValueError(f"{spath} is not a complete fastmlp model file: expected {key!r} in its header")
    return header, arrays


def _zip_problem(f, path):
    f.seek(0)
    try:
        with zipfile.ZipFile(f) as zf:
            zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return (f"{path} is truncated or corrupted: no readable zip end record "
                "(was the write interrupted, or the copy incomplete?)")
    return f"{path} is a zip/.npz archive but not a fastmlp model file (no fastmlp signature)"
