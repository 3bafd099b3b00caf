"""Files: model files (.npz), weight files (HDF5), crash-safe writes, on-disk arrays.

Model file (``model.save`` / ``load_model``): a zip archive that ``np.load``
reads (``allow_pickle=False``), members stored uncompressed:

    header.npy          uint8, UTF-8 JSON: format, version, architecture (layers by
                        registered class name + get_config, loss, optimizer config and
                        step count, dtype, device, seed, input shape), the model's
                        random-generator state, the training position, array index
    param_{k}.npy       the k-th array of get_weights(), in the model dtype
    opt_{name}_{k}.npy  optimizer state buffer ``name`` for parameter k
    layer_{i}_{key}.npy layer i's non-trainable state (get_state: BatchNorm statistics)

The zip comment, the last bytes of the file, is ``fastmlp-model <version>
sha256:<hex>``: the SHA-256 of every byte of the file before the hex digits.
A flipped bit anywhere, a truncation, a foreign file or a newer format is a
``ValueError`` that says which; failing to open or read is an ``OSError``.

Weight file (``save_weights`` / ``load_weights``): HDF5 with a 512-byte user
block holding ``fastmlp-weights <version> sha256:<hex>`` over the rest of the
file; datasets ``weights/<k>`` in get_weights() order.

Every write goes to an unnamed (Linux ``O_TMPFILE``) or hidden temporary file
in the target's folder, is flushed and fsync'd, then renamed over the target
(and the folder fsync'd): a crash leaves the previous file whole.
"""
import ctypes
import errno
import hashlib
import json
import os
import re
import secrets
import socket
import zipfile

import numpy as np

MODEL_FORMAT = "fastmlp-model"
MODEL_VERSION = 1
WEIGHTS_FORMAT = "fastmlp-weights"
WEIGHTS_VERSION = 1
_DIGEST_LEN = 64                  # hex characters of a SHA-256
_USERBLOCK = 512                  # bytes before the HDF5 superblock
_CHUNK = 1 << 20


# ---------------------------------------------------------------------- crash-safe writes

_link_works = {}  # st_dev of a folder -> whether an O_TMPFILE file can be linked there


def _fsync_dir(folder):
    if os.name == "nt":
        return  # folders cannot be opened (or fsync'd) on Windows
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _temp_name(folder, base):
    host = socket.gethostname().replace(".", "_") or "host"
    return os.path.join(folder, f".{base}.{host}-{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _sweep_stale_temps(folder, base):
    """Remove temporaries of ``base`` left by killed processes of this host.

    Only a process killed between naming its temporary and renaming it (or on
    a system without O_TMPFILE, while writing) leaves one."""
    if os.name == "nt":
        return  # os.kill(pid, 0) would terminate the process there
    host = socket.gethostname().replace(".", "_") or "host"
    pattern = re.compile(re.escape(f".{base}.{host}-") + r"(\d+)\.[0-9a-f]{8}\.tmp\Z")
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass
        except OSError:
            pass  # alive (or not ours to ask about)


def _open_unnamed(folder):
    """An O_TMPFILE file in ``folder`` (no name: a crash leaves nothing), or None."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None:
        return None
    try:
        dev = os.stat(folder).st_dev
    except OSError:
        return None
    if _link_works.get(dev) is False:
        return None
    try:
        return os.open(folder, flag | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError:
        _link_works[dev] = False
        return None


def _link_unnamed(fd, dest):
    """Give the O_TMPFILE file ``fd`` the name ``dest``; False when the system will not."""
    try:
        os.link(f"/proc/self/fd/{fd}", dest, follow_symlinks=True)
        return True
    except OSError:
        pass
    try:  # linkat(fd, "", AT_FDCWD, dest, AT_EMPTY_PATH): needs CAP_DAC_READ_SEARCH before Linux 6.10
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.linkat(fd, b"", -100, os.fsencode(dest), 0x1000) == 0
    except (OSError, AttributeError):
        return False


def atomic_write(path, write):
    """Call ``write(f)`` on a binary read/write file, then put it at ``path`` atomically.

    A crash (even SIGKILL) at any point leaves either the previous file or the
    new one at ``path``, never a mix, and (on Linux) no temporary file: the data
    goes to an unnamed O_TMPFILE that gets a name only once it is complete and
    fsync'd. An exception removes the temporary and propagates."""
    path = os.path.abspath(os.fspath(path))
    folder, base = os.path.split(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, "folder to write into not found", folder)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "expected a file path, got a folder", path)
    _sweep_stale_temps(folder, base)
    fd = _open_unnamed(folder)
    named = None
    if fd is None:
        named = _temp_name(folder, base)
        fd = os.open(named, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "w+b") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            if named is None:
                named = _temp_name(folder, base)
                if not _link_unnamed(f.fileno(), named):
                    _link_works[os.fstat(f.fileno()).st_dev] = False
                    _copy_to_new_file(f, named)
        os.replace(named, path)
        named = None
    finally:
        if named is not None:
            try:
                os.unlink(named)
            except FileNotFoundError:
                pass
    _fsync_dir(folder)
    return path


def _copy_to_new_file(f, dest):
    f.seek(0)
    with open(dest, "xb") as g:
        while chunk := f.read(_CHUNK):
            g.write(chunk)
        g.flush()
        os.fsync(g.fileno())


def _sha256(f, start, stop, prefix=b""):
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


# ---------------------------------------------------------------------- model state <-> arrays

def _by_class_name(registry):
    return {cls.__name__: cls for cls in registry.values()}


def _jsonable(value, what):
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"cannot save {what}: expected a JSON-serialisable config, got {value!r} ({e})") from None


def _class_entry(obj, registry, what):
    name = type(obj).__name__
    if registry.get(name) is not type(obj):
        raise ValueError(f"cannot save {what} {obj!r}: expected one of the classes load_model knows "
                         f"{sorted(registry)}, got {type(obj).__module__}.{name} (register it first)")
    return {"class": name, "config": _jsonable(obj.get_config(), f"{what} {obj!r}")}


def _registries():
    from .layers import LAYERS
    from .losses import LOSSES
    from .optimizers import OPTIMIZERS
    return dict(LAYERS), _by_class_name(LOSSES), _by_class_name(OPTIMIZERS)


def _state_views(model, buf):
    """Views of a flat optimizer-state buffer aligned with the parameter views."""
    return [buf[off:off + v.size].reshape(v.shape) for off, v in zip(model._offsets, model._param_views)]


def architecture(model):
    """The JSON description of a built model (no arrays)."""
    if not model.built:
        raise ValueError("expected a built model (call fit/predict once or pass input_shape=), "
                         "got an unbuilt one")
    layers, losses, opts = _registries()
    opt = _class_entry(model.optimizer, opts, "optimizer")
    opt["state_names"] = list(model.optimizer.state_names)
    return {
        "layers": [_class_entry(layer, layers, f"layer {i}") for i, layer in enumerate(model.layers)],
        "input_shape": list(model.input_shape),
        "loss": _class_entry(model.loss, losses, "loss"),
        "optimizer": opt,
        "dtype": np.dtype(model.dtype).name,
        "device": model.device,
        "seed": int(model.seed),
    }


def model_state(model):
    """(header dict, {name: host array}): everything a model file holds."""
    arch = architecture(model)
    be = model.be
    arrays, index = {}, {"params": [], "optimizer": {}, "layers": {}}
    for k, v in enumerate(model._param_views):
        arrays[f"param_{k}"] = np.asarray(be.to_host(v))
        index["params"].append(f"param_{k}")
    for name, buf in zip(model.optimizer.state_names, model._state):
        index["optimizer"][name] = []
        for k, v in enumerate(_state_views(model, buf)):
            arrays[f"opt_{name}_{k}"] = np.asarray(be.to_host(v))
            index["optimizer"][name].append(f"opt_{name}_{k}")
    for i, layer in enumerate(model.layers):
        state = layer.get_state()
        if state:
            index["layers"][str(i)] = {}
            for key, value in state.items():
                if not re.fullmatch(r"[A-Za-z0-9_]+", str(key)):
                    raise ValueError(f"cannot save layer {i} state: expected names of letters, digits and _, "
                                     f"got {key!r}")
                arrays[f"layer_{i}_{key}"] = np.asarray(be.to_host(value))
                index["layers"][str(i)][key] = f"layer_{i}_{key}"
    for name, a in arrays.items():
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise ValueError(f"cannot save {name}: expected a numeric array, got dtype {a.dtype}")
    from . import __version__
    header = {
        "format": MODEL_FORMAT, "version": MODEL_VERSION, "fastmlp_version": __version__,
        "model": arch,
        "optimizer_step": int(model.optimizer.t),
        "rng": _jsonable(model.rng.bit_generator.state, "the random-generator state"),
        "training": training_position(model),
        "arrays": index,
    }
    return header, arrays


def training_position(model):
    """Where training stands (None before any fit): epoch, step within it, and what
    a mid-epoch resume needs (the generator state at the epoch start, the epoch's
    running loss/accuracy sums)."""
    pos = getattr(model, "_position", None)
    if pos is None:
        return None
    pos = dict(pos)
    if pos.get("step", 0):
        pos["stats"] = [float(s) for s in np.asarray(model.be.to_host(model._stats))]
    return _jsonable(pos, "the training position")


def _check_compatible(model, arch, path):
    """ValueError unless ``arch`` (from a file) describes ``model``'s layers and optimizer."""
    mine = architecture(model)
    for key in ("input_shape", "dtype"):
        if mine[key] != arch[key]:
            raise ValueError(f"{path}: expected a file of a model with {key} {mine[key]}, got {arch[key]}")
    if len(mine["layers"]) != len(arch["layers"]):
        raise ValueError(f"{path}: expected a file of a model with {len(mine['layers'])} layers, "
                         f"got {len(arch['layers'])}")
    for i, (a, b) in enumerate(zip(mine["layers"], arch["layers"])):
        if a != b:
            raise ValueError(f"{path}: layer {i}: expected {a['class']}{a['config']}, got {b['class']}{b['config']}")
    if mine["optimizer"]["class"] != arch["optimizer"]["class"]:
        raise ValueError(f"{path}: expected optimizer state of {mine['optimizer']['class']}, "
                         f"got {arch['optimizer']['class']}")


def restore(model, header, arrays, path, check=True):
    """Write a file's state into a built model: checks everything, then writes (all or nothing).

    Parameters, optimizer state and step count, layer state, generator state
    and training position are restored; the model's optimizer hyperparameters
    (lr, ...) stay as they are."""
    if check:
        _check_compatible(model, header["model"], path)
    index = header["arrays"]
    views = model._param_views
    plan = []  # (destination view, host array)

    def take(name, dest, what):
        a = arrays.get(name)
        if a is None:
            raise ValueError(f"{path}: expected array {name!r} ({what}) in the file, got none")
        if a.shape != tuple(dest.shape):
            raise ValueError(f"{path}: expected {what} of shape {tuple(dest.shape)}, got {a.shape}")
        plan.append((dest, a))

    if len(index["params"]) != len(views):
        raise ValueError(f"{path}: expected {len(views)} weight arrays, got {len(index['params'])}")
    for k, (name, v) in enumerate(zip(index["params"], views)):
        take(name, v, f"weight {k}")
    names = list(model.optimizer.state_names)
    if sorted(index["optimizer"]) != sorted(names):
        raise ValueError(f"{path}: expected optimizer state {names}, got {sorted(index['optimizer'])}")
    for name, buf in zip(names, model._state):
        for k, (a_name, v) in enumerate(zip(index["optimizer"][name], _state_views(model, buf))):
            take(a_name, v, f"optimizer state {name} of weight {k}")
    layer_states = {}
    for i, layer in enumerate(model.layers):
        want = layer.get_state()
        got = index["layers"].get(str(i), {})
        if sorted(want) != sorted(got):
            raise ValueError(f"{path}: layer {i} ({layer!r}): expected state {sorted(want)}, got {sorted(got)}")
        if got:
            st = {}
            for key, a_name in got.items():
                a = arrays.get(a_name)
                if a is None or a.shape != np.shape(want[key]):
                    raise ValueError(f"{path}: layer {i} state {key!r}: expected shape {np.shape(want[key])}, "
                                     f"got {None if a is None else a.shape}")
                st[key] = a
            layer_states[i] = st
    step = header.get("optimizer_step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"{path}: expected an optimizer step count >= 0, got {step!r}")
    rng = np.random.default_rng()
    try:
        rng.bit_generator.state = header["rng"]
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: expected the state of a {type(model.rng.bit_generator).__name__} "
                         f"generator, got {str(header['rng'])[:80]} ({e})") from None
    # everything checked: write
    be = model.be
    for dest, a in plan:
        dest[...] = be.to_device(a, model.dtype)
    model.optimizer.t = step
    for i, st in layer_states.items():
        model.layers[i].set_state(st)
    model.rng.bit_generator.state = header["rng"]   # in place: the layers share this generator
    model._bad[...] = 0
    model._prev[...] = model._params
    model.seed = int(header["model"]["seed"])
    model._position = header.get("training")


def build_model(header, arrays, path, device=None):
    """A new Sequential from a file's architecture, with its state restored."""
    from .model import Sequential
    arch = header["model"]
    layer_reg, loss_reg, opt_reg = _registries()

    def make(entry, registry, what, factory):
        cls = registry.get(entry.get("class"))
        if cls is None:
            raise ValueError(f"{path}: unknown {what} class {entry.get('class')!r}; expected one of "
                             f"{sorted(registry)} (a custom class must be registered before load_model)")
        try:
            return factory(cls, entry.get("config", {}))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: cannot rebuild {what} {entry.get('class')}: {e}") from None

    layers = [make(e, layer_reg, f"layer {i}", lambda c, cfg: c.from_config(cfg))
              for i, e in enumerate(arch["layers"])]
    loss = make(arch["loss"], loss_reg, "loss", lambda c, cfg: c(**cfg))
    opt = make(arch["optimizer"], opt_reg, "optimizer", lambda c, cfg: c(**cfg))
    try:
        model = Sequential(layers, loss=loss, optimizer=opt, device=device or arch["device"],
                           dtype=arch["dtype"], seed=arch["seed"], input_shape=tuple(arch["input_shape"]))
    except (ImportError, RuntimeError) as e:
        if device is not None:
            raise
        raise type(e)(f"{path} was saved on device {arch['device']!r}: {e}; "
                      "pass load_model(path, device='cpu') to load it here") from e
    if architecture(model)["layers"] != arch["layers"]:
        raise ValueError(f"{path}: the rebuilt layers do not describe themselves as the file does; "
                         "a layer's get_config/from_config do not round-trip")
    restore(model, header, arrays, path, check=True)
    return model


# ---------------------------------------------------------------------- model files

def _write_model(f, header, arrays):
    blob = np.frombuffer(json.dumps(header, sort_keys=True, allow_nan=False).encode("utf-8"), dtype=np.uint8)
    prefix = f"{MODEL_FORMAT} {MODEL_VERSION} sha256:".encode()
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.comment = prefix + b"0" * _DIGEST_LEN
        for name, a in [("header", blob)] + list(arrays.items()):
            with zf.open(name + ".npy", "w", force_zip64=True) as m:
                np.lib.format.write_array(m, np.ascontiguousarray(a), allow_pickle=False)
    f.flush()
    size = f.seek(0, os.SEEK_END)
    digest = _sha256(f, 0, size - _DIGEST_LEN)
    f.seek(size - _DIGEST_LEN)
    f.write(digest.encode())


def save_model(model, path):
    """Write ``model`` (architecture, weights, optimizer, generator, layer state) to ``path``."""
    header, arrays = model_state(model)  # raises before anything is written
    return atomic_write(path, lambda f: _write_model(f, header, arrays))


def _not_ours(path, head, f):
    if head == b"":
        return f"{path} is empty, not a fastmlp model file"
    if head.startswith(b"\x89HDF") or _hdf5_at(f, _USERBLOCK):
        return (f"{path} is an HDF5 file, not a fastmlp model file "
                "(a weights file? use model.load_weights)")
    return f"{path} is not a fastmlp model file (expected a zip/.npz archive, it starts with {head[:8]!r})"


def _hdf5_at(f, offset):
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


def read_model_file(path):
    """(header, {name: array}) of a verified model file; ValueError says what is wrong."""
    spath = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(4)
        if head != b"PK\x03\x04":
            raise ValueError(_not_ours(spath, head, f))
        sig_len = len(f"{MODEL_FORMAT} {MODEL_VERSION} sha256:") + _DIGEST_LEN
        # the version may have more digits than ours: search the last bytes for the signature
        f.seek(max(0, size - sig_len - 8))
        tail = f.read()
        at = tail.rfind(MODEL_FORMAT.encode() + b" ")
        if at < 0:
            raise ValueError(_zip_problem(f, spath))
        expected, _ = _check_signature(f, spath, MODEL_FORMAT, MODEL_VERSION, size, max(0, size - sig_len - 8) + at)
        if expected is None:
            raise ValueError(f"{spath} is corrupted or truncated: its fastmlp signature is damaged")
        got = _sha256(f, 0, size - _DIGEST_LEN)
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


def load_model(path, device=None):
    """The model saved at ``path`` by ``model.save``: same layers, weights, optimizer state,
    generator state, layer state and training position. ``device`` overrides the
    saved one ("cpu", "cuda", "auto"); the dtype is the saved one."""
    header, arrays = read_model_file(path)
    try:
        return build_model(header, arrays, os.fspath(path), device=device)
    except KeyError as e:
        raise ValueError(f"{os.fspath(path)} is not a complete fastmlp model file: missing {e}") from None


def load_into(model, path):
    """Restore the state of the model file at ``path`` into ``model`` (same architecture)."""
    header, arrays = read_model_file(path)
    try:
        restore(model, header, arrays, os.fspath(path), check=True)
    except KeyError as e:
        raise ValueError(f"{os.fspath(path)} is not a complete fastmlp model file: missing {e}") from None
    return header


# ---------------------------------------------------------------------- weight files (HDF5)

def _require_h5py():
    try:
        import h5py
    except ImportError as e:  # a core dependency, but say so if it is missing
        raise ImportError("save_weights/load_weights need h5py: pip install h5py") from e
    return h5py


def save_weights(model, path):
    """The weights only, as HDF5 ``weights/<k>`` in get_weights() order, checksummed."""
    h5py = _require_h5py()
    weights = model.get_weights()
    names = [f"{i}:{type(layer).__name__}:{s.name}" for i, layer in enumerate(model.layers)
             for s in layer.param_specs()]

    def write(f):
        with h5py.File(f, "w", userblock_size=_USERBLOCK) as h:
            h.attrs["format"] = WEIGHTS_FORMAT
            h.attrs["version"] = WEIGHTS_VERSION
            h.attrs["dtype"] = np.dtype(model.dtype).name
            g = h.create_group("weights")
            for k, (w, name) in enumerate(zip(weights, names)):
                d = g.create_dataset(str(k), data=w)
                d.attrs["name"] = name
        f.flush()
        size = f.seek(0, os.SEEK_END)
        prefix = f"{WEIGHTS_FORMAT} {WEIGHTS_VERSION} sha256:".encode()
        digest = _sha256(f, _USERBLOCK, size, prefix)
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
            header, arrays = read_model_file(path)
            return [arrays[name] for name in header["arrays"]["params"]]
        if size < _USERBLOCK or not _hdf5_at(f, _USERBLOCK):
            if head.startswith(b"\x89HDF"):
                raise ValueError(f"{spath} is an HDF5 file but not a fastmlp weights file (no fastmlp user block)")
            if size < _USERBLOCK and head == WEIGHTS_FORMAT.encode()[:4]:
                raise ValueError(f"{spath} is truncated: {size} bytes")
            raise ValueError(f"{spath} is not a fastmlp weights file (expected HDF5, it starts with {head!r})")
        f.seek(0)
        block = f.read(_USERBLOCK).rstrip(b"\0")
        m = re.fullmatch(rb"(\S+) (\d{1,6}) sha256:([0-9a-f]{64})", block)
        if m is None or m.group(1) != WEIGHTS_FORMAT.encode():
            raise ValueError(f"{spath} is not a fastmlp weights file, or its signature is damaged")
        if int(m.group(2)) > WEIGHTS_VERSION:
            raise ValueError(f"{spath} was written by a newer fastmlp (weights format version "
                             f"{int(m.group(2))}); this fastmlp reads up to {WEIGHTS_VERSION}: upgrade fastmlp")
        prefix = block[:m.start(3)]
        got = _sha256(f, _USERBLOCK, size, prefix)
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


def load_weights(model, path):
    """Set the model's weights from ``path``; all shapes are checked before any is written."""
    weights = read_weights_file(path)
    expected = [tuple(v.shape) for v in model._param_views]
    if len(weights) != len(expected):
        raise ValueError(f"{os.fspath(path)}: expected {len(expected)} weight arrays for this model, "
                         f"got {len(weights)}")
    for k, (w, shape) in enumerate(zip(weights, expected)):
        if w.shape != shape:
            raise ValueError(f"{os.fspath(path)}: expected weight {k} of shape {shape}, got {w.shape}")
    model.set_weights(weights)


# ---------------------------------------------------------------------- arrays that live in files

def is_lazy_array(X):
    """An on-disk array (h5py.Dataset, zarr, ...): shape, dtype and __getitem__,
    but none of the protocols of in-memory arrays (those go through np.asarray)."""
    if isinstance(X, (np.ndarray, np.generic, list, tuple, str, bytes, memoryview)):
        return False
    if not all(hasattr(X, a) for a in ("shape", "dtype", "__getitem__")):
        return False
    if any(hasattr(X, a) for a in ("__array_interface__", "__cuda_array_interface__", "__dlpack__")):
        return False
    try:
        np.dtype(X.dtype)
        tuple(int(s) for s in X.shape)
    except (TypeError, ValueError):
        return False
    return True


class LazyRows:
    """Rows [start, stop) of an on-disk array, read a batch at a time.

    ``take(out, idx)`` reads the rows ``idx`` (any order) with one sorted read
    (h5py wants increasing indices) or one slice when they are contiguous, and
    writes them, converted to ``out``'s dtype, into the preallocated ``out``."""

    def __init__(self, src, sample_shape, start=0, stop=None):
        self.src, self.sample_shape = src, tuple(sample_shape)
        self.start = start
        self.stop = int(src.shape[0]) if stop is None else stop
        self.shape = (self.stop - self.start,) + self.sample_shape
        self.dtype = np.dtype(src.dtype)
        self.ndim = len(self.shape)

    def rows(self, start, stop):
        n = self.shape[0]
        start, stop = max(0, min(n, start)), max(0, min(n, stop))
        return LazyRows(self.src, self.sample_shape, self.start + start, self.start + stop)

    def read(self, start, stop):
        """Rows [start, stop) as a host array of the source dtype."""
        a = np.asarray(self.src[self.start + start:self.start + stop])
        return a.reshape((a.shape[0],) + self.sample_shape)

    def take(self, out, idx):
        # out (B, ...) host array; idx (B,) host ints, distinct
        if idx.size and idx[-1] - idx[0] == idx.size - 1 and np.all(np.diff(idx) == 1):
            out[...] = self.read(int(idx[0]), int(idx[-1]) + 1)
            return
        order = np.argsort(idx, kind="stable")
        rows = np.asarray(self.src[idx[order] + self.start])
        out[order] = rows.reshape((rows.shape[0],) + self.sample_shape)

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        return f"LazyRows({type(self.src).__name__}, rows {self.start}:{self.stop})"


def chunk_rows(shape, itemsize, target=4 << 20):
    """Rows per read of about ``target`` bytes."""
    per_row = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
    return max(1, target // per_row)

