"""Layers from a plain description: the CLI's ``--model mlp|cnn|FILE.toml``.

A stack is a list of layer entries, each a dict with ``type`` (a layer class name:
Dense, Conv2D, MaxPool2D, BatchNorm, Dropout, Flatten, ReLU, ...) and the keyword
arguments of that class. The input side of a layer (Dense's ``in_features``,
Conv2D's ``in_channels``, BatchNorm's ``features``) follows from the layer before, so
an entry names only what it makes::

    # cnn.toml: fastmlp train DATA --model cnn.toml
    [[layer]]
    type = "Conv2D"
    out_channels = 16
    kernel_size = 3
    padding = "same"
    activation = "relu"

    [[layer]]
    type = "MaxPool2D"
    pool_size = 2

    [[layer]]
    type = "Flatten"

    [[layer]]
    type = "Dense"
    out_features = 64
    activation = "relu"

The stack is the hidden part: ``build_stack`` appends the output layer (its size
follows from the classes and the loss). A stack with a Conv2D or a pooling layer
takes images as (N, C, H, W); any other takes flat rows (N, F).
"""
import math

from .layers import LAYERS

IMAGE_LAYERS = ("Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D")


def load_stack_file(path):
    """The layer entries of a TOML file (a ``[[layer]]`` table per layer)."""
    import tomllib
    with open(path, "rb") as f:
        try:
            doc = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML: {e}") from None
    entries = doc.get("layer")
    unknown = sorted(set(doc) - {"layer"})
    if not isinstance(entries, list) or not entries or unknown:
        raise ValueError(f"{path}: expected a list of [[layer]] tables (type = \"Dense\", ...)"
                         + (f", got other keys {unknown}" if unknown else ", got none"))
    return entries


def mlp_stack(hidden, activation="relu", l1=0.0, l2=0.0):
    """Dense layers of the given widths, each followed by the activation."""
    init = "he" if activation in ("relu", "leaky_relu") else "glorot"
    stack = []
    for width in hidden:
        stack += [{"type": "Dense", "out_features": width, "init": init, "l1": l1, "l2": l2},
                  {"type": _ACTIVATIONS[activation]}]
    return stack


def cnn_stack(filters, kernel=3, batchnorm=False, pool=2, hidden=(), activation="relu", l1=0.0, l2=0.0):
    """A block per entry of ``filters``: Conv2D (padding "same") [-> BatchNorm] ->
    activation [-> MaxPool2D(pool)], then Flatten and the dense ``hidden`` layers."""
    init = "he" if activation in ("relu", "leaky_relu") else "glorot"
    stack = []
    for f in filters:
        stack.append({"type": "Conv2D", "out_channels": f, "kernel_size": kernel, "padding": "same",
                      "init": init, "l1": l1, "l2": l2})
        if batchnorm:
            stack.append({"type": "BatchNorm"})
        stack.append({"type": _ACTIVATIONS[activation]})
        if pool > 1:
            stack.append({"type": "MaxPool2D", "pool_size": pool})
    return stack + [{"type": "Flatten"}] + mlp_stack(hidden, activation, l1, l2)


_ACTIVATIONS = {"relu": "ReLU", "leaky_relu": "LeakyReLU", "tanh": "Tanh", "sigmoid": "Sigmoid"}


def takes_images(stack):
    """Whether the stack reads (N, C, H, W) images rather than flat rows."""
    return any(entry.get("type") in IMAGE_LAYERS for entry in stack)


def build_stack(stack, input_shape, outputs, source="model", **output_kwargs):
    """The layers of ``stack`` for per-sample ``input_shape``, then Dense(..., outputs,
    **output_kwargs) (Flatten before it where the stack ends on images).
    ValueError naming the entry (from 1) that cannot be built."""
    layers, shape = [], tuple(input_shape)
    for i, entry in enumerate(stack, 1):
        where = f"{source}: layer {i}"
        if not isinstance(entry, dict) or "type" not in entry:
            raise ValueError(f"{where}: expected a table with type = \"Dense\" (or another layer), got {entry!r}")
        kwargs = {k: v for k, v in entry.items() if k != "type"}
        kind = LAYERS.get(entry["type"])
        if kind is None:
            raise ValueError(f"{where}: unknown type {entry['type']!r}; expected one of {sorted(LAYERS)}")
        if entry["type"] == "Dense":
            if len(shape) != 1:
                raise ValueError(f"{where}: Dense takes flat rows, got samples of shape {shape}; "
                                 "put a Flatten layer before it")
            kwargs.setdefault("in_features", shape[0])
        elif entry["type"] == "Conv2D":
            if len(shape) != 3:
                raise ValueError(f"{where}: Conv2D takes (C, H, W) images, got samples of shape {shape}")
            kwargs.setdefault("in_channels", shape[0])
        elif entry["type"] == "BatchNorm":
            kwargs.setdefault("features", shape[0])
        try:
            layer = kind(**kwargs)
            shape = tuple(layer.compute_output_shape(shape))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where} ({entry['type']}): {e}") from None
        layers.append(layer)
    if len(shape) != 1:
        layers.append(LAYERS["Flatten"]())
        shape = (math.prod(shape),)
    layers.append(LAYERS["Dense"](shape[0], outputs, init="glorot", **output_kwargs))
    return layers
