"""ONNX export of a Sequential: one small function per layer type, looked up by class.

``export_onnx(model, path)`` walks the layers in order; each layer's exporter
appends ONNX nodes (built with ``onnx.helper``) that turn the current tensor
name into the next, and its weights as initializers. The graph is what
``model.predict`` computes in evaluation: Dropout is the identity, BatchNorm
uses its running statistics, and the output is the loss's probabilities
(softmax, sigmoid, or the raw outputs for MSE) or, with ``output="logits"``,
the last layer's output. The batch dimension is dynamic ("N").

Fusion (fastmlp/fusion.py) is mirrored: a Dense or Conv2D that runs a
following activation (and MaxPool2D) in its own kernel exports them after its
own node, and the fused layers themselves export nothing.

A layer type added later gets an exporter with ``@exporter(LayerClass)``:
``fn(layer, ctx, x) -> name of its output``, using ``ctx.node`` and
``ctx.weight``. A layer without one is refused with an error naming it.

Shapes: N batch, D input features, M output features, C/H/W images.
"""
import os

import numpy as np

from .backend.codes import IDENTITY, LEAKY_RELU, RELU, SIGMOID, TANH, pads4
from .conv import Conv2D, Flatten, MaxPool2D
from .layers import Activation, Dense
from .losses import BinaryCrossEntropy, MeanSquaredError, SoftmaxCrossEntropy
from .normalization import BatchNorm, Dropout
from .pooling import AvgPool2D, GlobalAveragePooling2D, GlobalMaxPooling2D

DEFAULT_OPSET = 17   # ONNX 1.12+ and onnxruntime 1.12+ run it; every op used here exists since opset 13
MIN_OPSET = 13       # Softmax over one axis (axis=1) and Squeeze/Unsqueeze semantics used here

EXPORTERS = {}


def exporter(cls):
    """Register ``fn(layer, ctx, x) -> output name`` as the ONNX exporter of layer class ``cls``."""
    def register(fn):
        EXPORTERS[cls] = fn
        return fn
    return register


def _onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as e:
        raise ImportError('ONNX export needs the onnx package: pip install "fastmlp[onnx]"') from e
    return onnx, helper, numpy_helper


class _Graph:
    """The nodes and initializers being built, with unique names."""

    def __init__(self, helper, numpy_helper, dtype):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.dtype = np.dtype(dtype)
        self.nodes, self.initializers = [], []
        self._count = 0

    def name(self, base):
        self._count += 1
        return f"{base}_{self._count}"

    def node(self, op, inputs, base, **attrs):
        """Append one node; returns the name of its output."""
        out = self.name(base)
        self.nodes.append(self.helper.make_node(op, list(inputs), [out], name=self.name(op), **attrs))
        return out

    def weight(self, array, base):
        """An initializer holding ``array`` in the graph dtype; returns its name."""
        name = self.name(base)
        self.initializers.append(self.numpy_helper.from_array(
            np.ascontiguousarray(np.asarray(array), dtype=self.dtype), name))
        return name


def _host(layer, array):
    return np.asarray(layer.be.to_host(array))


# ---------------------------------------------------------------------- activations

def _activation(ctx, x, code, alpha, base):
    # x after activation ``code`` (fastmlp/backend/codes.py)
    if code == IDENTITY:
        return x
    if code == RELU:
        return ctx.node("Relu", [x], base)
    if code == LEAKY_RELU:
        return ctx.node("LeakyRelu", [x], base, alpha=float(alpha))
    if code == TANH:
        return ctx.node("Tanh", [x], base)
    if code == SIGMOID:
        return ctx.node("Sigmoid", [x], base)
    raise ValueError(f"ONNX export: no ONNX op for activation code {code}")


@exporter(Activation)
def _export_activation(layer, ctx, x):
    if layer.fused:   # the preceding Dense / Conv2D applied it
        return x
    try:
        return _activation(ctx, x, layer.code, layer.alpha, type(layer).__name__.lower())
    except ValueError as e:
        raise ValueError(f"{e} ({layer!r})") from None


# ---------------------------------------------------------------------- dense layers

@exporter(Dense)
def _export_dense(layer, ctx, x):
    # x is (N, D); Gemm with W (D, M) as stored (transB=0), then the fused activation
    W, b = (_host(layer, p) for p in layer.params)
    z = ctx.node("Gemm", [x, ctx.weight(W, "dense_W"), ctx.weight(b, "dense_b")], "dense")
    return _activation(ctx, z, layer.act_code, layer.alpha, "dense_act")


@exporter(Dropout)
def _export_dropout(layer, ctx, x):
    return x   # the identity in evaluation (inverted dropout scales in training)


@exporter(BatchNorm)
def _export_batchnorm(layer, ctx, x):
    # x is (N, F) or (N, C, H, W): BatchNormalization in inference form with the running statistics
    gamma, beta = (_host(layer, p) for p in layer.params)
    state = layer.get_state()
    return ctx.node("BatchNormalization",
                    [x, ctx.weight(gamma, "bn_gamma"), ctx.weight(beta, "bn_beta"),
                     ctx.weight(state["running_mean"], "bn_mean"), ctx.weight(state["running_var"], "bn_var")],
                    "batchnorm", epsilon=float(layer.eps))


# ---------------------------------------------------------------------- images

def _maxpool(ctx, x, pool):
    return ctx.node("MaxPool", [x], "maxpool", kernel_shape=[pool.k, pool.k], strides=[pool.stride, pool.stride])


@exporter(Conv2D)
def _export_conv2d(layer, ctx, x):
    # x is (N, C, H, W); W (M, C, KH, KW) is ONNX's layout; then the fused activation and pool
    W, b = (_host(layer, p) for p in layer.params)
    (pt, pb, pl, pr), s = pads4(layer.pads), layer.stride
    y = ctx.node("Conv", [x, ctx.weight(W, "conv_W"), ctx.weight(b, "conv_b")], "conv",
                 kernel_shape=[layer.kh, layer.kw], strides=[s, s], pads=[pt, pl, pb, pr])
    y = _activation(ctx, y, layer.act_code, layer.alpha, "conv_act")
    return y if layer.pool is None else _maxpool(ctx, y, layer.pool)


@exporter(MaxPool2D)
def _export_maxpool(layer, ctx, x):
    return x if layer.fused else _maxpool(ctx, x, layer)


@exporter(AvgPool2D)
def _export_avgpool(layer, ctx, x):
    return ctx.node("AveragePool", [x], "avgpool", kernel_shape=[layer.k, layer.k],
                    strides=[layer.stride, layer.stride])


@exporter(GlobalAveragePooling2D)
def _export_global_avgpool(layer, ctx, x):
    # GlobalAveragePool keeps (N, C, 1, 1): flattened to the layer's (N, C)
    return ctx.node("Flatten", [ctx.node("GlobalAveragePool", [x], "gap")], "gap_flat", axis=1)


@exporter(GlobalMaxPooling2D)
def _export_global_maxpool(layer, ctx, x):
    return ctx.node("Flatten", [ctx.node("GlobalMaxPool", [x], "gmp")], "gmp_flat", axis=1)


@exporter(Flatten)
def _export_flatten(layer, ctx, x):
    return ctx.node("Flatten", [x], "flatten", axis=1)   # (N, ...) to (N, prod(...)), row-major


# ---------------------------------------------------------------------- the model

def _find_exporter(layer):
    for cls in type(layer).__mro__:
        if cls in EXPORTERS:
            return EXPORTERS[cls]
    return None


def _probabilities(model, ctx, logits):
    # what model.predict returns for these logits
    loss = model.loss
    if isinstance(loss, SoftmaxCrossEntropy):
        return ctx.node("Softmax", [logits], "probabilities", axis=1)
    if isinstance(loss, BinaryCrossEntropy):
        return ctx.node("Sigmoid", [logits], "probabilities")
    if loss is None or isinstance(loss, MeanSquaredError):   # predict's raw outputs
        return logits
    raise ValueError(f"ONNX export: expected a model whose loss is SoftmaxCrossEntropy, BinaryCrossEntropy "
                     f"or MeanSquaredError for output='probabilities', got {loss!r}; pass output='logits'")


def to_model_proto(model, output="probabilities", opset=DEFAULT_OPSET):
    """The checked ``onnx.ModelProto`` of ``model`` (see ``export_onnx``)."""
    onnx, helper, numpy_helper = _onnx()
    # a duck-typed check: model.py imports this module (Sequential.to_onnx)
    if not all(hasattr(model, a) for a in ("layers", "loss", "built", "input_shape", "dtype")):
        raise TypeError(f"ONNX export: expected a fastmlp Sequential, got {type(model).__name__}")
    if output not in ("probabilities", "logits"):
        raise ValueError(f"ONNX export: expected output='probabilities' or 'logits', got {output!r}")
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or opset < MIN_OPSET:
        raise ValueError(f"ONNX export: expected opset to be an int >= {MIN_OPSET}, got {opset!r}")
    if not model.built:
        raise ValueError("ONNX export: expected a built model (call fit/predict once or pass input_shape=), "
                         "got an unbuilt one")
    missing = [(i, layer) for i, layer in enumerate(model.layers) if _find_exporter(layer) is None]
    if missing:
        i, layer = missing[0]
        raise ValueError(f"ONNX export: layer {i} ({type(layer).__name__}: {layer!r}) cannot be exported; "
                         f"expected one of the layer types with an ONNX exporter "
                         f"{sorted(c.__name__ for c in EXPORTERS)}")
    dtype = np.dtype(model.dtype)
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    ctx = _Graph(helper, numpy_helper, dtype)
    x = "input"
    for layer in model.layers:
        x = _find_exporter(layer)(layer, ctx, x)
    if output == "probabilities":
        x = _probabilities(model, ctx, x)
    # the graph's output is named "output"; an Identity when the last node is the input itself
    ctx.nodes.append(helper.make_node("Identity", [x], ["output"], name="output"))
    graph = helper.make_graph(
        ctx.nodes, "fastmlp",
        [helper.make_tensor_value_info("input", elem, ["N", *map(int, model.input_shape)])],
        [helper.make_tensor_value_info("output", elem, ["N", *map(int, model.output_shape)])],
        ctx.initializers)
    from .version import __version__
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", int(opset))],
                              producer_name="fastmlp", producer_version=__version__)
    proto.ir_version = min(proto.ir_version, _max_ir_version(helper, int(opset)))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _max_ir_version(helper, opset):
    # the IR version that came with ``opset``, so that older runtimes accept the file
    for ir, op in reversed(sorted((v[1], v[2]) for v in helper.VERSION_TABLE)):
        if op <= opset:
            return ir
    return helper.VERSION_TABLE[0][1]


def export_onnx(model, path, output="probabilities", opset=DEFAULT_OPSET):
    """Write ``model`` (a fastmlp Sequential) to ``path`` as an ONNX file; returns the path.

    The graph computes what ``model.predict`` does: Dense (Gemm) with its fused
    activation, ReLU / LeakyReLU / Tanh / Sigmoid, Dropout (the identity),
    BatchNorm in evaluation form (its running statistics; (N, F) or (N, C, H, W)),
    Conv2D (stride, zero padding), MaxPool2D, Flatten. Its input "input" is
    (N, ...) with N dynamic, and its output "output" is (N, M):

    - ``output="probabilities"``: softmax (SoftmaxCrossEntropy), sigmoid
      (BinaryCrossEntropy) or the raw outputs (MeanSquaredError), as ``predict``;
    - ``output="logits"``: the last layer's output.

    The graph's tensors have the model's dtype: ``tensor(float)`` for a float32
    model, ``tensor(double)`` for a float64 one (feed inputs of that dtype).
    ``opset`` is the ONNX default-domain opset (default 17, at least 13). The
    model is checked with ``onnx.checker`` (full check, shapes inferred) before
    the file is written, atomically. A layer without an exporter raises
    ValueError naming it, before anything is written. Needs ``fastmlp[onnx]``."""
    proto = to_model_proto(model, output, opset)
    data = proto.SerializeToString()
    from .atomic import atomic_write
    atomic_write(path, lambda f: f.write(data))
    return os.fspath(path)
