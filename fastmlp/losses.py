"""Losses, all taking logits, each fused with its gradient in one kernel.

A loss validates and converts the labels once per ``fit`` (``prepare``), then
per step calls its backend op, which writes d loss / d logits (scaled by
1/N, the loss being a mean over samples) and adds [loss sum, correct count]
into a small float64 ``stats`` array that stays on the device.
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

    def forward_backward(self, be, dlogits, stats, logits, targets, scale):
        raise NotImplementedError

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
            raise ValueError(f"BinaryCrossEntropy: expected labels of shape (N,) or (N, {n_outputs}) "
                             f"for {n_outputs} output(s), got {y.shape}")
        if not np.all((y == 0) | (y == 1)):
            bad = np.unique(y[(y != 0) & (y != 1)])[:5]
            raise ValueError(f"BinaryCrossEntropy: expected labels 0 or 1, got values such as {bad.tolist()}")
        return np.ascontiguousarray(y, dtype=dtype)

    def forward_backward(self, be, dlogits, stats, logits, targets, scale):
        be.bce_logits(dlogits, stats, logits, targets, scale)

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

    def forward_backward(self, be, dlogits, stats, logits, targets, scale):
        be.softmax_xent(dlogits, stats, logits, targets, scale)

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

    def forward_backward(self, be, dlogits, stats, logits, targets, scale):
        be.mse(dlogits, stats, logits, targets, scale)

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
