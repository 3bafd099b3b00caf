"""``fastmlp predict``: a saved model on image files or on a data set."""
import sys
from pathlib import Path

from . import options, runs, sources
from .errors import CommandError


_GREY_MODES = ("1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")


def _read_images(paths, prep):
    """Image files as the model's training images (size and colour of prep["image_shape"]),
    with a warning on stderr for each one converted (colour dropped or added, resized)."""
    import numpy as np

    from ..data import _pil_to_array, _require_pillow
    Image, ImageOps = _require_pillow()
    shape = prep["image_shape"]
    h, w = shape[0], shape[1]
    mode = "L" if len(shape) == 2 else "RGB"
    arrays = []
    for p in paths:
        if not Path(p).is_file():
            raise CommandError(f"image not found: {p}")
        try:
            with Image.open(p) as img:   # as load_image_folder reads them (16-bit scaled, not clipped)
                img = ImageOps.exif_transpose(img)
                _warn_conversion(p, img, (w, h), mode)
                arrays.append(_pil_to_array(img, Image, (w, h), mode))
        except (OSError, ValueError, SyntaxError) as e:
            raise CommandError(f"cannot read image {p}: {e}") from None
    return np.stack(arrays)


def _warn_conversion(path, img, size, mode):
    """One line on stderr when an image is not what the model was trained on."""
    grey = img.mode in _GREY_MODES
    changes = []
    if mode == "L" and not grey:
        changes.append(f"colour ({img.mode}) converted to grayscale (the model was trained on grayscale images)")
    elif mode == "RGB" and grey:
        changes.append(f"grayscale ({img.mode}) repeated into 3 channels (the model was trained on colour images)")
    if "A" in img.mode or "transparency" in img.info:
        changes.append("transparency dropped")
    if img.size != size:
        how = f"resized from {img.size[0]}x{img.size[1]} to {size[0]}x{size[1]}"
        if img.size[0] * size[1] != img.size[1] * size[0]:
            how += " (stretched: the aspect ratio differs)"
        changes.append(how + " as in training")
    if changes:
        print(f"fastmlp predict: warning: {path}: " + "; ".join(changes), file=sys.stderr)


def _class_names(p, classes):
    """(class index, probability of it) of each row of predict's output, and the names."""
    import numpy as np
    if p.shape[1] == 1:      # one sigmoid output: p(class 1)
        k = (p[:, 0] > 0.5).astype(np.int64)
        prob = np.where(k == 1, p[:, 0], 1.0 - p[:, 0])
    else:
        k = np.argmax(p, axis=1)
        prob = p[np.arange(len(p)), k]
    return k, prob, [classes[i] if i < len(classes) else str(i) for i in k]


def _is_data_source(arg):
    path = Path(arg)
    return arg == "shapes" or path.is_dir() or path.suffix.lower() in (".h5", ".hdf5", ".npz")


def run(args):
    """Class and probability of each IMAGE under a saved model (a --out folder of train),
    or of every sample of a data set (DATA: an .h5 file, a MedMNIST .npz (its test split),
    an MNIST IDX folder (t10k), a folder of class sub-folders, 'shapes') with its accuracy.
    Images whose colour or size differ from the training images are converted, with a
    warning. Ends with a key=value line: n, and accuracy for a data set."""
    import numpy as np
    model, prep = runs.load_model(args.model, args.device)
    what = "p" if prep.get("loss") != "mse" else "score"
    classes = prep["classes"]
    if len(args.inputs) == 1 and _is_data_source(args.inputs[0]):
        args.image_size = prep["image_shape"][0]
        args.color = not prep.get("grayscale", True)
        args.samples = getattr(args, "samples", 1000)
        src = sources.load_source(args.inputs[0], args, for_training=False)
        X_img, y = src["test"]
        if args.max_samples:
            X_img, y = X_img[:args.max_samples], y[:args.max_samples]
        k, prob, names = _class_names(model.predict(sources.prepare(X_img, prep)), classes)
        for i in range(min(args.show, len(k))):
            truth = classes[y[i]] if y[i] < len(classes) else str(y[i])
            mark = "" if k[i] == y[i] else "  (wrong)"
            print(f"{i}: {names[i]} ({what}={prob[i]:.3f}), true {truth}{mark}")
        if len(k) > args.show:
            print(f"... {len(k) - args.show} more (--show N prints more)")
        acc = float(np.mean(k == y))
        counts = np.bincount(k, minlength=len(classes))
        print(f"{args.inputs[0]}: {len(k)} samples, accuracy {acc:.4f}; predicted: "
              + ", ".join(f"{classes[c] if c < len(classes) else c} {n}" for c, n in enumerate(counts) if n))
        print(f"n={len(k)} accuracy={acc:.6f}")
        return 0
    sets = [path for path in args.inputs if _is_data_source(path)]
    if sets:
        raise CommandError(f"{sets[0]} is a data set: pass it alone (fastmlp predict MODEL DATA), "
                           "or pass image files only")
    X = sources.prepare(_read_images(args.inputs, prep), prep)
    k, prob, names = _class_names(model.predict(X), classes)
    for path, name, pr in zip(args.inputs, names, prob):
        print(f"{path}: {name} ({what}={pr:.3f})")
    print(f"n={len(names)} predicted={','.join(n.replace(' ', '_').replace(',', '_') for n in names)}")
    return 0


def add(sub):
    p = sub.add_parser("predict", help="classify image files or a data set with a saved model",
                       description=options.plain(run.__doc__), formatter_class=options.Formatter)
    p.add_argument("model", help=f"the --out folder of 'fastmlp train' (or its {runs.MODEL_FILE})")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DATA",
                   help="JPG/PNG files (converted to the training size and colour), or one data source")
    p.add_argument("--show", type=int, default=10, metavar="N", help="a data set: print the first N predictions")
    p.add_argument("--max-samples", type=options.positive_int, default=None,
                   help="a data set: use only the first N samples (default: all)")
    p.add_argument("--x-key", default=None, metavar="NAME", help=options.X_KEY_HELP)
    p.add_argument("--y-key", default=None, metavar="NAME", help=options.Y_KEY_HELP)
    p.add_argument("--seed", type=int, default=1, help="shapes: the seed of the images drawn (train draws with 0)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="where to run the model")
    p.set_defaults(func=run)
