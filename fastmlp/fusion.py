"""Which layer runs inside which: activations and pooling fused into Dense and Conv2D.

A Dense's own ``activation=``, or else an activation layer right after it, runs
in the Dense's bias kernel (``bias_act_forward`` / ``act_backward_bias_grad``):
the Dense takes its code and slope, and the activation layer passes its input
through (``fused``). A MaxPool2D right after a Conv2D, or an activation and then
a MaxPool2D, run in the Conv2D's fused path (``Conv2D.fuse_pool``): one kernel
reads the convolution's output once and writes only the pooled values and their
argmax. A Conv2D's own ``activation=`` takes the activation's place there; with
no MaxPool2D after it, it runs in place on the convolution's output.
"""
from .backend.codes import IDENTITY
from .conv import Conv2D, MaxPool2D
from .layers import Activation, Dense


def plan_fusion(layers):
    """Mark which layers run fused into which (undoing any earlier plan first).
    Returns whether some Conv2D now runs the fused conv + pool path."""
    for layer in layers:
        if isinstance(layer, (Activation, MaxPool2D)):
            layer.fused = False
        if isinstance(layer, Dense):
            layer.act_code, layer.alpha = layer.activation.code, layer.activation.alpha
        if isinstance(layer, Conv2D):
            layer.fuse_pool(layer.activation.code, layer.activation.alpha, None)
    for i, (prev, layer) in enumerate(zip(layers, layers[1:])):
        after = layers[i + 2] if i + 2 < len(layers) else None
        own = isinstance(prev, (Dense, Conv2D)) and prev.activation.code != IDENTITY
        if isinstance(prev, Dense) and isinstance(layer, Activation) and not own:
            prev.act_code, prev.alpha, layer.fused = layer.code, layer.alpha, True
        elif isinstance(prev, Conv2D) and isinstance(layer, MaxPool2D):
            prev.fuse_pool(prev.activation.code, prev.activation.alpha, layer)
            layer.fused = True
        elif (isinstance(prev, Conv2D) and isinstance(layer, Activation) and isinstance(after, MaxPool2D)
              and not own):
            prev.fuse_pool(layer.code, layer.alpha, after)
            layer.fused = after.fused = True
    return any(isinstance(layer, Conv2D) and layer.pool is not None for layer in layers)
