"""The vocabulary every part of fastmlp shares, declared once.

Shape letters (comments, docstrings and error messages use these and no others):

    N   batch (samples)                 D   input features of a Dense
    M   output features of a layer      C   channels of an image input
        (Dense units, Conv2D filters,   H, W  image height and width
        classes of the last layer)      KH, KW  kernel height and width
    S   stride                          P   zero padding (PT, PB, PL, PR: top,
                                            bottom, left, right when they differ)
    OH, OW  output height and width     L   OH * OW, output pixels of one image
    K   side of a max-pooling window    PH, PW  height and width after pooling
    F   features of BatchNorm           B   images in one chunk of Conv2D's fused path
    T   threads                         NP  parameters in the flat buffer
    NS  parameter segments (one per array of get_weights())

Activation codes are passed to every fused kernel (``code``); kernels/activation.cuh
declares the same numbers for the CUDA twins (tests/test_kernels_compile.py checks).
"""

IDENTITY, RELU, LEAKY_RELU, TANH, SIGMOID = 0, 1, 2, 3, 4

ACTIVATION_CODES = {"identity": IDENTITY, "relu": RELU, "leaky_relu": LEAKY_RELU,
                    "tanh": TANH, "sigmoid": SIGMOID}


def window_output_size(size, k, stride, pad=0):
    """How many positions a window of k takes sliding by ``stride`` over ``size`` values
    zero-padded by ``pad`` on each side: floor((size + 2 pad - k) / stride) + 1, as PyTorch.
    The one output-size formula of Conv2D, MaxPool2D, im2col and col2im."""
    return (size + 2 * pad - k) // stride + 1


def padded_output_size(size, k, stride, before, after):
    """window_output_size with ``before`` zeros before the values and ``after`` after them
    (PyTorch's and Keras's "same" padding puts the odd one of an even kernel after)."""
    return (size + before + after - k) // stride + 1


def pads4(pad):
    """A padding argument of the image ops, an int P (each side) or (PT, PB, PL, PR) (top,
    bottom, left, right), as a tuple of four ints."""
    if isinstance(pad, (tuple, list)):
        pt, pb, pl, pr = pad
        return int(pt), int(pb), int(pl), int(pr)
    return (int(pad),) * 4
