"""The command line's argument types and shared help: each type says what it expected
and what it got (argparse prints that as the error)."""
import argparse
import math


def positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def hidden_sizes(text):
    """'256,256' -> [256, 256]; '' or 'none' -> [] (no hidden layer: softmax regression)."""
    if text.strip().lower() in ("", "none", "0"):
        return []
    try:
        return [positive_int(t.strip()) for t in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive layer sizes like 256,256 (or 'none'), got {text!r}") from None


def side(text):
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 8:
        raise argparse.ArgumentTypeError(f"expected an image side >= 8, got {text!r}")
    return v


def verbose(text):
    return "auto" if text == "auto" else int(text) if text in ("0", "1", "2") else text


def batch_size(text):
    if text.lower() == "full":
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'full', got {text!r}") from None


def number(lo, hi, lo_open=False, hi_open=False):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if not ok:
            interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text!r}")
        return v
    return parse


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default: the value, or what the help says it is; switches are off."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=32)

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is argparse.SUPPRESS or not action.option_strings or "default" in text:
            return text
        if action.default is False:
            return text + " (default: off)"
        if action.default is None:
            return text + " (default: none)"
        return text + " (default: %(default)s)"


def plain(doc):
    """A docstring as plain help text: no reStructuredText markup (``code`` -> code)."""
    return (doc or "").replace("``", "")


X_KEY_HELP = "HDF5: the dataset of the images (default: found by name, e.g. train_set_x, images, x)"


Y_KEY_HELP = "HDF5: the dataset of the labels (default: found by name, e.g. train_set_y, labels, y)"


def add_data_options(p, seed=0, seed_help="model, splits and augmentation seed"):
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="side of the square images: image folders are resized to it (default 64), "
                        "shapes are drawn at it (default 28)")
    p.add_argument("--color", action="store_true", help="image folders: keep RGB (default grayscale)")
    p.add_argument("--no-cache", action="store_true", help="image folders: decode every photo (by default "
                   "they are decoded once into $FASTMLP_CACHE_DIR, else ~/.cache/fastmlp)")
    p.add_argument("--samples", type=positive_int, default=5000, help="shapes: images to draw")
    p.add_argument("--max-samples", type=positive_int, default=None,
                   help="use only the first N samples, a quick run (default: all)")
    p.add_argument("--x-key", default=None, metavar="NAME", help=X_KEY_HELP)
    p.add_argument("--y-key", default=None, metavar="NAME", help=Y_KEY_HELP)
    p.add_argument("--seed", type=int, default=seed, help=seed_help)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="where to train and run")
