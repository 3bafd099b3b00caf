"""Average and global pooling on NCHW batches, each forward directly above its backward.

``AvgPool2D`` is the mean of each KxK window sliding by S (default K), no padding
(PyTorch's ``F.avg_pool2d``; with no padding its count_include_pad does not
arise). ``GlobalAveragePooling2D`` and ``GlobalMaxPooling2D`` reduce each whole
(image, channel) plane to one value, (N, C, H, W) -> (N, C), as Keras's layers of
those names and PyTorch's ``adaptive_avg_pool2d(x, 1)`` / ``adaptive_max_pool2d(x, 1)``
flattened. MaxPool2D lives with Conv2D (fastmlp/conv.py), which fuses it.

Keras's names are aliases: ``MaxPooling2D`` is MaxPool2D, ``AveragePooling2D`` is
AvgPool2D.

Shapes: N batch, C channels, H, W image height and width, K window side, S stride,
OH, OW output height and width (floor((H - K) / S) + 1).
"""
import numpy as np

from .conv import MaxPool2D, _image_shape, check_geometry, check_pool_size
from .layers import Layer, register


@register
class AvgPool2D(Layer):
    """The mean of each KxK window, sliding by S (default K), no padding. Backward gives
    every pixel of a window the window's gradient / K^2."""
    example = "AvgPool2D(2)"

    def __init__(self, pool_size, stride=None):
        super().__init__()
        self.k = check_pool_size(pool_size, "AvgPool2D")
        s = self.k if stride is None else stride
        check_geometry("AvgPool2D", None, None, self.k, self.k, s, 0)
        self.stride = int(s)

    def compute_output_shape(self, input_shape):
        c, h, w = _image_shape(repr(self), input_shape)
        return (c,) + check_geometry(repr(self), h, w, self.k, self.k, self.stride, 0)

    def forward(self, x, training):
        # x is (N, C, H, W); returns y (N, C, OH, OW); keeps x's shape
        y = self.workspace("y", (x.shape[0],) + self.output_shape)
        self.be.avgpool_forward(y, x, self.k, self.stride)
        self.x_shape = x.shape
        return y

    def backward(self, dy):
        # dy is (N, C, OH, OW); returns dx (N, C, H, W) or None
        if not self.needs_dx:
            return None
        dx = self.workspace("dx", self.x_shape)
        self.be.avgpool_backward(dx, dy, self.k, self.stride)
        return dx

    def get_config(self):
        return {"pool_size": self.k, "stride": self.stride}


class _GlobalPooling(Layer):
    """(N, C, H, W) -> (N, C): one value per (image, channel) plane."""

    def compute_output_shape(self, input_shape):
        c, h, w = _image_shape(repr(self), input_shape)
        return (c,)


@register
class GlobalAveragePooling2D(_GlobalPooling):
    """The mean of each plane; backward spreads dy / (H*W) over the plane."""

    def forward(self, x, training):
        # x is (N, C, H, W); returns y (N, C); keeps x's shape
        y = self.workspace("y", (x.shape[0],) + self.output_shape)
        self.be.global_avgpool_forward(y, x)
        self.x_shape = x.shape
        return y

    def backward(self, dy):
        # dy is (N, C); returns dx (N, C, H, W) or None
        if not self.needs_dx:
            return None
        dx = self.workspace("dx", self.x_shape)
        self.be.global_avgpool_backward(dx, dy)
        return dx


@register
class GlobalMaxPooling2D(_GlobalPooling):
    """The maximum of each plane; backward sends dy to exactly one pixel, the first maximum
    in row-major order (kept as ``argmax`` by forward); a NaN counts as the maximum."""

    def forward(self, x, training):
        # x is (N, C, H, W); returns y (N, C); keeps argmax (N, C) int32 = ih*W + iw
        y = self.workspace("y", (x.shape[0],) + self.output_shape)
        argmax = self.workspace("argmax", y.shape, np.int32)
        self.be.global_maxpool_forward(y, argmax, x)
        self.x_shape, self.argmax = x.shape, argmax
        return y

    def workspace_nbytes(self, n):
        # y, int32 argmax (+ dx)
        out, dx = self._sizes(n)
        return (out + dx) * np.dtype(self.dtype).itemsize + out * 4

    def backward(self, dy):
        # dy is (N, C); returns dx (N, C, H, W) or None
        if not self.needs_dx:
            return None
        dx = self.workspace("dx", self.x_shape)
        self.be.global_maxpool_backward(dx, dy, self.argmax)
        return dx


LAYERS = (AvgPool2D, GlobalAveragePooling2D, GlobalMaxPooling2D)   # the layers of this file

MaxPooling2D = MaxPool2D          # Keras's names
AveragePooling2D = AvgPool2D
