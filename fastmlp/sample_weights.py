"""Per-sample weights for fit and evaluate: ``sample_weight`` and ``class_weight``, checked
and combined once, before anything changes.

The weight of sample i is sample_weight[i] * class_weight[class of i] (either factor 1 when
not given), as Keras combines them. ``class_weight="balanced"`` is scikit-learn's
``n_samples / (n_classes * count)`` over the classes present. The loss kernels multiply
each sample's loss and gradient by its weight (fastmlp/losses.py); the weights travel
with the targets, gathered per batch into a fixed buffer (fastmlp/batches.py).
"""
import numpy as np

from .validation import is_int, is_real


def check_sample_weight(sample_weight, n, what="sample_weight"):
    """(N,) float64 copy of ``sample_weight``: real, finite, >= 0, one per sample ((N, 1) accepted)."""
    w = np.asarray(sample_weight)
    if w.dtype == bool or w.dtype.kind not in "iuf":
        raise TypeError(f"expected {what} as real numbers, got dtype {w.dtype}")
    if w.ndim == 2 and w.shape[1] == 1:
        w = w[:, 0]
    if w.shape != (n,):
        raise ValueError(f"expected {what} of shape ({n},), one weight per sample, got {w.shape}")
    w = w.astype(np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError(f"expected finite values in {what}, got NaN or Inf at sample(s) "
                         f"{np.flatnonzero(~np.isfinite(w))[:5].tolist()}")
    if np.any(w < 0):
        raise ValueError(f"expected {what} >= 0, got negative weights such as {w[w < 0][:3].tolist()}")
    return w


def class_weight_table(class_weight, ids, n_classes):
    """(n_classes,) float64: the weight of each class ("balanced" or {class: weight}; 1 unless named)."""
    table = np.ones(n_classes, dtype=np.float64)
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"expected class_weight as a dict {{class: weight}} or 'balanced', got {class_weight!r}")
        classes, counts = np.unique(ids, return_counts=True)
        table[classes] = ids.size / (classes.size * counts)
        return table
    if not isinstance(class_weight, dict):
        raise TypeError(f"expected class_weight as a dict {{class: weight}} or 'balanced', "
                        f"got {type(class_weight).__name__}")
    for c, v in class_weight.items():
        if not (is_int(c) or (is_real(c) and float(c).is_integer())) or not 0 <= int(c) < n_classes:
            raise ValueError(f"class_weight: expected classes among 0..{n_classes - 1}, got {c!r}")
        if not is_real(v) or not np.isfinite(v) or v < 0:
            raise ValueError(f"class_weight: expected a finite weight >= 0 for class {c!r}, got {v!r}")
        table[int(c)] = float(v)
    return table


def sample_weights(loss, targets, n_outputs, sample_weight=None, class_weight=None):
    """(N,) float64 host weights for the prepared host ``targets``, or None when neither is given."""
    n = targets.shape[0]
    w = None if sample_weight is None else check_sample_weight(sample_weight, n)
    if class_weight is not None:
        ids, n_classes = loss.class_ids(targets, n_outputs)
        cw = class_weight_table(class_weight, ids, n_classes)[ids]
        w = cw if w is None else w * cw
    return w
