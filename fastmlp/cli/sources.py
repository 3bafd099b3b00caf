"""A data source named on the command line (an .h5 file, a MedMNIST .npz, an MNIST IDX
folder, an image folder, 'shapes') as training / validation / test splits, and the
images as the model's input, as a run's preprocess.json records it."""
from pathlib import Path

from .errors import CommandError


def _is_mnist_folder(path):
    names = {p.name for p in path.iterdir()}
    return any(n.startswith("t10k-images-idx3-ubyte") for n in names)


def _split(X, y, val, test, seed):
    from ..preprocessing import train_val_test_split
    Xtr, ytr, Xv, yv, Xte, yte = train_val_test_split(X, y, val=val, test=test, seed=seed)
    return (Xtr, ytr), ((Xv, yv) if len(Xv) else None), ((Xte, yte) if len(Xte) else None)


def _load_h5(path, args):
    from .. import data
    try:
        return data.load_h5(path, x_key=getattr(args, "x_key", None), y_key=getattr(args, "y_key", None))
    except ValueError as e:   # the loader's hint names its keyword arguments: name the options here
        raise CommandError(str(e).replace("pass x_key= and y_key= to choose",
                                          "pass --x-key NAME and --y-key NAME to choose")) from None


def load_source(source, args, for_training=True):
    """{"train", "val", "test": (X, y) or None, "classes": list, "kind": str}.

    Images come back as loaded, (N, H, W[, C]); splits the source does not
    provide are drawn from its training part (stratified, seeded)."""
    from .. import data
    val = getattr(args, "val_split", 0.0) if for_training else 0.0
    test = getattr(args, "test_split", 0.0) if for_training else 0.0
    seed = args.seed
    if source == "shapes":
        X, y, classes = data.make_shapes(args.samples, size=args.image_size or 28, seed=seed, centered=True)
        if not for_training:
            return {"train": None, "val": None, "test": (X, y), "classes": classes, "kind": "shapes"}
        tr, va, te = _split(X, y, val, test, seed)
        return {"train": tr, "val": va, "test": te, "classes": classes, "kind": "shapes"}
    path = Path(source)
    if not path.exists():
        raise CommandError(f"data not found: {source} (expected an .h5 file, a MedMNIST .npz, a folder "
                           "of MNIST IDX files, a folder of class sub-folders of images, or 'shapes')")
    if path.is_file() and path.suffix.lower() == ".npz":
        splits = {s: data.load_medmnist(path, s) for s in ("train", "val", "test")}
        k = int(max(int(splits[s][1].max()) for s in splits)) + 1
        return {"train": splits["train"], "val": splits["val"], "test": splits["test"],
                "classes": [str(i) for i in range(k)], "kind": "medmnist"}
    if path.is_file():
        X, y, classes = _load_h5(path, args)
        kind = "h5"
    elif _is_mnist_folder(path):
        Xtr, ytr, Xte, yte = data.load_mnist_t10k(path)
        classes = [str(i) for i in range(10)]
        if not for_training:
            return {"train": None, "val": None, "test": (Xte, yte), "classes": classes, "kind": "mnist"}
        tr, va, _ = _split(Xtr, ytr, val, 0.0, seed)
        return {"train": tr, "val": va, "test": (Xte, yte), "classes": classes, "kind": "mnist"}
    elif data.is_split_folder(path):   # the given split: ROOT/train/<class>/, ROOT/test/<class>/
        size = args.image_size or 64
        d = data.load_image_splits(path, size=(size, size), grayscale=not args.color, cache=_cache(args))
        if not for_training:
            return {"train": None, "val": None, "test": d["test"], "classes": d["classes"], "kind": "folder"}
        tr, va, _ = _split(*d["train"], val, 0.0, seed)
        return {"train": tr, "val": va, "test": d["test"], "classes": d["classes"], "kind": "folder"}
    else:
        size = args.image_size or 64
        X, y, classes = data.load_image_folder(path, size=(size, size), grayscale=not args.color,
                                               cache=_cache(args))
        kind = "folder"
    classes = classes or [str(i) for i in range(int(y.max()) + 1)]
    if not for_training:
        return {"train": None, "val": None, "test": (X, y), "classes": classes, "kind": kind}
    tr, va, te = _split(X, y, val, test, seed)
    return {"train": tr, "val": va, "test": te, "classes": classes, "kind": kind}


def _cache(args):
    """The image-folder cache argument of ``load_image_folder``: the user cache folder unless
    --no-cache ($FASTMLP_CACHE_DIR moves it)."""
    return not getattr(args, "no_cache", False)


def prepare(X, prep):
    """Loaded images -> the model's float32 input, as recorded in ``prep``: flat rows
    (N, F), or (N, C, H, W) images for a model with convolutions (layout "nchw")."""
    import numpy as np

    from ..preprocessing import Standardizer, scale_to_unit
    shape = tuple(prep["image_shape"])
    if tuple(X.shape[1:]) != shape:
        raise CommandError(f"expected images of shape {shape} (as in training), got {tuple(X.shape[1:])}")
    X = scale_to_unit(X) if X.dtype == np.uint8 else np.asarray(X, dtype=np.float32)
    n, shape = len(X), (-1,)
    if prep.get("layout") == "nchw":   # (N, H, W) or channels-last (N, H, W, C) -> (N, C, H, W)
        X = X[:, None] if X.ndim == 3 else X.transpose(0, 3, 1, 2)
        shape = X.shape[1:]
    X = X.reshape(n, -1)
    if prep.get("standardize"):
        X = Standardizer.from_dict(prep["standardize"]).transform(X)
    return np.ascontiguousarray(X.reshape((n,) + shape), dtype=np.float32)


def targets(y, prep):
    from ..preprocessing import one_hot
    return one_hot(y, len(prep["classes"])) if prep["targets"] == "one_hot" else y
