"""Losses, all taking logits, each fused with its gradient in one kernel.

A loss validates and converts the labels once per ``fit`` (``prepare``), then
per step calls its backend op, which writes d loss / d logits (scaled by
1/N, the loss being a mean over samples) and adds [loss sum, correct count]
into a small float64 ``stats`` array that stays on the device. With per-sample
``weights`` ((N,) float64 on the device: sample_weight times class_weight, see
fastmlp/sample_weights.py) it calls the weighted twin of its op, which multiplies each
sample's loss and gradient by its weight (Keras's reduction: the sum over the batch
divided by the batch's N, not by the sum of the weights).
"""
import numpy as np

from .backend.codes import IDENTITY, SIGMOID


def _labels_array(y):
    y = np.asarray(y)
    if y.dtype == object or not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise TypeError(f"expected numeric labels, got dtype {y.dtype}")
    if not np.all(np.isfinite(y)):
        raise ValueError("expected finite labels, got NaN or Inf")
    return y


class Loss:
    name = "loss"

    def prepare(self, y, n_outputs, dtype):
        """Validated host targets in the layout the kernel takes."""
        raise NotImplementedError

    def forward_backward(self, be, dlogits, stats, logits, targets, scale, weights=None):
        raise NotImplementedError

    def class_ids(self, targets, n_outputs):
        """(the class of each sample (N,) int64, the number of classes) for class_weight,
        from the prepared host targets; ValueError where samples have no single class."""
        raise ValueError(f"{type(self).__name__}: class_weight needs a classification loss; "
                         "pass per-sample weights as sample_weight")

    def probabilities(self, be, out, logits):
        """What predict returns for these logits (into out)."""
        raise NotImplementedError

    def get_config(self):
        return {}

    def __repr__(self):
        return f"{type(self).__name__}()"


class BinaryCrossEntropy(Loss):
    """Sigmoid + binary cross-entropy from logits; labels 0/1, shape (N,) or (N, K)."""
    name = "binary_crossentropy"

    def prepare(self, y, n_outputs, dtype):
        y = _labels_array(y)
        n = y.shape[0] if y.ndim else 0
        if y.ndim == 1 and n_outputs == 1:
            y = y.reshape(n, 1)
        if y.ndim != 2 or y.shape[1] != n_outputs:
            if n_outputs == 1:
                raise ValueError(f"BinaryCrossEntropy: expected labels of shape (N,) or (N, 1) for 1 output, "
                                 f"got {y.shape}")
            # several sigmoid outputs are independent yes/no answers (multi-label): one column each
            hint = ""
            if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
                hint = ("; for one class per sample, end the model with Dense(..., 1) for BinaryCrossEntropy "
                        f"or keep {n_outputs} outputs with SoftmaxCrossEntropy")
            raise ValueError(f"BinaryCrossEntropy: expected labels of shape (N, {n_outputs}) for {n_outputs} "
                             f"outputs (a 0/1 column per output, multi-label), got {y.shape}{hint}")
        if not np.all((y == 0) | (y == 1)):
            bad = np.unique(y[(y != 0) & (y != 1)])[:5]
            raise ValueError(f"BinaryCrossEntropy: expected labels 0 or 1, got values such as {bad.tolist()}")
        return np.ascontiguousarray(y, dtype=dtype)

    def forward_backward(self, be, dlogits, stats, logits, targets, scale, weights=None):
        if weights is None:
            be.bce_logits(dlogits, stats, logits, targets, scale)
        else:
            be.bce_logits_weighted(dlogits, stats, logits, targets, weights, scale)

    def class_ids(self, targets, n_outputs):
        if targets.shape[1] != 1:
            raise ValueError(f"BinaryCrossEntropy with {targets.shape[1]} outputs is multi-label: a sample has "
                             "no single class for class_weight; pass sample_weight instead")
        return targets[:, 0].astype(np.int64), 2

    def probabilities(self, be, out, logits):
        be.act_forward(out, logits, SIGMOID, 0.0)


class SoftmaxCrossEntropy(Loss):
    """Softmax + cross-entropy from logits; integer labels (N,) or one-hot (N, C)."""
    name = "softmax_crossentropy"

    def prepare(self, y, n_outputs, dtype):
        y = _labels_array(y)
        if y.ndim == 2 and y.shape[1] == 1 and n_outputs != 1:
            y = y[:, 0]
        if y.ndim == 2:
            if y.shape[1] != n_outputs:
                raise ValueError(f"SoftmaxCrossEntropy: expected one-hot labels of shape (N, {n_outputs}), got {y.shape}")
            if not (np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1)):
                raise ValueError("SoftmaxCrossEntropy: expected one-hot rows (a single 1, the rest 0); "
                                 "soft labels are not supported")
            y = np.argmax(y, axis=1)
        elif y.ndim != 1:
            raise ValueError(f"SoftmaxCrossEntropy: expected labels of shape (N,) or (N, {n_outputs}), got {y.shape}")
        if n_outputs < 2:
            raise ValueError(f"SoftmaxCrossEntropy: expected at least 2 outputs (classes), got {n_outputs}; "
                             "use BinaryCrossEntropy for one output")
        if y.size and not np.all(y == np.round(y)):
            raise ValueError("SoftmaxCrossEntropy: expected integer class labels, got non-integer values")
        if y.size and (y.min() < 0 or y.max() >= n_outputs):
            raise ValueError(f"SoftmaxCrossEntropy: expected labels in [0, {n_outputs}), "
                             f"got values from {y.min()} to {y.max()}")
        return np.ascontiguousarray(y, dtype=np.int64)

    def forward_backward(self, be, dlogits, stats, logits, targets, scale, weights=None):
        if weights is None:
            be.softmax_xent(dlogits, stats, logits, targets, scale)
        else:
            be.softmax_xent_weighted(dlogits, stats, logits, targets, weights, scale)

    def class_ids(self, targets, n_outputs):
        return targets.astype(np.int64), n_outputs

    def probabilities(self, be, out, logits):
        be.softmax_forward(out, logits)


class MeanSquaredError(Loss):
    """Mean over samples and outputs of (out - target)^2; targets (N,) or (N, M).

    Its accuracy counts |out - t| < 0.5 for one output, equal argmax otherwise."""
    name = "mse"

    def prepare(self, y, n_outputs, dtype):
        y = _labels_array(y)
        if y.ndim == 1 and n_outputs == 1:
            y = y.reshape(-1, 1)
        if y.ndim != 2 or y.shape[1] != n_outputs:
            raise ValueError(f"MeanSquaredError: expected targets of shape (N, {n_outputs}), got {y.shape}")
        return np.ascontiguousarray(y, dtype=dtype)

    def forward_backward(self, be, dlogits, stats, logits, targets, scale, weights=None):
        if weights is None:
            be.mse(dlogits, stats, logits, targets, scale)
        else:
            be.mse_weighted(dlogits, stats, logits, targets, weights, scale)

    def class_ids(self, targets, n_outputs):
        """As Keras: one target column holds the class (integers >= 0), several are one-hot rows."""
        if targets.shape[1] == 1:
            t = targets[:, 0]
            if not np.all((t == np.round(t)) & (t >= 0)):
                raise ValueError("MeanSquaredError: class_weight expected integer class targets >= 0 in its one "
                                 "column, got other values; pass sample_weight instead")
            return t.astype(np.int64), int(t.max()) + 1 if t.size else 1
        if not (np.all((targets == 0) | (targets == 1)) and np.all(targets.sum(axis=1) == 1)):
            raise ValueError("MeanSquaredError: class_weight expected one-hot target rows, got other values; "
                             "pass sample_weight instead")
        return np.argmax(targets, axis=1).astype(np.int64), targets.shape[1]

    def probabilities(self, be, out, logits):
        be.act_forward(out, logits, IDENTITY, 0.0)  # a copy


LOSSES = {"binary_crossentropy": BinaryCrossEntropy, "bce": BinaryCrossEntropy,
          "softmax_crossentropy": SoftmaxCrossEntropy, "categorical_crossentropy": SoftmaxCrossEntropy,
          "sparse_categorical_crossentropy": SoftmaxCrossEntropy, "mse": MeanSquaredError,
          "mean_squared_error": MeanSquaredError}


def get_loss(loss):
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss.lower() in LOSSES:
        return LOSSES[loss.lower()]()
    raise ValueError(f"expected a Loss instance or one of {sorted(LOSSES)}, got {loss!r}")
