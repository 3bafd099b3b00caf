"""Figures of a training run and of a data set, written as PNG files.

    fm.plot.history(h, "curves.png")                      # loss / accuracy per epoch
    fm.plot.gallery(X_test, y_test, y_pred, "gallery.png", classes=["non-cat", "cat"])
    fm.plot.dataset_stats(X, y, "data.png", classes=classes)

matplotlib is an extra (``pip install "fastmlp[plot]"``), imported only when a
function here runs. Figures are drawn on matplotlib's Agg canvas directly,
without pyplot, so the backend of a notebook or GUI session is left alone and
no display is needed. Every file is written atomically (``fastmlp.atomic``): a
failed call never leaves a half-written PNG. Each function returns the path it
wrote, or, called without a path, the matplotlib ``Figure`` (shown inline by a
notebook; ``fig.savefig(...)`` writes it).

Shape vocabulary: N images, H x W pixels, C channels, K classes.
"""
import math
import os

import numpy as np

_EXTRA = 'pip install "fastmlp[plot]"'
_SPLITS = (("", "train", "-"), ("val_", "validation", "--"), ("test_", "test", ":"))
_RED = np.array([0.85, 0.05, 0.05])


def _figure(**kw):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"fastmlp.plot needs matplotlib: {_EXTRA}") from e
    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path, dpi):
    """Write fig as a PNG at path (atomically) and return the path; without a path, return fig."""
    if path is None:
        fig.set_dpi(dpi)
        return fig
    from .atomic import atomic_write
    return atomic_write(os.fspath(path), lambda f: fig.savefig(f, format="png", dpi=dpi))


def _image_hwc(image_shape, features):
    """(H, W, C) of flat images of ``features`` values, from image_shape (H, W) or (H, W, C)."""
    shape = tuple(int(v) for v in image_shape)
    if len(shape) == 2:
        h, w = shape
        if h < 1 or w < 1 or features % (h * w):
            raise ValueError(f"expected F = H*W*C with image_shape={shape}, got F={features}")
        return h, w, features // (h * w)
    if len(shape) == 3:
        if min(shape) < 1 or features != shape[0] * shape[1] * shape[2]:
            raise ValueError(f"expected F = H*W*C = {int(np.prod(shape))} with image_shape={shape}, "
                             f"got F={features}")
        return shape
    raise ValueError(f"expected image_shape (H, W) or (H, W, C), got {image_shape!r}")


# ---------------------------------------------------------------------- history


def history(h, path=None, title=None, dpi=100):
    """Loss and accuracy per epoch, train / validation / test, from a ``History``
    (or its ``.history`` dict). The best validation epoch is starred. Returns the path,
    or the ``Figure`` when no path is given."""
    hist = getattr(h, "history", h)
    if not isinstance(hist, dict):
        raise TypeError(f"expected a fastmlp History or a dict of per-epoch lists, got {type(h).__name__}")
    metrics = [m for m in ("loss", "accuracy") if any(hist.get(p + m) for p, _, _ in _SPLITS)]
    if not metrics:
        raise ValueError(f"expected 'loss' or 'accuracy' curves in the history, got keys {sorted(hist)}")
    fig = _figure(figsize=(5.2 * len(metrics), 3.8), layout="constrained")
    from matplotlib.ticker import MaxNLocator
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        for prefix, label, style in _SPLITS:
            values = np.asarray(hist.get(prefix + metric) or [], dtype=np.float64)
            if values.size == 0:
                continue
            epochs = np.arange(1, values.size + 1)
            ax.plot(epochs, values, style, label=label, marker="o" if values.size <= 25 else None,
                    markersize=3)
            if prefix == "val_" and np.isfinite(values).any():
                best = int(np.nanargmin(values) if metric == "loss" else np.nanargmax(values))
                ax.plot(best + 1, values[best], "*", markersize=12, color="gold", markeredgecolor="k",
                        label=f"best validation (epoch {best + 1})")
        finite = np.concatenate([np.asarray(hist.get(p + metric) or [], np.float64) for p, _, _ in _SPLITS])
        finite = finite[np.isfinite(finite)]
        if metric == "loss" and finite.size and finite.min() > 0 and finite.max() / finite.min() > 50:
            ax.set_yscale("log")
        if metric == "accuracy":
            ax.set_ylim(min(0.0, finite.min()) if finite.size else 0.0, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "Training curves")
    return _save(fig, path, dpi)


# ---------------------------------------------------------------------- images


def _as_rgb(images, image_shape=None):
    """(N, H, W, 3) float in [0, 1] from (N, H, W), (N, H, W, C), (N, C, H, W) or flat (N, F)
    with image_shape (H, W) or (H, W, C)."""
    X = np.asarray(images)
    if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise TypeError(f"expected numeric images, got dtype {X.dtype}")
    if X.ndim == 2:
        if image_shape is None:
            raise ValueError(f"expected images (N, H, W[, C]), or image_shape=(H, W) or (H, W, C) for "
                             f"flat (N, F) images, got shape {X.shape}")
        X = X.reshape(len(X), *_image_hwc(image_shape, X.shape[1]))
    elif X.ndim == 4 and X.shape[-1] not in (1, 3, 4) and X.shape[1] in (1, 3):
        X = X.transpose(0, 2, 3, 1)   # NCHW -> NHWC
    elif X.ndim not in (3, 4):
        raise ValueError(f"expected images of shape (N, H, W), (N, H, W, C) or (N, C, H, W), got {X.shape}")
    if X.ndim == 3:
        X = X[..., None]
    if X.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected 1, 3 or 4 channels, got {X.shape[-1]} (shape {X.shape})")
    X = X[..., :3].astype(np.float64)
    if np.asarray(images).dtype == np.uint8:
        X /= 255.0
    elif X.size and (X.min() < 0 or X.max() > 1):
        # standardised or 0..255 floats: stretch each image to [0, 1] for display
        lo = X.min(axis=(1, 2, 3), keepdims=True)
        hi = X.max(axis=(1, 2, 3), keepdims=True)
        X = (X - lo) / np.where(hi > lo, hi - lo, 1.0)
    if X.shape[-1] == 1:
        X = np.repeat(X, 3, axis=-1)
    return np.clip(X, 0.0, 1.0)


def _labels(y, n, what):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        y = np.argmax(y, axis=1)      # one-hot rows or probabilities
    y = y.reshape(-1)
    if len(y) != n:
        raise ValueError(f"expected {what} with {n} entries (one per image), got {len(y)}")
    if not np.all(np.isfinite(y.astype(np.float64))) or np.any(y != np.round(y)):
        raise ValueError(f"expected integer class labels in {what}")
    return y.astype(np.int64)


def _name(classes, k):
    return str(classes[k]) if classes is not None and 0 <= k < len(classes) else str(k)


def gallery(images, y_true, y_pred, path=None, classes=None, image_shape=None, negative_class="auto",
            max_images=60, cols=None, title=None, dpi=100):
    """A grid of images with their predicted class, accuracy in the title.

    Correct predictions are shown as they are; misclassified images are tinted
    red and captioned with the true class; correct predictions of the negative
    class (true negatives, e.g. "non-cat") are dimmed so that the positives and
    the mistakes stand out. ``negative_class="auto"`` is 0 for two classes and
    none otherwise. ``y_pred`` may be class indices, one-hot rows or
    probabilities ((N, K) argmax, or (N, 1) / (N,) sigmoid outputs > 0.5). Flat (N, F)
    images need ``image_shape`` (H, W) or (H, W, C). Returns the path, or the ``Figure``
    when no path is given."""
    X = np.asarray(images)
    n = len(X)
    if n == 0:
        raise ValueError("expected at least one image, got 0")
    y_pred = np.asarray(y_pred)
    if np.issubdtype(y_pred.dtype, np.floating) and y_pred.size == n and \
            np.any((y_pred > 0) & (y_pred < 1)):
        y_pred = (y_pred.reshape(-1) > 0.5)          # sigmoid probabilities
    y_true, y_pred = _labels(y_true, n, "y_true"), _labels(y_pred, n, "y_pred")
    rgb = _as_rgb(X, image_shape)
    k = max(int(y_true.max()), int(y_pred.max())) + 1
    if negative_class == "auto":
        negative_class = 0 if (classes is None and k <= 2) or (classes is not None and len(classes) == 2) else None
    correct = y_true == y_pred
    acc = float(correct.mean())
    show = min(n, int(max_images))
    cols = int(cols or min(show, max(4, math.ceil(math.sqrt(show * 1.6)))))
    rows = math.ceil(show / cols)
    h, w = rgb.shape[1:3]
    tile = 1.35
    fig = _figure(figsize=(cols * tile, rows * tile * h / w + rows * 0.28 + 0.75), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= show:
            continue
        img = rgb[i]
        caption, color = _name(classes, y_pred[i]), "black"
        if not correct[i]:
            img = 0.45 * img + 0.55 * _RED           # red-dominant whatever the image
            caption, color = f"{caption}\n(true: {_name(classes, y_true[i])})", _RED
        elif negative_class is not None and y_true[i] == negative_class:
            img = 0.3 * img + 0.7                    # faded towards the white page
            color = "0.55"
        ax.imshow(img, interpolation="nearest")
        ax.set_title(caption, fontsize=7, color=color, pad=2)
    wrong = int(n - correct.sum())
    head = title or "Predictions"
    shown = f", first {show} shown" if show < n else ""
    note = "red: misclassified"
    if negative_class is not None:
        note += f"; faded: correct '{_name(classes, negative_class)}'"
    fig.suptitle(f"{head}: accuracy {acc:.1%} ({n - wrong}/{n}){shown}\n{note}", fontsize=10)
    return _save(fig, path, dpi)


# ---------------------------------------------------------------------- data set


def _image_stack(X, image_shape):
    """(N, H, W) grey levels of images, or None for plain feature vectors."""
    if X.ndim == 2 and image_shape is not None:
        return X.reshape(len(X), *_image_hwc(image_shape, X.shape[1])).mean(axis=3)
    if X.ndim == 3:
        return X
    if X.ndim == 4:
        return X.mean(axis=3) if X.shape[-1] in (1, 3, 4) else X.mean(axis=1)
    return None


def dataset_stats(X, y, path=None, classes=None, image_shape=None, title=None, dpi=100, max_classes=10):
    """Class distribution, pixel-intensity histogram (all pixels and per class) and
    per-class pixel variance: one map per class for images (where the classes
    differ from image to image), a bar per class for plain features. The default title
    names the samples, the classes and the shape of a sample. Returns the path, or the
    ``Figure`` when no path is given."""
    X = np.asarray(X)
    if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise TypeError(f"expected numeric X, got dtype {X.dtype}")
    if X.ndim < 2 or len(X) == 0:
        raise ValueError(f"expected X of shape (N, ...) with N >= 1, got {X.shape}")
    y = _labels(y, len(X), "y")
    if y.min() < 0:
        raise ValueError(f"expected labels >= 0, got {y.min()}")
    k = int(y.max()) + 1 if classes is None else len(classes)
    if y.max() >= k:
        raise ValueError(f"expected labels < {k} for {k} classes, got {y.max()}")
    counts = np.bincount(y, minlength=k)
    names = [_name(classes, c) for c in range(k)]
    imgs = _image_stack(X, image_shape)
    shown = [c for c in range(k) if counts[c]][:max_classes]

    fig = _figure(figsize=(max(9.0, 1.35 * len(shown)), 7.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.25, 1.0])
    ax_count, ax_hist = top.subplots(1, 2)
    bars = ax_count.bar(range(k), counts, color="tab:blue")
    ax_count.bar_label(bars, fontsize=8)
    ax_count.set_xticks(range(k), names, rotation=30 if k > 4 else 0, ha="right" if k > 4 else "center",
                        fontsize=8)
    ax_count.set_ylabel("images")
    ax_count.set_title(f"Class distribution (N = {len(X):,})", fontsize=10)

    flat = X.reshape(len(X), -1).astype(np.float64, copy=False)
    step = max(1, flat.size // 2_000_000)            # a histogram of 2 M values is plenty
    values = flat.reshape(-1)[::step]
    lo, hi = float(values.min()), float(values.max())
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 51)
    ax_hist.hist(values, bins=bins, color="0.6", density=True, label="all")
    for c in shown:
        sel = flat[y == c].reshape(-1)[::step]
        ax_hist.hist(sel, bins=bins, density=True, histtype="step", label=names[c])
    ax_hist.set_yscale("log")
    ax_hist.set_xlabel("pixel value")
    ax_hist.set_ylabel("density")
    ax_hist.set_title("Pixel intensities", fontsize=10)
    ax_hist.legend(fontsize=7, ncol=2)

    if imgs is not None:
        var = [imgs[y == c].astype(np.float64).var(axis=0) for c in shown]
        vmax = max(float(v.max()) for v in var) or 1.0
        axes = bottom.subplots(1, len(shown), squeeze=False)[0]
        for ax, c, v in zip(axes, shown, var):
            im = ax.imshow(v, cmap="magma", vmin=0.0, vmax=vmax, interpolation="nearest")
            ax.set_title(f"{names[c]}\nmean {v.mean():.3g}", fontsize=8)
            ax.set_axis_off()
        bottom.colorbar(im, ax=list(axes), shrink=0.8, label="variance")
        more = f" (first {len(shown)} classes)" if len(shown) < k else ""
        bottom.suptitle(f"Per-class pixel variance{more}", fontsize=10)
    else:
        ax = bottom.subplots()
        means = [flat[y == c].var(axis=0).mean() for c in shown]
        ax.bar([names[c] for c in shown], means, color="tab:orange")
        ax.set_ylabel("mean variance per feature")
        ax.set_title("Per-class feature variance", fontsize=10)
    fig.suptitle(title or _describe(X, imgs, k, names), fontsize=12)
    return _save(fig, path, dpi)


def _describe(X, imgs, k, names):
    """The default title of dataset_stats: "209 samples of 64x64x3 images, 2 classes (non-cat, cat)"."""
    if imgs is not None:
        what = "x".join(map(str, X.shape[1:])) + " images" if X.ndim > 2 else \
            "x".join(map(str, imgs.shape[1:])) + f" images ({X.shape[1]:,} features)"
    else:
        what = f"{X.shape[1]:,} features"
    listed = ", ".join(names[:6]) + (", ..." if k > 6 else "")
    return f"{len(X):,} samples of {what}, {k} classes ({listed})"
